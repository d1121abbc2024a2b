"""Batches of model features from seqio tasks, with checkpointable iterators.

    it = make_iterator("passkey_byte", "train", seq_len=2048, batch_size=32)
    batch = next(it)      # dict of numpy int32 [batch_size / num_shards, seq_len]
    state = it.get_state()            # JSON-serialisable dict
    ...
    it2 = make_iterator(... same arguments ...)
    it2.set_state(state)              # it2 yields what `it` yields next

Batch features (seqio.DecoderFeatureConverter):
  decoder_input_tokens, decoder_target_tokens, decoder_loss_weights (0 on the
  prompt ("inputs") and on padding, 1 on targets), plus decoder_positions and
  decoder_segment_ids when `pack=True`.

Determinism and state: the element stream is a pure function of the
arguments (fixed shuffle seed, `repeat`; synthetic examples are pure
functions of their index). The state (`get_state`, a JSON-serialisable dict)
holds the number of examples consumed and, with state_mode "tf" (default),
the tf.data iterator's own checkpoint (zlib + base64; symbolic: the source
positions and the shuffle buffer, KBs, not the other buffers), which
restores instantly. Without it (state_mode "count",
or a changed batch size) `set_state` rebuilds the stream and `skip`s the
consumed examples inside tf.data before batching: exact, but it costs the
preprocessing of everything skipped.

Multi-host: `batch_size` is the GLOBAL batch; shard `shard_index` of
`num_shards` (normally `jax.process_index()` of `jax.process_count()`)
yields `batch_size // num_shards` rows of disjoint examples. Each host keeps
its own iterator state.
"""
from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import tempfile
import weakref
import zlib
from typing import Dict, Optional

import numpy as np
import seqio
import tensorflow as tf

from famjax.data import tasks as _tasks  # registers the default tasks

try:  # tf.data must not take accelerator memory away from JAX.
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # already initialised
  pass

STATE_VERSION = 1
STATE_MODES = ("tf", "count")
# Live iterators, closed at exit: a tf.data iterator whose background threads
# run Python (the synthetic generators) can deadlock interpreter shutdown if
# it is still alive then.
_LIVE: "weakref.WeakSet[DataIterator]" = weakref.WeakSet()
_DROP_FEATURES = ("decoder_causal_attention",)
# Arguments that must match between a saved state and the iterator restoring it.
_IDENTITY = ("task", "split", "seq_len", "seed", "shuffle", "pack",
             "shard_index", "num_shards", "num_epochs", "targets_length")


def task_feature_lengths(task: seqio.Task, seq_len: int,
                         targets_length: Optional[int] = None) -> Dict[str, int]:
  """Task feature lengths whose model (decoder) length is `seq_len`."""
  if "inputs" not in task.output_features:
    return {"targets": seq_len}
  if targets_length is None:
    targets_length = _tasks.TARGETS_LENGTH.get(task.name, max(1, seq_len // 4))
  if not 0 < targets_length < seq_len:
    raise ValueError(
        f"targets_length={targets_length} must be in 1..seq_len-1 "
        f"(seq_len={seq_len}) for prefix-LM task {task.name!r}.")
  return {"inputs": seq_len - targets_length, "targets": targets_length}


def _get_task(task_name: str):
  try:
    return seqio.get_mixture_or_task(task_name)
  except (ValueError, KeyError) as e:
    known = sorted(seqio.TaskRegistry.names())
    raise ValueError(f"unknown seqio task or mixture {task_name!r}; registered "
                     f"tasks: {known}") from e


class DataIterator:
  """Iterator of numpy batches with `get_state` / `set_state`."""

  def __init__(self, *, task, split, seq_len, batch_size, seed, shuffle, pack,
               shard_index, num_shards, num_epochs, targets_length,
               state_mode="tf"):
    if state_mode not in STATE_MODES:
      raise ValueError(f"state_mode={state_mode!r} must be one of {STATE_MODES}.")
    self.task_name = task
    self.split = split
    self.seq_len = seq_len
    self.batch_size = batch_size
    self.local_batch_size = batch_size // num_shards
    self.seed = seed
    self.shuffle = shuffle
    self.pack = pack
    self.shard_index = shard_index
    self.num_shards = num_shards
    self.num_epochs = num_epochs
    self.state_mode = state_mode
    self.task = _get_task(task)
    self.feature_lengths = task_feature_lengths(self.task, seq_len,
                                                targets_length)
    self.targets_length = (self.feature_lengths["targets"]
                           if "inputs" in self.feature_lengths else None)
    self._examples = 0          # converted examples consumed so far
    self._batches = 0
    self._it = None             # the live tf.data iterator
    self._pending_tf = None     # tf.data state to restore on the next build
    _LIVE.add(self)

  def close(self):
    """Stop the background pipeline (it restarts where it stood on `next`)."""
    if self._it is not None and self.state_mode == "tf":
      self._pending_tf = _save_tf_iterator(self._it)
    self._it = None

  # ------------------------------------------------------------- building
  @property
  def vocabulary(self) -> seqio.Vocabulary:
    return self.task.output_features["targets"].vocabulary

  def dataset(self, skip_examples: int = 0) -> tf.data.Dataset:
    """The batched tf.data pipeline, starting after `skip_examples`."""
    shard = (seqio.ShardInfo(index=self.shard_index, num_shards=self.num_shards)
             if self.num_shards > 1 else None)
    ds = self.task.get_dataset(
        sequence_length=self.feature_lengths, split=self.split,
        shuffle=self.shuffle, seed=self.seed, shard_info=shard,
        num_epochs=self.num_epochs)
    ds = seqio.DecoderFeatureConverter(pack=self.pack)(ds, self.feature_lengths)
    ds = ds.map(lambda ex: {k: v for k, v in ex.items()
                            if k not in _DROP_FEATURES})
    if skip_examples:
      ds = ds.skip(skip_examples)
    ds = ds.batch(self.local_batch_size, drop_remainder=self.num_epochs is None)
    options = tf.data.Options()
    options.deterministic = True
    # The synthetic generators are pure functions of the example index, so
    # their Python map holds no state a checkpoint would need.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    # Checkpoints hold the position in the source and the shuffle buffer,
    # not the prefetch and parallel-map buffers (which would be MBs of
    # tokenized documents); restoring recomputes those elements.
    options.experimental_symbolic_checkpoint = True
    ds = ds.with_options(options)
    return ds.prefetch(2)

  def _build(self):
    if self._pending_tf is not None:
      it = iter(self.dataset())
      try:
        _restore_tf_iterator(it, self._pending_tf)
        self._pending_tf = None
        return it
      except Exception as e:  # pylint: disable=broad-except
        logging.warning(
            "famjax data: the saved tf.data iterator state does not fit this "
            "pipeline (%s: %s); skipping %d examples instead.",
            type(e).__name__, str(e)[:200], self._examples)
        self._pending_tf = None
    return iter(self.dataset(self._examples))

  # ------------------------------------------------------------ iteration
  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._it is None:
      self._it = self._build()
    batch = next(self._it)   # StopIteration ends a finite (num_epochs) stream
    batch = {k: v.numpy() for k, v in batch.items()}
    rows = next(iter(batch.values())).shape[0]
    self._examples += rows
    self._batches += 1
    if rows < self.local_batch_size:   # last batch of a finite stream
      pad = self.local_batch_size - rows
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    return {k: v.astype(np.int32) for k, v in batch.items()}

  # ---------------------------------------------------------------- state
  def _identity(self) -> dict:
    return {"task": self.task_name, "split": self.split,
            "seq_len": self.seq_len, "seed": self.seed,
            "shuffle": self.shuffle, "pack": self.pack,
            "shard_index": self.shard_index, "num_shards": self.num_shards,
            "num_epochs": self.num_epochs,
            "targets_length": self.targets_length}

  def get_state(self) -> dict:
    """A JSON-serialisable dict: where this iterator stands.

    Always holds the example count; with state_mode "tf" also the tf.data
    iterator state ("tf_iterator": zlib + base64 of a tf.train.Checkpoint,
    about the size of the task's shuffle buffer).
    """
    state = dict(self._identity(), version=STATE_VERSION,
                 examples_consumed=self._examples,
                 batches_consumed=self._batches,
                 batch_size=self.batch_size)
    if self.state_mode == "tf":
      if self._it is not None:
        state["tf_iterator"] = _save_tf_iterator(self._it)
      elif self._pending_tf is not None:
        state["tf_iterator"] = self._pending_tf
    return state

  def set_state(self, state) -> "DataIterator":
    """Continue from `state` (a dict from `get_state`, or its JSON text).

    A saved tf.data state is restored when it fits (same arguments, same
    batch size, state_mode "tf"); otherwise the stream is rebuilt and the
    consumed examples are skipped (slower, but the batch size may change).
    Every other argument must match the saved one.
    """
    if isinstance(state, (str, bytes)):
      state = json.loads(state)
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
      raise ValueError(f"not a famjax data iterator state (version "
                       f"{STATE_VERSION}): {str(state)[:200]}")
    mine = self._identity()
    for key in _IDENTITY:
      if state.get(key) != mine[key]:
        raise ValueError(
            f"data iterator state was saved with {key}={state.get(key)!r} but "
            f"this iterator has {key}={mine[key]!r}; build the iterator with the "
            "same arguments to resume.")
    self._it = None
    self._examples = int(state["examples_consumed"])
    self._batches = int(state["batches_consumed"])
    use_tf = (self.state_mode == "tf" and state.get("tf_iterator") and
              state.get("batch_size") == self.batch_size)
    self._pending_tf = state["tf_iterator"] if use_tf else None
    return self


def _save_tf_iterator(iterator) -> dict:
  """tf.data iterator state as {file suffix: base64(zlib(bytes))}."""
  with tempfile.TemporaryDirectory() as d:
    prefix = os.path.join(d, "it")
    tf.train.Checkpoint(iterator=iterator).write(prefix)
    out = {}
    for name in sorted(os.listdir(d)):
      with open(os.path.join(d, name), "rb") as fh:
        out[name[len("it"):]] = base64.b64encode(
            zlib.compress(fh.read(), 1)).decode("ascii")
  return out


def _restore_tf_iterator(iterator, files: dict):
  with tempfile.TemporaryDirectory() as d:
    prefix = os.path.join(d, "it")
    for suffix, data in files.items():
      if "/" in suffix or ".." in suffix:
        raise ValueError(f"bad file name in iterator state: {suffix!r}")
      with open(prefix + suffix, "wb") as fh:
        fh.write(zlib.decompress(base64.b64decode(data)))
    tf.train.Checkpoint(iterator=iterator).read(prefix).assert_consumed()


@atexit.register
def _close_all():
  for it in list(_LIVE):
    it.close()


def make_iterator(task_name: str, split: str, *, seq_len: int, batch_size: int,
                  seed: int = 0, shuffle: bool = True, pack: bool = False,
                  shard_index: int = 0, num_shards: int = 1,
                  num_epochs: Optional[int] = None,
                  targets_length: Optional[int] = None,
                  state_mode: str = "tf") -> DataIterator:
  """A checkpointable iterator of batches [batch_size // num_shards, seq_len].

  num_epochs: None repeats forever (training); an int gives a finite stream
    whose last batch is padded with all-zero rows (loss weight 0).
  targets_length: for prefix-LM tasks, tokens of seq_len given to "targets"
    (default: the task's TARGETS_LENGTH).
  state_mode: "tf" (default) saves the tf.data iterator itself in the state:
    restoring is instant whatever the step, the state is about as large as
    the task's shuffle buffer (KBs). "count" saves only the example count: a tiny
    state, but restoring re-runs the preprocessing of every consumed example.
  """
  for name, v, lo in (("seq_len", seq_len, 2), ("batch_size", batch_size, 1),
                      ("num_shards", num_shards, 1)):
    if not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"make_iterator: {name}={v!r} must be an integer >= {lo}.")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"make_iterator: shard_index={shard_index} must be in "
                     f"0..num_shards-1 (num_shards={num_shards}).")
  if batch_size % num_shards:
    raise ValueError(
        f"make_iterator: batch_size={batch_size} (the global batch) must be "
        f"divisible by num_shards={num_shards}.")
  task = _get_task(task_name)
  if split not in task.splits:
    raise ValueError(f"task {task_name!r} has no split {split!r}; it has "
                     f"{list(task.splits)}.")
  return DataIterator(task=task_name, split=split, seq_len=int(seq_len),
                      batch_size=int(batch_size), seed=int(seed),
                      shuffle=bool(shuffle), pack=bool(pack),
                      shard_index=int(shard_index), num_shards=int(num_shards),
                      num_epochs=num_epochs, targets_length=targets_length,
                      state_mode=state_mode)


def check_token_ids(batch: Dict[str, np.ndarray], vocab_size: int) -> None:
  """ValueError if a token feature holds an id outside [0, vocab_size)."""
  for name, value in batch.items():
    if not name.endswith("_tokens"):
      continue
    arr = np.asarray(value)
    if arr.size == 0:
      continue
    hi, lo = int(arr.max()), int(arr.min())
    if hi >= vocab_size or lo < 0:
      bad = hi if hi >= vocab_size else lo
      raise ValueError(
          f"batch feature {name!r} holds token id {bad} (max id {hi}) but the "
          f"model vocabulary has vocab_size={vocab_size} (ids 0..{vocab_size - 1})"
          "; use the model's tokenizer for this task or a model with a larger "
          "vocab_size.")
