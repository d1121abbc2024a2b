"""Dense projections and embeddings with logical axis names.

Every parameter is an `nnx.Param` carrying `logical_axes` metadata (one name
per dimension); `famjax.partitioning` maps those names to mesh axes. Layers
of a stack are created with a leading `layers` dimension (`stack=L`), so the
same parameter tree serves a `lax.scan` over layers and a Python loop.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import nnx


def _as_tuple(x) -> Tuple[int, ...]:
  return tuple(x) if isinstance(x, (tuple, list)) else (x,)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x, w, n_in: int):
  """x [..., *in] @ w [*in, *out] -> [..., *out] (the last n_in dims of x
  contract with the first n_in of w), with a hand-written gradient.

  The weight gradient contracts x and dy over every leading (token) dim.
  Left to autodiff, XLA:CPU lays that out by transposing dy, and fuses the
  transpose into dy's producer (the SwiGLU backward: an elementwise loop
  writing [ffn, tokens] in strided order, ~20% of a small model's train
  step). Here the smaller of x and dy is the one contracted as the
  transposed operand, and the [*out, *in] result, if any, is transposed
  back (a weight-sized copy). Same math, same values up to summation order.
  """
  c = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
  return jax.lax.dot_general(x, w, (c, ((), ())))


def _project_fwd(x, w, n_in):
  return project(x, w, n_in), (x, w)


def _project_bwd(n_in, res, dy):
  x, w = res
  lead, n_out = x.ndim - n_in, w.ndim - n_in
  dx = jax.lax.dot_general(
      dy, w, ((tuple(range(lead, dy.ndim)), tuple(range(n_in, w.ndim))),
              ((), ())))
  tokens = (tuple(range(lead)), tuple(range(lead)))
  if x.size <= dy.size:
    dw = jax.lax.dot_general(x, dy, (tokens, ((), ())))
  else:
    dw = jax.lax.dot_general(dy, x, (tokens, ((), ())))
    dw = jnp.transpose(dw, tuple(range(n_out, n_out + n_in)) +
                       tuple(range(n_out)))
  return dx.astype(x.dtype), dw.astype(w.dtype)


project.defvjp(_project_fwd, _project_bwd)


def param_with_axes(key, shape, axes, *, std=0.02, init="normal",
                    dtype=jnp.float32, stack: Optional[int] = None):
  """An nnx.Param of `shape` (optionally stacked [stack, *shape]).

  init: "normal" (std, from `key`), "zeros", "ones", or a number (every
  entry that constant; `key` unused).
  """
  if stack is not None:
    shape = (stack,) + tuple(shape)
    axes = ("layers",) + tuple(axes)
  if init == "normal":
    value = std * jax.random.normal(key, shape, jnp.float32)
  elif init == "zeros":
    value = jnp.zeros(shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  elif isinstance(init, (int, float)) and not isinstance(init, bool):
    value = jnp.full(shape, init, jnp.float32)
  else:
    raise ValueError(f"unknown init {init!r}")
  return nnx.Param(value.astype(dtype), logical_axes=tuple(axes))


class Dense(nnx.Module):
  """y = x @ kernel (+ bias), contracting the last `len(in_features)` dims.

  kernel has shape [*in_features, *out_features].
  LoRA (lora_rank r > 0): y += (lora_alpha / r) * (x @ lora_a) @ lora_b with
  lora_a [*in, r] (normal, std 1/sqrt(fan_in)) and lora_b [r, *out] (zeros),
  logical axes (*in_axes, "lora") and ("lora", *out_axes).
  """

  def __init__(self, in_features, out_features, *, in_axes: Sequence[str],
               out_axes: Sequence[str], rngs: nnx.Rngs, use_bias=False,
               std=0.02, param_dtype=jnp.float32, stack=None,
               lora_rank: int = 0, lora_alpha: float = 16.0):
    self.in_features = _as_tuple(in_features)
    self.out_features = _as_tuple(out_features)
    key = rngs.params()
    self.kernel = param_with_axes(
        key, self.in_features + self.out_features,
        tuple(in_axes) + tuple(out_axes), std=std, dtype=param_dtype,
        stack=stack)
    if use_bias:
      self.bias = param_with_axes(rngs.params(), self.out_features,
                                  tuple(out_axes), init="zeros",
                                  dtype=param_dtype, stack=stack)
    else:
      self.bias = None
    self.lora_scale = lora_alpha / lora_rank if lora_rank else 0.0
    if lora_rank:
      # Derived from the kernel's key: LoRA does not shift the base init.
      fan_in = math.prod(self.in_features)
      self.lora_a = param_with_axes(
          jax.random.fold_in(key, 1), self.in_features + (lora_rank,),
          tuple(in_axes) + ("lora",), std=fan_in ** -0.5, dtype=param_dtype,
          stack=stack)
      self.lora_b = param_with_axes(
          None, (lora_rank,) + self.out_features, ("lora",) + tuple(out_axes),
          init="zeros", dtype=param_dtype, stack=stack)
    else:
      self.lora_a = self.lora_b = None

  def __call__(self, x, dtype=None):
    dtype = dtype or x.dtype
    n_in = len(self.in_features)
    x = x.astype(dtype)
    kernel = self.kernel[...].astype(dtype)
    y = project(x, kernel, n_in)
    if self.lora_a is not None:
      xa = project(x, self.lora_a[...].astype(dtype), n_in)
      y = y + jnp.asarray(self.lora_scale, dtype) * project(
          xa, self.lora_b[...].astype(dtype), 1)
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
