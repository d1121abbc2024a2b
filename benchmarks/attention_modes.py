"""Forward + backward step time of full / bswa / fam attention, one process.

    python -m benchmarks.attention_modes [--lengths 2048,4096,...] [--out F]

Model: d=256, 4 layers, 4 heads, FFN 1024, byte vocab, B=512, m=1, F=32,
batch 1, float32. For each T every mode's jitted loss+grad step is compiled and
warmed up, then the modes are timed round-robin `--repeats` times and each
keeps its minimum. Targets
(issue 2): fam/bswa at 8k <= 1.15; fam time(32k)/time(4k) <= 9; fam faster
than full from 8k on. Full attention is O(T^2); lengths above
--max_full_len are not timed for it (reported as null).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
from flax import nnx

from famjax import AttentionConfig, ModelConfig, Transformer


def make_step(cfg):
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  gdef, params = nnx.split(model, nnx.Param)

  def loss(p, tokens):
    logits = nnx.merge(gdef, p)(tokens)
    lp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(lp, tokens[:, 1:, None], -1))

  return jax.jit(jax.value_and_grad(loss)), params


def time_row(cfgs, t, repeats):
  """Seconds per step of each config at length t: compile all, then time them
  round-robin (A B C A B C ...) and keep each one's minimum, so that a burst
  of load on this shared machine hits all modes alike."""
  steps = {}
  tokens = jax.random.randint(jax.random.key(0), (1, t), 0, 256)
  for name, cfg in cfgs.items():
    step, params = make_step(cfg)
    jax.block_until_ready(step(params, tokens))       # compile + warm up
    steps[name] = (step, params)
  best = {name: float("inf") for name in cfgs}
  for _ in range(repeats):
    for name, (step, params) in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(step(params, tokens))
      best[name] = min(best[name], time.perf_counter() - t0)
  return best


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--lengths", default="2048,4096,8192,16384,32768")
  ap.add_argument("--modes", default="full,bswa,fam")
  ap.add_argument("--max_full_len", type=int, default=16384)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--remat", default="none")
  ap.add_argument("--out", default="benchmarks/results/attention_modes.json")
  args = ap.parse_args(argv)
  lengths = [int(x) for x in args.lengths.split(",")]
  modes = args.modes.split(",")
  base = ModelConfig(vocab_size=256, d_model=256, num_layers=4, num_heads=4,
                     ffn_dim=1024, remat_policy=args.remat)
  results = {m: {} for m in modes}
  print(f"{'T':>6} " + " ".join(f"{m + ' (s)':>10}" for m in modes), flush=True)
  for t in lengths:
    cfgs = {mode: base.with_attention(mode=mode, block_size=512,
                                      memory_segments=1, fam_length=32)
            for mode in modes if not (mode == "full" and t > args.max_full_len)}
    best = time_row(cfgs, t, args.repeats)
    for mode in modes:
      results[mode][t] = best.get(mode)
    print(f"{t:>6} " + " ".join(
        f"{'-':>10}" if best.get(m) is None else f"{best[m]:10.3f}"
        for m in modes), flush=True)

  def ratio(a, b):
    return None if a is None or b is None else a / b

  summary = {}
  if "fam" in results and "bswa" in results:
    summary["fam_over_bswa"] = {t: ratio(results["fam"].get(t),
                                         results["bswa"].get(t)) for t in lengths}
  if "fam" in results and 4096 in lengths and 32768 in lengths:
    summary["fam_32k_over_4k"] = ratio(results["fam"][32768], results["fam"][4096])
  if "fam" in results and "full" in results:
    summary["fam_over_full"] = {t: ratio(results["fam"].get(t),
                                         results["full"].get(t)) for t in lengths}
  print(json.dumps(summary, indent=1))
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as fh:
    json.dump({"config": {"d_model": 256, "layers": 4, "heads": 4, "ffn": 1024,
                          "block_size": 512, "memory_segments": 1,
                          "fam_length": 32, "batch": 1, "dtype": "float32",
                          "remat": args.remat},
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "jax": jax.__version__},
               "seconds": results, "summary": summary}, fh, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
