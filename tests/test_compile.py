"""`famjax compile`: the real train step of a run file compiled ahead of time
for a small TPU topology (v5e:2x2) on this CPU-only machine, via libtpu.

The report is checked against things it does not compute itself: memory
numbers against each other and the chip's HBM, the program's FLOPs against a
hand count of the model's matrix multiplies, the saved executable's versions
against the installed packages; user mistakes end in one line and exit 2.
"""
from __future__ import annotations

import importlib.metadata
import json
import os

import pytest

from famjax import compile as compile_cli
from famjax import aot


RUN = "gin/runs/quickstart.gin"
TINY = dict(d_model=64, num_layers=2, num_heads=4, ffn_dim=128, vocab=259,
            block=16, mem=1, fam=4, seq=64, batch=8, microbatches=2)


def tiny_flags(t=TINY):
  return [
      f"--gin_file={RUN}",
      f"--gin.ModelConfig.d_model={t['d_model']}",
      f"--gin.ModelConfig.num_layers={t['num_layers']}",
      f"--gin.ModelConfig.num_heads={t['num_heads']}",
      f"--gin.ModelConfig.ffn_dim={t['ffn_dim']}",
      "--gin.ModelConfig.dtype='bfloat16'",
      f"--gin.AttentionConfig.block_size={t['block']}",
      f"--gin.AttentionConfig.memory_segments={t['mem']}",
      f"--gin.AttentionConfig.fam_length={t['fam']}",
      f"--gin.train.seq_len={t['seq']}", f"--gin.train.batch_size={t['batch']}",
      f"--gin.StepConfig.microbatches={t['microbatches']}",
      "--gin.train.mesh_shape=(1, -1, 1)",
  ]


def hand_flops(t) -> float:
  """Matmul FLOPs of one train step (forward + 2x for the backward) of the
  FAM model as the paper describes it: every token and FAM row goes through
  the layer's projections and FFN; a block token attends to m memory
  blocks, the FAM and its own block; a FAM row to the FAM and its block;
  the tied output projection for every token."""
  d, L, ffn, V = t["d_model"], t["num_layers"], t["ffn_dim"], t["vocab"]
  B, m, F, T = t["block"], t["mem"], t["fam"], t["seq"]
  n = T // B
  proj = 4 * d * d + 3 * d * ffn          # q, k, v, o (MHA) + SwiGLU
  rows = T + n * F + F                    # tokens, FAM rows, prompt pass
  fwd = 2 * proj * L * rows + 2 * d * V * T
  fwd += L * 4 * d * (T * ((m + 1) * B + F) + n * F * (F + B))
  return 3 * fwd * t["batch"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("aot")
  path = str(out / "report.json")
  exe = str(out / "step.exe")
  rc = compile_cli.main(tiny_flags() + ["--topology=v5e:2x2", f"--json={path}",
                                        f"--save_executable={exe}"])
  assert rc == 0
  with open(path) as fh:
    return json.load(fh), exe


def test_report_memory_and_verdict(report):
  r, _ = report
  assert r["chips"] == 4 and r["device_kind"].startswith("TPU v5")
  assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  mem = r["memory"]
  for key in ("arguments", "outputs", "temporaries", "code", "peak"):
    assert mem[key] > 0, key
  assert mem["peak"] == (mem["arguments"] + mem["outputs"] - mem["aliased"] +
                         mem["temporaries"] + mem["code"])
  # The donated state is aliased: outputs reuse the arguments' buffers.
  assert 0 < mem["aliased"] <= min(mem["arguments"], mem["outputs"])
  # Arguments hold this chip's quarter of the f32 params and two Adam
  # moments (FSDP over 4 chips), plus the batch; at least that much.
  n = r["model"]["params"]
  assert mem["arguments"] >= 3 * 4 * n / 4
  assert r["hbm_bytes"] == 16 * 1024 ** 3
  assert r["fits"] == (mem["peak"] <= r["hbm_bytes"]) and r["fits"]


def test_report_flops_against_hand_count(report):
  r, _ = report
  f = r["flops"]
  hand = hand_flops(TINY)
  assert 0.7 < f["program_per_step"] / hand < 1.4, (f, hand)
  assert f["program_per_chip"] == pytest.approx(f["program_per_step"] / 4)
  # XLA counts the scanned microbatches and layers once: less than the
  # program; still the same order as one microbatch's share.
  assert 0 < f["xla_per_chip"] < f["program_per_chip"]
  assert r["step_time_s"] == pytest.approx(f["program_per_chip"] / 197e12)


def test_saved_executable_names_its_versions(report):
  r, exe = report
  assert os.path.getsize(exe) > 0
  with open(exe + ".json") as fh:
    meta = json.load(fh)
  for pkg in ("jax", "jaxlib", "libtpu"):
    assert meta[pkg] == importlib.metadata.version(pkg)
  assert meta["topology"] == "v5e:2x2" and meta["num_slices"] == 1
  assert meta["mesh"] == r["mesh"]


def test_replicated_big_model_does_not_fit(tmp_path, capsys):
  """Pure data parallelism (params replicated) of a model whose f32 params
  and Adam moments alone (16 bytes a parameter) exceed v5e's 16 GiB."""
  big = dict(TINY, d_model=4096, num_layers=1, ffn_dim=8192, num_heads=32,
             block=8, fam=2, seq=16, batch=4, microbatches=1)
  flags = tiny_flags(big)[:-1] + [
      "--gin.ModelConfig.vocab_size=262144",
      "--gin.train.mesh_shape=(4, 1, 1)", "--topology=v5e:2x2",
      "--require_fit", f"--json={tmp_path / 'r.json'}"]
  params = 262144 * 4096 + 4 * 4096 ** 2 + 3 * 4096 * 8192
  assert 16 * params > 16 * 1024 ** 3     # the premise
  assert compile_cli.main(flags) == 1
  r = json.loads((tmp_path / "r.json").read_text())
  assert not r["fits"]
  if r["memory"]:
    assert r["memory"]["peak"] > r["hbm_bytes"]
  assert "DOES NOT FIT" in capsys.readouterr().out


@pytest.mark.parametrize("flags, words", [
    (["--gin_file=gin/runs/nope.gin", "--topology=v5e:2x2"], "nope.gin"),
    ([f"--gin_file={RUN}", "--topology=v9z:2x2"], "v9z:2x2"),
    ([f"--gin_file={RUN}", "--topology=v5e:3x3"], "v5e:3x3"),
    ([f"--gin_file={RUN}", "--topology=v5e:2x2",
      "--gin.train.mesh_shape=(3, 1, 1)"], "mesh"),
    ([f"--gin_file={RUN}", "--topology=v5e:2x2", "--gin.train.batch_size=6",
      "--gin.train.mesh_shape=(1, 4, 1)"], "batch_size=6"),
    ([f"--gin_file={RUN}"], "--topology"),
])
def test_user_mistakes_end_in_one_line(flags, words, capsys):
  assert compile_cli.main(flags) == 2
  err = capsys.readouterr().err.strip().splitlines()
  err = [l for l in err if l.startswith("famjax compile")]
  assert len(err) == 1 and words in err[0], err


def test_topology_table():
  t = aot.parse_topology("v5p:4x4x4", 2)
  assert t.chips == 128 and t.chip.hbm_bytes == 95 * 1024 ** 3
  assert aot.parse_topology("v5e:16x16").chips == 256


def test_flop_counter_counts_scans_conds_and_loops():
  """famjax.flops against hand counts: a scanned matmul, both branches of a
  cond (the larger counts), a while loop (once, flagged)."""
  import jax
  import jax.numpy as jnp
  from famjax.flops import count_jaxpr

  def f(w, x):
    def body(c, _):
      return jnp.tanh(c @ w), None
    y = jax.lax.scan(body, x, None, length=5)[0]
    y = jax.lax.cond(y.sum() > 0, lambda a: a @ w @ w, lambda a: a, y)
    return jax.lax.while_loop(lambda c: c.sum() < 0, lambda c: c @ w, y).sum()

  w, x = jnp.ones((8, 8)), jnp.ones((4, 8))
  one = 2 * 4 * 8 * 8                      # [4, 8] @ [8, 8]
  count = count_jaxpr(jax.make_jaxpr(f)(w, x))
  assert count.matmul == 5 * one + 2 * one + one
  assert count.unbounded_loops == 1
  grad = count_jaxpr(jax.make_jaxpr(jax.grad(lambda w: jax.lax.scan(
      lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)[0].sum()))(w))
  assert grad.matmul == 3 * 5 * one        # forward + two backward matmuls
