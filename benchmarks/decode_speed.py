"""Single-token decoding speed: fam / bswa state vs a full KV cache.

    python -m benchmarks.decode_speed [--contexts 1024,8192] [--impls chunked,xla]

Model: d=256, 4 layers, 4 heads, FFN 1024, byte vocab, B=512, m=1, F=32,
batch 1, float32 (the attention_modes model). For each context length the
prompt is fed block by block (`famjax.decode.Streamer.feed`), then
`--tokens` single-token steps of every (mode, implementation) are timed
round-robin (one step of each in turn; median per pair). The full KV cache
holds context + tokens positions. Target (issue 10): fam tok/s at 1k >=
full tok/s at 1k, and the fam state and tok/s unchanged with the context.
Writes the JSON and a PNG (tok/s vs context) beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import plotting
from famjax import ModelConfig, Transformer
from famjax.decode import Streamer


def state_bytes(state):
  return int(sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state)))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--contexts", default="1024,8192")
  ap.add_argument("--modes", default="full,fam")
  ap.add_argument("--impls", default="chunked,xla")
  ap.add_argument("--tokens", type=int, default=20)
  ap.add_argument("--out", default="benchmarks/results/decode_speed.json")
  args = ap.parse_args(argv)
  base = ModelConfig(vocab_size=256, d_model=256, num_layers=4, num_heads=4,
                     ffn_dim=1024)
  contexts = [int(x) for x in args.contexts.split(",")]
  names = [f"{m}/{i}" for m in args.modes.split(",")
           for i in args.impls.split(",")]
  tok_s = {n: {} for n in names}
  sizes = {n: {} for n in names}
  print(f"load average at start: {os.getloadavg()}", flush=True)
  for ctx in contexts:
    prompt = np.asarray(jax.random.randint(jax.random.key(0), (1, ctx), 0, 256),
                        np.int32)
    runs = {}
    for name in names:
      mode, impl = name.split("/")
      cfg = base.with_attention(mode=mode, block_size=512, memory_segments=1,
                                fam_length=32, attention_impl=impl)
      s = Streamer(Transformer(cfg, rngs=nnx.Rngs(0)))
      state = s.init(1, max_len=ctx + args.tokens + 2)
      logits, state = s.feed(state, prompt)
      nxt = jnp.argmax(logits[:, -1:], -1).astype(jnp.int32)
      logits, state = s.step(state, nxt)                  # compile, warm up
      jax.block_until_ready(logits)
      runs[name] = [s, state, jnp.argmax(logits, -1).astype(jnp.int32), []]
      sizes[name][ctx] = state_bytes(state)
    for _ in range(args.tokens):
      for name, r in runs.items():
        t0 = time.perf_counter()
        logits, r[1] = r[0].step(r[1], r[2])
        r[2] = jnp.argmax(logits, -1).astype(jnp.int32)
        jax.block_until_ready(r[2])
        r[3].append(time.perf_counter() - t0)
    for name, r in runs.items():
      tok_s[name][ctx] = 1.0 / float(np.median(r[3]))
      print(f"context {ctx:>6} {name:<14} {tok_s[name][ctx]:8.1f} tok/s  "
            f"state {sizes[name][ctx] / 2**20:7.2f} MiB", flush=True)
  summary = {}
  for impl in args.impls.split(","):
    fam, full = tok_s.get(f"fam/{impl}", {}), tok_s.get(f"full/{impl}", {})
    summary[impl] = {"fam_over_full_tok_s": {
        c: (fam[c] / full[c] if c in fam and c in full else None)
        for c in contexts}}
  print(json.dumps(summary, indent=1))
  plotting.save_results(
      args.out,
      {"d_model": 256, "layers": 4, "heads": 4, "block_size": 512,
       "memory_segments": 1, "fam_length": 32, "batch": 1, "dtype": "float32",
       "tokens": args.tokens},
      {"tokens_per_s": tok_s, "state_bytes": sizes, "summary": summary},
      [("decode tokens/s", tok_s, False),
       ("decoding state (MiB)",
        {n: {c: b / 2**20 for c, b in d.items()} for n, d in sizes.items()},
        True)],
      title="famjax single-token decoding (d=256, L=4, B=512, m=1, F=32, "
            "f32, CPU)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
