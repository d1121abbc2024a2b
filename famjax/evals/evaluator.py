"""seqio.Evaluator over famjax models: building it, running one step.

    ev = make_evaluator("passkey_byte", log_dir=out)        # once
    metrics = run_step(ev, model, step=100, batch_size=8)   # per checkpoint

`evaluate_model` does both for an in-memory model (the trainer's evals).
Metrics are computed on process 0 only; the others get {}.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Dict, Mapping, Optional

import jax
import numpy as np
import seqio

from famjax.errors import UserError
from famjax.evals import infer, loggers, plots


def task_info() -> Dict[str, dict]:
  try:
    from famjax.data.eval_info import TASK_INFO
  except ImportError:
    return {}
  return TASK_INFO


def get_task(name: str):
  """The registered task or mixture, or UserError listing close names."""
  import famjax.data.tasks  # noqa: F401  (registers the tasks)
  try:
    return seqio.get_mixture_or_task(name)
  except (ValueError, KeyError):
    pass
  names = sorted(set(seqio.TaskRegistry.names()) |
                 set(seqio.MixtureRegistry.names()))
  close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
  hint = (f"did you mean {', '.join(close)}? " if close else "")
  shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
  raise UserError(f"unknown task or mixture {name!r}; {hint}registered: "
                  f"{shown}")


def feature_converter(tasks) -> seqio.FeatureConverter:
  """Prefix LM (inputs + targets) or decoder-only (targets), unpacked."""
  prefix = [t.name for t in tasks if "inputs" in t.output_features]
  plain = [t.name for t in tasks if "inputs" not in t.output_features]
  if prefix and plain:
    raise UserError(f"the mixture mixes prefix-LM tasks ({prefix[0]}, ...) "
                    f"and language-modelling tasks ({plain[0]}, ...); "
                    "evaluate them as separate mixtures.")
  if prefix:
    return seqio.PrefixLMFeatureConverter(pack=False)
  return seqio.DecoderFeatureConverter(pack=False)


class Evaluator(seqio.Evaluator):
  """seqio.Evaluator that accepts per-example score arrays of different
  lengths: seqio stacks model outputs with np.array, so ragged [2, n] score
  arrays are handed over as (2,) object arrays (s[0] the log-probs, s[1] the
  argmax hits), which index the same way."""

  def _compute_clu_metrics(self, task, task_output, step=None):
    out = dict(task_output)
    score = seqio.metrics.ModelOutputType.SCORE
    if score in out and _ragged(out[score]):
      out[score] = [_pair(s) for s in out[score]]
    return super()._compute_clu_metrics(task, out, step)


def _ragged(scores) -> bool:
  shapes = {np.shape(s) for s in scores}
  return len(shapes) > 1


def _pair(s):
  o = np.empty((len(s),), object)
  for i, row in enumerate(s):
    o[i] = np.asarray(row)
  return o


def make_evaluator(name: str, *, split: str = "validation",
                   max_examples: Optional[int] = None,
                   sequence_length: Optional[Mapping[str, int]] = None,
                   log_dir: Optional[str] = None,
                   logger_cls=loggers.LOGGERS) -> Evaluator:
  task = get_task(name)
  tasks = seqio.get_subtasks(task)
  valid = [t for t in tasks if split in t.splits]
  if not valid:
    raise UserError(f"{name!r} has no {split!r} split (eval.split); it has "
                    f"{sorted(set(s for t in tasks for s in t.splits))}.")
  return Evaluator(
      name, feature_converter(valid), eval_split=split,
      sequence_length=dict(sequence_length) if sequence_length else None,
      num_examples=max_examples, logger_cls=logger_cls if log_dir else (),
      log_dir=log_dir, async_compute_metrics=False)


def task_lengths(ev: seqio.Evaluator) -> Dict[str, int]:
  """Context length (tokens) of each task: TASK_INFO's, else the longest
  example's inputs + targets."""
  info, out = task_info(), {}
  for task in ev.eval_tasks:
    if info.get(task.name, {}).get("length"):
      out[task.name] = int(info[task.name]["length"])
      continue
    ds = ev.cached_model_datasets[task.name]
    out[task.name] = max((infer.layout(ex)[2] for _, ex in infer.examples(ds)),
                         default=0)
  return out


def summary_info(ev: seqio.Evaluator) -> Dict[str, dict]:
  """TASK_INFO for the plots, with measured lengths where it has none."""
  info = task_info()
  lengths = task_lengths(ev)
  return {t: dict(info.get(t, {"family": t}), length=lengths[t])
          for t in lengths}


def run_step(ev: Evaluator, model, *, step: int, batch_size: int = 8):
  """Evaluate `model` on every task of `ev`; {task: {metric: float}} on
  process 0 (after the loggers ran), {} elsewhere."""
  if not ev.eval_tasks:
    return {}
  runner = infer.Runner(infer.model_on_host(model), batch_size=batch_size)
  by_id = {id(ds): t for t, ds in ev.cached_model_datasets.items()}
  tasks = {t.name: t for t in ev.eval_tasks}

  def eos(ds):
    return tasks[by_id[id(ds)]].output_features["targets"].vocabulary.eos_id

  def predict_fn(ds, *unused):
    return runner.predict(ds, eos_id=eos(ds), what=by_id[id(ds)])

  def predict_with_aux_fn(ds, *unused):
    return runner.predict(ds, eos_id=eos(ds), with_aux=True,
                          what=by_id[id(ds)])

  def score_fn(ds, *unused):
    return runner.score(ds, what=by_id[id(ds)])

  chief = jax.process_index() == 0
  future, _ = ev.evaluate(compute_metrics=chief, step=int(step),
                          predict_fn=predict_fn, score_fn=score_fn,
                          predict_with_aux_fn=predict_with_aux_fn)
  result = future.result() if chief else None
  if not result:
    return {}
  return {t: loggers.scalar_metrics(m) for t, m in result.items()}


_EVALUATORS: Dict[tuple, Evaluator] = {}


def evaluate_model(model, *, mixture_or_task_name: str, step: int,
                   output_dir: str, batch_size: int = 8,
                   max_examples: Optional[int] = None
                   ) -> Dict[str, Dict[str, float]]:
  """Run the evaluator and its loggers on an in-memory model.

  Writes under output_dir what `famjax eval` writes (JSON, TensorBoard, the
  heatmap PNG and the Markdown table) and returns {task: {metric: value}}
  on process 0 ({} on the other processes). The evaluator (its cached
  datasets) is kept for the next call with the same arguments.
  """
  key = (mixture_or_task_name, output_dir, max_examples)
  if key not in _EVALUATORS:
    _EVALUATORS[key] = make_evaluator(
        mixture_or_task_name, max_examples=max_examples, log_dir=output_dir)
  ev = _EVALUATORS[key]
  metrics = run_step(ev, model, step=step, batch_size=batch_size)
  if metrics:
    record_step(output_dir, step, metrics, summary_info(ev))
  return metrics


RESULTS = "results.json"


def read_results(out_dir: str) -> dict:
  path = os.path.join(out_dir, RESULTS)
  if not os.path.isfile(path):
    return {"steps": {}}
  with open(path) as fh:
    return json.load(fh)


def record_step(out_dir: str, step: int, metrics, info, **settings):
  """Add one step's metrics to results.json (atomically) and write its
  heatmaps and Markdown table."""
  os.makedirs(out_dir, exist_ok=True)
  res = read_results(out_dir)
  res.update(settings)
  res["steps"][str(int(step))] = metrics
  path = os.path.join(out_dir, RESULTS)
  with open(path + ".tmp", "w") as fh:
    json.dump(res, fh, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)
  return plots.write_summary(out_dir, int(step), metrics, info)
