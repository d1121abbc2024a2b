"""Training throughput and CPU MFU of the famjax train step.

For each attention mode it times the jit-compiled train step
(famjax.train.trainer.make_train_step, AdamW, RPO and RSP on) and reports
  tokens/s        trained tokens per second
  model FLOP/s    (6 * params * tokens + attention FLOPs) / time, counting
                  only useful work (causal keys, FAM rows at F/B extra rows)
  MFU             model FLOP/s divided by this machine's float32 matmul
                  FLOP/s, measured in the same run with a big jnp.dot
Machines are noisy: compare the ratios inside one run, not across runs.

  python benchmarks/train_throughput.py [--steps 5] [--seq 1024]
      [--modes fam,bswa,full] [--impls chunked,xla]
Every (mode, attention implementation) pair is timed; the steps are timed
round-robin (one step of each in turn, median per pair) so that a burst of
load on a shared machine hits all alike. Target (issue 10): MFU >= 0.40 for
fam and bswa at the default shape and at --seq 8192.
Writes benchmarks/results/train_throughput.json and a PNG beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import plotting  # noqa: E402
from famjax import AttentionConfig, ModelConfig, Transformer  # noqa: E402
from famjax.train import trainer  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "train_throughput.json")


def matmul_flops(n=2048, reps=5):
  """Best-of float32 matmul FLOP/s of this machine (2 n^3 per product)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.dot)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def model_flops_per_step(cfg: ModelConfig, n_params: int, batch: int, seq: int):
  """Useful training FLOPs of one step (forward + backward = 3x forward)."""
  att = cfg.attention
  d_att = cfg.num_heads * cfg.hd
  tokens = batch * seq
  dense = 6 * n_params * tokens
  # Attention: QK^T and PV, 2 * 2 * d_att FLOPs per (query, key) pair forward.
  per_pair = 3 * 4 * d_att * cfg.num_layers
  if att.mode == "full":
    pairs = seq * (seq + 1) / 2
    extra = 0.0
  else:
    blk, m, f = att.block_size, att.memory_segments, att.fam
    n = -(-seq // blk)
    own = blk * (blk + 1) / 2
    mem = sum(min(t, m) for t in range(n)) * blk * blk
    pairs = n * own + mem + (n * blk * f if f else 0)
    extra = 0.0
    if f:
      pairs += n * f * (f + blk)                      # FAM queries
      layer_params = n_params - cfg.vocab_size * cfg.d_model
      extra = 6 * layer_params * batch * n * f        # FAM rows' dense work
  return dense + extra + per_pair * pairs * batch


def build(mode, impl, args):
  """(compiled-once train step, state, batch, info) of one pair."""
  att = AttentionConfig(mode=mode, block_size=args.block, memory_segments=1,
                        fam_length=args.fam, attention_impl=impl)
  cfg = ModelConfig(vocab_size=args.vocab, d_model=args.d_model,
                    num_layers=args.layers, num_heads=args.heads,
                    ffn_dim=4 * args.d_model, attention=att)
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  keys = trainer.trainable_keys(params)
  tx = optax.adamw(1e-3)
  state = trainer.init_state(model, tx, keys, seed=0)
  step = trainer.make_train_step(model, tx, lambda s: jnp.float32(1e-3), keys,
                                 trainer.StepConfig(p_rsp=0.8))
  rng = np.random.default_rng(0)
  tok = rng.integers(0, args.vocab, (args.batch, args.seq + 1)).astype(np.int32)
  batch = {"decoder_input_tokens": tok[:, :-1],
           "decoder_target_tokens": tok[:, 1:],
           "decoder_loss_weights": np.ones((args.batch, args.seq), np.float32)}
  t = time.perf_counter()
  state, m = step(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  info = {"mode": mode, "impl": impl, "params": n_params,
          "tokens_per_step": args.batch * args.seq, "compile_s": compile_s,
          "model_flops_per_step": model_flops_per_step(cfg, n_params,
                                                       args.batch, args.seq)}
  return [step, state, batch, info]


def bench(pairs, args):
  """Time every pair round-robin; one result row per pair."""
  built = [build(mode, impl, args) for mode, impl in pairs]
  times = [[] for _ in built]
  for _ in range(args.steps):
    for i, b in enumerate(built):
      step, state, batch, _ = b
      t = time.perf_counter()
      state, m = step(state, batch)
      jax.block_until_ready(m)
      times[i].append(time.perf_counter() - t)
      b[1] = state
  rows = []
  for b, ts in zip(built, times):
    info = dict(b[3])
    step_s = float(np.median(ts))
    info.update(step_s=step_s, tokens_per_s=info["tokens_per_step"] / step_s,
                model_flops_per_s=info["model_flops_per_step"] / step_s)
    rows.append(info)
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--modes", default="fam,bswa,full")
  ap.add_argument("--impls", default="auto,chunked,xla")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=1024)
  ap.add_argument("--d_model", type=int, default=256)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--vocab", type=int, default=259)
  ap.add_argument("--block", type=int, default=256)
  ap.add_argument("--fam", type=int, default=32)
  ap.add_argument("--out", default=RESULTS)
  args = ap.parse_args(argv)

  load_before = os.getloadavg()
  peak_before = matmul_flops()
  rows = bench([(m, i) for m in args.modes.split(",")
                for i in args.impls.split(",")], args)
  peak = max(peak_before, matmul_flops())      # measured before and after
  for r in rows:
    r["mfu"] = r["model_flops_per_s"] / peak

  print(f"float32 matmul (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s on "
        f"{jax.devices()[0].device_kind} ({os.cpu_count()} CPUs)")
  print(f"model d={args.d_model} L={args.layers} batch={args.batch} "
        f"seq={args.seq} block={args.block} F={args.fam}")
  head = (f"{'mode':<6}{'impl':<9}{'params':>10}{'step s':>9}{'tokens/s':>11}"
          f"{'GFLOP/s':>9}{'MFU':>7}{'compile s':>11}")
  print(head)
  print("-" * len(head))
  for r in rows:
    print(f"{r['mode']:<6}{r['impl']:<9}{r['params']:>10d}{r['step_s']:>9.3f}"
          f"{r['tokens_per_s']:>11.0f}{r['model_flops_per_s'] / 1e9:>9.1f}"
          f"{100 * r['mfu']:>6.1f}%{r['compile_s']:>11.1f}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as fh:
    json.dump({"matmul_flops_per_s": peak, "config": vars(args),
               "machine": {"platform": platform.platform(),
                           "cpus": os.cpu_count(),
                           "device": jax.devices()[0].device_kind,
                           "jax": jax.__version__,
                           "load_average": [load_before, os.getloadavg()]},
               "results": rows}, fh, indent=2)
  png = os.path.splitext(args.out)[0] + ".png"
  label = lambda r: f"{r['mode']}/{r['impl']}"
  plotting.bar_panels(png, [
      ("train step (s)", {label(r): r["step_s"] for r in rows}),
      ("MFU (model FLOP/s / matmul FLOP/s)", {label(r): r["mfu"] for r in rows})],
      title=f"train step, d={args.d_model} L={args.layers} batch={args.batch} "
            f"seq={args.seq} block={args.block} F={args.fam} "
            f"(matmul {peak / 1e9:.0f} GFLOP/s)")
  print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
  main()
