"""Hugging Face checkpoint directories (config.json + safetensors, one file
or shards with model.safetensors.index.json) as a `CheckpointSource`."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from famjax.config import ModelConfig
from famjax.convert.errors import ConvertError
from famjax.convert.source import CheckpointSource

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json",
                   "vocab.json", "merges.txt", "added_tokens.json")
# Tensors of multimodal checkpoints that famjax leaves out (the text part only).
IGNORED = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
           "model.multi_modal_projector.")
LM_HEADS = ("lm_head.weight", "language_model.lm_head.weight")


def read_json(path: str, what: str) -> dict:
  if not os.path.isfile(path):
    raise ConvertError(f"{what} {path} is missing.")
  try:
    with open(path) as fh:
      return json.load(fh)
  except (ValueError, UnicodeDecodeError) as e:
    raise ConvertError(f"{path} is not valid JSON ({e}).") from None


class SafetensorFiles:
  """Lazy name -> numpy array over model.safetensors or a sharded index."""

  def __init__(self, path: str):
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
      wm = read_json(index, "shard index").get("weight_map")
      if not isinstance(wm, dict):
        raise ConvertError(f"{index} has no weight_map.")
      self.where = {k: os.path.join(path, v) for k, v in wm.items()}
    elif os.path.isfile(single):
      self.where = None
      self.files = [single]
    else:
      raise ConvertError(
          f"{path} has no model.safetensors (nor model.safetensors.index.json)"
          "; only safetensors checkpoints are supported.")
    if self.where is not None:
      self.files = sorted(set(self.where.values()))
    self._handles = {}
    self._names = {}
    for f in self.files:
      names = self._open(f).keys()
      for n in names:
        self._names[n] = f
    if self.where is not None:
      missing = sorted(k for k in self.where if k not in self._names)
      if missing:
        raise ConvertError(f"shards do not contain {missing[:3]} listed in "
                           "model.safetensors.index.json (incomplete copy?).")

  def _open(self, f):
    from safetensors import safe_open
    if f not in self._handles:
      if not os.path.isfile(f):
        raise ConvertError(f"checkpoint shard {f} is missing.")
      try:
        self._handles[f] = safe_open(f, framework="flax")
      except Exception as e:  # SafetensorError for truncated / corrupt files
        raise ConvertError(f"{f} cannot be read ({type(e).__name__}: {e}); "
                           "the file is truncated or corrupt.") from None
    return self._handles[f]

  def names(self):
    return list(self._names)

  def __call__(self, name):
    if name not in self._names:
      raise KeyError(name)
    try:
      return np.asarray(self._open(self._names[name]).get_tensor(name))
    except Exception as e:
      raise ConvertError(f"tensor {name!r} of {self._names[name]} cannot be "
                         f"read ({type(e).__name__}: {e}); the file is "
                         "truncated or corrupt.") from None


class SafetensorsSource(CheckpointSource):
  """An HF directory: config.json, safetensors, tokenizer files, and (from a
  famjax export) fam_prompt.npy + fam_config.json."""

  format = "hf"

  def __init__(self, path: str):
    if not os.path.isdir(path):
      raise ConvertError(f"{path} is not a directory (expected a Hugging Face "
                         "checkpoint with config.json and *.safetensors).")
    self.path = path
    self.hf_config = read_json(os.path.join(path, "config.json"),
                               "config file")
    self.config()                       # an unsupported model fails first
    self.files = SafetensorFiles(path)
    names = self.files.names()
    hits = [n[:-len("embed_tokens.weight")] for n in names
            if n.endswith("embed_tokens.weight") and not n.startswith(IGNORED)]
    if len(hits) != 1:
      raise ConvertError(
          "cannot find the token embedding (…embed_tokens.weight) among the "
          f"checkpoint's tensors (found {hits}).")
    self.prefix = hits[0]
    self.lm_head = next((n for n in LM_HEADS if n in names), LM_HEADS[0])
    fp = os.path.join(path, "fam_prompt.npy")
    if os.path.isfile(fp):
      self.fam_prompt = np.load(fp)
      fc = os.path.join(path, "fam_config.json")
      if os.path.isfile(fc):
        self.fam_config = read_json(fc, "FAM config")

  def names(self):
    return self.files.names()

  def __call__(self, name):
    return self.files(self.lm_head if name == "lm_head.weight" else name)

  def ignored(self, name):
    return name.startswith(IGNORED) or "rotary_emb" in name

  def extra_names(self, cfg: ModelConfig):
    return {self.lm_head}

  def write_tokenizer(self, out: str) -> bool:
    found = [f for f in TOKENIZER_FILES
             if os.path.isfile(os.path.join(self.path, f))]
    if not found:
      return False
    os.makedirs(out)
    for f in found:
      shutil.copyfile(os.path.join(self.path, f), os.path.join(out, f))
    return True
