"""`splash` attention: the Pallas TPU splash-attention kernel.

The groups are laid end to end (block rows of all blocks form one query
sequence of G*Q rows), so are the distinct key arrays of the parts (the
sequence keys once, the FAM keys of every pass once), and each query row's
key ranges become absolute column ranges of one static `RangesMask`. The
kernel's block-sparse mask info then skips every tile no row can see: for
[memory ; FAM ; causal block] only O(T (m+1) B) scores are computed.

Splash masks are static: the key ranges must be known when tracing (the
block rows and full attention of models without native local layers).
Ranges that are traced values (a streaming step's positions, the FAM rows
inside the scan over blocks, local windows chosen per layer under the layer
scan) are computed by `chunked` instead. Lowered for any platform but TPU
the kernel runs in Pallas interpret mode (slow; for tests). The kernel takes
no additive logit offset, so calls with a biased part (`KeyPart.bias`) are
computed by `chunked` as well.

Under a mesh context (`jax.set_mesh`) the kernel runs inside `shard_map`:
batch rows split like the "batch" rule, KV heads like "kv_heads"
(famjax/partitioning.py), each device running the kernel on its own rows
and heads (the Pallas call itself cannot be partitioned by XLA).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as sa

from famjax.kernels import biased, chunked

BLOCK = 128


class RangesMask(sa.splash_attention_mask.Mask):
  """Row r sees columns lo[r, i] .. hi[r, i] for every i (numpy, static)."""

  def __init__(self, lo: np.ndarray, hi: np.ndarray, cols: int):
    self.lo, self.hi, self._shape = lo, hi, (lo.shape[0], cols)
    self._key = hash((lo.tobytes(), hi.tobytes(), cols))

  @property
  def shape(self):
    return self._shape

  def __getitem__(self, idx):
    rows, cols = idx
    r = np.arange(self._shape[0])[rows]
    c = np.arange(self._shape[1])[cols]
    lo, hi = self.lo[r][:, :, None], self.hi[r][:, :, None]
    return np.any((c >= lo) & (c <= hi), axis=1)

  def __eq__(self, other):
    return (isinstance(other, RangesMask) and self._shape == other._shape and
            np.array_equal(self.lo, other.lo) and
            np.array_equal(self.hi, other.hi))

  def __hash__(self):
    return self._key


def _static(x):
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def static_ranges(parts, g, nq):
  """Per part (lo, hi) as numpy [G, Q], or None if any is traced."""
  out = []
  for p in parts:
    lo, hi = _static(p.lo), _static(p.hi)
    if lo is None or hi is None:
      return None
    out.append((np.broadcast_to(lo, (g, nq)),
                np.minimum(np.broadcast_to(hi, (g, nq)), p.k.shape[2] - 1)))
  return out


def layout(parts, rg, g, nq, block):
  """(key arrays laid end to end, [rows, parts] lo / hi, padded sizes)."""
  arrays, offsets, width = [], {}, 0
  for p in parts:
    if id(p.k) not in offsets:
      offsets[id(p.k)] = width
      arrays.append((p.k, p.v))
      width += p.k.shape[1] * p.k.shape[2]
  rows = g * nq
  rows_p, cols_p = -(-rows // block) * block, -(-width // block) * block
  lo = np.zeros((rows_p, len(parts)), np.int64)
  hi = np.full((rows_p, len(parts)), -1, np.int64)
  hi[rows:, 0] = 0                         # padded rows see one key
  grp = np.repeat(np.arange(g), nq)
  for i, (p, (plo, phi)) in enumerate(zip(parts, rg)):
    src = grp - p.shift
    base = offsets[id(p.k)] + src * p.k.shape[2]
    ok = (src >= 0) & (plo.reshape(-1) <= phi.reshape(-1))
    lo[:rows, i] = np.where(ok, base + plo.reshape(-1), 0)
    hi[:rows, i] = np.where(ok, base + phi.reshape(-1), -1)
  return arrays, lo, hi, rows_p, cols_p


def _kernel(mask: RangesMask, heads: int, block: int, softcap, interpret):
  bs = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                     block_q_dkv=block, block_kv_dkv=block,
                     block_kv_dkv_compute=block, block_q_dq=block,
                     block_kv_dq=block)
  multi = sa.MultiHeadMask([mask] * heads)
  return sa.make_splash_mqa(multi, block_sizes=bs, head_shards=1,
                            q_seq_shards=1, attn_logits_soft_cap=softcap,
                            interpret=interpret)


def attend(q, parts, *, scale, softcap=None, block: int = BLOCK):
  b, g, nq, h, d = q.shape
  rg = None if biased(parts) else static_ranges(parts, g, nq)
  if rg is None:
    return chunked.attend(q, parts, scale=scale, softcap=softcap)
  kh = parts[0].k.shape[-2]
  arrays, lo, hi, rows_p, cols_p = layout(parts, rg, g, nq, block)
  mask = RangesMask(lo, hi, cols_p)

  def run(interpret):
    kernel = _kernel(mask, h // kh, block, softcap or None, interpret)
    return _sharded(jax.vmap(jax.vmap(kernel)), b, kh)

  flat = lambda x: x.reshape(b, -1, kh, d)
  k = jnp.concatenate([flat(k) for k, _ in arrays], 1)
  v = jnp.concatenate([flat(v) for _, v in arrays], 1)
  pad = cols_p - k.shape[1]
  k = jnp.pad(k, [(0, 0), (0, pad), (0, 0), (0, 0)])
  v = jnp.pad(v, [(0, 0), (0, pad), (0, 0), (0, 0)])
  qs = (q * jnp.asarray(scale, q.dtype)).reshape(b, g * nq, kh, h // kh, d)
  qs = jnp.pad(qs, [(0, 0), (0, rows_p - g * nq), (0, 0), (0, 0), (0, 0)])
  qs = qs.transpose(0, 2, 3, 1, 4)                      # [b, K, g, R, D]
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, K, C, D]
  # the compiled kernel where the program is lowered for a TPU (also ahead
  # of time from a CPU host), Pallas interpret mode elsewhere
  o = jax.lax.platform_dependent(qs, k, v, tpu=run(False),
                                 default=run(True))      # [b, K, g, R, D]
  o = o.transpose(0, 3, 1, 2, 4)[:, :g * nq]
  return o.reshape(b, g, nq, h, d)


def _sharded(fn, batch: int, kv_heads: int):
  """fn(qs, k, v) over [batch, kv_heads, ...] arrays, under shard_map when a
  mesh context is set."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return fn
  from famjax import partitioning as pt
  spec = pt.logical_to_spec(("batch", "kv_heads"), shape=(batch, kv_heads),
                            mesh=dict(mesh.shape))
  return jax.shard_map(fn, in_specs=(spec, spec, spec), out_specs=spec,
                       check_vma=False)
