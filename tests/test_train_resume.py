"""Stop / resume without losing a step, against an uninterrupted run.

Real `python -m famjax.train` subprocesses: SIGKILL after the checkpoint at
step N, SIGTERM mid-run; both resumed runs must end with the parameters and
per-step losses of a straight 2N-step run (RSP state, RNG, optimizer state
and data position all restored)."""
import os
import signal
import time

import numpy as np

from famjax.train.metrics import read_metrics
from tests.conftest import (N, assert_same_run, final_params, leaves,
                            popen_train, run_train)

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
  a = dict(leaves(final_params(d, N)))
  b = dict(leaves(final_params(straight, N)))
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


def test_rows_state_passing_stop_and_resume(tiny_gin, tmp_path):
  """`StepConfig.state_passing = rows` keeps one FAM state a row in the
  checkpoint: N steps, then a second run on to 2N, equals 2N straight."""
  rows = "--gin.StepConfig.state_passing=rows"
  a, b = str(tmp_path / "straight"), str(tmp_path / "split")
  rc, _, err = run_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={a}", rows)
  assert rc == 0, err
  assert final_params(a)["rsp"].shape == (2, 4, 4, 32)     # [L, batch, F, d]
  used = [m["rsp_used"] for s, m in sorted(read_metrics(a).items()) if s > 1]
  assert any(0.0 < u < 1.0 for u in used), used            # a coin a row
  rc, _, err = run_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={b}", rows,
                         f"--gin.train.num_steps={N}")
  assert rc == 0, err
  rc, _, err = run_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={b}", rows)
  assert rc == 0, err
  assert f"resuming from checkpoint {N}" in err
  assert_same_run(b, a)
