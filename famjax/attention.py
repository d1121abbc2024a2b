"""The attention rules of the three modes (docs/fam.md) as key ranges.

Every attention call of the model goes through one interface,
`famjax.kernels.attend(q, parts)`: queries grouped as [b, G, Q, H, D] and a
few `KeyPart`s, each a key set with an inclusive key range per query. This
file turns the rules of each mode into those parts, in one place for the
whole-sequence forward, the streaming step and the initial FAM:

* `Attender`           the chosen implementation (`attention_impl`), scale
                       and soft-cap; `attender(q, parts)` runs it.
* `BlockLayout`        positions of block rows and FAM rows (block t's FAM
                       rows sit at the last F positions of block t) and the
                       key ranges of
  - `block_rows`       every block of queries at once over [memory blocks
                       t-m..t-1 (the block keys shifted by 1..m groups) ;
                       FAM keys of its pass ; own block, causal];
  - `fam_rows`         the F FAM queries of one pass over [FAM keys ;
                       unpadded keys of the block];
  - `stream_rows`      new tokens against a decoding state [ring of m
                       blocks ; FAM keys ; current block so far].
* `causal_rows`        full causal attention (also the full KV cache).
* `fam_pass`, `fam_chain`  one FAM update and its `lax.scan` over blocks.

A native local window (Gemma 3) narrows each range from below; it applies
to block keys only, never to FAM keys. `BlockLayout.fam_bias`
(`AttentionConfig.fam_logit_bias`, outside docs/fam.md's rules) is the logit
offset of the FAM-key part of the block rows and of the streaming rows; the
FAM rows never carry it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from famjax import kernels
from famjax.kernels import KeyPart

NO_WINDOW = 2 ** 30   # "window" of a global layer


@dataclasses.dataclass(frozen=True)
class Attender:
  """Runs `famjax.kernels.attend` with one implementation and its options."""
  impl: str = "auto"
  scale: float = 1.0
  softcap: Optional[float] = None
  chunk: int = 128

  def __call__(self, q, parts):
    return kernels.attend(q, parts, impl=self.impl, scale=self.scale,
                          softcap=self.softcap, chunk=self.chunk)


def first_visible(rel, window):
  """Lowest visible key index of a key set starting `rel` positions before
  the query (native window: query - key < window)."""
  if window is None:
    return 0
  return jnp.maximum(0, rel - window + 1)


def causal_rows(k, v, q_pos, window=None):
  """Keys k, v [b, S, K, D] at positions 0..S-1 seen causally by queries at
  q_pos [Q] (one group)."""
  return [KeyPart(k[:, None], v[:, None], first_visible(q_pos, window), q_pos)]


def all_rows(k, v):
  """Keys k, v [b, S, K, D] seen by every query (one group)."""
  return [KeyPart(k[:, None], v[:, None], 0, k.shape[1] - 1)]


# ---------------------------------------------------------------- blocks
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


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """Block size B, memory segments m, FAM length F (0: bswa) and the logit
  offset of block queries on FAM keys (0.0: the rules; -inf: none seen)."""
  block: int
  memory: int
  fam: int
  fam_bias: float = 0.0

  def fam_positions(self, t):
    """Positions of the FAM rows of block t's pass: the last F of block t.
    t: an int, an int array [n] ([n, F] out) or a traced scalar."""
    b, f = self.block, self.fam
    if isinstance(t, np.ndarray):
      return t[:, None] * b + (b - f) + np.arange(f)
    return t * b + (b - f) + jnp.arange(f)

  def block_rows(self, k, v, fam_k=None, fam_v=None, window=None):
    """Parts for the block rows of all blocks, k, v [b, n, B, K, D].

    Query j of block t sees every key of blocks t-m..t-1 (the block keys
    shifted by s = m..1 groups; blocks before 0 do not exist), all F FAM
    keys of its pass (fam_k [b, n, F, K, D], their logits offset by
    `fam_bias`) and own-block keys <= j. Padded keys sit only after the last real token, so causality hides them.
    """
    n, blk = k.shape[1], k.shape[2]
    j = np.arange(blk)[None, :]
    parts = [KeyPart(k, v, first_visible(j + s * blk, window), blk - 1, s)
             for s in range(min(self.memory, n - 1), 0, -1)]
    if fam_k is not None:
      parts.append(KeyPart(fam_k, fam_v, 0, fam_k.shape[2] - 1,
                           bias=self.fam_bias))
    parts.append(KeyPart(k, v, first_visible(j, window), j))
    return parts

  def fam_rows(self, fam_k, fam_v, blk_k, blk_v, valid, window=None):
    """Parts for the F FAM queries of one pass: all FAM keys fam_k
    [b, F, K, D] and the first `valid` keys of the block blk_k [b, B, K, D]
    (within the native window)."""
    i = np.arange(self.fam)[None, :]
    rel = self.block - self.fam + i
    return [KeyPart(fam_k[:, None], fam_v[:, None], 0, self.fam - 1),
            KeyPart(blk_k[:, None], blk_v[:, None], first_visible(rel, window),
                    jnp.asarray(valid) - 1)]

  def stream_rows(self, q_pos, t, ring, fam_kv, blk_kv, window=None):
    """Parts for new queries at q_pos [Q] of block t against a decoding
    state: ring (k, v) [b, m*B, K, D] holding blocks t-m..t-1 (slots of
    blocks before 0 are empty), fam_kv (k, v) [b, F, K, D] or None (their
    logits offset by `fam_bias`), and the current block's keys blk_kv
    [b, B, K, D] (filled up to q_pos)."""
    blk, m = self.block, self.memory
    parts = []
    if m:
      base = (t - m) * blk
      lo = jnp.maximum((m - t) * blk, first_visible(q_pos - base, window))
      parts.append(KeyPart(ring[0][:, None], ring[1][:, None], lo,
                           m * blk - 1))
    if fam_kv is not None:
      parts += [p._replace(bias=self.fam_bias) for p in all_rows(*fam_kv)]
    rel = q_pos - t * blk
    parts.append(KeyPart(blk_kv[0][:, None], blk_kv[1][:, None],
                         first_visible(rel, window), rel))
    return parts


# ------------------------------------------------------------- FAM chain
def fam_pass(attender: Attender, layout: BlockLayout, project: Callable,
             finish: Callable, phi, blk_k, blk_v, valid, first, window=None,
             state_rms=None, keep=None):
  """One layer's pass over the F FAM rows of one block (docs/fam.md).

  project(phi) -> (q, k, v) of the FAM rows at their positions;
  finish(phi, attn_out, residual) -> the rows after residual, norm and FFN.
  A FAM query sees all F FAM keys of this pass and the first `valid` keys
  of the block (within a native window). In the pass over block 0 the
  attention residual is zero. state_rms (AttentionConfig.fam_state_rms,
  outside the rules): rescale each new row to that root-mean-square.
  keep (the lambda of AttentionConfig.fam_decay, outside the rules): the
  attention residual of a pass after the first is keep * phi, not phi.
  Returns (new phi, FAM keys, FAM values).
  """
  qf, kf, vf = project(phi)
  o = attender(qf[:, None], layout.fam_rows(kf, vf, blk_k, blk_v, valid,
                                            window))[:, 0]
  residual = jnp.where(first, 0.0, 1.0 if keep is None else keep
                       ).astype(phi.dtype)
  new = finish(phi, o, residual)
  if state_rms is not None:
    n32 = new.astype(jnp.float32)
    ms = jnp.mean(jnp.square(n32), axis=-1, keepdims=True)
    new = (n32 * (state_rms * jax.lax.rsqrt(ms + 1e-12))).astype(new.dtype)
  return new, kf, vf


def fam_chain(step: Callable, phi0, k, v, unroll: int = 1):
  """The FAM recurrence over all blocks of one layer.

  step(phi, k_t, v_t, t) -> (phi_t, fam_k_t, fam_v_t) runs one `fam_pass`.
  k, v: [b, n, B, K, D] block keys of this layer. Returns the last phi, the
  FAM keys / values of every block's pass, [b, n, F, K, D], and the
  root-mean-square of every block's new FAM rows, [b, n] float32 (a few
  numbers a block; `StepConfig.fam_growth_penalty` reads them).
  """
  n = k.shape[1]

  def body(phi, xs):
    kt, vt, t = xs
    phi, fk, fv = step(phi, kt, vt, t)
    p32 = phi.astype(jnp.float32)
    return phi, (fk, fv, jnp.sqrt(jnp.mean(p32 * p32, axis=(-2, -1))))

  phi, (fk, fv, rms) = jax.lax.scan(
      body, phi0, (k.swapaxes(0, 1), v.swapaxes(0, 1), jnp.arange(n)),
      unroll=unroll)
  return phi, fk.swapaxes(0, 1), fv.swapaxes(0, 1), rms.swapaxes(0, 1)
