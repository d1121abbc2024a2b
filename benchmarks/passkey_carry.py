"""Does the FAM carry the key? Per-answer accuracy on `digit_recall_byte`,
split by whether the answer's own block holds the key.

    python -m benchmarks.passkey_carry --model_dir=RUN_OR_MODEL_DIR \
        [--step=N] [--lengths=1024] [--samples=32]

`digit_recall_byte` (famjax/data/passkey_drill.py) has one one-digit key and
asks for it again and again. Every question's answer is scored by one
teacher-forced whole-sequence forward (argmax = the key), as the model was
trained: BOS first, the initial FAM, no position offset. An answer is
  in-block   when a digit (the key, in the needle or an earlier answer)
             precedes it inside its own block: copying within the block
             suffices;
  memory     otherwise: with m = 0 only the FAM can bring the key in.
Memory answers are also grouped by how many blocks back the key was last
seen (1, 2, 3-4, 5+). Chance is 1/9. A model whose `memory` accuracy stays
at chance while `in-block` is perfect has learned retrieval but not memory.

It also probes the FAM write: nine copies of one block that differ only in
the key digit run through the model, and for each layer the spread of the
FAM state after that block across the nine keys is printed relative to its
norm (max over the F rows). Near 0: the FAM holds nothing of the key; large:
some FAM row stores it (what a later block would have to read).

MODEL_DIR is what `famjax eval` takes: a model directory, or a training run
(its latest checkpoint, or --step). Prints a table and writes JSON with
--out.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Tuple

import numpy as np

from benchmarks import passkey_lengths
from famjax.data import synthetic

DIGITS = frozenset("0123456789")
BUCKETS = ((1, 1, "1"), (2, 2, "2"), (3, 4, "3-4"), (5, 1 << 30, "5+"))


def answer_sites(text: str, block_size: int) -> List[Tuple[int, int]]:
  """(logit position, blocks back) of every answer after a PassKey question.

  Token j of the sequence is BOS for j = 0 and text[j - 1] after it, so the
  answer character text[a] is token a + 1, predicted by the logits at a.
  blocks back = 0 when a digit precedes it in its own block, else how many
  blocks back the last digit before it lies (-1: no digit at all).
  """
  q = synthetic.PASSKEY_QUESTION
  out, start = [], 0
  while True:
    k = text.find(q, start)
    if k < 0:
      return out
    a = k + len(q)
    if a >= len(text):
      return out
    blk = (a + 1) // block_size
    last = max((i for i in range(a) if text[i] in DIGITS), default=None)
    back = -1 if last is None else blk - (last + 1) // block_size
    out.append((a, back))
    start = a


def byte_ids(text: str) -> np.ndarray:
  """BOS (0), then the byte ids of `passkey_lengths.byte_ids`."""
  return np.asarray([0] + passkey_lengths.byte_ids(text), np.int32)


def score(forward, texts, block_size: int) -> dict:
  """{"in-block": [hits], "memory": [hits], "memory@1": ...} over texts."""
  res = {"in-block": [], "memory": []}
  res.update({f"memory@{name}": [] for _, _, name in BUCKETS})
  for text in texts:
    ids = byte_ids(text)
    pred = np.asarray(forward(ids[None, :-1]))[0].argmax(-1)
    for a, back in answer_sites(text, block_size):
      hit = bool(pred[a] == ids[a + 1])
      if back == 0:
        res["in-block"].append(hit)
        continue
      res["memory"].append(hit)
      for lo, hi, name in BUCKETS:
        if lo <= back <= hi:
          res[f"memory@{name}"].append(hit)
  return res


def write_spread(model, block_size: int) -> np.ndarray:
  """[L] max over FAM rows of std-like spread / norm of the FAM state after
  one block holding the needle, across keys 1-9."""
  import jax.numpy as jnp
  text = ("Here we go. The sky is blue. " + synthetic.PASSKEY_NEEDLE +
          "The grass is green. " * (block_size // 20 + 1))
  ids = np.stack([byte_ids(text.format(key=str(k)))[:block_size]
                  for k in range(1, 10)])
  _, state = model(jnp.asarray(ids), return_state=True)
  phi = np.asarray(state["fam_state"], np.float64)       # [L, 9, F, d]
  mean = phi.mean(1, keepdims=True)
  spread = np.linalg.norm(phi - mean, axis=-1).mean(1)   # [L, F]
  return (spread / np.linalg.norm(mean, axis=-1)[:, 0]).max(-1)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model_dir", required=True)
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint of a training run (default: the latest)")
  p.add_argument("--lengths", default="1024")
  p.add_argument("--samples", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="write the results as JSON")
  args = p.parse_args(argv)
  import jax.numpy as jnp
  from flax import nnx
  from famjax.data import passkey_drill
  from famjax.errors import UserError
  from famjax.evals import models
  try:
    src = models.resolve(args.model_dir)
    step = args.step if args.step is not None else src.steps[-1]
    if step not in src.steps:
      raise UserError(f"--step={step}: {args.model_dir} has steps "
                      f"{list(src.steps)}")
    cfg, model = models.load(src, step)
  except UserError as e:
    print(f"passkey_carry: error: {e}", file=sys.stderr)
    return 2
  if cfg.attention.mode == "full":
    print("passkey_carry: error: a full-attention model has no blocks",
          file=sys.stderr)
    return 2
  blk = cfg.attention.block_size
  fwd = nnx.jit(lambda m, x: m(x))
  forward = lambda ids: fwd(model, jnp.asarray(ids))
  results = {"model_dir": args.model_dir, "step": step,
             "attention": str(cfg.attention), "lengths": {}}
  if cfg.attention.mode == "fam":
    spread = write_spread(model, blk)
    results["write_spread"] = [float(x) for x in spread]
    print("FAM write probe (spread of the state across keys / its norm), "
          "per layer: " + " ".join(f"{x:.3f}" for x in spread))
  print(f"{'length':>7} {'in-block':>14} {'memory':>14} " +
        " ".join(f"{'@' + n:>12}" for _, _, n in BUCKETS))
  for length in (int(x) for x in args.lengths.split(",")):
    examples = [passkey_drill.digit_recall_example(
        i, num_chars=length - 2, seed=args.seed, split="validation")
        for i in range(args.samples)]
    texts = [e["inputs"] + e["targets"] for e in examples]
    res = score(forward, texts, blk)
    row = {k: {"accuracy": float(np.mean(v)) if v else None, "count": len(v)}
           for k, v in res.items()}
    results["lengths"][str(length)] = row
    cell = lambda r: ("-" if r["accuracy"] is None else
                      f"{100 * r['accuracy']:.1f}% of {r['count']}")
    print(f"{length:>7} {cell(row['in-block']):>14} {cell(row['memory']):>14} "
          + " ".join(f"{cell(row['memory@' + n]):>12}" for _, _, n in BUCKETS),
          flush=True)
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(results, fh, indent=2)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
