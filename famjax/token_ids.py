"""Token ids checked against a model's vocabulary before they reach it.

An id outside [0, vocab_size) would index past the embedding table and
give NaN logits; concrete ids (numpy, lists, jax arrays outside `jit`) are
checked here, traced ones (inside a compiled step) cannot be and are not.
"""
from __future__ import annotations

import jax
import numpy as np

from famjax.errors import UserError


def check_token_ids(tokens, vocab_size: int, what: str = "tokens"):
  """UserError naming the offending id if any token is outside the vocab."""
  if isinstance(tokens, jax.core.Tracer):
    return
  arr = np.asarray(tokens)
  if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
    bad = int(arr.max() if arr.max() >= vocab_size else arr.min())
    raise UserError(f"{what} contain id {bad}, outside the model vocabulary "
                    f"[0, {vocab_size}); use the model's own tokenizer.")
