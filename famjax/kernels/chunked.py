"""`chunked` attention: online softmax over key chunks, with its own VJP.

For each chunk of queries (`chunk` rows) the parts are visited a key chunk
(`chunk` keys) at a time, only the chunks that some query of the chunk can
see (a `fori_loop` with bounds read from the key ranges); the chunk's mask
is built from iotas and the per-query ranges. The forward pass keeps the
running max, the running sum and the unnormalised output (float32) and
returns o and the log-sum-exp; the backward pass (`jax.custom_vjp`)
recomputes each chunk's scores from q, k and the log-sum-exp. So neither
pass stores a score matrix larger than one [chunk x chunk] tile per group,
head and batch row. A part shifted by s groups (memory block t-s of block
t) is read from the block keys in place, one chunk at a time. A part's
constant logit bias shifts its (soft-capped) scores in both passes; its
derivative is 1, so the backward formulas are otherwise unchanged.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from famjax.kernels import (NEG_INF, part_mask, ranges, shift_groups,
                            unshift_groups)

F32 = jnp.float32


def attend(q, parts, *, scale, softcap=None, chunk=128):
  """q [b, G, Q, H, D] over `parts` (see famjax/kernels/__init__.py)."""
  b, g, nq, h, d = q.shape
  kh = parts[0].k.shape[-2]
  qc = min(nq, chunk)
  nqc = -(-nq // qc)
  rg = ranges(parts, g, nq)
  los = tuple(_pad_q(lo, nqc * qc, 0) for lo, _ in rg)
  his = tuple(_pad_q(hi, nqc * qc, -1) for _, hi in rg)
  ks, vs, kcs = [], [], []
  for p in parts:
    s = p.k.shape[2]
    kc = min(s, chunk)
    pad = -s % kc
    widths = [(0, 0), (0, 0), (0, pad), (0, 0), (0, 0)]
    ks.append(jnp.pad(p.k, widths) if pad else p.k)
    vs.append(jnp.pad(p.v, widths) if pad else p.v)
    kcs.append(kc)
  static = (float(scale), softcap, qc, tuple(kcs),
            tuple(p.shift for p in parts), tuple(float(p.bias) for p in parts))
  qp = q if nqc * qc == nq else jnp.pad(
      q, [(0, 0), (0, 0), (0, nqc * qc - nq), (0, 0), (0, 0)])
  qp = qp.reshape(b, g, nqc * qc, kh, h // kh, d)
  o = _attention(qp, tuple(ks), tuple(vs), los, his, static)
  return o.reshape(b, g, nqc * qc, h, d)[:, :, :nq]


def _pad_q(x, n, value):
  return jnp.pad(x, [(0, 0), (0, n - x.shape[1])], constant_values=value)


def _scores(qs, kb, cap, bias=0.0):
  """Scaled queries [b,G,q,K,g,D] x keys [b,G,c,K,D] -> ([b,G,K,g,q,c] f32
  scores, soft-capped then offset by `bias`; tanh of the cap or None)."""
  s = jnp.einsum("bGqkgd,bGckd->bGkgqc", qs, kb, preferred_element_type=F32)
  t = None
  if cap:
    t = jnp.tanh(s / cap)
    s = t * cap
  if bias:
    s = s + bias
  return s, t


def _bounds(lo, hi, kc, nk):
  """First and last+1 key chunk any query of lo/hi [G, q] can see."""
  if nk == 1:
    return 0, 1
  start = jnp.clip(jnp.min(lo) // kc, 0, nk)
  stop = jnp.clip(jnp.max(hi) // kc + 1, 0, nk)
  return start, jnp.maximum(start, stop)


def _loop(nk, start, stop, body, carry):
  if nk == 1:
    return body(0, carry)
  return jax.lax.fori_loop(start, stop, body, carry)


def _q_chunks(x, qc):
  """[b, G, Q, ...] -> [nq, b, G, qc, ...]."""
  b, g, nq = x.shape[:3]
  x = x.reshape(b, g, nq // qc, qc, *x.shape[3:])
  return jnp.moveaxis(x, 2, 0)


def _r_chunks(r, qc):
  """Ranges [G, Q] -> [nq, G, qc]."""
  return jnp.moveaxis(r.reshape(r.shape[0], -1, qc), 1, 0)


def _tile(qs, k, v, lo, hi, c, kc, sh, cap, bi):
  """Key chunk c of one part against a query chunk: (start, shifted key and
  value chunks, scores, tanh of the cap or None, visibility mask)."""
  start = c * kc
  kb = shift_groups(jax.lax.dynamic_slice_in_dim(k, start, kc, 2), sh)
  vb = shift_groups(jax.lax.dynamic_slice_in_dim(v, start, kc, 2), sh)
  s, t = _scores(qs, kb, cap, bi)
  mask = part_mask(lo, hi, start, kc, sh)[None, :, None, None]
  return start, kb, vb, s, t, mask


# ------------------------------------------------------------------ forward
def _forward_chunk(qs, ks, vs, los, his, static):
  """One query chunk: (o [b,G,q,K,g,D] f32, lse [b,G,K,g,q] f32)."""
  _, cap, _, kcs, shifts, biases = static
  b, g, qc, kh, gr, d = qs.shape
  m = jnp.full((b, g, kh, gr, qc), NEG_INF, F32)
  l = jnp.zeros((b, g, kh, gr, qc), F32)
  acc = jnp.zeros((b, g, kh, gr, qc, d), F32)
  for k, v, lo, hi, kc, sh, bi in zip(ks, vs, los, his, kcs, shifts, biases):
    def body(c, carry, k=k, v=v, lo=lo, hi=hi, kc=kc, sh=sh, bi=bi):
      m, l, acc = carry
      _, _, vb, s, _, mask = _tile(qs, k, v, lo, hi, c, kc, sh, cap, bi)
      s = jnp.where(mask, s, NEG_INF)
      m_new = jnp.maximum(m, jnp.max(s, -1))
      p = jnp.where(mask, jnp.exp(s - m_new[..., None]), 0.0)
      alpha = jnp.exp(m - m_new)
      l = alpha * l + jnp.sum(p, -1)
      acc = alpha[..., None] * acc + jnp.einsum(
          "bGkgqc,bGckd->bGkgqd", p.astype(v.dtype), vb,
          preferred_element_type=F32)
      return m_new, l, acc

    nk = k.shape[2] // kc
    start, stop = _bounds(lo, hi, kc, nk)
    m, l, acc = _loop(nk, start, stop, body, (m, l, acc))
  seen = l > 0
  o = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
  lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
  return jnp.moveaxis(o, 4, 2), lse


def _forward(q, ks, vs, los, his, static):
  scale, _, qc = static[:3]
  qs = q * jnp.asarray(scale, q.dtype)
  if q.shape[2] == qc:
    o, lse = _forward_chunk(qs, ks, vs, los, his, static)
    return o.astype(q.dtype), lse

  def one(args):
    qi, lo_i, hi_i = args
    return _forward_chunk(qi, ks, vs, lo_i, hi_i, static)

  o, lse = jax.lax.map(one, (_q_chunks(qs, qc),
                             tuple(_r_chunks(r, qc) for r in los),
                             tuple(_r_chunks(r, qc) for r in his)))
  b, g = q.shape[:2]
  o = jnp.moveaxis(o, 0, 2).reshape(q.shape)
  lse = jnp.moveaxis(lse, 0, 4).reshape(*lse.shape[1:5], -1)
  return o.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, ks, vs, los, his, static):
  return _forward(q, ks, vs, los, his, static)[0]


def _attention_fwd(q, ks, vs, los, his, static):
  o, lse = _forward(q, ks, vs, los, his, static)
  return o, (q, ks, vs, los, his, o, lse)


# ----------------------------------------------------------------- backward
def _backward_chunk(qs, do, delta, lse, ks, vs, los, his, dks, dvs, static):
  """One query chunk: (dq wrt the scaled queries, updated dks, dvs)."""
  _, cap, _, kcs, shifts, biases = static
  dq = jnp.zeros(qs.shape, F32)
  dks, dvs = list(dks), list(dvs)
  for i, (k, v, lo, hi, kc, sh, bi) in enumerate(zip(ks, vs, los, his, kcs,
                                                     shifts, biases)):
    def body(c, carry, k=k, v=v, lo=lo, hi=hi, kc=kc, sh=sh, bi=bi):
      dq, dk, dv = carry
      start, kb, vb, s, t, mask = _tile(qs, k, v, lo, hi, c, kc, sh, cap, bi)
      p = jnp.where(mask, jnp.exp(s - lse[..., None]), 0.0)
      dv_c = jnp.einsum("bGkgqc,bGqkgd->bGckd", p.astype(do.dtype), do,
                        preferred_element_type=F32)
      dp = jnp.einsum("bGqkgd,bGckd->bGkgqc", do, vb,
                      preferred_element_type=F32)
      ds = p * (dp - delta[..., None])
      if cap:
        ds = ds * (1.0 - t * t)
      dq = dq + jnp.einsum("bGkgqc,bGckd->bGqkgd", ds.astype(kb.dtype), kb,
                           preferred_element_type=F32)
      dk_c = jnp.einsum("bGkgqc,bGqkgd->bGckd", ds.astype(qs.dtype), qs,
                        preferred_element_type=F32)
      dk = _add_chunk(dk, unshift_groups(dk_c, sh), start)
      dv = _add_chunk(dv, unshift_groups(dv_c, sh), start)
      return dq, dk, dv

    nk = k.shape[2] // kc
    start, stop = _bounds(lo, hi, kc, nk)
    dq, dks[i], dvs[i] = _loop(nk, start, stop, body, (dq, dks[i], dvs[i]))
  return dq, tuple(dks), tuple(dvs)


def _add_chunk(acc, x, start):
  old = jax.lax.dynamic_slice_in_dim(acc, start, x.shape[2], 2)
  return jax.lax.dynamic_update_slice_in_dim(acc, old + x, start, 2)


def _attention_bwd(static, res, do):
  q, ks, vs, los, his, o, lse = res
  scale, _, qc = static[:3]
  qs = q * jnp.asarray(scale, q.dtype)
  delta = jnp.sum(do.astype(F32) * o.astype(F32), -1)       # [b,G,Q,K,g]
  delta = jnp.moveaxis(delta, 2, 4)
  dks = tuple(jnp.zeros(k.shape, F32) for k in ks)
  dvs = tuple(jnp.zeros(v.shape, F32) for v in vs)
  if q.shape[2] == qc:
    dq, dks, dvs = _backward_chunk(qs, do, delta, lse, ks, vs, los, his, dks,
                                   dvs, static)
  else:
    def one(carry, xs):
      qi, doi, di, li, lo_i, hi_i = xs
      dqi, dk, dv = _backward_chunk(qi, doi, di, li, ks, vs, lo_i, hi_i,
                                    *carry, static)
      return (dk, dv), dqi

    lq = lambda x: jnp.moveaxis(x.reshape(*x.shape[:4], -1, qc), 4, 0)
    (dks, dvs), dq = jax.lax.scan(one, (dks, dvs), (
        _q_chunks(qs, qc), _q_chunks(do, qc), lq(delta), lq(lse),
        tuple(_r_chunks(r, qc) for r in los),
        tuple(_r_chunks(r, qc) for r in his)))
    dq = jnp.moveaxis(dq, 0, 2).reshape(q.shape)
  dq = (dq * scale).astype(q.dtype)
  return (dq, tuple(x.astype(k.dtype) for x, k in zip(dks, ks)),
          tuple(x.astype(v.dtype) for x, v in zip(dvs, vs)),
          tuple(None for _ in los), tuple(None for _ in his))


_attention.defvjp(_attention_fwd, _attention_bwd)
