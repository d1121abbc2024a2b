"""seqio loggers of `famjax eval`: console, TensorBoard, JSON.

seqio.Evaluator calls each logger once per task and step, on the process
that computes metrics (process 0). Files under the evaluator's log_dir:
  tensorboard/               events, tags "<task>/<metric>"
  json/<task>.jsonl          one line per step: {"step": N, metric: value}
  json/<task>-<step>.jsonl   the first examples: target, prediction / score
"""
from __future__ import annotations

import json
import os
import uuid
import sys
from typing import Any, Mapping, Optional

import numpy as np
import seqio

MAX_LOGGED_EXAMPLES = 32


def scalar_metrics(metrics: Mapping[str, Any]) -> dict:
  """{name: float} of the scalar metrics (seqio MetricValue or plain)."""
  out = {}
  for name, v in metrics.items():
    v = getattr(v, "value", v)
    try:
      arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
      continue
    if arr.ndim == 0:
      out[name] = float(arr)
  return out


class ConsoleLogger(seqio.Logger):
  """One line per metric on stdout: `task/metric at step N: value`."""

  def __call__(self, task_name, step, metrics, dataset, inferences, targets):
    for name, value in sorted(scalar_metrics(metrics).items()):
      print(f"famjax eval: {task_name}/{name} at step {step}: {value:.4f}",
            file=sys.stdout, flush=True)


class TensorBoardLogger(seqio.Logger):
  """Scalars to <log_dir>/tensorboard (tensorboardX; no TensorFlow writer).

  tensorboardX hands events to a background thread, and its flush() does not
  wait for that thread, so each call opens a writer and closes it (close
  drains the queue): the scalars are on disk when the call returns.
  """

  def __call__(self, task_name, step, metrics, dataset, inferences, targets):
    from tensorboardX import SummaryWriter
    # A file of its own per call: tensorboardX names files by the second, so
    # two writers opened in the same second would otherwise share one name.
    writer = SummaryWriter(
        os.path.join(self.output_dir, "tensorboard"),
        filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
      for name, value in scalar_metrics(metrics).items():
        writer.add_scalar(f"{task_name}/{name}", value, step or 0)
    finally:
      writer.close()


def _jsonable(x):
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, bytes):
    return x.decode("utf-8", errors="replace")
  return str(x)


class JSONLogger(seqio.Logger):
  """Metrics per task and step, plus the first examples' outputs."""

  def __call__(self, task_name, step, metrics, dataset, inferences, targets):
    out_dir = os.path.join(self.output_dir, "json")
    os.makedirs(out_dir, exist_ok=True)
    line = {"step": step, **scalar_metrics(metrics)}
    with open(os.path.join(out_dir, f"{task_name}.jsonl"), "a") as fh:
      fh.write(json.dumps(line, default=_jsonable) + "\n")
    write_examples(os.path.join(out_dir, f"{task_name}-{step}.jsonl"),
                   inferences, targets)


def write_examples(path: str, inferences: Optional[Mapping], targets):
  if not inferences or targets is None:
    return
  n = min(len(targets), MAX_LOGGED_EXAMPLES)
  with open(path, "w") as fh:
    for i in range(n):
      row = {"target": targets[i]}
      for key, values in inferences.items():
        if key == "aux_value":
          row[key] = {k: v[i] for k, v in values.items()}
        elif values is not None and len(values) > i:
          row[key] = values[i]
      fh.write(json.dumps(row, default=_jsonable) + "\n")


LOGGERS = (ConsoleLogger, TensorBoardLogger, JSONLogger)
