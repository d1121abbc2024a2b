"""Loss weights over the whole sequence for prefix-LM tasks (a `train.data_fn`).

seqio's decoder features weight only the "targets" of a prefix-LM example
(the PassKey answer: 6 tokens of a 512-byte sequence). `weighted_iterator`
wraps `famjax.data.pipeline.make_iterator` and, on the chosen splits, puts
`input_weight` on every prompt token and `target_weight` on every answer
token, so a model also learns the language of its prompts (for PassKey: the
needle repeats the key, which trains copying). Other splits keep the task's
own weights (eval loss and accuracy stay answer-only).

In a gin run file:

    import famjax.data.loss_weights
    train.data_fn = @weighted_iterator
    weighted_iterator.input_weight = 1.0
    weighted_iterator.target_weight = 1.0
"""
from __future__ import annotations

import functools
from typing import Sequence

import gin
import numpy as np

from famjax.data import pipeline

WEIGHTS = "decoder_loss_weights"
TARGETS = "decoder_target_tokens"


def reweight(batch: dict, input_weight: float, target_weight: float) -> dict:
  """A batch whose loss weights are `target_weight` where the task weighted a
  token, `input_weight` on the other non-padding tokens, 0 on padding."""
  w = batch[WEIGHTS]
  real = batch[TARGETS] != 0
  new = np.where(w > 0, np.float32(target_weight),
                 np.where(real, np.float32(input_weight), np.float32(0)))
  return dict(batch, **{WEIGHTS: new.astype(np.float32)})


class ReweightedIterator:
  """A data iterator whose batches pass through `fn` (a reweighting); state
  (get_state, set_state, close, ...) is the wrapped iterator's."""

  def __init__(self, it, fn):
    self._it = it
    self._fn = fn

  def __iter__(self):
    return self

  def __next__(self):
    return self._fn(next(self._it))

  def __getattr__(self, name):        # get_state, set_state, close, ...
    return getattr(self._it, name)


@gin.configurable
def weighted_iterator(task_name: str, split: str, *, input_weight: float = 1.0,
                      target_weight: float = 1.0,
                      splits: Sequence[str] = ("train",), **kwargs):
  """`make_iterator(task_name, split, **kwargs)`, reweighted on `splits`."""
  if input_weight < 0 or target_weight < 0:
    raise ValueError(
        f"weighted_iterator: input_weight={input_weight} and target_weight="
        f"{target_weight} must be >= 0.")
  it = pipeline.make_iterator(task_name, split, **kwargs)
  if split not in tuple(splits):
    return it
  return ReweightedIterator(it, functools.partial(
      reweight, input_weight=float(input_weight),
      target_weight=float(target_weight)))


# ------------------------------------------------- answers only memory gives
def memory_answers(inputs, targets, block_size: int, token_ids) -> np.ndarray:
  """[b, T] bool: targets in `token_ids` (e.g. the digits) whose block holds
  none of those tokens among the inputs up to that position, while an
  earlier block does (the first such token of a sequence, the needle, has
  nothing to recall).

  Position t predicts targets[t] from inputs[.. t]; its block is t //
  block_size. With m = 0 memory segments, such a target can come from
  earlier blocks only through the FAM (a PassKey answer in a block the
  needle and earlier answers are not in).
  """
  ids = np.asarray(list(token_ids))
  b, t = inputs.shape
  n = -(-t // block_size)
  pad = n * block_size - t
  hit = np.isin(inputs, ids)
  seen = np.pad(hit, ((0, 0), (0, pad)))
  seen = np.cumsum(seen.reshape(b, n, block_size), axis=-1).reshape(b, -1)
  before = np.cumsum(hit, axis=-1) > 0
  return np.isin(targets, ids) & (seen[:, :t] == 0) & before


def memory_reweight(batch: dict, block_size: int, token_ids,
                    memory_weight: float, token_weight: float,
                    input_weight: float) -> dict:
  """Weights: `memory_weight` on `memory_answers`, `token_weight` on the
  other targets in `token_ids`, `input_weight` on every other real token."""
  inputs, targets = batch["decoder_input_tokens"], batch[TARGETS]
  mem = memory_answers(inputs, targets, block_size, token_ids)
  tok = np.isin(targets, np.asarray(list(token_ids)))
  new = np.where(mem, np.float32(memory_weight),
                 np.where(tok, np.float32(token_weight),
                          np.where(targets != 0, np.float32(input_weight),
                                   np.float32(0))))
  return dict(batch, **{WEIGHTS: new.astype(np.float32)})


@gin.configurable
def memory_weighted_iterator(task_name: str, split: str, *,
                             block_size: int = gin.REQUIRED,
                             tokens: str = "0123456789",
                             memory_weight: float = 1.0,
                             token_weight: float = 0.1,
                             input_weight: float = 0.01,
                             splits: Sequence[str] = ("train",), **kwargs):
  """`make_iterator(task_name, split, **kwargs)` with the loss on the answers
  only the FAM can give (`memory_answers` of the characters `tokens` in the
  byte vocabulary), on `splits`."""
  if min(memory_weight, token_weight, input_weight) < 0:
    raise ValueError("memory_weighted_iterator: weights must be >= 0.")
  if not isinstance(block_size, int) or block_size <= 0:
    raise ValueError(f"memory_weighted_iterator.block_size={block_size!r} must "
                     "be a positive integer (the run's block size).")
  from famjax.data.vocab import get_vocabulary
  ids = tuple(get_vocabulary("byte").encode(tokens))
  it = pipeline.make_iterator(task_name, split, **kwargs)
  if split not in tuple(splits):
    return it
  return ReweightedIterator(it, functools.partial(
      memory_reweight, block_size=block_size, token_ids=ids,
      memory_weight=memory_weight, token_weight=token_weight,
      input_weight=input_weight))
