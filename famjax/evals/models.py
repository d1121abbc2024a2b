"""What `famjax eval` evaluates: the checkpoints of a model directory.

MODEL_DIR is one of
  * a famjax model directory (config.json + params/): the output of
    `famjax convert`, or a run's export/. It is evaluated as step 0.
  * a training run directory (checkpoints/<step>/ written by `famjax train`):
    its checkpoints. The model config is rebuilt from the run's gin config
    (MODEL_DIR/config.gin, else the copy inside the checkpoint); only the
    parameters are read from a checkpoint (not the optimizer state).
  * one checkpoint of a run, MODEL_DIR/checkpoints/<step>: that step.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import List, Optional, Sequence, Union

from famjax.config import AttentionConfig, ModelConfig
from famjax.errors import UserError

CONFIG_GIN = "config.gin"
CHECKPOINTS = "checkpoints"


@dataclasses.dataclass(frozen=True)
class Source:
  """A resolved MODEL_DIR: a model directory or a run's checkpoints."""
  path: str                       # the model directory, or the run directory
  kind: str                       # "model" | "run"
  steps: tuple                    # available steps ((0,) for "model")
  only_step: Optional[int] = None  # MODEL_DIR named one checkpoint


def _is_model_dir(path):
  return os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(
      os.path.join(path, "params"))


def _run_steps(run_dir) -> List[int]:
  ckpt = os.path.join(run_dir, CHECKPOINTS)
  if not os.path.isdir(ckpt):
    return []
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit() and
                os.path.isdir(os.path.join(ckpt, d, "state")))


def resolve(model_dir: str) -> Source:
  """The Source of MODEL_DIR, or UserError saying why it is not a model."""
  path = os.path.abspath(os.path.expanduser(str(model_dir)))
  if not os.path.exists(path):
    raise UserError(f"MODEL_DIR {model_dir!r} does not exist; give a model "
                    "directory (famjax convert / a run's export/) or a "
                    "training run directory.")
  if not os.path.isdir(path):
    raise UserError(f"MODEL_DIR {model_dir!r} is a file, not a model directory.")
  if _is_model_dir(path):
    return Source(path, "model", (0,))
  steps = _run_steps(path)
  if steps:
    return Source(path, "run", tuple(steps))
  parent, name = os.path.split(path)
  run_dir = os.path.dirname(parent)
  if (name.isdigit() and os.path.basename(parent) == CHECKPOINTS
      and int(name) in _run_steps(run_dir)):
    return Source(run_dir, "run", (int(name),), only_step=int(name))
  raise UserError(
      f"MODEL_DIR {model_dir!r} is not a model: it has neither config.json + "
      "params/ (a famjax model directory) nor checkpoints/<step>/ (a "
      "training run).")


def select_steps(source: Source, checkpoint_steps: Union[None, str, int,
                                                         Sequence[int]]):
  """The steps to evaluate: None / 'latest', 'all', or explicit steps."""
  if source.kind == "model" or source.only_step is not None:
    if checkpoint_steps not in (None, "latest", "all") and [
        int(s) for s in _as_list(checkpoint_steps)] != list(source.steps):
      raise UserError(f"eval.checkpoint_steps={checkpoint_steps!r}: "
                      f"{source.path} holds only step {source.steps[0]}; "
                      "name a training run directory to pick its steps.")
    return list(source.steps)
  if checkpoint_steps in (None, "latest"):
    return [source.steps[-1]]
  if checkpoint_steps == "all":
    return list(source.steps)
  if isinstance(checkpoint_steps, str):
    raise UserError(f"eval.checkpoint_steps={checkpoint_steps!r} must be "
                    "'latest', 'all' or a list of steps, e.g. [100, 200].")
  want = [int(s) for s in _as_list(checkpoint_steps)]
  missing = [s for s in want if s not in source.steps]
  if missing:
    raise UserError(f"eval.checkpoint_steps: no checkpoint {missing} in "
                    f"{source.path}/{CHECKPOINTS}; it has {list(source.steps)}.")
  return sorted(set(want))


def _as_list(x):
  return list(x) if isinstance(x, (list, tuple)) else [x]


# ------------------------------------------------------------ run configs
class _Ref:
  def __init__(self, name):
    self.name = name


class _Macro:
  def __init__(self, name):
    self.name = name


def _bindings(text: str) -> dict:
  """{(scope, configurable, arg): value} of a gin config text (not parsed
  into gin's global config; references and macros kept symbolic)."""
  from gin import config_parser

  class Delegate(config_parser.ParserDelegate):
    def configurable_reference(self, name, evaluate):
      return _Ref(name)

    def macro(self, name):
      return _Macro(name)

  out = {}
  for st in config_parser.ConfigParser(text, Delegate()):
    if isinstance(st, config_parser.BindingStatement):
      out[(st.scope, st.selector.split(".")[-1], st.arg_name)] = st.value
  return out


def _value(b, v, outer: str = ""):
  """A binding's value; a reference reached through macro M is evaluated in
  scope M, as gin does (its bindings read `M/Configurable.arg`)."""
  if isinstance(v, _Macro):
    return _value(b, b.get(("", v.name, ""), b.get(("", v.name, "value"))),
                  v.name)
  if isinstance(v, _Ref):
    scope, _, name = v.name.rpartition("/")
    scope = scope or outer
    cls = {"ModelConfig": ModelConfig, "AttentionConfig": AttentionConfig}.get(
        name.split(".")[-1])
    if cls is None:
      raise ValueError(f"unexpected reference @{v.name} in a model config")
    kw = {a: _value(b, x) for (s, c, a), x in b.items() if c == cls.__name__
          and s == ""}
    kw.update({a: _value(b, x) for (s, c, a), x in b.items()
               if c == cls.__name__ and scope and s == scope})
    if cls is ModelConfig and isinstance(kw.get("layer_types"), list):
      kw["layer_types"] = tuple(kw["layer_types"])
    return cls(**kw)
  if isinstance(v, dict):
    return {k: _value(b, x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return type(v)(_value(b, x) for x in v)
  return v


def run_gin_text(source: Source, step: Optional[int] = None) -> str:
  path = os.path.join(source.path, CONFIG_GIN)
  if os.path.isfile(path):
    with open(path) as fh:
      return fh.read()
  step = source.steps[-1] if step is None else step
  cfg = os.path.join(source.path, CHECKPOINTS, str(step), "config", "metadata")
  if os.path.isfile(cfg):
    with open(cfg) as fh:
      return json.load(fh)["gin"]
  raise UserError(f"{source.path} has checkpoints but no {CONFIG_GIN} "
                  "(the run's gin config); cannot tell which model they hold.")


def run_setting(source: Source, name: str, default=None):
  """A `train.NAME` value of the run's gin config (macros resolved)."""
  b = _bindings(run_gin_text(source))
  return _value(b, b[("", "train", name)]) if ("", "train", name) in b else (
      default)


def model_config(source: Source) -> ModelConfig:
  """The ModelConfig of a Source (the one the run trained)."""
  from famjax import params_io
  if source.kind == "model":
    return params_io.load_config(source.path)
  written = os.path.join(source.path, "model_config.json")   # by the trainer
  if os.path.isfile(written):
    with open(written) as fh:
      return ModelConfig.from_json(fh.read())
  b = _bindings(run_gin_text(source))      # runs older than that file
  get = lambda name: _value(b, b.get(("", "train", name)))
  cfg = get("model_config")
  if cfg is None:
    base = get("load_params_from")
    if not base:
      raise UserError(f"{source.path}/{CONFIG_GIN} sets neither "
                      "train.model_config nor train.load_params_from.")
    cfg = params_io.load_config(base)
  changes = dict(get("model_overrides") or {})
  if get("attention") is not None:
    changes["attention"] = get("attention")
  return dataclasses.replace(cfg, **changes).validate()


def load_params(source: Source, step: int) -> dict:
  """The parameter dict of one step (numpy arrays)."""
  from famjax import params_io
  if source.kind == "model":
    return params_io.load_params(source.path)
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  path = os.path.join(source.path, CHECKPOINTS, str(step), "state")
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(path)
  tree = getattr(getattr(meta, "item_metadata", meta), "tree", None) or meta
  abstract = {"params": jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree["params"])}
  out = ckptr.restore(path, args=ocp.args.PyTreeRestore(
      item=abstract, partial_restore=True,
      restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)))
  return out["params"]


def load(source: Source, step: int, attention: Optional[AttentionConfig] = None,
         cfg: Optional[ModelConfig] = None):
  """(config, model) of one step; `attention` overrides the trained one."""
  from famjax import params_io
  cfg = cfg or model_config(source)
  if attention is not None:
    cfg = dataclasses.replace(cfg, attention=attention.validate())
  cfg = cfg.validate()
  where = source.path if source.kind == "model" else (
      f"{source.path}/{CHECKPOINTS}/{step}")
  return cfg, params_io.build_model(cfg, load_params(source, step),
                                    source=where, allow_new=True)


def position_limit(source: Source) -> Optional[int]:
  """Longest context a `full` model was made for: the converted model's
  max_position_embeddings, else the training run's seq_len; None if unknown."""
  for path in (source.path, os.path.dirname(source.path)):
    hf = os.path.join(path, "extra", "hf_config.json")
    if os.path.isfile(hf):
      with open(hf) as fh:
        limit = json.load(fh).get("max_position_embeddings")
      if limit:
        return int(limit)
  run = source if source.kind == "run" else Source(
      os.path.dirname(source.path), "run", ())
  if os.path.isfile(os.path.join(run.path, CONFIG_GIN)):
    return run_setting(run, "seq_len", 256)
  return None
