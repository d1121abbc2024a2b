"""Sharded-vs-single-device checks, run in a subprocess by test_partitioning.py
(the device count must be fixed before jax starts, so these cannot run in the
pytest process). Writes a JSON report; the test asserts on it.

  python tests/partition_check.py mesh8 OUT.json
      8 host devices (XLA_FLAGS set by the caller), mesh data=2 fsdp=2 tensor=2
  python tests/partition_check.py multihost OUT.json PROCESS_ID PORT
      one of two processes with 2 host devices each, mesh fsdp=2 tensor=2
"""
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from famjax import partitioning as pt
from famjax.model import Transformer
from tests.helpers import tiny_config, tokens


def tiny(mode, **kw):
  return tiny_config(mode, block=8, f=4, vocab_size=64, ffn_dim=48, **kw)


def logits_fn(gdef):
  return lambda state, x: nnx.merge(gdef, state)(x)


def out_sharding(mesh):
  return NamedSharding(mesh, pt.logical_to_spec(("batch", "length", "vocab")))


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def mesh8(out_path):
  t0 = time.time()
  report = {"num_devices": jax.device_count(), "seconds": {}}
  tick = lambda name: report["seconds"].__setitem__(name, round(time.time() - t0, 1))
  mesh = pt.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  x = tokens(4, 20, vocab=64)
  for mode in ("full", "fam"):
    model = Transformer(tiny(mode, lora_rank=2), rngs=nnx.Rngs(0))
    gdef, state = nnx.split(model)
    tick(f"build_{mode}")
    want = jax.jit(logits_fn(gdef))(state, x)
    tick(f"ref_{mode}")
    shardings = pt.param_shardings(state, mesh)
    sstate = pt.shard_params(state, shardings)
    f = jax.jit(logits_fn(gdef), in_shardings=(shardings, pt.data_sharding(mesh)),
                out_shardings=out_sharding(mesh))
    got = f(sstate, jax.device_put(x, pt.data_sharding(mesh)))
    tick(f"sharded_{mode}")
    report[f"forward_{mode}"] = max_diff(got, want)
    report[f"forward_{mode}_scale"] = float(np.max(np.abs(want)))
    report[f"forward_{mode}_out_spec"] = str(got.sharding.spec)
  # Where the parameters actually live (of the last, fam, model).
  q = sstate["layers"]["q"]["kernel"][...]
  report["q_spec"] = str(q.sharding.spec)
  report["q_shard_shape"] = list(q.addressable_shards[0].data.shape)
  report["q_shape"] = list(q.shape)
  report["specs"] = {".".join(map(str, k)): str(v.sharding.spec) for k, v in
                     sstate.flat_state() if hasattr(v[...], "sharding")}

  # One SGD step on the fam model: sharded == unsharded.
  def step(state, x):
    def loss_fn(s):
      logits = nnx.merge(gdef, s)(x[:, :-1])
      logp = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(logp, x[:, 1:, None], -1))
    loss, g = jax.value_and_grad(loss_fn)(state)
    return jax.tree.map(lambda p, d: p - 0.5 * d, state, g), loss, g

  xs = tokens(4, 21, seed=1, vocab=64)
  new0, loss0, g0 = jax.jit(step)(state, xs)
  tick("ref_step")
  repl = NamedSharding(mesh, P())
  new1, loss1, g1 = jax.jit(
      step, in_shardings=(shardings, pt.data_sharding(mesh)),
      out_shardings=(shardings, repl, shardings))(
          sstate, jax.device_put(xs, pt.data_sharding(mesh)))
  tick("sharded_step")
  report["step_loss"] = abs(float(loss0) - float(loss1))
  report["step_grad"] = max(max_diff(a, b) for a, b in
                            zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
  report["step_grad_scale"] = max(float(np.max(np.abs(a)))
                                  for a in jax.tree.leaves(g0))
  report["step_params"] = max(max_diff(a, b) for a, b in
                              zip(jax.tree.leaves(new0), jax.tree.leaves(new1)))
  report["step_new_q_spec"] = str(new1["layers"]["q"]["kernel"][...].sharding.spec)
  with open(out_path, "w") as fh:
    json.dump(report, fh)


def multihost(out_path, pid, port):
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=2, process_id=pid,
                             initialization_timeout=60)
  from jax.experimental import multihost_utils
  report = {"process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count()}
  mesh = pt.make_mesh({"data": 1, "fsdp": 2, "tensor": 2})
  model = Transformer(tiny("fam"), rngs=nnx.Rngs(0))
  gdef, state = nnx.split(model)
  x = tokens(4, 20, vocab=64)
  # Reference: this process alone, on one of its own devices.
  want = np.asarray(jax.jit(logits_fn(gdef))(state, x))
  shardings = pt.param_shardings(state, mesh)
  sstate = pt.shard_params(state, shardings)
  rows = x.shape[0] // jax.process_count()
  local = x[pid * rows:(pid + 1) * rows]
  gx = pt.host_local_to_global(local, mesh)
  report["global_batch_shape"] = list(gx.shape)
  f = jax.jit(logits_fn(gdef), in_shardings=(shardings, pt.data_sharding(mesh)),
              out_shardings=out_sharding(mesh))
  got = multihost_utils.process_allgather(f(sstate, gx), tiled=True)
  report["forward_fam"] = max_diff(got, want)
  report["forward_scale"] = float(np.max(np.abs(want)))
  report["embed_spec"] = str(sstate["embed"]["embedding"][...].sharding.spec)
  with open(out_path, "w") as fh:
    json.dump(report, fh)
  jax.distributed.shutdown()


if __name__ == "__main__":
  if sys.argv[1] == "mesh8":
    mesh8(sys.argv[2])
  elif sys.argv[1] == "multihost":
    multihost(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
  else:
    raise SystemExit(f"unknown check {sys.argv[1]!r}")
