"""A naive, independent reference of the famjax model, read from docs/fam.md.

Nothing here is shared with `famjax`: the reference reads the model's
parameters as a plain nested dict (`famjax.params_io.params_dict(model)`) and
recomputes everything with plain `jax.numpy`, in the most literal order docs/fam.md
allows:

* mode `full`: ordinary causal attention over the whole sequence;
* modes `bswa` / `fam`: a Python loop over blocks (block-outer), and inside it
  a Python loop over layers. Every layer pass builds its rows
  `Z = [Phi[l]_{t-1} ; X[l]_t]`, an explicit list of keys
  `[memory-block keys of blocks t-m..t-1 (stored from their own passes) ;
  FAM keys of this pass ; own block keys]` with their positions, and one
  explicit boolean mask over that list. RoPE positions are explicit integers
  (FAM rows at `t*B + B - F + i`), the initial FAM runs the prompt through
  the stack with bidirectional attention at positions `-F .. -1`, the first
  update (block 0) drops the FAM rows' attention residual, and the last block
  is padded with tokens whose keys nobody attends to.

`AttentionConfig.fam_logit_bias` (outside the rules) is an explicit additive
logit matrix over the same key list: B on (block query, FAM key) pairs.

No `lax.scan`, no vectorisation over blocks. The same code runs on two
array modules: `numpy` in float64 (`forward(..., xp=np)`, the default: exact
and fast, no compilation) and `jax.numpy` in float32 (`xp=jnp`, for
`jax.grad`). RoPE tables are computed in float64 numpy either way (the
positions are static).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
import jax.scipy.special


# --------------------------------------------------------------- primitives
def _dtype(xp):
  return np.float64 if xp is np else jnp.float32


def rms_norm(xp, x, w, eps, plus_one):
  """RMSNorm over the last axis; Gemma stores w with y = x_hat * (1 + w)."""
  ms = xp.mean(x * x, axis=-1, keepdims=True)
  x_hat = x / xp.sqrt(ms + eps)
  return x_hat * ((1.0 + w) if plus_one else w)


def activation(xp, name, x):
  if name == "silu":
    return x / (1.0 + xp.exp(-x))
  if name == "gelu_tanh":
    return 0.5 * x * (1.0 + xp.tanh(
        math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
  if name == "gelu":
    erf = scipy.special.erf if xp is np else jax.scipy.special.erf
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
  raise ValueError(name)


def softcap(xp, x, cap):
  if not cap:
    return x
  return cap * xp.tanh(x / cap)


def inv_freq(cfg, local):
  """HF default RoPE: 1 / theta ** (arange(0, D, 2) / D), float64."""
  d = cfg.hd
  if local and cfg.rope_local_theta is not None:
    theta, scaling = cfg.rope_local_theta, None
  else:
    theta, scaling = cfg.rope_theta, cfg.rope_scaling
  f = 1.0 / (float(theta) ** (np.arange(0, d, 2, dtype=np.float64) / d))
  if scaling == "linear":
    f = f / cfg.rope_scaling_factor
  elif scaling is not None:
    raise NotImplementedError(f"reference has no rope scaling {scaling!r}")
  return f


def rope(xp, x, positions, freqs, offset):
  """x [b, S, heads, D]; positions: S ints (+ a float offset).

  HF rotate-half: x * cos + rotate_half(x) * sin with
  rotate_half([x1, x2]) = [-x2, x1] and cos/sin tables of width D
  (the D/2 frequencies repeated twice).
  """
  pos = np.asarray(positions, np.float64) + float(offset)
  ang = pos[:, None] * freqs[None, :]                      # [S, D/2]
  emb = np.concatenate([ang, ang], axis=-1)                # [S, D]
  cos = xp.asarray(np.cos(emb), _dtype(xp))[None, :, None, :]
  sin = xp.asarray(np.sin(emb), _dtype(xp))[None, :, None, :]
  half = x.shape[-1] // 2
  rot = xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rot * sin


def attention(xp, q, k, v, mask, scale, cap, bias=None):
  """q [b, Q, H, D]; k, v [b, S, K, D]; mask: numpy bool [Q, S]; bias: None
  or numpy float [Q, S] added to the (soft-capped) logits (-inf allowed).

  GQA by repeating every kv head H/K times (head h uses kv head h // (H/K)).
  """
  h, kh = q.shape[2], k.shape[2]
  assert mask.shape == (q.shape[1], k.shape[1]), (mask.shape, q.shape, k.shape)
  assert mask.any(axis=1).all(), "a query row sees no key"
  k = xp.repeat(k, h // kh, axis=2)
  v = xp.repeat(v, h // kh, axis=2)
  s = xp.einsum("bqhd,bshd->bhqs", q * scale, k)
  s = softcap(xp, s, cap)
  if bias is not None:
    s = s + xp.asarray(bias, _dtype(xp))[None, None]
  s = xp.where(xp.asarray(mask)[None, None], s, -np.inf)
  smax = xp.max(s, axis=-1, keepdims=True)
  if xp is jnp:
    smax = jax.lax.stop_gradient(smax)
  e = xp.exp(s - smax)
  p = e / xp.sum(e, axis=-1, keepdims=True)
  return xp.einsum("bhqs,bshd->bqhd", p, v)


# --------------------------------------------------------------- one layer
def _layer(params, l):
  return jax.tree.map(lambda a: a[l], params["layers"])


def _dense(xp, x, p, n_in=1):
  """x [..., *in] @ kernel [*in, *out] (+ bias)."""
  y = xp.tensordot(x, p["kernel"], axes=n_in)
  if "bias" in p:
    y = y + p["bias"]
  return y


def _norm(xp, cfg, x, p):
  return rms_norm(xp, x, p["scale"], cfg.norm_eps, cfg.norm_scale_plus_one)


def project(xp, cfg, lp, z, positions, local, offset):
  """Rows z [b, S, d] at positions -> roped q [b,S,H,D], k, v [b,S,K,D]."""
  hn = _norm(xp, cfg, z, lp["attn_norm"])
  q = _dense(xp, hn, lp["q"])
  k = _dense(xp, hn, lp["k"])
  v = _dense(xp, hn, lp["v"])
  if cfg.qk_norm:
    q = _norm(xp, cfg, q, lp["q_norm"])
    k = _norm(xp, cfg, k, lp["k_norm"])
  f = inv_freq(cfg, local)
  return rope(xp, q, positions, f, offset), rope(xp, k, positions, f, offset), v


def finish(xp, cfg, lp, z, o, attn_residual):
  """Attention output o [b,S,H,D] -> layer output rows.

  attn_residual: numpy [S] of 0/1, the weight of z in the attention residual
  (0 for the FAM rows of the first update).
  """
  a = _dense(xp, o, lp["o"], n_in=2)
  if cfg.sandwich_norm:
    a = _norm(xp, cfg, a, lp["post_attn_norm"])
  a = a + xp.asarray(attn_residual, _dtype(xp))[None, :, None] * z
  hn = _norm(xp, cfg, a, lp["ffn_norm"])
  g = activation(xp, cfg.activation, _dense(xp, hn, lp["mlp"]["gate"]))
  u = _dense(xp, hn, lp["mlp"]["up"])
  f = _dense(xp, g * u, lp["mlp"]["down"])
  if cfg.sandwich_norm:
    f = _norm(xp, cfg, f, lp["post_ffn_norm"])
  return a + f


def _scale(cfg):
  return cfg.query_scale if cfg.query_scale is not None else cfg.hd ** -0.5


def _in_window(cfg, local, q_pos, k_pos):
  """Native local window (Gemma 3): visible iff q_pos - k_pos < window."""
  if not local:
    return True
  return q_pos - k_pos < cfg.sliding_window


# ------------------------------------------------------------ embed / head
def embed(xp, cfg, params, tokens):
  x = params["embed"]["embedding"][np.asarray(tokens)]
  if cfg.embed_scale:
    x = x * math.sqrt(cfg.d_model)
  return x


def head(xp, cfg, params, x):
  x = _norm(xp, cfg, x, params["final_norm"])
  if "lm_head" in params:
    y = _dense(xp, x, params["lm_head"])
  else:
    y = xp.einsum("btd,vd->btv", x, params["embed"]["embedding"])
  return softcap(xp, y, cfg.final_logit_softcap)


# ----------------------------------------------------------------- full
def forward_full(xp, cfg, params, tokens, offset=0.0):
  """Ordinary causal attention (and native local windows) over all T."""
  _, t = tokens.shape
  x = embed(xp, cfg, params, tokens)
  pos = list(range(t))
  for l in range(cfg.num_layers):
    lp = _layer(params, l)
    local = cfg.local_layers[l]
    q, k, v = project(xp, cfg, lp, x, pos, local, offset)
    mask = np.zeros((t, t), bool)
    for i in range(t):
      for j in range(t):
        mask[i, j] = j <= i and _in_window(cfg, local, i, j)
    o = attention(xp, q, k, v, mask, _scale(cfg), cfg.attn_logit_softcap)
    x = finish(xp, cfg, lp, x, o, np.ones(t))
  return head(xp, cfg, params, x)


# ------------------------------------------------------------- initial FAM
def initial_fam(xp, cfg, params, batch, offset=0.0):
  """[Phi[l]_{-1} for every l]: the prompt run through the stack once,
  bidirectional attention among the F rows at positions -F..-1."""
  f = cfg.attention.fam_length
  z = xp.broadcast_to(params["fam_prompt"], (batch, f, cfg.d_model))
  pos = list(range(-f, 0))
  phis = []
  for l in range(cfg.num_layers):
    phis.append(z)
    lp = _layer(params, l)
    q, k, v = project(xp, cfg, lp, z, pos, cfg.local_layers[l], offset)
    o = attention(xp, q, k, v, np.ones((f, f), bool), _scale(cfg),
                  cfg.attn_logit_softcap)
    z = finish(xp, cfg, lp, z, o, np.ones(f))
  return phis


# ----------------------------------------------------------- bswa and fam
def block_mask(cfg, local, t, row_pos, row_kind, key_pos, key_kind):
  """The explicit docs/fam.md mask of one pass: rows (FAM, block) x the key list
  (memory blocks, FAM keys, own block). Positions >= t are padding."""
  mask = np.zeros((len(row_pos), len(key_pos)), bool)
  for i, (qp, qk) in enumerate(zip(row_pos, row_kind)):
    for j, (kp, kk) in enumerate(zip(key_pos, key_kind)):
      if kk == "fam":
        # FAM keys of this pass: seen by every FAM and block query.
        vis = True
      elif kp >= t:
        # padded keys are never attended to, by anyone.
        vis = False
      elif qk == "fam":
        # FAM query: every unpadded key of its block, never the memory.
        vis = kk == "blk" and _in_window(cfg, local, qp, kp)
      elif kk == "mem":
        # block query: every key of the memory blocks t-m..t-1.
        vis = _in_window(cfg, local, qp, kp)
      else:
        # block query: own block, causal.
        vis = kp <= qp and _in_window(cfg, local, qp, kp)
      mask[i, j] = vis
  for i, (qp, qk) in enumerate(zip(row_pos, row_kind)):
    if qk == "blk" and qp >= t and not mask[i].any():
      # a padded query row (its output is dropped) may see nothing; let it
      # see its own key so that its garbage stays finite.
      own = [j for j, (kp, kk) in enumerate(zip(key_pos, key_kind))
             if kk == "blk" and kp == qp]
      mask[i, own[0]] = True
  return mask


def fam_bias_matrix(cfg, row_kind, key_kind):
  """AttentionConfig.fam_logit_bias (an option outside docs/fam.md's rules)
  as an additive [rows, keys] logit matrix: B where a block query meets a
  FAM key, 0 elsewhere; None when the option is off."""
  b = cfg.attention.fam_logit_bias
  if cfg.attention.mode != "fam" or b is None:
    return None
  out = np.zeros((len(row_kind), len(key_kind)))
  for i, qk in enumerate(row_kind):
    for j, kk in enumerate(key_kind):
      if qk == "blk" and kk == "fam":
        out[i, j] = b
  return out


def forward_blocks(xp, cfg, params, tokens, fam_state=None, offset=0.0,
                   block_rms=None):
  """Block-outer bswa / fam. Returns (logits [b, T, V], Phi [L, b, F, d]).

  block_rms: a list that receives, after every block, the root-mean-square
  of each layer's new Phi ([L, b] per block)."""
  att = cfg.attention
  fam = att.mode == "fam"
  bsz, t = tokens.shape
  blk, m = att.block_size, att.memory_segments
  f = att.fam_length if fam else 0
  n = -(-t // blk)
  padded = np.zeros((bsz, n * blk), np.int32)
  padded[:, :t] = np.asarray(tokens)
  x_all = embed(xp, cfg, params, padded)                 # [b, n*B, d]
  scale, cap = _scale(cfg), cfg.attn_logit_softcap

  if fam:
    if fam_state is None:
      phi = initial_fam(xp, cfg, params, bsz, offset)
    else:
      phi = [xp.asarray(np.asarray(fam_state[l]), _dtype(xp))
             for l in range(cfg.num_layers)]
  # memory[l][s] = (k, v) of block s's keys as computed in layer l's pass.
  memory = [[] for _ in range(cfg.num_layers)]
  outputs = []
  for tb in range(n):
    x = x_all[:, tb * blk:(tb + 1) * blk]
    blk_pos = [tb * blk + j for j in range(blk)]
    fam_pos = [tb * blk + blk - f + i for i in range(f)]
    mem_blocks = [s for s in range(tb - m, tb) if s >= 0]
    row_pos = fam_pos + blk_pos
    row_kind = ["fam"] * f + ["blk"] * blk
    key_pos, key_kind = [], []
    for s in mem_blocks:
      key_pos += [s * blk + j for j in range(blk)]
      key_kind += ["mem"] * blk
    key_pos += row_pos
    key_kind += row_kind
    for l in range(cfg.num_layers):
      lp = _layer(params, l)
      local = cfg.local_layers[l]
      z = xp.concatenate([phi[l], x], axis=1) if fam else x
      q, k, v = project(xp, cfg, lp, z, row_pos, local, offset)
      key_k = xp.concatenate([memory[l][s][0] for s in mem_blocks] + [k], 1)
      key_v = xp.concatenate([memory[l][s][1] for s in mem_blocks] + [v], 1)
      mask = block_mask(cfg, local, t, row_pos, row_kind, key_pos, key_kind)
      o = attention(xp, q, key_k, key_v, mask, scale, cap,
                    fam_bias_matrix(cfg, row_kind, key_kind))
      residual = np.ones(f + blk)
      if fam and tb == 0:
        residual[:f] = 0.0            # first update: A_fam = Attn(...)
      elif fam and att.fam_decay is not None:   # option, off: rules
        keep = 1.0 / (1.0 + xp.exp(-lp["fam_decay_logit"]))
        residual = xp.concatenate([keep * xp.ones(f), xp.ones(blk)])
      out = finish(xp, cfg, lp, z, o, residual)
      memory[l].append((k[:, f:], v[:, f:]))
      if fam:
        phi[l] = out[:, :f]
        rms = att.fam_state_rms                       # option, off: rules
        if rms is not None:
          phi[l] = phi[l] * (rms / xp.sqrt(
              xp.mean(phi[l] * phi[l], axis=-1, keepdims=True) + 1e-12))
      x = out[:, f:]
    if fam and block_rms is not None:
      block_rms.append(xp.stack([xp.sqrt(xp.mean(p * p, axis=(-2, -1)))
                                 for p in phi]))
    outputs.append(x)
  x = xp.concatenate(outputs, axis=1)[:, :t]
  logits = head(xp, cfg, params, x)
  state = xp.stack(phi) if fam else None
  return logits, state


def forward(cfg, params, tokens, *, fam_state=None, position_offset=None,
            xp=np, block_rms=None):
  """Reference logits [b, T, V] and (fam) the final FAM state [L, b, F, d].

  xp=np: float64 numpy (default); xp=jnp: float32 jax (differentiable in
  `params`). block_rms: see `forward_blocks`.
  """
  if xp is np:
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  else:
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  offset = 0.0 if position_offset is None else float(position_offset)
  if cfg.attention.mode == "full":
    return forward_full(xp, cfg, params, tokens, offset), None
  return forward_blocks(xp, cfg, params, tokens, fam_state, offset, block_rms)
