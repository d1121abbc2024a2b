"""TEST-ONLY stand-in for famjax.data.pipeline.make_iterator.

Used by the trainer tests (through gin: `train.data_fn = @fake_iterator`)
so that they do not depend on the seqio tasks being built in parallel.
Sequences follow a learnable rule (x[t+1] = (x[t] + stride) % vocab, stride
drawn per sequence), so a model's loss drops quickly. Batch `i` is a pure
function of (seed, split, i): the iterator state is just `i`.

`slow_iterator` wraps it and sleeps before every batch after the first
`fast_batches`, so a test can kill / SIGTERM a run mid-way at a known point.
"""
import time

import gin
import numpy as np


class FakeIterator:

  def __init__(self, split, *, seq_len, batch_size, seed, vocab_size,
               shard_index=0, num_shards=1, sleep_after=None, sleep_s=0.0,
               nan_at_batch=None):
    self.split, self.seq_len, self.batch_size = split, seq_len, batch_size
    self.seed, self.vocab = seed, vocab_size
    self.shard = (shard_index, num_shards)
    self.index = 0
    self.sleep_after, self.sleep_s = sleep_after, sleep_s
    self.nan_at_batch = nan_at_batch

  def __iter__(self):
    return self

  def __next__(self):
    if self.sleep_after is not None and self.index >= self.sleep_after:
      time.sleep(self.sleep_s)
    salt = {"train": 1, "validation": 2}.get(self.split, 3)
    rng = np.random.default_rng([self.seed, salt, self.index, *self.shard])
    self.index += 1
    b, t = self.batch_size, self.seq_len
    start = rng.integers(0, self.vocab, (b, 1))
    stride = rng.integers(1, 4, (b, 1))
    seq = (start + stride * np.arange(t + 1)[None]) % self.vocab
    w = np.ones((b, t), np.float32)
    w[:, : t // 8] = 0.0          # some unweighted tokens
    if self.index - 1 == self.nan_at_batch:
      w[0, -1] = np.nan           # forces a non-finite loss at this batch
    return {"decoder_input_tokens": seq[:, :-1].astype(np.int32),
            "decoder_target_tokens": seq[:, 1:].astype(np.int32),
            "decoder_loss_weights": w}

  def get_state(self):
    return {"index": self.index}

  def set_state(self, state):
    self.index = int(state["index"])


@gin.configurable
def fake_iterator(task, split, *, seq_len, batch_size, seed=0, shuffle=True,
                  pack=False, shard_index=0, num_shards=1, vocab_size=64,
                  nan_at_batch=None):
  del task, shuffle, pack
  return FakeIterator(split, seq_len=seq_len, batch_size=batch_size, seed=seed,
                      vocab_size=vocab_size, shard_index=shard_index,
                      num_shards=num_shards,
                      nan_at_batch=nan_at_batch if split == "train" else None)


@gin.configurable
def slow_iterator(task, split, *, seq_len, batch_size, seed=0, shuffle=True,
                  pack=False, shard_index=0, num_shards=1, vocab_size=64,
                  fast_batches=0, sleep_s=0.5):
  del task, shuffle, pack
  return FakeIterator(split, seq_len=seq_len, batch_size=batch_size, seed=seed,
                      vocab_size=vocab_size, shard_index=shard_index,
                      num_shards=num_shards,
                      sleep_after=fast_batches if split == "train" else None,
                      sleep_s=sleep_s)
