"""The train state on a ("data", "fsdp", "tensor") mesh (famjax.partitioning),
and the processes of a multi-host run (`init_distributed`).

Parameters are sharded by their logical axes (the partitioning rules table);
optimizer moments follow their parameter (factored Adafactor statistics and
scalars are replicated); step, RNG and the kept RSP state are replicated;
batches are split over data x fsdp.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from famjax import partitioning
from famjax.train import trainer


def state_shardings(model, state, tx, keys, mesh, rules=None):
  """NamedShardings with the tree structure of the train state."""
  repl = NamedSharding(mesh, P())
  params = nnx.to_pure_dict(
      partitioning.param_shardings(nnx.state(model, nnx.Param), mesh, rules))
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        state["params"])
  train_sh = trainer.split_params(params, keys)[0]
  train_shapes = trainer.split_params(shapes, keys)[0]

  def follow(leaf, sharding, shape):
    same = getattr(leaf, "shape", None) == shape.shape
    return sharding if same else repl

  opt = optax.tree_map_params(
      tx, follow, state["opt_state"], train_sh, train_shapes,
      transform_non_params=lambda _: repl)
  out = {k: repl for k in state}
  out.update(params=params, opt_state=opt)
  return out


def abstract(tree):
  """ShapeDtypeStructs carrying each array's sharding (restore targets)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      tree)


def to_host(tree):
  """numpy copies of (possibly sharded, multi-host) arrays, on every host."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)


def init_distributed():
  """jax.distributed.initialize from FAMJAX_COORDINATOR_ADDRESS,
  FAMJAX_NUM_PROCESSES, FAMJAX_PROCESS_ID when set, else the cluster's own
  environment (TPU pods, SLURM, ...)."""
  env = os.environ
  kw = {}
  if env.get("FAMJAX_COORDINATOR_ADDRESS"):
    kw = dict(coordinator_address=env["FAMJAX_COORDINATOR_ADDRESS"],
              num_processes=int(env["FAMJAX_NUM_PROCESSES"]),
              process_id=int(env["FAMJAX_PROCESS_ID"]))
  if env.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kw)
