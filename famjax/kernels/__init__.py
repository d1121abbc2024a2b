"""Attention implementations behind one interface.

Every attention of famjax (block rows, FAM rows, the initial-FAM prompt pass,
full causal attention, one streaming step) is a call

    attend(q, parts, impl=..., scale=..., softcap=...)

q: [b, G, Q, H, D], G groups of Q queries (G = n blocks for the block rows
of a whole sequence, 1 elsewhere). parts: a tuple of `KeyPart`s, the key
sets the queries may see; query (g, i) sees keys `lo[g, i] .. hi[g, i]`
(inclusive, indices into the part) of group `g - shift` of the part, none if
`g < shift`. So a mask is a few contiguous key ranges per query row: for a
block row [memory blocks ; FAM keys ; causal own block], a memory block is
the block keys shifted by 1..m groups (read in place, never concatenated).

A part may carry a constant logit offset `bias` (a Python float, default 0):
its scores are `softcap(scale * q.k) + bias`, the offset added after the
soft-cap, so it shifts that part's share of the softmax without being capped
itself. A part with bias -inf contributes nothing: `attend` drops it before
any implementation runs (each query must still see a key of another part).
Only `AttentionConfig.fam_logit_bias` sets it, on the FAM keys that block
rows see (an option outside docs/fam.md's rules).

Implementations (`AttentionConfig.attention_impl`):
  xla      the explicit mask and the whole score matrix (the reference).
  chunked  online softmax over key chunks with its own gradient: no score
           matrix is ever stored (kernels/chunked.py). CPU default.
  cudnn    `jax.nn.dot_product_attention` with an explicit mask; cuDNN on a
           GPU, its XLA path elsewhere (kernels/cudnn.py). GPU default.
  splash   Pallas splash attention (kernels/splash.py). TPU default.
  auto     the default of the platform `jax.default_backend()` names, except
           where the whole score tensor of one (sequence, head) is small
           (at most SMALL_SCORES: one decoding step, the FAM rows' pass of one
           block, the initial-FAM prompt pass). There `xla` is the fastest
           everywhere and its scores cost no more memory than one chunk.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -0.7 * float(np.finfo(np.float32).max)
IMPLS = ("xla", "chunked", "splash", "cudnn", "auto")
# `auto` runs `xla` when G * Q * (keys) of one sequence and head is at most
# this: e.g. F = 64 FAM queries over F + B = 1088 keys (B = 1024).
SMALL_SCORES = 1 << 17
PLATFORM_DEFAULT = {"cpu": "chunked", "tpu": "splash", "gpu": "cudnn",
                    "cuda": "cudnn", "rocm": "cudnn"}


class KeyPart(NamedTuple):
  """One key set: k, v [b, G, S, K, D]; lo, hi int, broadcastable to [G, Q];
  bias: a Python float added to every score of this part (after soft-cap)."""
  k: jax.Array
  v: jax.Array
  lo: object
  hi: object
  shift: int = 0
  bias: float = 0.0


def dropped(p: KeyPart) -> bool:
  """Whether part p contributes nothing (bias -inf)."""
  return math.isinf(p.bias) and p.bias < 0


def biased(parts: Sequence[KeyPart]) -> bool:
  """Whether any part carries a (finite) nonzero bias."""
  return any(float(p.bias) != 0.0 for p in parts)


def resolve(impl: str) -> str:
  """The implementation `impl` names ('auto': by platform)."""
  if impl == "auto":
    return PLATFORM_DEFAULT.get(jax.default_backend(), "chunked")
  if impl not in IMPLS:
    raise ValueError(f"attention_impl={impl!r} is unknown; choose one of "
                     f"{IMPLS}.")
  return impl


def shift_groups(x, shift: int):
  """x [b, G, ...] -> y with y[:, g] = x[:, g - shift] (zeros for g < shift)."""
  if not shift:
    return x
  g = x.shape[1]
  if shift >= g:
    return jnp.zeros_like(x)
  pad = [(0, 0), (shift, 0)] + [(0, 0)] * (x.ndim - 2)
  return jnp.pad(x[:, :g - shift], pad)


def unshift_groups(x, shift: int):
  """The transpose of `shift_groups`: y[:, g] = x[:, g + shift]."""
  if not shift:
    return x
  g = x.shape[1]
  if shift >= g:
    return jnp.zeros_like(x)
  pad = [(0, 0), (0, shift)] + [(0, 0)] * (x.ndim - 2)
  return jnp.pad(x[:, shift:], pad)


def ranges(parts: Sequence[KeyPart], g: int, nq: int):
  """Per part (lo, hi) as int32 [G, Q] arrays, hi clipped to the part."""
  out = []
  for p in parts:
    lo = jnp.broadcast_to(jnp.asarray(p.lo, jnp.int32), (g, nq))
    hi = jnp.minimum(jnp.broadcast_to(jnp.asarray(p.hi, jnp.int32), (g, nq)),
                     p.k.shape[2] - 1)
    out.append((lo, hi))
  return out


def part_mask(lo, hi, start, size: int, shift: int):
  """Visibility [G, Q, size] of keys start..start+size-1 of one part, from
  iotas and the per-query ranges (never stored beyond one chunk)."""
  idx = start + jax.lax.iota(jnp.int32, size)
  mask = (idx >= lo[..., None]) & (idx <= hi[..., None])
  if shift:
    mask &= (jax.lax.iota(jnp.int32, lo.shape[0]) >= shift)[:, None, None]
  return mask


def attend(q, parts: Sequence[KeyPart], *, impl: str, scale: float,
           softcap: Optional[float] = None, chunk: int = 128):
  """Attention of q [b, G, Q, H, D] over `parts`; [b, G, Q, H, D] in q's dtype."""
  parts = [p for p in parts
           if p.shift < q.shape[1] and p.k.shape[2] > 0 and not dropped(p)]
  if impl == "auto" and q.shape[1] * q.shape[2] * sum(
      p.k.shape[2] for p in parts) <= SMALL_SCORES:
    impl = "xla"                     # a small score tensor: one tile
  impl = resolve(impl)
  if impl == "chunked":
    from famjax.kernels import chunked
    return chunked.attend(q, parts, scale=scale, softcap=softcap, chunk=chunk)
  if impl == "cudnn":
    from famjax.kernels import cudnn
    return cudnn.attend(q, parts, scale=scale, softcap=softcap)
  if impl == "splash":
    from famjax.kernels import splash
    return splash.attend(q, parts, scale=scale, softcap=softcap)
  from famjax.kernels import xla
  return xla.attend(q, parts, scale=scale, softcap=softcap)
