"""famjax weights -> a Hugging Face directory that `transformers` loads.

Writes config.json + model.safetensors (the HF class is the one that
represents the config exactly: Llama, Mistral, Qwen2 or Gemma 3; the source
checkpoint's family when the model was converted from one), the tokenizer
files kept under the famjax directory's extra/tokenizer/, and, for FAM models,
`fam_prompt.npy` + `fam_config.json` (the attention config; written for
bswa too) beside them (transformers ignores them;
`famjax convert --from hf` picks them up again).

The output directory is written under a temporary name and renamed at the
end: a failure leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Optional

import numpy as np

from famjax import params_io
from famjax.config import ModelConfig
from famjax.convert import table
from famjax.convert.errors import ConvertError
from famjax.convert.hf_config import config_to_hf


def _lora_keys(params, prefix=()):
  if isinstance(params, dict):
    for k, v in params.items():
      yield from _lora_keys(v, prefix + (str(k),))
  elif any("lora" in p.lower() for p in prefix):
    yield ".".join(prefix)


def hf_state_dict(cfg: ModelConfig, params: dict) -> dict:
  """{HF tensor name: numpy array} of famjax params (LoRA must be merged)."""
  if cfg.attention.fam_decay is not None:
    raise ConvertError(
        "the model uses AttentionConfig.fam_decay (a learned FAM decay outside "
        "the paper's rules), which a Hugging Face checkpoint has no place for; "
        "export a model trained without it.")
  lora = list(_lora_keys(params))
  if lora:
    raise ConvertError(
        f"the parameters contain LoRA weights ({lora[:3]}); merge them into "
        "the base weights first (export takes a merged model), then export.")
  dtype = table.np_dtype(cfg.param_dtype)
  return table.to_hf(cfg, params, prefix="model.", dtype=dtype)


def export_params(cfg: ModelConfig, params: dict, out: str, *,
                  hf_base: Optional[dict] = None,
                  tokenizer_dir: Optional[str] = None,
                  overwrite: bool = False) -> str:
  """Write an HF directory from (cfg, params); returns its absolute path."""
  out = params_io.check_output_dir(out, overwrite)
  hf_config = config_to_hf(cfg, hf_base)
  state = hf_state_dict(cfg, params)
  tmp = params_io.tmp_beside(out)
  try:
    import safetensors.numpy
    safetensors.numpy.save_file(state, os.path.join(tmp, "model.safetensors"),
                                metadata={"format": "pt"})
    with open(os.path.join(tmp, "config.json"), "w") as fh:
      json.dump(hf_config, fh, indent=2, sort_keys=True)
    fam = params.get("fam_prompt")
    if fam is not None:
      np.save(os.path.join(tmp, "fam_prompt.npy"),
              np.asarray(fam, np.float32))
    if cfg.attention.mode != "full":   # how the weights were trained to run
      with open(os.path.join(tmp, "fam_config.json"), "w") as fh:
        json.dump(dataclasses.asdict(cfg.attention), fh, indent=2)
    if tokenizer_dir and os.path.isdir(tokenizer_dir):
      for f in os.listdir(tokenizer_dir):
        s = os.path.join(tokenizer_dir, f)
        if os.path.isfile(s):
          shutil.copyfile(s, os.path.join(tmp, f))
    _publish_permissions(tmp)      # mkdtemp makes 0700 dirs / 0600 files
    params_io.publish_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def _publish_permissions(path):
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o777 & ~umask)
  for f in os.listdir(path):
    os.chmod(os.path.join(path, f), 0o666 & ~umask)


def export_hf(src: str, out: str, *, overwrite: bool = False) -> str:
  """famjax model directory -> HF directory."""
  if not os.path.isdir(src):
    raise ConvertError(f"{src} is not a famjax model directory.")
  params_io.check_output_dir(out, overwrite)
  try:
    cfg = params_io.load_config(src)
    params = params_io.load_params(src)
  except (FileNotFoundError, ValueError) as e:
    raise ConvertError(str(e)) from None
  base = None
  base_path = os.path.join(src, "extra", "hf_config.json")
  if os.path.isfile(base_path):
    with open(base_path) as fh:
      base = json.load(fh)
  tok = os.path.join(src, "extra", "tokenizer")
  return export_params(cfg, params, out, hf_base=base,
                       tokenizer_dir=tok if os.path.isdir(tok) else None,
                       overwrite=overwrite)
