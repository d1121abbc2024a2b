"""Dense projections and embeddings with logical axis names.

Every parameter is an `nnx.Param` carrying `logical_axes` metadata (one name
per dimension); `famjax.partitioning` maps those names to mesh axes. Layers
of a stack are created with a leading `layers` dimension (`stack=L`), so the
same parameter tree serves a `lax.scan` over layers and a Python loop.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import nnx


def _as_tuple(x) -> Tuple[int, ...]:
  return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def param_with_axes(key, shape, axes, *, std=0.02, init="normal",
                    dtype=jnp.float32, stack: Optional[int] = None):
  """An nnx.Param of `shape` (optionally stacked [stack, *shape])."""
  if stack is not None:
    shape = (stack,) + tuple(shape)
    axes = ("layers",) + tuple(axes)
  if init == "normal":
    value = std * jax.random.normal(key, shape, jnp.float32)
  elif init == "zeros":
    value = jnp.zeros(shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    raise ValueError(f"unknown init {init!r}")
  return nnx.Param(value.astype(dtype), logical_axes=tuple(axes))


class Dense(nnx.Module):
  """y = x @ kernel (+ bias), contracting the last `len(in_features)` dims.

  kernel has shape [*in_features, *out_features].
  """

  def __init__(self, in_features, out_features, *, in_axes: Sequence[str],
               out_axes: Sequence[str], rngs: nnx.Rngs, use_bias=False,
               std=0.02, param_dtype=jnp.float32, stack=None):
    self.in_features = _as_tuple(in_features)
    self.out_features = _as_tuple(out_features)
    self.kernel = param_with_axes(
        rngs.params(), self.in_features + self.out_features,
        tuple(in_axes) + tuple(out_axes), std=std, dtype=param_dtype,
        stack=stack)
    if use_bias:
      self.bias = param_with_axes(rngs.params(), self.out_features,
                                  tuple(out_axes), init="zeros",
                                  dtype=param_dtype, stack=stack)
    else:
      self.bias = None

  def __call__(self, x, dtype=None):
    dtype = dtype or x.dtype
    n_in = len(self.in_features)
    kernel = self.kernel[...].astype(dtype)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(dtype), kernel, (contract, ((), ())))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


class Embed(nnx.Module):
  """Token embedding table [vocab, d]; `attend` gives tied output logits."""

  def __init__(self, vocab_size, d_model, *, rngs: nnx.Rngs, std=0.02,
               param_dtype=jnp.float32):
    self.embedding = param_with_axes(rngs.params(), (vocab_size, d_model),
                                     ("vocab", "embed"), std=std,
                                     dtype=param_dtype)

  def __call__(self, tokens, dtype):
    return jnp.take(self.embedding[...], tokens, axis=0).astype(dtype)

  def attend(self, x):
    return jnp.einsum("...d,vd->...v", x, self.embedding[...].astype(x.dtype))
