"""A model directory: weights (orbax) + config (JSON and gin), written atomically.

Layout of DIR:
  config.json   ModelConfig.to_json()
  model.gin     the same config as gin bindings (for --gin_file)
  params/       orbax StandardCheckpointer of the parameter dict
                (`nnx.State.to_pure_dict()` of the model's `nnx.Param`s)
  extra/        optional files (tokenizer, fam_prompt beside exports, ...)

`save_model_dir` writes into DIR.tmp-XXXX and renames it to DIR at the end,
so a failure leaves no half-written DIR. Converted checkpoints, exports and
the trainer's `LOAD_PARAMS_FROM` all use this one format.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from famjax.config import AttentionConfig, ModelConfig
from famjax.errors import UserError


def config_to_gin(cfg: ModelConfig) -> str:
  lines = ["# famjax model config (generated)."]
  for f in dataclasses.fields(cfg):
    if f.name == "attention":
      continue
    lines.append(f"ModelConfig.{f.name} = {_gin_value(getattr(cfg, f.name))}")
  lines.append("ModelConfig.attention = @AttentionConfig()")
  for f in dataclasses.fields(cfg.attention):
    lines.append(f"AttentionConfig.{f.name} = "
                 f"{_gin_value(getattr(cfg.attention, f.name))}")
  return "\n".join(lines) + "\n"


def _gin_value(v):
  if isinstance(v, str):
    return repr(v)
  if isinstance(v, tuple):
    return "(" + ", ".join(_gin_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  return repr(v)


def params_dict(model) -> dict:
  """Nested dict of numpy-compatible arrays of a model's nnx.Params."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


class OutputExists(UserError, FileExistsError):
  """The output directory exists and is not empty."""


def check_output_dir(path: str, overwrite: bool = False) -> str:
  """The one check of a new output directory (model directories, exports,
  conversions), before anything is read or written; returns its absolute
  path. UserError (one line) if it is a file, exists and is not empty
  (unless overwrite), or its parent is a file or not writable."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.lexists(path):
    if not os.path.isdir(path):
      raise UserError(f"output {path} exists and is not a directory; choose "
                      "a new directory path.")
    if os.listdir(path) and not overwrite:
      raise OutputExists(
          f"output directory {path} exists and is not empty; choose a new "
          "path or remove it (nothing was written).")
  parent = os.path.dirname(path)
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"cannot create {path}: {parent} is a file, not a "
                    "directory; choose another output path.")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"cannot create {path}: {parent} is not writable; "
                    "choose another output path.")
  return path


def tmp_beside(path: str) -> str:
  """A private temporary directory beside `path` (renamed to it at the end)."""
  parent = os.path.dirname(path)
  try:
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=os.path.basename(path) + ".tmp-",
                            dir=parent)
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror or e} ({parent}); "
                    "choose another output path.") from None


def publish_dir(tmp: str, path: str):
  """Rename the finished `tmp` to `path` (replacing an empty or, when
  overwriting, checked-before directory)."""
  if os.path.isdir(path):     # empty, or overwrite (checked before)
    shutil.rmtree(path)
  os.rename(tmp, path)


def save_model_dir(path: str, cfg: ModelConfig, params: dict, *,
                   extra_files: Optional[dict] = None,
                   extra_from: Optional[str] = None,
                   overwrite: bool = False) -> str:
  """Write a model directory atomically; returns its absolute path.

  extra_files: {name under extra/: a file or directory path, or bytes}.
  extra_from: a model directory whose extra/ (tokenizer, hf_config.json,
    ...) the new one keeps (extra_files win on a name clash).
  """
  import orbax.checkpoint as ocp
  path = check_output_dir(path, overwrite)
  tmp = tmp_beside(path)
  try:
    with open(os.path.join(tmp, "config.json"), "w") as fh:
      fh.write(cfg.to_json())
    with open(os.path.join(tmp, "model.gin"), "w") as fh:
      fh.write(config_to_gin(cfg))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(tmp, "params"),
               jax.tree.map(np.asarray, params))
    ckptr.wait_until_finished()
    kept = os.path.join(extra_from or "", "extra")
    if extra_from and os.path.isdir(kept):
      shutil.copytree(kept, os.path.join(tmp, "extra"))
    if extra_files:
      os.makedirs(os.path.join(tmp, "extra"), exist_ok=True)
      for name, src in extra_files.items():
        dst = os.path.join(tmp, "extra", name)
        if os.path.isdir(dst):
          shutil.rmtree(dst)
        if isinstance(src, (bytes, bytearray)):
          with open(dst, "wb") as fh:
            fh.write(src)
        elif os.path.isdir(src):
          shutil.copytree(src, dst)
        else:
          shutil.copyfile(src, dst)
    os.chmod(tmp, 0o755)       # mkdtemp made it private
    publish_dir(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path


def load_config(path: str) -> ModelConfig:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(
        f"{path!r} is not a famjax model directory: {cfg_path} is missing "
        "(convert a checkpoint with `famjax convert` first).")
  try:
    with open(cfg_path) as fh:
      return ModelConfig.from_json(fh.read())
  except (ValueError, TypeError) as e:
    raise ValueError(f"{cfg_path} is not a valid famjax config: {e}") from e


def load_params(path: str) -> dict:
  import orbax.checkpoint as ocp
  ppath = os.path.join(os.path.abspath(path), "params")
  if not os.path.isdir(ppath):
    raise FileNotFoundError(f"{ppath} is missing: not a famjax model directory.")
  try:
    return ocp.StandardCheckpointer().restore(ppath)
  except Exception as e:  # orbax raises many types for damaged files
    raise ValueError(f"the weights in {ppath} cannot be read ({type(e).__name__}: "
                     f"{e}); the checkpoint is corrupt or incomplete.") from e


def load_model_dir(path: str, *, attention: Optional[AttentionConfig] = None,
                   seed: int = 0, **overrides):
  """(config, model) from a model directory.

  attention: run the weights with another attention config; switching to
  `fam` adds a freshly initialised `fam_prompt` (the only new weight).
  overrides: other ModelConfig fields (dtype, remat_policy, ...).
  """
  cfg = load_config(path)
  if attention is not None:
    overrides["attention"] = attention
  cfg = dataclasses.replace(cfg, **overrides).validate()
  return cfg, build_model(cfg, load_params(path), source=path, seed=seed,
                          allow_new=True)


def _refuse_unknown(flat_src, flat_model, source):
  extra = sorted(".".join(map(str, k)) for k in flat_src
                 if k not in flat_model and not _is_fam_weight(k))
  if extra:
    raise ValueError(f"{source}: weights {extra[:5]} do not exist in the model "
                     "(wrong architecture or config?).")


def _is_fam_weight(key) -> bool:
  """fam_prompt, and the learned decay of AttentionConfig.fam_decay: weights
  of mode fam alone, dropped when the weights run in another mode."""
  return key[0] == "fam_prompt" or key[-1] == "fam_decay_logit"


def _is_new_weight(key) -> bool:
  """Weights a checkpoint may lack: FAM's own (switching to FAM, or to the
  fam_decay option), LoRA."""
  return _is_fam_weight(key) or any("lora" in str(k) for k in key)


def build_model(cfg: ModelConfig, params: dict, *, source: str = "checkpoint",
                seed: int = 0, allow_new: bool = True):
  """A Transformer holding `params`, checked name by name and shape by shape.

  The module is built abstractly (no random init of big weights); weights
  the checkpoint lacks (`fam_prompt`, LoRA; only if allow_new) get their
  seeded initial values from one compiled init.
  """
  model = nnx.eval_shape(lambda: _make(cfg, seed))
  flat_model = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  flat_src = dict(_flatten(params))
  _refuse_unknown(flat_src, flat_model, source)
  missing = [k for k in flat_model if k not in flat_src]
  for key in missing:
    if not (allow_new and _is_new_weight(key)):
      raise ValueError(f"{source}: weight {'.'.join(map(str, key))} is missing.")
  init = new_weights(cfg, missing, seed) if missing else {}
  for key, var in flat_model.items():
    name = ".".join(map(str, key))
    if key in flat_src:
      value = flat_src[key]
      if tuple(value.shape) != tuple(var.shape):
        raise ValueError(f"{source}: weight {name} has shape "
                         f"{tuple(value.shape)}, the model expects "
                         f"{tuple(var.shape)}.")
    else:
      value = init[key]
    var.set_value(jnp.asarray(value, var.dtype))
  return model


def _make(cfg: ModelConfig, seed: int):
  from famjax.model import Transformer
  return Transformer(cfg, rngs=nnx.Rngs(seed))


def new_weights(cfg: ModelConfig, keys, seed: int = 0) -> dict:
  """{key: the initial value of that weight in Transformer(cfg, rngs=
  nnx.Rngs(seed))}: the one place new weights (fam_prompt when switching to
  FAM, LoRA) get their values, on every path (convert, load, fresh model).
  Only the asked weights are computed (XLA drops the rest)."""
  keys = [tuple(k) for k in keys]

  def init():
    flat = dict(nnx.to_flat_state(nnx.state(_make(cfg, seed), nnx.Param)))
    return [flat[k][...] for k in keys]

  return dict(zip(keys, jax.jit(init)()))


def assign_params(model, params: dict, source: str = "checkpoint"):
  """Copy a nested param dict into an existing model (names, shapes checked).

  Weights the dict lacks keep the model's values if they are `fam_prompt`
  or LoRA weights (new when switching to FAM or adding adapters).
  """
  flat_model = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  flat_src = dict(_flatten(params))
  _refuse_unknown(flat_src, flat_model, source)
  for key, var in flat_model.items():
    name = ".".join(map(str, key))
    if key not in flat_src:
      if _is_new_weight(key):
        continue
      raise ValueError(f"{source}: weight {name} is missing.")
    value = flat_src[key]
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(f"{source}: weight {name} has shape {tuple(value.shape)}, "
                       f"the model expects {tuple(var.shape)}.")
    var.set_value(jnp.asarray(value, var.dtype))


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (k,))
  else:
    yield prefix, tree
