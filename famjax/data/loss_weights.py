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


class WeightedIterator:
  """A data iterator with reweighted batches; state as the wrapped one's."""

  def __init__(self, it, input_weight: float, target_weight: float):
    self._it = it
    self.input_weight = float(input_weight)
    self.target_weight = float(target_weight)

  def __iter__(self):
    return self

  def __next__(self):
    return reweight(next(self._it), self.input_weight, self.target_weight)

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
  return WeightedIterator(it, input_weight, target_weight)
