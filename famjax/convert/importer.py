"""Any checkpoint source -> a famjax model (in memory or as a directory).

    read_checkpoint_path(path)            -> (ModelConfig, params, info)
    with_attention(cfg, params, info, a)  -> the weights for attention a
    from_pretrained(path, attention=...)  -> a ready Transformer
    convert(path, out, attention=...)     -> a famjax model directory, with
                                             extra/hf_config.json and the
                                             tokenizer in extra/tokenizer/

`path` is an HF safetensors directory or a .gguf file (`open_source`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from famjax import params_io
from famjax.config import AttentionConfig, ModelConfig
from famjax.convert import table
from famjax.convert.errors import ConvertError
from famjax.convert.gguf import GGUFSource
from famjax.convert.safetensors_dir import SafetensorsSource
from famjax.convert.source import CheckpointSource, read_checkpoint


def open_source(path: str) -> CheckpointSource:
  """A GGUF file or a Hugging Face safetensors directory."""
  if path.endswith(".gguf") and not os.path.isdir(path):
    return GGUFSource(path)
  return SafetensorsSource(path)


def read_checkpoint_path(path: str, *, dtype: str = "float32"):
  """(ModelConfig (mode full), params dict, info) of an HF directory or a
  GGUF file (see `famjax.convert.source.read_checkpoint`)."""
  return read_checkpoint(open_source(path), dtype=dtype)


def load(path: str, *, dtype: str = "float32"):
  """(ModelConfig (mode full), params dict) of an HF directory or a GGUF."""
  cfg, params, _ = read_checkpoint_path(path, dtype=dtype)
  return cfg, params


def with_attention(cfg: ModelConfig, params: dict, info: dict,
                   attention: Optional[AttentionConfig], seed: int = 0):
  """cfg / params for the chosen attention. `fam` adds `fam_prompt`: the one
  stored beside the checkpoint (an exported famjax model), else the model's
  own initial prompt for `seed` (`params_io.new_weights`, as on every path).
  attention=None: the stored FAM config, else `full`."""
  if attention is None:
    fc = info.get("fam_config")
    attention = AttentionConfig(**fc) if fc else AttentionConfig()
  attention.validate()
  cfg = cfg.replace(attention=attention).validate()
  params = dict(params)
  params.pop("fam_prompt", None)
  if attention.mode == "fam":
    stored = info.get("fam_prompt")
    f = attention.fam_length
    if stored is not None and tuple(stored.shape) != (f, cfg.d_model):
      raise ConvertError(
          f"the checkpoint's fam_prompt.npy has shape {tuple(stored.shape)} "
          f"but fam_length={f} needs ({f}, {cfg.d_model}); use "
          f"--fam_length {stored.shape[0]} or delete fam_prompt.npy.")
    if stored is None:
      key = ("fam_prompt",)
      stored = params_io.new_weights(cfg, [key], seed)[key]
    params["fam_prompt"] = np.asarray(stored, table.np_dtype(cfg.param_dtype))
  return cfg, params


def build_model(cfg: ModelConfig, params: dict, source: str = "checkpoint"):
  """A Transformer holding exactly `params` (see params_io.build_model)."""
  try:
    return params_io.build_model(cfg, params, source=source, allow_new=False)
  except ValueError as e:
    raise ConvertError(str(e)) from e


def from_pretrained(src: str, *, attention: Optional[AttentionConfig] = None,
                    dtype: str = "float32", seed: int = 0):
  """A famjax Transformer from an HF directory or a .gguf file.

  attention: AttentionConfig(mode=...) to run the weights with; `fam` adds
  only `fam_prompt` (the model's initial prompt for `seed`).
  """
  cfg, params, info = read_checkpoint_path(src, dtype=dtype)
  cfg, params = with_attention(cfg, params, info, attention, seed)
  return build_model(cfg, params, src)


def convert(src: str, out: str, *,
            attention: Optional[AttentionConfig] = None,
            dtype: str = "float32", seed: int = 0, tokenizer: bool = True,
            overwrite: bool = False) -> str:
  """HF directory or GGUF file -> famjax model directory (atomic):
  extra/hf_config.json (for export), extra/source.json, and the tokenizer
  in extra/tokenizer/ (unless tokenizer=False)."""
  out = params_io.check_output_dir(out, overwrite)
  source = open_source(src)
  cfg, params, info = read_checkpoint(source, dtype=dtype)
  cfg, params = with_attention(cfg, params, info, attention, seed)
  tmp = tempfile.mkdtemp(prefix="famjax-convert-")
  try:
    extra = {"hf_config.json": json.dumps(info["hf_config"], indent=2).encode(),
             "source.json": json.dumps({"format": info["format"],
                                        "source": info["source"]},
                                       indent=2).encode()}
    tok = os.path.join(tmp, "tokenizer")
    if tokenizer and source.write_tokenizer(tok):
      extra["tokenizer"] = tok
    return params_io.save_model_dir(out, cfg, params, extra_files=extra,
                                    overwrite=overwrite)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
