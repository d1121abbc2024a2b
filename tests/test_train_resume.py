"""Stop / resume without losing a step, against an uninterrupted run.

Real `python -m famjax.train` subprocesses: SIGKILL after the checkpoint at
step N, SIGTERM mid-run; both resumed runs must end with the parameters and
per-step losses of a straight 2N-step run (RSP state, RNG, optimizer state
and data position all restored)."""
import os
import signal
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from famjax.train.metrics import read_metrics
from tests.conftest import popen_train, run_train

N = 3


def final_params(model_dir, step=2 * N):
  state = ocp.StandardCheckpointer().restore(
      os.path.join(model_dir, "checkpoints", str(step), "state"))
  return state


def assert_same_run(got_dir, want_dir):
  got, want = read_metrics(got_dir), read_metrics(want_dir)
  assert sorted(got) == list(range(1, 2 * N + 1)) == sorted(want)
  for s in want:
    assert abs(got[s]["loss"] - want[s]["loss"]) <= 1e-6, (s, got[s], want[s])
    assert got[s]["rsp_used"] == want[s]["rsp_used"]
  a, b = final_params(got_dir), final_params(want_dir)
  flat_a = dict(_leaves(a))
  flat_b = dict(_leaves(b))
  assert flat_a.keys() == flat_b.keys()
  for k in flat_b:
    np.testing.assert_allclose(flat_a[k], flat_b[k], atol=1e-6, rtol=0,
                               err_msg=str(k))


def _leaves(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, prefix + (k,))
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      yield from _leaves(v, prefix + (i,))
  elif tree is not None:
    yield prefix, np.asarray(tree)


@pytest.fixture(scope="module")
def straight(tiny_gin, tmp_path_factory):
  d = str(tmp_path_factory.mktemp("straight"))
  rc, out, err = run_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}")
  assert rc == 0, err
  # The steps after N start from the kept FAM state (RSP coin) with zero and
  # non-zero position offsets, so a resume that lost the kept state or the
  # RNG could not match; the kept state is in the checkpoint.
  m = read_metrics(d)
  assert m[N + 1]["rsp_used"] == m[N + 2]["rsp_used"] == 1.0
  assert {m[s]["position_offset"] == 0 for s in range(N + 1, 2 * N + 1)} == {
      True, False}
  assert final_params(d)["rsp"].shape == (2, 4, 32)
  # Operative gin config and TensorBoard events are in the run directory.
  with open(os.path.join(d, "config.gin")) as fh:
    operative = fh.read()
  assert "train.seq_len = 64" in operative and "StepConfig.p_rsp = 0.8" in operative
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(d, "train")))
  return d


def _wait_for(pred, proc, timeout=240, what=""):
  t0 = time.time()
  while not pred():
    if proc.poll() is not None:
      raise AssertionError(f"run ended (rc {proc.returncode}) before {what}: "
                           f"{proc.stderr.read()[-3000:]}")
    if time.time() - t0 > timeout:
      proc.kill()
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.1)


def test_sigkill_then_resume_matches_straight_run(straight, tiny_gin, tmp_path):
  d = str(tmp_path / "run")
  ckpt = os.path.join(d, "checkpoints", str(N))
  # Batches after the first N come slowly: the run is still mid-way (at
  # step N, checkpoint N saved) when it is killed.
  p = popen_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}",
                  "--gin.train.data_fn=@slow_iterator",
                  f"--gin.slow_iterator.fast_batches={N}",
                  "--gin.slow_iterator.sleep_s=120")
  _wait_for(lambda: os.path.isfile(os.path.join(ckpt, "commit_success.txt")),
            p, what=f"checkpoint {N}")
  time.sleep(0.5)
  p.send_signal(signal.SIGKILL)
  p.communicate(timeout=60)
  assert p.returncode == -signal.SIGKILL
  assert sorted(os.listdir(os.path.join(d, "checkpoints"))) == [str(N)]

  rc, out, err = run_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}")
  assert rc == 0, err
  assert f"resuming from checkpoint {N}" in err
  assert_same_run(d, straight)
  # The straight run saved step N asynchronously while step N+1 ran on the
  # donated state: its checkpoint still holds exactly step N's state.
  a = dict(_leaves(final_params(d, N)))
  b = dict(_leaves(final_params(straight, N)))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


def test_sigterm_saves_exits_zero_and_resumes(straight, tiny_gin, tmp_path):
  d = str(tmp_path / "run")
  p = popen_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}",
                  "--gin.train.data_fn=@slow_iterator",
                  "--gin.slow_iterator.fast_batches=1",
                  "--gin.slow_iterator.sleep_s=1.5")
  metrics = os.path.join(d, "metrics.jsonl")
  _wait_for(lambda: os.path.isfile(metrics) and
            len(open(metrics).readlines()) >= 1, p, what="step 1")
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 0, err
  assert "preempted (SIGTERM): saved checkpoint" in err
  steps = sorted(int(s) for s in os.listdir(os.path.join(d, "checkpoints")))
  last = max(read_metrics(d))
  # Saved at the step it stopped at, before the end of the run.
  assert steps[-1] == last and last < 2 * N, (steps, last)

  rc, out, err = run_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}")
  assert rc == 0, err
  assert f"resuming from checkpoint {last}" in err
  assert_same_run(d, straight)
