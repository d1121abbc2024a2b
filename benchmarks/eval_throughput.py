"""`famjax eval` throughput and memory: PassKey at 4k and 32k, fam vs full.

    python -m benchmarks.eval_throughput [--lengths 4096,32768] [--out F]

Model: a tiny random byte model (d=64, 2 layers, 4 heads, FFN 128), fam with
B=256, m=1, F=16; `full` is the same weights with causal attention. For each
context length the PassKey validation examples (`passkey_byte`, prompt
filled to the length) go through the evaluator's predict path (streaming
prefill + greedy decoding) once to compile, then once timed: examples/s.

Memory (what must not grow with the context in `fam`):
  state_bytes   bytes of the decoding state after the prompt
  stream_bytes  XLA's memory_analysis of the compiled one-token stream step
                (arguments + outputs + temporaries)
For `full` both grow with the context (the KV cache).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from famjax import AttentionConfig, ModelConfig

TARGETS_LENGTH = 8


def tiny(mode: str) -> ModelConfig:
  return ModelConfig(vocab_size=259, d_model=64, num_layers=2, num_heads=4,
                     ffn_dim=128, attention=AttentionConfig(
                         mode=mode, block_size=256, memory_segments=1,
                         fam_length=16))


def model_of(mode):
  from famjax import params_io
  from famjax.model import Transformer
  from flax import nnx
  params = nnx.state(Transformer(tiny("fam"), rngs=nnx.Rngs(0)),
                     nnx.Param).to_pure_dict()
  if mode != "fam":
    params = {k: v for k, v in params.items() if k != "fam_prompt"}
  return params_io.build_model(tiny(mode), params, allow_new=False)


def tree_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def stream_bytes(runner, state) -> int:
  from flax import nnx
  gdef = runner.gdef

  def step(params, state, tok):
    return nnx.merge(gdef, params).stream(state, tok)

  tok = jnp.zeros((state_batch(state), 1), jnp.int32)
  m = jax.jit(step).lower(runner.params, state, tok).compile().memory_analysis()
  if m is None:
    return -1
  return int(m.argument_size_in_bytes + m.output_size_in_bytes +
             m.temp_size_in_bytes)


def state_batch(state):
  leaf = next(v for k, v in state.items() if k != "pos" and v.ndim >= 2)
  return leaf.shape[1]


def measure(mode, length, examples, batch_size):
  from famjax.evals import evaluator, infer
  model = model_of(mode)
  ev, = evaluator.make_evaluators(
      "passkey_byte", max_examples=examples, log_dir=None,
      sequence_length={"inputs": length - TARGETS_LENGTH,
                       "targets": TARGETS_LENGTH})
  ds = ev.cached_model_datasets["passkey_byte"]
  runner = infer.Runner(model, batch_size=batch_size)
  runner.predict(ds, eos_id=1)                       # compile
  t0 = time.perf_counter()
  out = runner.predict(ds, eos_id=1)
  seconds = time.perf_counter() - t0
  items = infer.examples(ds)
  p = infer.layout(items[0][1])[0]
  prompts = np.stack([ex[infer.INPUTS][:p] for _, ex in items[:batch_size]])
  state, _ = runner.prefill(prompts, cap=p + TARGETS_LENGTH + 1)
  return {"examples": len(out), "prompt_tokens": int(p),
          "seconds": round(seconds, 3),
          "examples_per_s": round(len(out) / seconds, 3),
          "state_bytes": tree_bytes(state),
          "stream_bytes": stream_bytes(runner, state)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--lengths", default="4096,32768")
  ap.add_argument("--modes", default="fam,full")
  ap.add_argument("--examples", type=int, default=4)
  ap.add_argument("--batch_size", type=int, default=4)
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  lengths = [int(x) for x in args.lengths.split(",")]
  report = {
      "model": {"d_model": 64, "layers": 2, "heads": 4, "ffn": 128,
                "block_size": 256, "memory_segments": 1, "fam_length": 16,
                "vocab": "byte", "dtype": "float32"},
      "task": "passkey_byte (validation), greedy, targets <= 8 tokens",
      "machine": {"backend": jax.default_backend(),
                  "devices": str(jax.devices()[0]),
                  "cpus": os.cpu_count(), "platform": platform.platform(),
                  "jax": jax.__version__},
      "results": {}}
  for mode in args.modes.split(","):
    for length in lengths:
      r = measure(mode, length, args.examples, args.batch_size)
      report["results"].setdefault(mode, {})[str(length)] = r
      print(mode, length, r, flush=True)
      write(report, lengths, args.out)     # partial results survive a kill
  print(write(report, lengths, args.out))


def write(report, lengths, out):
  for mode, rows in report["results"].items():
    a, b = rows.get(str(lengths[0])), rows.get(str(lengths[-1]))
    if a and b:
      report.setdefault("ratios", {})[mode] = {
          f"state_bytes {lengths[-1]}/{lengths[0]}":
              round(b["state_bytes"] / a["state_bytes"], 3),
          f"stream_bytes {lengths[-1]}/{lengths[0]}":
              round(b["stream_bytes"] / a["stream_bytes"], 3),
          f"examples_per_s {lengths[-1]}/{lengths[0]}":
              round(b["examples_per_s"] / a["examples_per_s"], 3)}
  text = json.dumps(report, indent=1)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
      fh.write(text + "\n")
  return text


if __name__ == "__main__":
  main()
