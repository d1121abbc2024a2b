"""The three attention modes of ../shared/SPEC.md as pure `jax.numpy` math.

* `attend`            softmax attention of queries over an explicit key set.
* `full_attention`    causal attention over the whole sequence (query-chunked
                      so that long sequences fit in memory).
* `block_attention`   BSWA / FAM: every block of queries at once, each over
                      [memory blocks t-m..t-1 ; FAM keys of its pass ; own block].
* `fam_chain`         the FAM recurrence: a `lax.scan` over blocks that carries
                      only the F FAM rows of one layer.
* `stream_attention`  one chunk of new tokens against a decoding state.

The layer-specific parts (projections, norms, FFN) come in as callables, so
this file holds the attention rules alone and reads like SPEC.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -0.7 * float(np.finfo(np.float32).max)
NO_WINDOW = 2 ** 30   # "window" of a global layer


def attend(q, k, v, mask, *, scale: float, softcap: Optional[float] = None):
  """Grouped-query attention.

  q: [..., Q, H, D]; k, v: [..., S, K, D] with H % K == 0;
  mask: bool, broadcastable to [..., Q, S] (True = visible).
  Returns [..., Q, H, D] in q's dtype; scores and softmax in float32.
  """
  *lead, nq, h, d = q.shape
  kh = k.shape[-2]
  qg = (q * jnp.asarray(scale, q.dtype)).reshape(*lead, nq, kh, h // kh, d)
  s = jnp.einsum("...qkgd,...skd->...kgqs", qg, k,
                 preferred_element_type=jnp.float32)
  if softcap:
    s = jnp.tanh(s / softcap) * softcap
  s = jnp.where(mask[..., None, None, :, :], s, NEG_INF)
  p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
  o = jnp.einsum("...kgqs,...skd->...qkgd", p, v)
  return o.reshape(*lead, nq, h, d)


def in_window(q_pos, k_pos, window):
  """Native local window (Gemma 3): q_pos - k_pos < window."""
  if window is None:
    return True
  return (q_pos - k_pos) < window


# ----------------------------------------------------------------------- full
def full_attention(q, k, v, *, scale, softcap=None, window=None,
                   chunk: int = 1024):
  """Causal attention over whole sequences. q [b, T, H, D]; k, v [b, T, K, D].

  Sequences longer than `chunk` are processed a chunk of queries at a time
  (each chunk rematerialised in the backward pass) so memory is O(chunk * T).
  """
  t = q.shape[1]
  pos = jnp.arange(t)
  if t <= chunk:
    mask = (pos[None, :] <= pos[:, None]) & in_window(pos[:, None], pos[None, :],
                                                        window)
    return attend(q, k, v, mask, scale=scale, softcap=softcap)
  nc = -(-t // chunk)
  pad = nc * chunk - t
  qc = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  qc = qc.reshape(q.shape[0], nc, chunk, *q.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def one(args):
    qi, i = args
    qpos = i * chunk + jnp.arange(chunk)
    mask = (pos[None, :] <= qpos[:, None]) & in_window(qpos[:, None],
                                                       pos[None, :], window)
    return attend(qi, k, v, mask, scale=scale, softcap=softcap)

  out = jax.lax.map(one, (qc, jnp.arange(nc)))
  out = out.swapaxes(0, 1).reshape(q.shape[0], nc * chunk, *q.shape[2:])
  return out[:, :t]


# ---------------------------------------------------------------- bswa / fam
def block_layout(t: int, block: int):
  """Static layout of a T-token sequence in blocks of B: (n, pos [n, B], valid [n, B])."""
  n = -(-t // block)
  pos = np.arange(n * block).reshape(n, block)
  return n, pos, pos < t


def to_blocks(x, n, block):
  """[b, T, ...] -> [b, n, B, ...], zero-padding the last block."""
  pad = n * block - x.shape[1]
  if pad:
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return x.reshape(x.shape[0], n, block, *x.shape[2:])


def _memory(x, m):
  """x [b, n, B, ...] -> [b, n, m*B, ...]: blocks t-m .. t-1 (zeros before 0)."""
  b, n, blk = x.shape[:3]
  xp = jnp.pad(x, [(0, 0), (m, 0)] + [(0, 0)] * (x.ndim - 2))
  parts = [xp[:, m - i:m - i + n] for i in range(m, 0, -1)]
  return jnp.concatenate(parts, axis=2)


def block_attention(q, k, v, *, memory_segments: int, fam_k=None, fam_v=None,
                    scale, softcap=None, window=None):
  """BSWA (and the block rows of FAM), all blocks at once.

  q [b, n, B, H, D]; k, v [b, n, B, K, D]; fam_k, fam_v [b, n, F, K, D]: the
  FAM keys of each block's pass. A query at row j of block t sees every key
  of blocks t-m..t-1, all F FAM keys and own-block keys <= j (SPEC `bswa`,
  `fam`); a native window, if any, applies to block keys only. Padded keys
  sit only after the last real token, so causality hides them.
  """
  n, blk = q.shape[1], q.shape[2]
  pos = np.arange(n * blk).reshape(n, blk)
  keys, vals, masks = [], [], []
  m = min(memory_segments, n - 1)
  if m > 0:
    keys.append(_memory(k, m))
    vals.append(_memory(v, m))
    mem_pos = np.concatenate(
        [np.concatenate([np.full((m, blk), -1), pos])[m - i:m - i + n]
         for i in range(m, 0, -1)], axis=1)                    # [n, m*B]
    mask = jnp.asarray((mem_pos >= 0)[:, None, :])
    masks.append(mask & in_window(pos[:, :, None], mem_pos[:, None, :], window))
  if fam_k is not None:
    keys.append(fam_k)
    vals.append(fam_v)
    masks.append(jnp.ones((n, blk, fam_k.shape[2]), bool))
  causal = np.tril(np.ones((blk, blk), bool))[None]
  masks.append(jnp.asarray(causal) & in_window(pos[:, :, None], pos[:, None, :],
                                                window))
  keys.append(k)
  vals.append(v)
  mask = jnp.broadcast_to(jnp.concatenate(
      [jnp.broadcast_to(mk, (n, blk, mk.shape[-1])) for mk in masks], -1),
                          (1, n, blk, sum(mk.shape[-1] for mk in masks)))
  return attend(q, jnp.concatenate(keys, 2), jnp.concatenate(vals, 2), mask,
                scale=scale, softcap=softcap)


def fam_pass(project: Callable, finish: Callable, phi, blk_k, blk_v, blk_mask,
             first, *, scale, softcap=None):
  """One layer's pass over the F FAM rows of one block (SPEC `fam`).

  project(phi) -> (q, k, v) of the FAM rows at their positions;
  finish(phi, attn_out, residual) -> the rows after residual, norm and FFN.
  A FAM query sees all F FAM keys of this pass and the block keys where
  `blk_mask` [..., F, B] is True (all unpadded keys of the block, within a
  native window). In the pass over block 0 the attention residual is zero.
  Returns (new phi, FAM keys, FAM values) of this pass.
  """
  qf, kf, vf = project(phi)
  f = phi.shape[-2]
  mask = jnp.concatenate(
      [jnp.ones(blk_mask.shape[:-1] + (f,), bool), blk_mask], axis=-1)
  o = attend(qf, jnp.concatenate([kf, blk_k], -3),
             jnp.concatenate([vf, blk_v], -3), mask, scale=scale,
             softcap=softcap)
  residual = jnp.where(first, 0.0, 1.0).astype(phi.dtype)
  return finish(phi, o, residual), kf, vf


def fam_chain(step: Callable, phi0, k, v, unroll: int = 1):
  """The FAM recurrence over all blocks of one layer.

  step(phi, k_t, v_t, t) -> (phi_t, fam_k_t, fam_v_t) runs one `fam_pass`.
  k, v: [b, n, B, K, D] block keys of this layer. Returns the last phi and
  the FAM keys / values of every block's pass, [b, n, F, K, D].
  """
  n = k.shape[1]

  def body(phi, xs):
    kt, vt, t = xs
    phi, fk, fv = step(phi, kt, vt, t)
    return phi, (fk, fv)

  phi, (fk, fv) = jax.lax.scan(
      body, phi0, (k.swapaxes(0, 1), v.swapaxes(0, 1), jnp.arange(n)),
      unroll=unroll)
  return phi, fk.swapaxes(0, 1), fv.swapaxes(0, 1)


# ------------------------------------------------------------------ streaming
def stream_attention(q, q_pos, parts, *, scale, softcap=None, window=None):
  """New queries q [b, c, H, D] at positions q_pos [c] against a decoding state.

  parts: list of (k, v, k_pos) with k, v [b, S, K, D]; k_pos [S] gives the
  keys' positions (-1 marks an empty slot) and makes them visible when
  0 <= k_pos <= q_pos and inside the native window; k_pos None makes them
  always visible (the FAM keys of the current block's pass).
  """
  keys, vals, masks = [], [], []
  for k, v, k_pos in parts:
    keys.append(k)
    vals.append(v)
    if k_pos is None:
      masks.append(jnp.ones((q_pos.shape[0], k.shape[1]), bool))
    else:
      mk = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])
      masks.append(mk & in_window(q_pos[:, None], k_pos[None, :], window))
  mask = jnp.concatenate(masks, -1)[None]
  return attend(q, jnp.concatenate(keys, 1), jnp.concatenate(vals, 1), mask,
                scale=scale, softcap=softcap)
