"""The training loop's moments: when they fall, and the inference evals it
runs during training (`train.eval_mixture`)."""
import os
import sys
import types

import jax
import numpy as np
from flax import nnx

from famjax.train import trainer
from famjax.train.loop import itstime
from famjax.train.metrics import read_events, read_metrics
from tests.conftest import final_params, main_in_process


def test_itstime():
  assert [s for s in range(1, 11) if itstime(s, 3)] == [3, 6, 9]
  assert [s for s in range(1, 11) if itstime(s, 3, 10)] == [3, 6, 9, 10]
  assert [s for s in range(1, 11) if itstime(s, 0, 10)] == [10]
  assert not any(itstime(s, 0) for s in range(1, 11))


def _param_sum(params) -> float:
  return float(sum(np.abs(np.asarray(x, np.float64)).sum()
                   for x in jax.tree.leaves(params)))


def test_inference_evals_during_training(tiny_gin, tmp_path, monkeypatch):
  calls = []

  def evaluate_model(model, *, mixture_or_task_name, step, output_dir,
                     batch_size, max_examples):
    """Stands in for famjax.evals: a metric of the weights it is given."""
    params = jax.tree.map(np.asarray,
                          nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    calls.append(dict(name=mixture_or_task_name, step=step,
                      output_dir=output_dir, batch_size=batch_size,
                      max_examples=max_examples, params=params))
    return {"fake_task": {"param_sum": _param_sum(params)},
            "other_task": {"accuracy": 50.0 + step}}

  monkeypatch.setitem(sys.modules, "famjax.evals", types.SimpleNamespace(
      evaluate_model=evaluate_model))
  d = str(tmp_path / "run")
  assert main_in_process(
      f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}",
      "--gin.train.num_steps=4", "--gin.train.save_every=2",
      "--gin.train.eval_every=2", "--gin.train.eval_mixture=fake_mix",
      "--gin.train.eval_max_examples=8") == 0

  # At every eval_every step and at the end, with the run's settings ...
  assert [c["step"] for c in calls] == [2, 4]
  for c in calls:
    assert (c["name"], c["batch_size"], c["max_examples"]) == ("fake_mix", 4, 8)
    assert c["output_dir"] == os.path.join(d, "inference_eval")
  # ... on the weights of that step (those its checkpoint holds) ...
  for c in calls:
    want = trainer.flat(final_params(d, c["step"])["params"])
    got = trainer.flat(c["params"])
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
  assert _param_sum(calls[0]["params"]) != _param_sum(calls[1]["params"])
  # ... and the metrics land in metrics.jsonl and TensorBoard as TASK/METRIC.
  ev = read_metrics(d, "eval")
  assert sorted(ev) == [2, 4]
  for c in calls:
    assert ev[c["step"]]["fake_task/param_sum"] == _param_sum(c["params"])
    assert ev[c["step"]]["other_task/accuracy"] == 50.0 + c["step"]
  tb = {(s, tag) for s, tag, _ in read_events(os.path.join(d, "eval"))}
  assert tb == {(s, t) for s in (2, 4)
                for t in ("fake_task/param_sum", "other_task/accuracy")}
