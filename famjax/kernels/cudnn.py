"""`cudnn` attention: `jax.nn.dot_product_attention` with an explicit mask.

The groups fold into the batch, the parts are concatenated as in `xla` and
their ranges become the boolean mask [b*G, 1, Q, S] of the call. On a GPU
with bfloat16 / float16 inputs the call asks for the cuDNN fused kernel;
elsewhere (float32 on a GPU, or any other platform) the same call runs
with `implementation=None` / `'xla'`, so the masking is the same code path
everywhere. The call has no logit soft-cap: soft-capped models (Gemma 2
style `attn_logit_softcap`) run the `xla` implementation instead. Parts with
a logit bias become the call's additive `bias` [1, 1, Q, S] (in q's dtype),
added to the scaled scores as `xla` adds it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from famjax.kernels import xla


def implementation(dtype) -> str | None:
  """What to ask `jax.nn.dot_product_attention` for on this platform."""
  if jax.default_backend() != "gpu":
    return "xla"
  return "cudnn" if dtype in (jnp.bfloat16, jnp.float16) else None


def attend(q, parts, *, scale, softcap=None):
  if softcap:
    return xla.attend(q, parts, scale=scale, softcap=softcap)
  k, v, mask = xla.dense_inputs(q, parts)
  b, g, nq, h, d = q.shape
  s, kh = k.shape[2], k.shape[3]
  mask = jnp.broadcast_to(mask[None], (b, g, nq, s)).reshape(b * g, 1, nq, s)
  bias = xla.key_bias(parts)
  if bias is not None:
    bias = jnp.broadcast_to(bias.astype(q.dtype), (1, 1, nq, s))
  o = jax.nn.dot_product_attention(
      q.reshape(b * g, nq, h, d), k.reshape(b * g, s, kh, d),
      v.reshape(b * g, s, kh, d), mask=mask, bias=bias, scale=scale,
      implementation=implementation(jnp.dtype(q.dtype)))
  return o.reshape(b, g, nq, h, d)
