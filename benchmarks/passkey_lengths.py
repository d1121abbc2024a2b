"""PassKey exact match by context length x needle depth, for a model directory.

    python -m benchmarks.passkey_lengths --model_dir=DIR --train_len=256 \
        --name=fam --multiples=1,2,4,8,16,32,64 --samples=8

For each length `train_len * k` and each needle depth (0 = right after the
introduction, 1 = right before the question) it builds `samples` PassKey
prompts (famjax.data.synthetic's text, the needle placed at that depth) of
`length - 9` bytes, appends the key (5 digits; --key_digits=1 for
`passkey_digit_byte` models), runs the model's whole-sequence
forward once (teacher forcing) and counts a hit when every key token is the
argmax of the logits before it. That equals greedy decoding of the answer
(tests/test_passkey_scoring.py checks it against `famjax.decode.generate`).

Writes benchmarks/results/passkey_NAME.json (exact match per cell, per-digit
accuracy, wall times) and passkey_NAME.png (the length x depth heatmap).
--attention overrides the model's attention (e.g. bswa:64:1, fam:64:0:8 as
mode:block:m[:F]); the model is evaluated with the initial FAM, no offset.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from famjax.data import synthetic

ANSWER_RESERVE = 9       # bytes of a training sequence kept for key + EOS
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def passkey_prompt(num_chars: int, depth: float, key: str) -> str:
  """The PassKey prompt of `synthetic.passkey_example` with the needle after
  `round(depth * n)` of its n filler sentences (at most num_chars chars)."""
  needle = synthetic.PASSKEY_NEEDLE.format(key=key)
  budget = (num_chars - len(synthetic.INTRO) - len(synthetic.PASSKEY_QUESTION)
            - len(needle))
  if budget < 0:
    raise ValueError(f"num_chars={num_chars} is too short for a PassKey prompt "
                     f"(at least {num_chars - budget})")
  sentences = synthetic._filler_sentences(budget)   # pylint: disable=protected-access
  cut = int(round(depth * len(sentences)))
  body = "".join(sentences[:cut] + [needle] + sentences[cut:])
  return synthetic.INTRO + body + synthetic.PASSKEY_QUESTION


def byte_ids(text: str) -> list:
  """seqio.ByteVocabulary ids (byte + 3) without EOS."""
  return [b + 3 for b in text.encode("utf-8")]


def make_forward(model):
  """A jitted tokens [b, T] -> logits [b, T, V] of the whole-sequence pass."""
  import jax
  from flax import nnx
  gdef, state = nnx.split(model)

  @jax.jit
  def fwd(state, tokens):
    return nnx.merge(gdef, state)(tokens)

  return lambda tokens: fwd(state, tokens)


def score_batch(forward, prompts, answers):
  """Teacher-forced argmax hits [n, len(answer)] of `answers` after `prompts`.

  prompts: lists of token ids (lengths may differ: right-padded with 0, which
  a causal model never sees before the answer); answers: equal-length lists.
  """
  n, a = len(prompts), len(answers[0])
  t = max(len(p) for p in prompts) + a
  tokens = np.zeros((n, t), np.int32)
  for i, (p, ans) in enumerate(zip(prompts, answers)):
    tokens[i, :len(p) + a] = list(p) + list(ans)
  logits = np.asarray(forward(tokens))
  hits = np.zeros((n, a), bool)
  for i, (p, ans) in enumerate(zip(prompts, answers)):
    pred = logits[i, len(p) - 1:len(p) - 1 + a].argmax(-1)
    hits[i] = pred == np.asarray(ans)
  return hits


def keys_for(length: int, depth_index: int, samples: int, seed: int = 1234,
             digits: int = 5):
  rng = np.random.RandomState([seed, length, depth_index])
  return [str(k) for k in rng.randint(10 ** (digits - 1), 10 ** digits,
                                      size=samples)]


def score_length(forward, length, depths, samples, max_tokens,
                 key_digits: int = 5):
  """{depth: (exact match %, digit accuracy %)} at one context length."""
  num_chars = length - ANSWER_RESERVE
  jobs = []
  for di, depth in enumerate(depths):
    for key in keys_for(length, di, samples, digits=key_digits):
      jobs.append((di, byte_ids(passkey_prompt(num_chars, depth, key)),
                   byte_ids(key)))
  per = max(1, max_tokens // length)
  hits = []
  for s in range(0, len(jobs), per):
    chunk = jobs[s:s + per]
    while len(chunk) < per:             # one compiled shape per length
      chunk = chunk + [chunk[-1]]
    h = score_batch(forward, [j[1] for j in chunk], [j[2] for j in chunk])
    hits.extend(h[:len(jobs) - s])
  hits = np.asarray(hits[:len(jobs)])
  out = {}
  for di, depth in enumerate(depths):
    h = hits[[j[0] == di for j in jobs]]
    out[depth] = (100.0 * float(h.all(-1).mean()), 100.0 * float(h.mean()))
  return out


def parse_attention(text: str):
  from famjax.config import AttentionConfig
  parts = text.split(":")
  kw = {"mode": parts[0]}
  for name, v in zip(("block_size", "memory_segments", "fam_length"), parts[1:]):
    kw[name] = int(v)
  return AttentionConfig(**kw).validate()


def plot(result: dict, path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  lengths = result["lengths"]
  depths = result["depths"]
  grid = np.array([[result["exact_match"][str(l)][str(d)] for l in lengths]
                   for d in depths])
  fig, ax = plt.subplots(figsize=(max(4.8, 1.6 + 0.8 * len(lengths)), 3.2))
  im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto",
                 origin="lower")
  ax.set_xticks(range(len(lengths)), [str(l) for l in lengths])
  ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
  ax.set_xlabel("context length (bytes)")
  ax.set_ylabel("needle depth")
  for i in range(len(depths)):
    for j in range(len(lengths)):
      ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
  ax.set_title(f"PassKey exact match (%): {result['name']}", fontsize=9)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model_dir", required=True)
  p.add_argument("--name", required=True, help="result name (file suffix)")
  p.add_argument("--train_len", type=int, default=256)
  p.add_argument("--multiples", default="1,2,4,8,16,32,64")
  p.add_argument("--depths", default=",".join(map(str, DEFAULT_DEPTHS)))
  p.add_argument("--samples", type=int, default=8)
  p.add_argument("--max_tokens", type=int, default=32768,
                 help="tokens per forward (batch = max_tokens // length)")
  p.add_argument("--attention", default=None, help="mode:block:m[:F]")
  p.add_argument("--key_digits", type=int, default=5,
                 help="digits of the key (1: the passkey_digit_byte task)")
  p.add_argument("--out_dir", default=RESULTS)
  args = p.parse_args(argv)
  from famjax import params_io
  try:
    att = parse_attention(args.attention) if args.attention else None
    multiples = [int(m) for m in args.multiples.split(",")]
    depths = [float(d) for d in args.depths.split(",")]
  except ValueError as e:
    print(f"passkey_lengths: error: {e}", file=sys.stderr)
    return 2
  cfg, model = params_io.load_model_dir(args.model_dir, attention=att)
  forward = make_forward(model)
  result = {"name": args.name, "model_dir": args.model_dir,
            "attention": json.loads(cfg.to_json())["attention"]
            if hasattr(cfg, "to_json") else str(cfg.attention),
            "train_len": args.train_len, "samples": args.samples,
            "key_digits": args.key_digits,
            "depths": depths, "lengths": [], "exact_match": {},
            "digit_accuracy": {}, "seconds": {}}
  os.makedirs(args.out_dir, exist_ok=True)
  for k in multiples:
    length = args.train_len * k
    t0 = time.perf_counter()
    cells = score_length(forward, length, depths, args.samples,
                         args.max_tokens, key_digits=args.key_digits)
    dt = time.perf_counter() - t0
    result["lengths"].append(length)
    result["exact_match"][str(length)] = {str(d): v[0] for d, v in cells.items()}
    result["digit_accuracy"][str(length)] = {str(d): v[1]
                                             for d, v in cells.items()}
    result["seconds"][str(length)] = round(dt, 1)
    mean = np.mean([v[0] for v in cells.values()])
    digits = np.mean([v[1] for v in cells.values()])
    print(f"{args.name} length {length:6d} ({k}x): exact match {mean:5.1f}% "
          f"(digits {digits:5.1f}%) "
          f"by depth {[round(v[0]) for v in cells.values()]} ({dt:.0f} s)",
          flush=True)
    with open(os.path.join(args.out_dir, f"passkey_{args.name}.json"), "w") as fh:
      json.dump(result, fh, indent=1)
  plot(result, os.path.join(args.out_dir, f"passkey_{args.name}.png"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
