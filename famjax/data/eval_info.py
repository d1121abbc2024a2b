"""Metadata of the registered evaluation tasks (no TensorFlow import).

`TASK_INFO[task_name]` is filled when an eval task is registered (see
`famjax.data.eval_tasks.register_eval_suite`) and read by the evaluator
(`famjax eval`), e.g. to lay out the context-length x depth heatmap:

  {"family": "passkey",        # task family (mixture `<family>_<vocab>`)
   "vocab": "byte",            # short vocabulary name in the task name
   "length": 2048,             # context tokens: inputs + targets fit in it
   "kind": "predict",          # "predict" (generate, compare) | "score" (LM)
   "inputs_length": 2032,      # feature lengths to evaluate it with
   "targets_length": 16}       # ("inputs_length" absent for LM tasks)

Task names are `<family>_<vocab>_<length name>` with `length_name` below.
"""
from __future__ import annotations

from typing import Dict, List, Optional

TASK_INFO: Dict[str, dict] = {}
# Mixture name -> its task names, for the families and suites registered.
MIXTURE_TASKS: Dict[str, List[str]] = {}


def length_name(n: int) -> str:
  """1024 -> '1k', 65536 -> '64k', 1000 -> '1000' (k means 1024 tokens)."""
  n = int(n)
  return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def parse_length(s: str) -> int:
  """Inverse of `length_name` ('2k' -> 2048, '1500' -> 1500)."""
  s = str(s).strip().lower()
  return int(s[:-1]) * 1024 if s.endswith("k") else int(s)


def task_name(family: str, vocab_name: str, length: int) -> str:
  return f"{family}_{vocab_name}_{length_name(length)}"


def register_info(name: str, *, family: str, vocab: str, length: int,
                  kind: str, inputs_length: Optional[int] = None,
                  targets_length: Optional[int] = None, **extra) -> dict:
  """Record (or replace) the metadata of eval task `name`."""
  if kind not in ("predict", "score"):
    raise ValueError(f"kind must be 'predict' or 'score', got {kind!r}")
  info = {"family": family, "vocab": vocab, "length": int(length),
          "kind": kind}
  if inputs_length is not None:
    info["inputs_length"] = int(inputs_length)
  if targets_length is not None:
    info["targets_length"] = int(targets_length)
  info.update(extra)
  TASK_INFO[name] = info
  return info


def feature_lengths(name: str) -> Dict[str, int]:
  """The task feature lengths to evaluate registered eval task `name` with."""
  if name not in TASK_INFO:
    raise KeyError(f"{name!r} is not a registered eval task")
  info = TASK_INFO[name]
  if info["kind"] == "score" and "inputs_length" not in info:
    return {"targets": info["length"]}
  return {"inputs": info["inputs_length"], "targets": info["targets_length"]}
