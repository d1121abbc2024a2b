"""Activation shardings of the model on 8 host devices, run in a subprocess
by test_activation_sharding.py (the device count is fixed before jax
starts). Writes a JSON report: the sharding constraints of the lowered
forward of each mode, its sharded logits against a single-device run, and
the same for `splash` (its kernel under shard_map).

  python tests/activation_sharding_check.py OUT.json
"""
import json
import re
import sys

import jax
import numpy as np
from flax import nnx

from famjax import partitioning as pt
from famjax.config import AttentionConfig, ModelConfig
from famjax.model import Transformer


def tiny(mode, impl="auto"):
  return ModelConfig(
      vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
      ffn_dim=48, attention=AttentionConfig(mode=mode, block_size=8,
                                            memory_segments=1, fam_length=4,
                                            attention_impl=impl))


def main(out_path):
  mesh = pt.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  x = np.asarray(jax.random.randint(jax.random.key(0), (4, 20), 0, 64),
                 np.int32)
  report = {"num_devices": jax.device_count()}
  for mode in ("full", "bswa", "fam"):
    model = Transformer(tiny(mode), rngs=nnx.Rngs(0))
    gdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, t: nnx.merge(gdef, s)(t))
    want = np.asarray(fwd(state, x))
    with jax.set_mesh(mesh):
      lowered = fwd.lower(state, x)
      text = lowered.as_text()
      got = np.asarray(lowered.compile()(state, x))
    found = re.findall(r"sharding_constraint[^\n]*?<@mesh, (\[[^\n]*?\])>",
                       text)
    shapes = re.findall(r"sharding_constraint[^\n]*?: (?:\()?tensor<([0-9x]+)",
                        text)
    report[mode] = {"constraints": sorted(set(zip(shapes, found))),
                    "max_diff": float(np.max(np.abs(got - want)))}
  # splash (Pallas interpret mode here) runs under shard_map on the mesh
  model = Transformer(tiny("fam", "splash"), rngs=nnx.Rngs(0))
  gdef, state = nnx.split(model)
  fwd = lambda s, t: nnx.merge(gdef, s)(t)
  want = np.asarray(jax.jit(fwd)(state, x))
  with jax.set_mesh(mesh):
    got = np.asarray(jax.jit(fwd)(state, x))
  report["fam_splash_max_diff"] = float(np.max(np.abs(got - want)))
  with open(out_path, "w") as fh:
    json.dump(report, fh, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
