"""seqio.Evaluator over famjax models: building it, running one step.

    evs = make_evaluators("passkey_byte", log_dir=out)       # once
    metrics = run_step(evs, model, step=100, batch_size=8)   # per checkpoint

`evaluate_model` does both for an in-memory model (the trainer's evals).
Metrics are computed on process 0 only; the others get {}.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Dict, List, Mapping, Optional

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


def get_task(name: str, vocabulary=None):
  """The registered task or mixture, or UserError listing close names.

  vocabulary: a model directory with its own tokenizer (or a vocabulary):
  suite tasks named for it (e.g. passkey_smollm2_4k) are registered first.
  Without one, byte suite tasks beyond the registered lengths (e.g.
  digit_carry_byte_64k) are registered by name.
  """
  import famjax.data.tasks  # noqa: F401  (registers the tasks)
  try:
    from famjax.data import eval_tasks
  except ImportError:
    eval_tasks = None
  if eval_tasks is not None:
    if vocabulary is not None:
      eval_tasks.ensure_registered(str(name), vocabulary)
    elif (eval_tasks.parse_task_name(str(name)) or (None, None))[1] == "byte":
      eval_tasks.ensure_registered(str(name), "byte")
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
  arrays of a task are padded with NaN to its longest (metric fns drop NaN
  columns: famjax.data.eval_metrics)."""

  def _compute_clu_metrics(self, task, task_output, step=None):
    out = dict(task_output)
    score = seqio.metrics.ModelOutputType.SCORE
    if score in out and len({np.shape(s) for s in out[score]}) > 1:
      n = max(np.shape(s)[-1] for s in out[score])
      out[score] = [_nan_pad(np.asarray(s, np.float32), n) for s in out[score]]
    return super()._compute_clu_metrics(task, out, step)


def _nan_pad(s, n):
  pad = [(0, 0)] * (s.ndim - 1) + [(0, n - s.shape[-1])]
  return np.pad(s, pad, constant_values=np.nan)


def feature_lengths(task_name: str, sequence_length=None):
  """The feature lengths to evaluate a task with: the given ones, else
  TASK_INFO's (inputs_length / targets_length), else None (measured)."""
  if sequence_length:
    return dict(sequence_length)
  info = task_info().get(task_name, {})
  if info.get("targets_length"):
    if info.get("inputs_length"):
      return {"inputs": int(info["inputs_length"]),
              "targets": int(info["targets_length"])}
    return {"targets": int(info["targets_length"])}
  return None


def make_evaluators(name: str, *, split: str = "validation",
                    max_examples: Optional[int] = None,
                    sequence_length: Optional[Mapping[str, int]] = None,
                    log_dir: Optional[str] = None,
                    logger_cls=loggers.LOGGERS,
                    vocabulary=None) -> List[Evaluator]:
  """One Evaluator per task of `name` (each task padded to its own length,
  not the mixture's longest)."""
  tasks = seqio.get_subtasks(get_task(name, vocabulary))
  valid = [t for t in tasks if split in t.splits]
  if not valid:
    raise UserError(f"{name!r} has no {split!r} split (eval.split); it has "
                    f"{sorted(set(s for t in tasks for s in t.splits))}.")
  converter = feature_converter(valid)
  return [Evaluator(
      t.name, converter, eval_split=split,
      sequence_length=feature_lengths(t.name, sequence_length),
      num_examples=max_examples, logger_cls=logger_cls if log_dir else (),
      log_dir=log_dir, async_compute_metrics=False) for t in valid]


def task_lengths(evs) -> Dict[str, int]:
  """Context length (tokens) of each task: TASK_INFO's, else the longest
  example's inputs + targets."""
  info, out = task_info(), {}
  for ev in evs:
    if not ev.eval_tasks:
      continue
    task = ev.eval_tasks[0]
    if info.get(task.name, {}).get("length"):
      out[task.name] = int(info[task.name]["length"])
      continue
    ds = ev.cached_model_datasets[task.name]
    out[task.name] = max((infer.layout(ex)[2] for _, ex in infer.examples(ds)),
                         default=0)
  return out


def summary_info(evs) -> Dict[str, dict]:
  """TASK_INFO for the plots, with measured lengths where it has none."""
  info = task_info()
  lengths = task_lengths(evs)
  return {t: dict(info.get(t, {"family": t}), length=lengths[t])
          for t in lengths}


def run_step(evs, model, *, step: int, batch_size: int = 8):
  """Evaluate `model` on the task of every Evaluator; {task: {metric:
  float}} on process 0 (after the loggers ran), {} elsewhere."""
  runner = infer.Runner(infer.model_on_host(model), batch_size=batch_size)
  chief = jax.process_index() == 0
  out = {}
  for ev in evs:
    if not ev.eval_tasks:
      continue
    task = ev.eval_tasks[0]
    eos = task.output_features["targets"].vocabulary.eos_id

    def predict_fn(ds, *unused, task=task, eos=eos):
      return runner.predict(ds, eos_id=eos, what=task.name)

    def predict_with_aux_fn(ds, *unused, task=task, eos=eos):
      return runner.predict(ds, eos_id=eos, with_aux=True, what=task.name)

    def score_fn(ds, *unused, task=task):
      return runner.score(ds, what=task.name)

    future, _ = ev.evaluate(compute_metrics=chief, step=int(step),
                            predict_fn=predict_fn, score_fn=score_fn,
                            predict_with_aux_fn=predict_with_aux_fn)
    result = future.result() if chief else None
    for t, m in (result or {}).items():
      out[t] = loggers.scalar_metrics(m)
  return out


_EVALUATORS: Dict[tuple, List[Evaluator]] = {}


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
    _EVALUATORS[key] = make_evaluators(
        mixture_or_task_name, max_examples=max_examples, log_dir=output_dir)
  evs = _EVALUATORS[key]
  metrics = run_step(evs, model, step=step, batch_size=batch_size)
  if metrics:
    record_step(output_dir, step, metrics, summary_info(evs))
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
