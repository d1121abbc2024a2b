"""The one interface every importable checkpoint implements, and the one
reader built on it.

A `CheckpointSource` states its config as a Hugging Face config dict (mapped
to a ModelConfig by `famjax.convert.hf_config`, the one config mapping) and
gives its tensors by name in HF layout (a source undoes its own storage
quirks). `read_checkpoint` turns any source into (ModelConfig, params, info)
through the shared weight table (`famjax.convert.table`).

Sources: `SafetensorsSource` (an HF directory, famjax.convert.safetensors_dir)
and `GGUFSource` (a llama.cpp file, famjax.convert.gguf);
`famjax.convert.importer.open_source(path)` picks one.
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np

from famjax.config import ModelConfig
from famjax.convert import table
from famjax.convert.errors import ConvertError
from famjax.convert.hf_config import config_from_hf


class CheckpointSource:
  """A checkpoint to import.

  Subclasses set `path`, `format` ("hf" / "gguf": the table column), `prefix`
  (of HF names in the "hf" column), `hf_config` (an HF config.json dict),
  and implement `names`, `__call__` and `write_tokenizer`.
  """
  path: str = ""
  format: str = ""
  prefix: str = ""
  hf_config: dict = {}
  fam_prompt: Optional[np.ndarray] = None    # stored beside an export
  fam_config: Optional[dict] = None

  def config(self) -> ModelConfig:
    return config_from_hf(self.hf_config)

  def names(self) -> List[str]:
    """Every tensor name the checkpoint holds."""
    raise NotImplementedError

  def __call__(self, name: str) -> np.ndarray:
    """The tensor in HF layout; KeyError if absent."""
    raise NotImplementedError

  def ignored(self, name: str) -> bool:
    """Tensors with no place in famjax that are fine to leave out."""
    del name
    return False

  def extra_names(self, cfg: ModelConfig) -> set:
    """Names the table does not list but the source used (e.g. lm_head)."""
    del cfg
    return set()

  def write_tokenizer(self, out: str) -> bool:
    """Write the tokenizer files into the new directory `out`; False if the
    checkpoint has no tokenizer."""
    raise NotImplementedError


def read_checkpoint(source: CheckpointSource, *, dtype: str = "float32"):
  """(ModelConfig (mode full), params dict, info) of a source.

  info: {"hf_config", "source", "format", "fam_prompt", "fam_config"}.
  Every tensor must find its place: one that does not (an unsupported
  feature, a config that does not match) is an error.
  """
  cfg = source.config().replace(dtype=dtype, param_dtype=dtype).validate()
  params = table.to_famjax(cfg, source, source.format, prefix=source.prefix,
                           dtype=table.np_dtype(dtype), source=source.path)
  known = (table.known_names(cfg, source.format, source.prefix)
           | source.extra_names(cfg))
  unused = sorted(n for n in source.names()
                  if n not in known and not source.ignored(n))
  if unused:
    raise ConvertError(
        f"{source.path}: tensors {unused[:4]} have no place in famjax "
        "(features this converter does not support, or a config that does "
        "not match).")
  info = dict(hf_config=source.hf_config, source=os.path.abspath(source.path),
              format=source.format, fam_prompt=source.fam_prompt,
              fam_config=source.fam_config)
  return cfg, params, info
