"""Run checkpoints: orbax CheckpointManager in MODEL_DIR/checkpoints.

One checkpoint (a step directory) holds three items:
  state   the train state pytree (params, opt_state, step, rng, rsp)
  data    the data iterator state of every process (JSON, see
          `gather_data_states`; a few KB per process)
  config  {"gin": the run's full gin config text}

Saves are asynchronous; orbax writes each step into a temporary directory
and renames it when complete, so a killed save leaves no listed checkpoint.
`restore_latest` tries the newest step first and falls back to older ones
(with a warning) when a checkpoint cannot be read; unreadable newer steps are
moved to MODEL_DIR/corrupt_checkpoints/ so that the run can save those steps
again. Preemption (SIGTERM) is a flag the loop polls at step boundaries.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("famjax.train")


class NoRestorableCheckpoint(RuntimeError):
  pass


class Checkpoints:
  """Save / restore the train state, data position and gin config."""

  def __init__(self, model_dir: str, *, keep: int = 3, async_save: bool = True):
    self.model_dir = os.path.abspath(model_dir)
    self.directory = os.path.join(self.model_dir, "checkpoints")
    self.keep = keep
    self.async_save = async_save
    self._open()

  def _open(self):
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=self.keep, create=True,
        enable_async_checkpointing=self.async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=opts, item_names=("state", "data", "config"))

  # ---------------------------------------------------------------- query
  def steps(self):
    return sorted(self.manager.all_steps())

  # ----------------------------------------------------------------- save
  def save(self, step: int, state, data_state: dict, gin_text: str):
    """Start saving (asynchronously); returns at once."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave({"gin": gin_text})), force=True)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

  # -------------------------------------------------------------- restore
  def restore(self, step: int, like_state):
    abstract = jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
        else ocp.utils.to_shape_dtype_struct(x), like_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore()))
    return out["state"], out["data"], out["config"]["gin"]

  def restore_latest(self, like_state):
    """(step, state, data_state, gin_text) of the newest readable checkpoint,
    or None when there is no checkpoint. Raises NoRestorableCheckpoint when
    checkpoints exist and none can be read."""
    steps = self.steps()
    if not steps:
      return None
    failed = []
    for step in reversed(steps):
      try:
        state, data, gin_text = self.restore(step, like_state)
      except Exception as e:  # orbax raises many types for damaged files
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        log.warning("checkpoint %d in %s cannot be restored (%s); trying an "
                    "older one.", step, self.directory, msg)
        failed.append((step, msg))
        continue
      if failed:
        self._move_aside([s for s, _ in failed])
        log.warning("resuming from checkpoint %d, not from the newest (%s): "
                    "it could not be read and was moved to %s.", step,
                    ", ".join(str(s) for s, _ in failed), self.corrupt_dir)
      return step, state, data, gin_text
    detail = "; ".join(f"step {s}: {m}" for s, m in failed)
    raise NoRestorableCheckpoint(
        f"{self.directory} holds checkpoints {steps} but none can be restored "
        f"into this run's train state ({detail}). If the model or optimizer "
        "config changed, use the original one; to start from scratch and "
        "DELETE these checkpoints, pass --gin.train.overwrite=True.")

  @property
  def corrupt_dir(self):
    return os.path.join(self.model_dir, "corrupt_checkpoints")

  def _move_aside(self, steps):
    self.manager.close()
    os.makedirs(self.corrupt_dir, exist_ok=True)
    for s in steps:
      src = os.path.join(self.directory, str(s))
      dst = os.path.join(self.corrupt_dir, str(s))
      n = 1
      while os.path.exists(dst):
        dst = os.path.join(self.corrupt_dir, f"{s}.{n}")
        n += 1
      if os.path.exists(src):
        shutil.move(src, dst)
    self._open()


def gather_data_states(state) -> dict:
  """Every process's data iterator state (hosts read different rows), for
  the checkpoint, which host 0 writes."""
  if jax.process_count() == 1:
    return {"process_count": 1, "iterators": [state]}
  from jax.experimental import multihost_utils
  mine = np.frombuffer(json.dumps(state).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([mine.size], np.int64))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:mine.size] = mine
  every = multihost_utils.process_allgather(padded)
  sizes = np.asarray(sizes).reshape(-1)
  return {"process_count": jax.process_count(),
          "iterators": [json.loads(bytes(every[i, :sizes[i]]))
                        for i in range(jax.process_count())]}


def own_data_state(saved: dict):
  """This process's iterator state from `gather_data_states`' dict."""
  n = saved.get("process_count")
  if n != jax.process_count():
    raise NoRestorableCheckpoint(
        f"the checkpoint's data position was saved by {n} processes; this "
        f"run has {jax.process_count()}. Resume with the same number of hosts.")
  return saved["iterators"][jax.process_index()]


def remove_run(model_dir: str):
  """Delete a run's checkpoints and logs (train.overwrite=True)."""
  for name in ("checkpoints", "corrupt_checkpoints", "train", "eval",
               "metrics.jsonl", "config.gin"):
    p = os.path.join(model_dir, name)
    if os.path.isdir(p):
      shutil.rmtree(p)
    elif os.path.exists(p):
      os.remove(p)


class Preemption:
  """SIGTERM (or a first Ctrl-C) sets a flag; the loop saves a checkpoint at
  the next step boundary and exits cleanly. A second Ctrl-C interrupts."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handler)
    return self

  def _handler(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    self.signal_name = signal.Signals(signum).name
    log.warning("%s: saving a checkpoint at the next step boundary, then "
                "exiting%s.", signal.Signals(signum).name,
                " (Ctrl-C again to interrupt now)" if signum == signal.SIGINT
                else "")

  def __exit__(self, *exc):
    for sig, prev in self._previous.items():
      signal.signal(sig, prev)
    self._previous = {}
    return False
