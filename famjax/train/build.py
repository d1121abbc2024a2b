"""What a training run is built from before its first step.

`build_state` (model, optimizer and train state on the device mesh, weights
optionally loaded from a model directory), `data_factory` (the task's
iterators), and what a run writes besides checkpoints and metrics
(`write_operative_config`, `export_model`). The run's ModelConfig comes from
`famjax.train.run_checks`; `famjax.train.loop` runs them.
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
  n_params: int = 0          # all parameters
  n_trainable: int = 0       # trainable parameters


def build_state(cfg: ModelConfig, *, seed: int, trainable: str,
                num_steps: int, mesh_shape, sharding_rules,
                load_params_from: Optional[str],
                rsp_rows: Optional[int] = None) -> Built:
  """Model, optimizer and train state on the mesh; weights from
  `load_params_from` when given (weights it lacks keep their init);
  rsp_rows: the global batch size under `state_passing="rows"`."""
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
  state = trainer.init_state(model, tx, keys, seed=seed, rsp_rows=rsp_rows)
  mesh = partitioning.make_mesh(mesh_shape)
  rules = partitioning.make_rules(sharding_rules)
  state_sh = sharding.state_shardings(model, state, tx, keys, mesh, rules)
  state = partitioning.shard_params(state, state_sh)
  log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape),
           mesh.size, jax.process_count())
  sizes = {k: int(np.prod(v.shape)) for k, v in trainer.flat(params).items()}
  n_params = sum(sizes.values())
  n_trainable = sum(n for k, n in sizes.items() if k in keys)
  log.info("model: %s attention, %d parameters, %d trainable",
           cfg.attention.mode, n_params, n_trainable)
  return Built(model=model, keys=keys, tx=tx, schedule=schedule, state=state,
               state_shardings=state_sh,
               batch_sharding=partitioning.data_sharding(mesh, rules),
               mesh=mesh, rules=rules, n_params=n_params,
               n_trainable=n_trainable)


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


RUN_MODEL_CONFIG = "model_config.json"


def write_operative_config(model_dir: str, cfg: Optional[ModelConfig] = None):
  """MODEL_DIR/config.gin (the gin bindings the run really used) and
  MODEL_DIR/model_config.json (the ModelConfig it trains, which readers
  such as `famjax eval` take without re-evaluating gin)."""
  texts = {"config.gin": gin.operative_config_str()}
  if cfg is not None:
    texts[RUN_MODEL_CONFIG] = cfg.to_json()
  for name, text in texts.items():
    path = os.path.join(model_dir, name)
    with open(path + ".tmp", "w") as fh:
      fh.write(text)
    os.replace(path + ".tmp", path)


def export_model(path, cfg, params, extra_from=None):
  """Final params as a famjax model directory (LoRA merged; the tokenizer and
  hf_config.json of model directory `extra_from` kept); host 0 writes."""
  from famjax import params_io
  params = sharding.to_host(params)
  if jax.process_index() != 0:
    return os.path.abspath(path)
  if cfg.lora_rank:
    from famjax.lora import merge_lora
    params, cfg = merge_lora(params, cfg)
  return params_io.save_model_dir(path, cfg, params, overwrite=True,
                                 extra_from=extra_from)
