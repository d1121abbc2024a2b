"""Ahead-of-time compilation of a run's train step for TPU (or mocked GPU)
topologies: the machinery behind `famjax compile` (famjax/compile.py).

The step is the trainer's own (famjax.train.trainer.make_train_step) with
the trainer's shardings (famjax.train.sharding) and mesh
(famjax.partitioning.make_mesh), built on abstract values
(ShapeDtypeStructs with NamedShardings) over a topology's devices, so no
weight is materialised and no accelerator is needed.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import pickle
import re
import time
from typing import Optional

from famjax.errors import UserError

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU chip: HBM bytes, peak dense bf16 FLOP/s, libtpu chip config
  (megacore: the chip's two TensorCores are one JAX device)."""
  name: str
  hbm_bytes: int
  peak_bf16_flops: float
  chip_config: str = "default"


# Per-chip HBM capacity and peak bf16 FLOP/s from the Cloud TPU
# documentation's system architecture page of each version
# (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e).
CHIPS = {
    "v4": Chip("v4", 32 * GIB, 275e12, "megacore"),
    "v5e": Chip("v5e", 16 * GIB, 197e12),
    "v5p": Chip("v5p", 95 * GIB, 459e12, "megacore"),
    "v6e": Chip("v6e", 32 * GIB, 918e12),
}

# Peak dense bf16 FLOP/s of GPUs (vendor data sheets, SXM parts), by a
# substring of jax's device_kind; their memory comes from the device itself.
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "B200": 2250e12}

@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice shape: chip kind, chip grid, number of slices."""
  text: str
  chip: Chip
  dims: tuple
  num_slices: int = 1

  @property
  def chips(self) -> int:
    return math.prod(self.dims) * self.num_slices


def parse_topology(text: str, num_slices: int = 1) -> Topology:
  """`v5e:4x4`, `v5p:4x4x4`, ... -> Topology; a UserError names the fix."""
  m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", text or "")
  if not m or m.group(1) not in CHIPS:
    raise UserError(
        f"--topology={text!r} is not a TPU topology; write CHIP:AxB[xC] with "
        f"CHIP one of {', '.join(CHIPS)} (e.g. v5e:4x4, v5p:4x4x4), or "
        "gpu:SLICESxHOSTSxGPUS.")
  if num_slices < 1:
    raise UserError(f"--num_slices={num_slices} must be >= 1.")
  dims = tuple(int(d) for d in m.group(2).split("x"))
  if min(dims) < 1:
    raise UserError(f"--topology={text!r} has an empty dimension.")
  return Topology(text, CHIPS[m.group(1)], dims, num_slices)


def topology_devices(topo: Topology):
  """The JAX devices of a TPU topology, described by libtpu (no TPU needed)."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server here
  # Other processes (tests, another compile) may hold libtpu's lockfile;
  # describing a topology does not touch a TPU, so sharing is safe.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    raise UserError("famjax compile for TPUs needs libtpu: pip install "
                    "'famjax[tpu]' (or the libtpu version jax[tpu] pins).") from None
  from jax.experimental import topologies
  import jax
  try:
    desc = topologies.get_topology_desc(
        topology_name=topo.text, platform="tpu",
        chip_config_name=topo.chip.chip_config, num_slices=topo.num_slices)
  except (jax.errors.JaxRuntimeError, ValueError, RuntimeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f"libtpu rejects --topology={topo.text}: {first}") from None
  return list(desc.devices)


def gpu_devices(text: str):
  """Devices of a mocked multi-host GPU cluster `gpu:SxHxD`."""
  m = re.fullmatch(r"gpu:(\d+)x(\d+)x(\d+)", text)
  if not m:
    raise UserError(f"--topology={text!r}: write gpu:SLICESxHOSTSxGPUS, e.g. "
                    "gpu:1x4x8 for 4 hosts of 8 GPUs.")
  import jax
  jax.config.update("jax_mock_gpu_topology", text[4:])
  try:
    devices = jax.devices("gpu")
  except RuntimeError:
    raise UserError(
        "--topology=gpu:... compiles with JAX's mocked GPU topology, which "
        "needs jax's CUDA plugin and one local GPU of the target kind; this "
        "machine has none.") from None
  return devices


def _resolve_auto_impl(cfg, platform: str):
  """An `attention_impl='auto'` config compiled for another platform takes
  that platform's implementation, not this machine's."""
  choice = {"tpu": "splash", "gpu": "cudnn"}.get(platform)
  for holder, field in ((cfg, None), (cfg.attention, "attention")):
    if choice and getattr(holder, "attention_impl", None) == "auto":
      changed = dataclasses.replace(holder, attention_impl=choice)
      return changed if field is None else dataclasses.replace(
          cfg, attention=changed)
  return cfg


def attention_impl(cfg) -> Optional[str]:
  for holder in (cfg, cfg.attention):
    if hasattr(holder, "attention_impl"):
      return holder.attention_impl
  return None


def _model_and_state(args, platform):
  """(config, abstract model, abstract train state, tx, schedule, keys)."""
  import jax
  from flax import nnx
  from famjax.model import Transformer
  from famjax.train import run_checks, trainer
  from famjax.train.optimizers import make_optimizer
  try:
    cfg = run_checks.model_config(args["model_config"], args["attention"],
                                  args["model_overrides"],
                                  args["load_params_from"])
  except (ValueError, FileNotFoundError) as e:
    raise UserError(str(e).splitlines()[0]) from None
  cfg = _resolve_auto_impl(cfg, platform)
  seed = int(args["seed"])
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
  params0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  try:
    keys = trainer.trainable_keys(params0, args["trainable"])
  except ValueError as e:
    raise UserError(str(e)) from None
  steps = args["num_steps"] if isinstance(args["num_steps"], int) else 1
  tx, schedule = make_optimizer(trainer.split_params(params0, keys)[0], steps)
  rows = (args["step_config"] or trainer.StepConfig()).rsp_rows(
      int(args["batch_size"]))
  state = jax.eval_shape(lambda: trainer.init_state(
      Transformer(cfg, rngs=nnx.Rngs(seed)), tx, keys, seed=seed,
      rsp_rows=rows))
  return cfg, model, state, tx, schedule, keys


def build_step(args, devices, platform: str = "tpu"):
  """The run's jitted train step and its abstract (sharded) arguments.

  Returns (step, (state, batch), info): the same calls as
  famjax.train.loop.train, on abstract values and the given devices.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from famjax import partitioning
  from famjax.train import sharding, trainer
  batch_size, seq_len = int(args["batch_size"]), int(args["seq_len"])
  try:
    step_cfg = (args["step_config"] or trainer.StepConfig()).validate(
        batch_size)
    mesh = partitioning.make_mesh(args["mesh_shape"], devices=devices)
    rules = partitioning.make_rules(args["sharding_rules"])
  except ValueError as e:
    raise UserError(f"{e} (train.mesh_shape={args['mesh_shape']!r}, "
                    f"{len(devices)} devices)") from None
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % rows:
    raise UserError(f"train.batch_size={batch_size} is not divisible by the "
                    f"mesh's data x fsdp = {rows} devices; change one.")
  cfg, model, state, tx, schedule, keys = _model_and_state(args, platform)
  state_sh = sharding.state_shardings(model, state, tx, keys, mesh, rules)
  batch_sh = partitioning.data_sharding(mesh, rules)
  step = trainer.make_train_step(model, tx, schedule, keys, step_cfg,
                                 state_shardings=state_sh,
                                 batch_sharding=batch_sh)
  a_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, state_sh)
  a_batch = {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32,
                                     sharding=batch_sh)
             for k in (trainer.INPUTS, trainer.TARGETS, trainer.WEIGHTS)}
  sizes = {k: int(np.prod(v.shape))
           for k, v in trainer.flat(state["params"]).items()}
  info = {
      "model": {"mode": cfg.attention.mode, "layers": cfg.num_layers,
                "d_model": cfg.d_model, "attention_impl": attention_impl(cfg),
                "remat_policy": cfg.remat_policy,
                "params": sum(sizes.values()),
                "trainable": sum(v for k, v in sizes.items() if k in keys)},
      "batch_size": batch_size, "seq_len": seq_len,
      "microbatches": step_cfg.microbatches,
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
  }
  return _under_mesh(step, mesh), (a_state, a_batch), info


class _under_mesh:
  """A jitted step traced inside `jax.set_mesh(mesh)`, as the trainer traces
  it, so the model's activation sharding constraints (and shard_map'ed
  kernels) see the mesh."""

  def __init__(self, step, mesh):
    self.step, self.mesh = step, mesh

  def trace(self, *args):
    import jax
    with jax.set_mesh(self.mesh):
      return self.step.trace(*args)


# ---------------------------------------------------------------- compile
def _is_oom(err: Exception) -> bool:
  text = str(err)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def _oom_line(err: Exception) -> str:
  lines = [l.strip() for l in str(err).splitlines() if l.strip()]
  for l in lines:
    if re.search(r"(Used|exceed|Exceeded|out of memory)", l, re.I):
      return l[:300]
  return lines[0][:300] if lines else type(err).__name__


def compile_step(step, abstract_args, hbm_bytes: Optional[int]) -> dict:
  """Trace, lower and compile; memory, FLOPs and timings (see module doc)."""
  from famjax import flops as flops_lib
  t0 = time.perf_counter()
  traced = step.trace(*abstract_args)
  count = flops_lib.count_jaxpr(traced.jaxpr)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  out = {"flops": {"program_per_step": count.matmul,
                   "unbounded_loops": count.unbounded_loops},
         "compiler_error": None, "memory": None, "compiled": None}
  # A compile-only (topology) client cannot load cached executables.
  import jax
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    if not _is_oom(e):
      raise
    out.update(fits=False, compiler_error=_oom_line(e),
               compiler_message=str(e)[:20000])
  else:
    m = compiled.memory_analysis()
    mem = {"arguments": m.argument_size_in_bytes,
           "outputs": m.output_size_in_bytes,
           "aliased": m.alias_size_in_bytes,
           "temporaries": m.temp_size_in_bytes,
           "code": m.generated_code_size_in_bytes}
    mem["peak"] = (mem["arguments"] + mem["outputs"] - mem["aliased"] +
                   mem["temporaries"] + mem["code"])
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out["flops"]["xla_per_chip"] = float((cost or {}).get("flops", 0.0))
    out.update(memory=mem, compiled=compiled,
               fits=hbm_bytes is None or mem["peak"] <= hbm_bytes)
  finally:
    jax.config.update("jax_enable_compilation_cache", cache)
  t3 = time.perf_counter()
  out["seconds"] = {"trace": t1 - t0, "lower": t2 - t1, "compile": t3 - t2}
  return out


def versions(topology: str, num_slices: int) -> dict:
  """What a saved executable needs to be loaded again."""
  out = {}
  for pkg in ("jax", "jaxlib", "libtpu", "famjax"):
    try:
      out[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      out[pkg] = None
  out.update(topology=topology, num_slices=num_slices)
  return out


def save_executable(compiled, path: str, meta: dict) -> None:
  """PATH: pickled {executable, in_tree, out_tree} (jax.experimental.
  serialize_executable); PATH.json: `meta` (versions, topology, mesh)."""
  from jax.experimental.serialize_executable import serialize
  blob, in_tree, out_tree = serialize(compiled)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as fh:
    pickle.dump({"executable": blob, "in_tree": in_tree,
                 "out_tree": out_tree}, fh)
  with open(path + ".json", "w") as fh:
    json.dump(meta, fh, indent=2)
