"""RMSNorm, including Gemma's `x_hat * (1 + w)` variant."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from famjax.layers.linear import param_with_axes


class RMSNorm(nnx.Module):

  def __init__(self, dim, *, eps=1e-6, plus_one=False, axis_name="embed",
               param_dtype=jnp.float32, stack=None, rngs: nnx.Rngs):
    self.eps = eps
    self.plus_one = plus_one
    # Gemma stores w with y = x_hat * (1 + w): the identity is w = 0.
    self.scale = param_with_axes(rngs.params(), (dim,), (axis_name,),
                                 init="zeros" if plus_one else "ones",
                                 dtype=param_dtype, stack=stack)

  def __call__(self, x):
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    w = self.scale[...].astype(jnp.float32)
    if self.plus_one:
      w = 1.0 + w
    return (xf * w).astype(dtype)
