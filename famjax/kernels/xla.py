"""`xla` attention: the explicit mask and the whole score matrix.

The plainest statement of the interface (see famjax/kernels/__init__.py): the
parts are concatenated (memory blocks copied out of the block keys), their
ranges become one boolean mask, and the softmax runs over all keys. Every
other implementation is tested against this one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from famjax.kernels import NEG_INF, biased, part_mask, ranges, shift_groups


def key_bias(parts):
  """The per-key logit offsets [S] of all parts together (float32), or None
  when every part has bias 0."""
  if not biased(parts):
    return None
  return jnp.concatenate([jnp.full((p.k.shape[2],), p.bias, jnp.float32)
                          for p in parts])


def dense_inputs(q, parts):
  """(keys, values [b, G, S, K, D], mask [G, Q, S]) of all parts together."""
  g, nq = q.shape[1], q.shape[2]
  ks, vs, masks = [], [], []
  for p, (lo, hi) in zip(parts, ranges(parts, g, nq)):
    ks.append(shift_groups(p.k, p.shift))
    vs.append(shift_groups(p.v, p.shift))
    masks.append(part_mask(lo, hi, 0, p.k.shape[2], p.shift))
  return (jnp.concatenate(ks, 2), jnp.concatenate(vs, 2),
          jnp.concatenate(masks, -1))


def grouped(q, k, v, mask, *, scale, softcap=None, bias=None):
  """Grouped-query softmax attention with an explicit mask.

  q [..., Q, H, D]; k, v [..., S, K, D], H % K == 0; mask broadcastable to
  [..., Q, S]; bias: None or per-key offsets [S] added after the soft-cap.
  Scores and softmax in float32; returns q's dtype.
  """
  *lead, nq, h, d = q.shape
  kh = k.shape[-2]
  qg = (q * jnp.asarray(scale, q.dtype)).reshape(*lead, nq, kh, h // kh, d)
  s = jnp.einsum("...qkgd,...skd->...kgqs", qg, k,
                 preferred_element_type=jnp.float32)
  if softcap:
    s = jnp.tanh(s / softcap) * softcap
  if bias is not None:
    s = s + bias
  s = jnp.where(mask[..., None, None, :, :], s, NEG_INF)
  p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  o = jnp.einsum("...kgqs,...skd->...qkgd", p, v)
  return o.reshape(*lead, nq, h, d)


def attend(q, parts, *, scale, softcap=None):
  k, v, mask = dense_inputs(q, parts)
  return grouped(q, k, v, mask[None], scale=scale, softcap=softcap,
                 bias=key_bias(parts))
