"""Rotary position embeddings (the rotate-half layout of Llama/Gemma).

Positions are integers; a Random Position Offset (docs/fam.md, training
only) is a float added to every position. Angles are computed as
`pos * f + (offset * f mod 2 pi)` so that a large offset costs no precision in
the angle *differences* that attention sees.
"""
from __future__ import annotations

import math
from typing import Optional

import jax.numpy as jnp
import numpy as np


def inv_frequencies(head_dim: int, theta: float, scaling: Optional[str] = None,
                    factor: float = 1.0, low_freq_factor: float = 1.0,
                    high_freq_factor: float = 4.0,
                    original_max_position: int = 8192) -> np.ndarray:
  inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if scaling is None:
    return inv.astype(np.float32)
  if scaling == "linear":
    return (inv / factor).astype(np.float32)
  if scaling == "llama3":
    low_wavelen = original_max_position / low_freq_factor
    high_wavelen = original_max_position / high_freq_factor
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original_max_position / wavelen - low_freq_factor) / (
        high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, out).astype(np.float32)
  raise ValueError(f"unknown rope scaling {scaling!r}")


def rope_angles(positions, inv_freq, offset=None):
  """positions [..., S] int -> angles [..., S, D/2] float32."""
  f = jnp.asarray(inv_freq, jnp.float32)
  ang = positions.astype(jnp.float32)[..., None] * f
  if offset is not None:
    phase = jnp.mod(jnp.asarray(offset, jnp.float32) * f, 2 * np.pi)
    ang = ang + phase
  return ang


def apply_rope(x, angles):
  """x [..., S, heads, D]; angles [..., S, D/2] (broadcast over heads)."""
  dtype = x.dtype
  xf = x.astype(jnp.float32)
  cos = jnp.cos(angles)[..., None, :]
  sin = jnp.sin(angles)[..., None, :]
  half = x.shape[-1] // 2
  x1, x2 = xf[..., :half], xf[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(dtype)
