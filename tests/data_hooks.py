"""Test hooks around the real data iterator (famjax.data.pipeline).

`slow_iterator` sleeps before every train batch after the first
`fast_batches`, so a test can kill / SIGTERM a run mid-way at a known point;
`nan_iterator` puts a NaN loss weight into train batch `nan_at_batch`, to
force a non-finite loss at a known step. Both are bound through gin
(`train.data_fn = @slow_iterator`); state, restore and close go to the real
iterator.
"""
import time

import gin
import numpy as np

from famjax.data.pipeline import make_iterator


class _Hooked:

  def __init__(self, it, *, sleep_after=None, sleep_s=0.0, nan_at_batch=None):
    self.it, self.n = it, 0
    self.sleep_after, self.sleep_s = sleep_after, sleep_s
    self.nan_at_batch = nan_at_batch

  def __iter__(self):
    return self

  def __next__(self):
    if self.sleep_after is not None and self.n >= self.sleep_after:
      time.sleep(self.sleep_s)
    batch = dict(next(self.it))
    if self.n == self.nan_at_batch:
      w = batch["decoder_loss_weights"].astype(np.float32)
      w[0, -1] = np.nan
      batch["decoder_loss_weights"] = w
    self.n += 1
    return batch

  def get_state(self):        # the real iterator's state: a run with the
    return self.it.get_state()  # hook and one without resume each other

  def set_state(self, state):
    self.it.set_state(state)
    self.n = int(state["batches_consumed"])

  def close(self):
    self.it.close()


@gin.configurable
def slow_iterator(task, split, *, fast_batches=0, sleep_s=0.5, **kw):
  it = make_iterator(task, split, **kw)
  if split != "train":
    return it
  return _Hooked(it, sleep_after=fast_batches, sleep_s=sleep_s)


@gin.configurable
def nan_iterator(task, split, *, nan_at_batch=None, **kw):
  it = make_iterator(task, split, **kw)
  if split != "train":
    return it
  return _Hooked(it, nan_at_batch=nan_at_batch)


class _AllShards:
  """The rows that `num_shards` processes read together, in one process."""

  def __init__(self, its):
    self.its = its

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(it) for it in self.its]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self):
    return [it.get_state() for it in self.its]

  def set_state(self, state):
    for it, s in zip(self.its, state):
      it.set_state(s)

  def close(self):
    for it in self.its:
      it.close()


@gin.configurable
def all_shards_iterator(task, split, *, num_shards_to_join=2, **kw):
  """One process's stand-in for a multi-host run's global batch."""
  kw.pop("shard_index"), kw.pop("num_shards")
  return _AllShards([make_iterator(task, split, shard_index=i,
                                   num_shards=num_shards_to_join, **kw)
                     for i in range(num_shards_to_join)])
