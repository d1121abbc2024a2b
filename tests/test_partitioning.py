"""Partitioning: rules, golden PartitionSpecs, sharded == single-device.

The multi-device checks run tests/partition_check.py in subprocesses with
their own host-device counts (jax in this process keeps its one device).
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from famjax import partitioning as pt
from famjax.config import AttentionConfig, ModelConfig
from famjax.model import Transformer
from tests.helpers import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(HERE, "partition_check.py")
MESH_222 = {"data": 2, "fsdp": 2, "tensor": 2}


def _env(devices):
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  # Tiny models: skip LLVM optimisation, compile time dominates.
  env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0")
  return env


def _tail(text, n=3000):
  return text[-n:] if text else ""


def abstract_state(**kw):
  base = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4,
              num_kv_heads=2, ffn_dim=48, lora_rank=2,
              attention=AttentionConfig(mode="fam", block_size=8,
                                        memory_segments=1, fam_length=4))
  base.update(kw)
  cfg = ModelConfig(**base)
  return nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def flat_specs(tree):
  return {".".join(map(str, k)): v.get_value() for k, v in tree.flat_state()}


# ----------------------------------------------------------- rules (no devices)
GOLDEN = {
    "embed.embedding": P("tensor", "fsdp"),
    "fam_prompt": P(None, "fsdp"),
    "final_norm.scale": P("fsdp"),
    "layers.attn_norm.scale": P(None, "fsdp"),
    "layers.ffn_norm.scale": P(None, "fsdp"),
    "layers.q.kernel": P(None, "fsdp", "tensor", None),
    "layers.k.kernel": P(None, "fsdp", "tensor", None),
    "layers.v.kernel": P(None, "fsdp", "tensor", None),
    "layers.o.kernel": P(None, "tensor", None, "fsdp"),
    "layers.mlp.gate.kernel": P(None, "fsdp", "tensor"),
    "layers.mlp.up.kernel": P(None, "fsdp", "tensor"),
    "layers.mlp.down.kernel": P(None, "tensor", "fsdp"),
    "layers.q.lora_a": P(None, "fsdp", None),
    "layers.q.lora_b": P(None, None, "tensor", None),
    "layers.k.lora_a": P(None, "fsdp", None),
    "layers.k.lora_b": P(None, None, "tensor", None),
    "layers.v.lora_a": P(None, "fsdp", None),
    "layers.v.lora_b": P(None, None, "tensor", None),
    "layers.o.lora_a": P(None, "tensor", None, None),
    "layers.o.lora_b": P(None, None, "fsdp"),
    "layers.mlp.gate.lora_a": P(None, "fsdp", None),
    "layers.mlp.gate.lora_b": P(None, None, "tensor"),
    "layers.mlp.up.lora_a": P(None, "fsdp", None),
    "layers.mlp.up.lora_b": P(None, None, "tensor"),
    "layers.mlp.down.lora_a": P(None, "tensor", None),
    "layers.mlp.down.lora_b": P(None, None, "fsdp"),
}


def test_golden_param_specs():
  specs = flat_specs(pt.param_specs(abstract_state(), mesh=MESH_222))
  assert specs == GOLDEN


def test_indivisible_dims_fall_back_to_replication():
  # 1 KV head cannot be split over tensor=2, nor vocab 63; batch 6 not over
  # data x fsdp = 4; d_model 30 not over fsdp=4.
  specs = flat_specs(pt.param_specs(
      abstract_state(num_kv_heads=1, vocab_size=63), mesh=MESH_222))
  assert specs["layers.k.kernel"] == P(None, "fsdp", None, None)
  assert specs["layers.q.kernel"] == P(None, "fsdp", "tensor", None)
  assert specs["embed.embedding"] == P(None, "fsdp")
  assert pt.logical_to_spec(("batch", "length"), shape=(6, 8),
                            mesh={"data": 2, "fsdp": 2, "tensor": 1}) == P("data", None)
  assert pt.logical_to_spec(("embed", "mlp"), shape=(30, 64),
                            mesh={"data": 1, "fsdp": 4, "tensor": 2}) == P(None, "tensor")


def test_rules_logic():
  # A mesh axis is used once per array: batch takes data+fsdp, embed none.
  assert pt.logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), None, None)
  rules = pt.make_rules(embed=None, mlp=("fsdp", "tensor"))
  assert pt.logical_to_spec(("layers", "embed", "mlp"), rules) == P(None, None, ("fsdp", "tensor"))
  assert pt.logical_to_spec(("embed", "mlp"), rules, shape=(8, 6),
                            mesh={"fsdp": 2, "tensor": 2, "data": 1}) == P(None, "fsdp")
  with pytest.raises(ValueError, match="'norm' has no sharding rule"):
    pt.logical_to_spec(("norm",))
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    pt.make_rules(embed="model")


def test_make_mesh_shapes():
  mesh = pt.make_mesh({"data": -1})
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "tensor": 1}
  with pytest.raises(ValueError, match="needs 4 devices"):
    pt.make_mesh((2, 2, 1), devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="unknown axes"):
    pt.make_mesh({"model": 2})


def test_single_device_helpers():
  mesh = pt.make_mesh()
  state = nnx.state(Transformer(ModelConfig(
      vocab_size=16, d_model=16, num_layers=1, num_heads=2, ffn_dim=16),
      rngs=nnx.Rngs(0)))
  shardings = pt.param_shardings(state, mesh)
  assert (jax.tree_util.tree_structure(shardings) ==
          jax.tree_util.tree_structure(state))
  placed = pt.shard_params(state, shardings)
  q = placed["layers"]["q"]["kernel"][...]
  assert q.sharding.spec == P(None, "fsdp", "tensor", None)
  assert pt.data_sharding(mesh).spec == P(("data", "fsdp"), None)
  batch = pt.host_local_to_global({"x": np.array([[1, 2, 3]])}, mesh)
  assert batch["x"].shape == (1, 3) and batch["x"].sharding.spec == P(("data", "fsdp"), None)


# ------------------------------------------------------- 8 devices, 1 process
@pytest.fixture(scope="module")
def mesh8_report(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("mesh8") / "report.json")
  r = subprocess.run([sys.executable, SCRIPT, "mesh8", out], env=_env(8),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, _tail(r.stderr)
  with open(out) as fh:
    return json.load(fh)


@pytest.mark.parametrize("mode", ["full", "fam"])
def test_sharded_forward_equals_single_device(mesh8_report, mode):
  rep = mesh8_report
  assert rep["num_devices"] == 8
  assert rep[f"forward_{mode}_scale"] > 0.1           # real logits compared
  assert rep[f"forward_{mode}"] <= 1e-5
  assert rep[f"forward_{mode}_out_spec"] == "P(('data', 'fsdp'), None, 'tensor')"


def test_parameters_really_sharded(mesh8_report):
  rep = mesh8_report
  assert rep["q_spec"] == "P(None, 'fsdp', 'tensor', None)"
  assert rep["q_shape"] == [2, 32, 4, 8] and rep["q_shard_shape"] == [2, 16, 2, 8]
  assert rep["specs"] == {k: str(v) for k, v in GOLDEN.items()}


def test_sharded_grad_step_equals_single_device(mesh8_report):
  rep = mesh8_report
  assert rep["step_grad_scale"] > 1e-3
  assert rep["step_loss"] <= 1e-5
  assert rep["step_grad"] <= 1e-5
  assert rep["step_params"] <= 1e-5
  assert rep["step_new_q_spec"] == "P(None, 'fsdp', 'tensor', None)"


# ------------------------------------------------- 2 processes x 2 devices
def test_multi_host_forward(tmp_path):
  port = free_port()
  outs = [str(tmp_path / f"p{i}.json") for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, SCRIPT, "multihost", outs[i], str(i), str(port)],
      env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=240)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, _tail(log)
  for i in range(2):
    with open(outs[i]) as fh:
      rep = json.load(fh)
    assert rep["process_count"] == 2 and rep["device_count"] == 4
    assert rep["local_device_count"] == 2
    assert rep["global_batch_shape"] == [4, 20]
    assert rep["embed_spec"] == "P('tensor', 'fsdp')"
    assert rep["forward_scale"] > 0.1
    assert rep["forward_fam"] <= 1e-5, rep
