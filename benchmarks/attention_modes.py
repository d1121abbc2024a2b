"""Forward + backward step time and compiled memory of full / bswa / fam
attention under each attention implementation, one process.

    python -m benchmarks.attention_modes [--lengths 2048,...] [--impls xla,chunked]
        [--time_lengths 2048,4096] [--out F]

Model: d=256, 4 layers, 4 heads, FFN 1024, byte vocab, B=512, m=1, F=32,
batch 1, float32. For each T and each (mode, implementation) the jitted
loss+grad step is compiled and its temporaries read from XLA's memory
analysis (`compiled.memory_analysis().temp_size_in_bytes`: deterministic,
whatever the load of the machine). At the lengths in --time_lengths the
steps are also warmed up and timed round-robin `--repeats` times, each
keeping its minimum (a burst of load hits all alike). Full attention is
O(T^2); lengths above --max_full_len are skipped for it (null).

Targets (issue 10): fam/bswa step time at 8k <= 1.06 (below the ratio of
useful FLOPs at this shape, about 1.07, which the summary prints as
`fam_over_bswa_useful_flops`); fam time(32k) /
time(4k) <= 8.5; temporaries of the fam step at 32k <= 3 GB. Without remat
the temporaries are mostly the layers' own saved activations (FFN rows),
which grow with T whatever the attention; `--remat full` keeps one layer's.
Writes the JSON and a PNG (time and memory vs length) beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import plotting
from famjax import ModelConfig, Transformer


def make_step(cfg, t):
  """(compiled loss+grad step, params, temp bytes, argument bytes)."""
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  gdef, params = nnx.split(model, nnx.Param)

  def loss(p, tokens):
    logits = nnx.merge(gdef, p)(tokens)
    lp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(lp, tokens[:, 1:, None], -1))

  tok = jax.ShapeDtypeStruct((1, t), jnp.int32)
  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tok).compile()
  mem = compiled.memory_analysis()
  return compiled, params, int(mem.temp_size_in_bytes), int(
      mem.argument_size_in_bytes)


def time_row(steps, tokens, repeats):
  """Seconds per step of each compiled step, round-robin minimum."""
  for step, params in steps.values():
    jax.block_until_ready(step(params, tokens))       # warm up
  best = {name: float("inf") for name in steps}
  for _ in range(repeats):
    for name, (step, params) in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(step(params, tokens))
      best[name] = min(best[name], time.perf_counter() - t0)
  return best


def useful_flops(cfg, t):
  """Useful FLOPs of one loss+grad step at length t, counted as
  benchmarks/train_throughput.py counts them (FAM rows included)."""
  from benchmarks.train_throughput import model_flops_per_step
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return model_flops_per_step(cfg, n, 1, t)


def ratio(a, b):
  return None if a is None or b is None else a / b


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--lengths", default="2048,4096,8192,16384,32768")
  ap.add_argument("--time_lengths", default="2048,4096,8192,16384,32768",
                  help="lengths that are also timed (others: memory only)")
  ap.add_argument("--modes", default="full,bswa,fam")
  ap.add_argument("--impls", default="xla,chunked,auto")
  ap.add_argument("--max_full_len", type=int, default=8192)
  ap.add_argument("--max_xla_time_len", type=int, default=8192,
                  help="longer xla steps are compiled (memory) but not run: "
                       "their score tensors need many GB")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--remat", default="none")
  ap.add_argument("--out", default="benchmarks/results/attention_modes.json")
  args = ap.parse_args(argv)
  lengths = [int(x) for x in args.lengths.split(",")]
  timed = {int(x) for x in args.time_lengths.split(",") if x}
  modes, impls = args.modes.split(","), args.impls.split(",")
  base = ModelConfig(vocab_size=256, d_model=256, num_layers=4, num_heads=4,
                     ffn_dim=1024, remat_policy=args.remat)
  names = [f"{m}/{i}" for m in modes for i in impls]
  seconds = {n: {} for n in names}
  temp = {n: {} for n in names}
  print(f"load average at start: {os.getloadavg()}", flush=True)
  for t in lengths:
    steps = {}
    for mode in modes:
      if mode == "full" and t > args.max_full_len:
        continue
      for impl in impls:
        cfg = base.with_attention(mode=mode, block_size=512, memory_segments=1,
                                  fam_length=32, attention_impl=impl)
        step, params, tb, _ = make_step(cfg, t)
        temp[f"{mode}/{impl}"][t] = tb
        steps[f"{mode}/{impl}"] = (step, params)
        print(f"T={t:>6} {mode}/{impl:<8} temporaries {tb / 2**30:7.3f} GiB",
              flush=True)
    if t in timed:
      tokens = jax.random.randint(jax.random.key(0), (1, t), 0, 256)
      run = {n: s for n, s in steps.items()
             if not (n.endswith("/xla") and t > args.max_xla_time_len)}
      for name, s in time_row(run, tokens, args.repeats).items():
        seconds[name][t] = s
        print(f"T={t:>6} {name:<14} {s:8.3f} s/step", flush=True)
    del steps

  # The floor of fam / bswa: FAM adds F rows to every block's dense work.
  floor = {t: ratio(*(useful_flops(base.with_attention(
      mode=m, block_size=512, memory_segments=1, fam_length=32), t)
                      for m in ("fam", "bswa"))) for t in lengths}
  summary = {}
  for impl in impls:
    fam, bswa = seconds.get(f"fam/{impl}", {}), seconds.get(f"bswa/{impl}", {})
    summary[impl] = {
        "fam_over_bswa": {t: ratio(fam.get(t), bswa.get(t)) for t in lengths},
        "fam_over_bswa_useful_flops": floor,
        "fam_32k_over_4k": ratio(fam.get(32768), fam.get(4096)),
        "fam_temp_gib_32k": (temp.get(f"fam/{impl}", {}).get(32768) or 0) / 2**30
                            or None,
    }
  print(json.dumps(summary, indent=1))
  plotting.save_results(
      args.out,
      {"d_model": 256, "layers": 4, "heads": 4, "ffn": 1024, "block_size": 512,
       "memory_segments": 1, "fam_length": 32, "batch": 1, "dtype": "float32",
       "remat": args.remat, "repeats": args.repeats},
      {"seconds": seconds, "temp_bytes": temp, "summary": summary},
      [("forward+backward step (s)", seconds, True),
       ("compiled temporaries (GiB)",
        {n: {t: b / 2**30 for t, b in d.items()} for n, d in temp.items()},
        True)],
      title="famjax attention modes / implementations (d=256, L=4, B=512, "
            "m=1, F=32, f32, CPU)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
