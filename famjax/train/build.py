"""What a training run is built from before its first step.

`build_config` (the run's ModelConfig), `build_state` (model, optimizer and
train state on the device mesh, weights optionally loaded from a model
directory), `data_factory` (the task's iterators), and what a run writes besides checkpoints and metrics
(`write_operative_config`, `export_model`). `famjax.train.loop` runs them.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Optional

import gin
import jax
import numpy as np
from flax import nnx

from famjax import partitioning
from famjax.config import ModelConfig
from famjax.train import sharding
from famjax.train import trainer
from famjax.train.optimizers import make_optimizer

log = logging.getLogger("famjax.train")


def build_config(model_config: Optional[ModelConfig], attention, overrides,
                 load_params_from: Optional[str]) -> ModelConfig:
  """The run's ModelConfig: gin's, or LOAD_PARAMS_FROM's with changes."""
  if model_config is None:
    if not load_params_from:
      raise ValueError("train.model_config is not set: bind it "
                       "(e.g. include gin/models/tiny.gin) or set "
                       "train.load_params_from to take the config of a model "
                       "directory.")
    from famjax.params_io import load_config
    model_config = load_config(load_params_from)
  changes = dict(overrides or {})
  if attention is not None:
    changes["attention"] = attention
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(changes) - known)
  if unknown:
    raise ValueError(f"train.model_overrides has unknown ModelConfig fields "
                     f"{unknown}.")
  return dataclasses.replace(model_config, **changes).validate()


@dataclasses.dataclass
class Built:
  """The model side of a run (see `build_state`)."""
  model: Any                 # the nnx model (initial weights; graph source)
  keys: frozenset            # flat keys of the trainable parameters
  tx: Any                    # optax transformation of the trainable subset
  schedule: Callable         # step -> learning rate
  state: dict                # the train state (trainer.init_state), placed
  state_shardings: dict      # NamedShardings of `state`
  batch_sharding: Any        # NamedSharding of [batch, length] inputs
  mesh: Any
  rules: Any


def build_state(cfg: ModelConfig, *, seed: int, trainable: str,
                num_steps: int, mesh_shape, sharding_rules,
                load_params_from: Optional[str]) -> Built:
  """Model, optimizer and train state on the mesh; weights from
  `load_params_from` when given (weights it lacks keep their init)."""
  from famjax.model import Transformer
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  if load_params_from:
    from famjax import params_io
    log.info("initialising parameters from %s", load_params_from)
    params_io.assign_params(model, params_io.load_params(load_params_from),
                            load_params_from)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  keys = trainer.trainable_keys(params, trainable)
  tx, schedule = make_optimizer(trainer.split_params(params, keys)[0],
                                num_steps)
  state = trainer.init_state(model, tx, keys, seed=seed)
  mesh = partitioning.make_mesh(mesh_shape)
  rules = partitioning.make_rules(sharding_rules)
  state_sh = sharding.state_shardings(model, state, tx, keys, mesh, rules)
  state = partitioning.shard_params(state, state_sh)
  log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape),
           mesh.size, jax.process_count())
  sizes = {k: int(np.prod(v.shape)) for k, v in trainer.flat(params).items()}
  log.info("model: %s attention, %d parameters, %d trainable",
           cfg.attention.mode, sum(sizes.values()),
           sum(n for k, n in sizes.items() if k in keys))
  return Built(model=model, keys=keys, tx=tx, schedule=schedule, state=state,
               state_shardings=state_sh,
               batch_sharding=partitioning.data_sharding(mesh, rules),
               mesh=mesh, rules=rules)


def data_factory(data_fn: Optional[Callable]) -> Callable:
  """`data_fn`, or famjax.data.pipeline.make_iterator (tasks registered)."""
  if data_fn is not None:
    return data_fn
  import famjax.data.tasks  # noqa: F401  (registers the seqio tasks)
  from famjax.data.pipeline import make_iterator
  return make_iterator


def close_iterator(it):
  if hasattr(it, "close"):
    it.close()


def write_operative_config(model_dir: str):
  """MODEL_DIR/config.gin: the gin bindings the run really used."""
  path = os.path.join(model_dir, "config.gin")
  tmp = path + ".tmp"
  with open(tmp, "w") as fh:
    fh.write(gin.operative_config_str())
  os.replace(tmp, path)


def export_model(path, cfg, params):
  """Final params as a famjax model directory (LoRA merged); host 0 writes."""
  from famjax import params_io
  params = sharding.to_host(params)
  if jax.process_index() != 0:
    return os.path.abspath(path)
  if cfg.lora_rank:
    from famjax.lora import merge_lora
    params, cfg = merge_lora(params, cfg)
  return params_io.save_model_dir(path, cfg, params, overwrite=True)
