"""Metric functions of the evaluation tasks (seqio `metric_fns`).

Targets reach the metrics as dicts built by `postprocess` from each example
({"answer", "answers", "depth", "length", "context_length"}); predictions
as stripped strings; scores as one array per example of shape
[2, n_target_tokens] (row 0: log-probabilities of the target tokens, row 1:
1.0 where the model's argmax was the target token) or [n] (log-probs only);
trailing NaN columns are padding (lets ragged scores form one array).

* `needle_accuracy`  "accuracy" (the answer appears in the prediction, as
  RULER scores it), "exact_match", and "accuracy@depth=0.25"-style keys.
* `first_char_accuracy`  "accuracy": the prediction's first character is
  the one-character answer (for models that do not stop after it), and
  per depth.
* `partial_credit`   RULER's multi-item score: the mean fraction of the
  expected items found in the prediction ("accuracy"), and "all_correct".
* `qa_metrics`       SQuAD-normalized "exact_match" and token "f1", and
  "accuracy" (the normalized answer appears in the prediction).
* `lm_position_metrics`  perplexity and next-token accuracy overall and per
  position bucket of the target tokens (0-1k, 1k-4k, 4k-16k, 16k-64k, ...).
"""
from __future__ import annotations

import collections
import math
import re
import string
from typing import Dict, List, Sequence, Tuple

import numpy as np

# Position buckets [lo, hi) in tokens, named with k = 1024 tokens.
BUCKETS: Tuple[Tuple[int, int], ...] = (
    (0, 1024), (1024, 4096), (4096, 16384), (16384, 65536),
    (65536, 262144), (262144, 1048576))


def _text(x) -> str:
  if isinstance(x, np.ndarray):
    x = x.item()
  return x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)


def postprocess(output, example=None, is_target=False):
  """Predictions: the stripped text. Targets: a dict of the example's
  answer and metadata (see the module docstring)."""
  text = _text(output).strip()
  if not is_target:
    return text
  example = example or {}
  answers = _text(example.get("answers", text))
  depth = float(example["depth"]) if "depth" in example else -1.0
  return {"answer": text,
          "answers": [a for a in answers.split("\n") if a] or [text],
          "depth": depth if depth >= 0 else None,
          "length": int(example.get("length", 0)),
          "context_length": int(example.get("context_length", 0))}


def _answer(t) -> str:
  return t["answer"] if isinstance(t, dict) else _text(t).strip()


def _answers(t) -> List[str]:
  return t["answers"] if isinstance(t, dict) else [_answer(t)]


def depth_key(depth: float) -> str:
  return f"accuracy@depth={depth:.2f}"


def needle_accuracy(targets, predictions) -> Dict[str, float]:
  """Single-answer needles: answer found in / equal to the prediction."""
  if not targets:
    return {"accuracy": 0.0, "exact_match": 0.0}
  found = [_answer(t).lower() in p.lower() for t, p in zip(targets, predictions)]
  exact = [_answer(t) == p.strip() for t, p in zip(targets, predictions)]
  out = {"accuracy": 100.0 * float(np.mean(found)),
         "exact_match": 100.0 * float(np.mean(exact))}
  out.update(_by_depth(targets, found))
  return out


def first_char_accuracy(targets, predictions) -> Dict[str, float]:
  """One-character answers of a model that goes on after the answer
  without EOS (digit_carry): "accuracy" = the prediction's first character
  is the answer (greedy decoding's first token), and per depth."""
  if not targets:
    return {"accuracy": 0.0}
  hits = [p[:1] == _answer(t) for t, p in zip(targets, predictions)]
  out = {"accuracy": 100.0 * float(np.mean(hits))}
  out.update(_by_depth(targets, hits))
  return out


def _by_depth(targets, hits) -> Dict[str, float]:
  """{"accuracy@depth=d": % of hits} over the targets that record a depth."""
  by_depth = collections.defaultdict(list)
  for t, hit in zip(targets, hits):
    if isinstance(t, dict) and t.get("depth") is not None:
      by_depth[round(float(t["depth"]), 2)].append(hit)
  return {depth_key(d): 100.0 * float(np.mean(by_depth[d]))
          for d in sorted(by_depth)}


def partial_credit(targets, predictions) -> Dict[str, float]:
  """Recall of the expected items in each prediction, averaged."""
  if not targets:
    return {"accuracy": 0.0, "all_correct": 0.0, "exact_match": 0.0}
  recalls, exact = [], []
  for t, p in zip(targets, predictions):
    items = _answers(t)
    recalls.append(np.mean([a.lower() in p.lower() for a in items]))
    exact.append(_answer(t) == p.strip())
  return {"accuracy": 100.0 * float(np.mean(recalls)),
          "all_correct": 100.0 * float(np.mean(np.equal(recalls, 1.0))),
          "exact_match": 100.0 * float(np.mean(exact))}


def normalize_answer(s: str) -> str:
  """Lower case, no punctuation, no articles, single spaces (SQuAD)."""
  s = "".join(c for c in s.lower() if c not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def token_f1(prediction: str, answer: str) -> float:
  p, a = normalize_answer(prediction).split(), normalize_answer(answer).split()
  common = collections.Counter(p) & collections.Counter(a)
  same = sum(common.values())
  if not p or not a:
    return float(p == a)
  if same == 0:
    return 0.0
  precision, recall = same / len(p), same / len(a)
  return 2 * precision * recall / (precision + recall)


def qa_metrics(targets, predictions) -> Dict[str, float]:
  """Question answering: best exact match / F1 over the reference answers."""
  if not targets:
    return {"exact_match": 0.0, "f1": 0.0, "accuracy": 0.0}
  em, f1, acc = [], [], []
  for t, p in zip(targets, predictions):
    refs = _answers(t)
    em.append(max(normalize_answer(p) == normalize_answer(r) for r in refs))
    f1.append(max(token_f1(p, r) for r in refs))
    acc.append(max(normalize_answer(r) in normalize_answer(p) for r in refs))
  return {"exact_match": 100.0 * float(np.mean(em)),
          "f1": 100.0 * float(np.mean(f1)),
          "accuracy": 100.0 * float(np.mean(acc))}


def bucket_name(lo: int, hi: int) -> str:
  def k(n):
    return f"{n // 1024}k" if n else "0"
  return f"{k(lo)}-{k(hi)}"


def _rows(score) -> Tuple[np.ndarray, np.ndarray]:
  s = np.asarray(score, dtype=np.float64)
  if s.ndim not in (1, 2) or (s.ndim == 2 and s.shape[0] != 2):
    raise ValueError(f"score arrays must have shape [n] or [2, n], got "
                     f"{s.shape}")
  lp = s if s.ndim == 1 else s[0]
  n = int(np.sum(~np.isnan(lp)))   # NaN: padding after the last token
  if np.isnan(lp[:n]).any():
    raise ValueError("NaN log-probabilities before the end of a sequence")
  return lp[:n], (None if s.ndim == 1 else s[1][:n])


def lm_position_metrics(targets, scores) -> Dict[str, float]:
  """Perplexity and next-token accuracy, overall and per position bucket.

  Position = index of the token in the target sequence (the number of
  tokens of context before it). Buckets without tokens are left out.
  """
  del targets
  lps, hits, pos = [], [], []
  for score in scores:
    lp, hit = _rows(score)
    lps.append(lp)
    hits.append(hit)
    pos.append(np.arange(lp.shape[0]))
  if not lps:
    return {}
  lp, positions = np.concatenate(lps), np.concatenate(pos)
  has_hits = all(h is not None for h in hits)
  hit = np.concatenate(hits) if has_hits else None
  out = {"perplexity": math.exp(-float(np.mean(lp))),
         "log_likelihood": float(np.sum(lp)) / len(lps),
         "num_tokens": float(lp.shape[0])}
  if has_hits:
    out["next_token_accuracy"] = 100.0 * float(np.mean(hit))
  for lo, hi in BUCKETS:
    sel = (positions >= lo) & (positions < hi)
    if not sel.any():
      continue
    name = bucket_name(lo, hi)
    out[f"perplexity@tokens={name}"] = math.exp(-float(np.mean(lp[sel])))
    if has_hits:
      out[f"next_token_accuracy@tokens={name}"] = 100.0 * float(
          np.mean(hit[sel]))
  return out


METRICS = {"needle": needle_accuracy, "partial": partial_credit,
           "qa": qa_metrics, "lm": lm_position_metrics}

