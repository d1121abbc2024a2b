"""The famjax Transformer: embed -> layers -> norm -> logits.

One model, three attention modes (docs/fam.md): `full`, `bswa`, `fam`.
Positions and key ranges come from one `attention.BlockLayout`; every
attention runs through the implementation `attention_impl` chooses
(famjax/kernels).

* `Transformer.__call__`  whole-sequence forward. Layer-outer: each layer
  projects every block at once, runs the FAM chain (`attention.fam_chain`,
  a `lax.scan` over blocks carrying F rows), then computes every block's
  attention and FFN in parallel. Layers run under `lax.scan` (scan_layers)
  or a Python loop over one stacked parameter tree.
* `Transformer.init_stream` / `Transformer.stream`  block-outer streaming:
  feed tokens chunk by chunk (a whole block or one token) while carrying, per
  layer, the FAM state, the FAM keys of the current block's pass, the keys of
  the current block so far and a ring buffer of the last m blocks. The state
  size does not depend on how many tokens came before.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from famjax import attention as attn
from famjax.config import ModelConfig
from famjax.layers import Dense, Embed, GatedMLP, RMSNorm, param_with_axes
from famjax.layers.rope import apply_rope, inv_frequencies, rope_angles
from famjax.token_ids import check_token_ids
from famjax.partitioning import constrain

# Logical axes of activations (sharding rules in famjax/partitioning.py).
ROWS = ("batch", "length", "act_embed")
FAM_ROWS = ("batch", "fam", "act_embed")
Q_ROWS = ("batch", "length", "heads", "kv")
KV_ROWS = ("batch", "length", "kv_heads", "kv")
Q_BLOCKS = ("batch", "blocks", "length", "heads", "kv")
KV_BLOCKS = ("batch", "blocks", "length", "kv_heads", "kv")
KV_FAM = ("batch", "blocks", "fam", "kv_heads", "kv")

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _dtype(name):
  return jnp.dtype(name)


class DecoderLayer(nnx.Module):
  """Pre-norm layer: A = Attn(Norm(Z)) + Z ; Out = FFN(Norm(A)) + A.

  Built with `stack=L` the parameters carry a leading layer axis; the
  methods are called on one layer's slice (see `Transformer._layer_params`).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stack=None):
    d, h, k, hd = cfg.d_model, cfg.num_heads, cfg.n_kv, cfg.hd
    pd = _dtype(cfg.param_dtype)
    norm = dict(eps=cfg.norm_eps, plus_one=cfg.norm_scale_plus_one,
                param_dtype=pd, stack=stack, rngs=rngs)
    dense = dict(rngs=rngs, param_dtype=pd, stack=stack)
    lora = lambda name: dict(  # LoRA weights on the targeted projections
        lora_rank=cfg.lora_rank if name in cfg.lora_targets else 0,
        lora_alpha=cfg.lora_alpha)
    self.attn_norm = RMSNorm(d, **norm)
    self.q = Dense(d, (h, hd), in_axes=("embed",), out_axes=("heads", "kv"),
                   use_bias=cfg.qkv_bias, **dense, **lora("q"))
    self.k = Dense(d, (k, hd), in_axes=("embed",), out_axes=("kv_heads", "kv"),
                   use_bias=cfg.qkv_bias, **dense, **lora("k"))
    self.v = Dense(d, (k, hd), in_axes=("embed",), out_axes=("kv_heads", "kv"),
                   use_bias=cfg.qkv_bias, **dense, **lora("v"))
    self.o = Dense((h, hd), d, in_axes=("heads", "kv"), out_axes=("embed",),
                   **dense, **lora("o"))
    if cfg.qk_norm:
      self.q_norm = RMSNorm(hd, axis_name="kv", **norm)
      self.k_norm = RMSNorm(hd, axis_name="kv", **norm)
    else:
      self.q_norm = self.k_norm = None
    self.ffn_norm = RMSNorm(d, **norm)
    self.mlp = GatedMLP(d, cfg.ffn_dim, cfg.activation, **dense,
                        lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                        lora_targets=cfg.lora_targets)
    decay = cfg.attention.fam_decay if cfg.attention.mode == "fam" else None
    if decay is not None:   # outside the rules: a learned decay per layer
      self.fam_decay_logit = param_with_axes(
          None, (), (), init=math.log(decay / (1.0 - decay)), dtype=pd,
          stack=stack)
    else:
      self.fam_decay_logit = None
    if cfg.sandwich_norm:
      self.post_attn_norm = RMSNorm(d, **norm)
      self.post_ffn_norm = RMSNorm(d, **norm)
    else:
      self.post_attn_norm = self.post_ffn_norm = None

  def project(self, x, angles):
    """Rows x [..., S, d] at RoPE angles [..., S, D/2] -> q, k, v."""
    hn = self.attn_norm(x)
    q, k, v = self.q(hn), self.k(hn), self.v(hn)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    return apply_rope(q, angles), apply_rope(k, angles), v

  def fam_keep(self):
    """lambda of AttentionConfig.fam_decay (a learned weight), or None."""
    if self.fam_decay_logit is None:
      return None
    return jax.nn.sigmoid(self.fam_decay_logit[...].astype(jnp.float32))

  def finish(self, x, o, residual=1.0):
    """Attention output o [..., S, H, D] -> layer output rows."""
    a = self.o(o)
    if self.post_attn_norm is not None:
      a = self.post_attn_norm(a)
    a = a + residual * x
    f = self.mlp(self.ffn_norm(a))
    if self.post_ffn_norm is not None:
      f = self.post_ffn_norm(f)
    return a + f


class Transformer(nnx.Module):
  """Decoder-only Transformer with full / BSWA / FAM attention."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    pd = _dtype(cfg.param_dtype)
    self.embed = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, param_dtype=pd)
    self.layers = DecoderLayer(cfg, rngs=rngs, stack=cfg.num_layers)
    self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps,
                              plus_one=cfg.norm_scale_plus_one, param_dtype=pd,
                              rngs=rngs)
    if cfg.tie_embeddings:
      self.lm_head = None
    else:
      self.lm_head = Dense(cfg.d_model, cfg.vocab_size, in_axes=("embed",),
                           out_axes=("vocab",), rngs=rngs, param_dtype=pd)
    if cfg.attention.mode == "fam":
      f = cfg.attention.fam_length
      self.fam_prompt = nnx.Param(
          (0.02 * jax.random.normal(rngs.params(), (f, cfg.d_model))).astype(pd),
          logical_axes=("fam", "embed"))
    else:
      self.fam_prompt = None

  # ------------------------------------------------------------- small parts
  @property
  def dtype(self):
    return _dtype(self.cfg.dtype)

  @property
  def scale(self):
    c = self.cfg
    return c.query_scale if c.query_scale is not None else c.hd ** -0.5

  @property
  def attender(self) -> attn.Attender:
    att = self.cfg.attention
    return attn.Attender(att.attention_impl, float(self.scale),
                         self.cfg.attn_logit_softcap, att.attention_chunk)

  @property
  def layout(self) -> attn.BlockLayout:
    att = self.cfg.attention
    return attn.BlockLayout(att.block_size, att.memory_segments, att.fam,
                            att.fam_bias)

  def _inv_freq(self, local: bool):
    c = self.cfg
    if local and c.rope_local_theta is not None:
      return inv_frequencies(c.hd, c.rope_local_theta)
    return inv_frequencies(
        c.hd, c.rope_theta, c.rope_scaling, c.rope_scaling_factor,
        c.rope_low_freq_factor, c.rope_high_freq_factor,
        c.rope_original_max_position)

  def _has_local(self):
    return any(self.cfg.local_layers)

  def _angles(self, positions, offset):
    """(global, local) angles; local is None when no layer is local."""
    g = rope_angles(positions, self._inv_freq(False), offset)
    loc = rope_angles(positions, self._inv_freq(True), offset) if (
        self._has_local()) else None
    return g, loc

  def _embed(self, tokens):
    x = self.embed(tokens, self.dtype)
    if self.cfg.embed_scale:
      x = x * jnp.asarray(math.sqrt(self.cfg.d_model), self.dtype)
    return x

  def logits(self, x):
    x = self.final_norm(x)
    if self.lm_head is None:
      y = self.embed.attend(x)
    else:
      y = self.lm_head(x)
    y = y.astype(jnp.float32)
    if self.cfg.final_logit_softcap:
      c = self.cfg.final_logit_softcap
      y = jnp.tanh(y / c) * c
    return y

  def _scan_layers(self, body, carry, xs):
    """Run body(layer, carry, xs_l) -> (carry, ys_l) over the layer stack."""
    gdef, params = nnx.split(self.layers)
    is_local = jnp.asarray(self.cfg.local_layers)

    def f(carry, inp):
      lp, loc, xl = inp
      return body(nnx.merge(gdef, lp), loc, carry, xl)

    if self.cfg.remat_policy != "none":
      f = jax.checkpoint(f, policy=_REMAT[self.cfg.remat_policy])
    if self.cfg.scan_layers:
      return jax.lax.scan(f, carry, (params, is_local, xs))
    ys = []
    for i in range(self.cfg.num_layers):
      carry, y = f(carry, jax.tree.map(lambda a: a[i], (params, is_local, xs)))
      ys.append(y)
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)

  def _window(self, loc):
    if not self._has_local():
      return None
    return jnp.where(loc, self.cfg.sliding_window, attn.NO_WINDOW)

  @staticmethod
  def _pick(loc, angles):
    g, l = angles
    return g if l is None else jnp.where(loc, l, g)

  # ------------------------------------------------------------- initial FAM
  def _prompt_pass(self, layer, loc, phi, offset=None):
    """Layer output of the FAM rows alone: bidirectional, positions -F..-1."""
    f = phi.shape[-2]
    ang = self._pick(loc, self._angles(jnp.arange(-f, 0), offset))
    q, k, v = layer.project(phi, ang)
    lead = phi.shape[:-2]
    if not lead:                                 # unbatched: [F, d]
      q, k, v = q[None], k[None], v[None]
    o = self.attender(q[:, None], attn.all_rows(k, v))[:, 0]
    return layer.finish(phi, o if lead else o[0])

  def initial_fam(self, batch: Optional[int] = None):
    """Phi[l]_{-1} for every layer: [L, F, d] (or [L, batch, F, d])."""
    phi = self.fam_prompt[...].astype(self.dtype)
    if batch is not None:
      phi = jnp.broadcast_to(phi, (batch,) + phi.shape)

    def body(layer, loc, phi, _):
      return self._prompt_pass(layer, loc, phi), phi

    _, phis = self._scan_layers(body, phi, None)
    return phis

  # ----------------------------------------------------- whole-sequence pass
  def __call__(self, tokens, *, fam_state=None, use_fam_state=None,
               continue_stream=False, position_offset=None,
               return_state: bool = False):
    """Logits [b, T, vocab] (float32) of tokens [b, T].

    fam_state: [L, b, F, d] FAM states to start from instead of the initial
      FAM (Random State Passing, continuing a stream); use_fam_state: a
      boolean scalar choosing between the two inside a compiled step, or
      [b] booleans choosing row by row.
    continue_stream: False (Random State Passing, docs/fam.md: block 0
      still makes the zero-residual first update from the given state) or
      True / [b] booleans: the given state is the last state of the same
      stream, so block 0 updates it as the next block of one long sequence
      would (with the residual). With m = 0 the logits then equal those of
      the whole stream; with m > 0 the memory blocks before the cut are not
      seen.
    position_offset: float added to every RoPE position (Random Position
      Offset; training only).
    return_state: also return {"fam_state": last Phi per layer [L, b, F, d],
      "fam_rms": root-mean-square of every block's Phi [L, b, n] (float32)}.
    """
    check_token_ids(tokens, self.cfg.vocab_size)
    cfg, att, (b, t) = self.cfg, self.cfg.attention, tokens.shape
    x = self._embed(tokens)
    attender, layout = self.attender, self.layout
    row_angles = self._angles(jnp.arange(t), position_offset)

    if att.mode == "full":
      def body(layer, loc, x, _):
        x = constrain(x, ROWS)
        q, k, v = layer.project(x, self._pick(loc, row_angles))
        q = constrain(q, Q_ROWS)
        k, v = constrain(k, KV_ROWS), constrain(v, KV_ROWS)
        o = attender(q[:, None], attn.causal_rows(
            k, v, np.arange(t), self._window(loc)))[:, 0]
        return layer.finish(x, constrain(o, Q_ROWS)), None
      x, _ = self._scan_layers(body, x, None)
      out = self.logits(x)
      return (out, {}) if return_state else out

    blk, f = att.block_size, att.fam
    n, _, valid = attn.block_layout(t, blk)
    blk_angles = tuple(None if a is None else attn.to_blocks(a[None], n, blk)[0]
                       for a in self._angles(jnp.arange(n * blk), position_offset))
    if att.mode == "fam":
      fam_pos = layout.fam_positions(np.arange(n))               # [n, F]
      fam_angles = self._angles(jnp.asarray(fam_pos), position_offset)
      n_valid = jnp.asarray(valid.sum(1))                        # [n]
      phi_init = jnp.broadcast_to(self.fam_prompt[...].astype(self.dtype),
                                  (b, f, cfg.d_model))
      if fam_state is not None:
        fam_state = fam_state.astype(self.dtype)
        if use_fam_state is None:
          use_fam_state = True
        elif jnp.ndim(use_fam_state) == 1:                    # row by row
          use_fam_state = jnp.asarray(use_fam_state)[:, None, None]
        if jnp.ndim(continue_stream) == 1:
          continue_stream = jnp.asarray(continue_stream)[:, None, None]
        # Block 0 skips the zero-residual first update where a row continues.
        continue_stream = jnp.logical_and(continue_stream, use_fam_state)
      else:
        continue_stream = jnp.asarray(False)

    def body(layer, loc, carry, phi_given):
      x, phi_init = carry
      x = constrain(x, ROWS)
      window = self._window(loc)
      q, k, v = layer.project(attn.to_blocks(x, n, blk),
                              self._pick(loc, blk_angles))
      q = constrain(q, Q_BLOCKS)
      k, v = constrain(k, KV_BLOCKS), constrain(v, KV_BLOCKS)
      fk = fv = phi_last = rms = None
      if att.mode == "fam":
        phi0 = constrain(phi_init if phi_given is None else jnp.where(
            use_fam_state, phi_given, phi_init), FAM_ROWS)
        ang_f = self._pick(loc, fam_angles)
        keep = layer.fam_keep()          # once per layer, not per block

        def step(phi, kt, vt, i):
          return attn.fam_pass(attender, layout,
                               lambda p: layer.project(p, ang_f[i]),
                               layer.finish, phi, kt, vt, n_valid[i],
                               (i == 0) & ~continue_stream, window,
                               att.fam_state_rms, keep)

        phi_last, fk, fv, rms = attn.fam_chain(step, phi0, k, v)
        fk, fv = constrain(fk, KV_FAM), constrain(fv, KV_FAM)
        phi_init = self._prompt_pass(layer, loc, phi_init, position_offset)
      o = constrain(attender(q, layout.block_rows(k, v, fk, fv, window)),
                    Q_BLOCKS)
      o = o.reshape(b, n * blk, *o.shape[3:])[:, :t]
      return (layer.finish(x, o), phi_init), (phi_last, rms)

    fam = att.mode == "fam"
    (x, _), (phis, rmss) = self._scan_layers(
        body, (x, phi_init if fam else None), fam_state if fam else None)
    out = self.logits(x)
    if return_state:
      return out, ({"fam_state": phis, "fam_rms": rmss} if fam else {})
    return out

  # --------------------------------------------------------------- streaming
  def init_stream(self, batch: int, *, max_len: Optional[int] = None,
                  fam_state=None):
    """Empty decoding state for `batch` sequences.

    full: a KV cache of `max_len` positions. bswa / fam: per layer a ring
    buffer of m blocks, the current block's keys, and (fam) the FAM state
    and the FAM keys of the current block's pass: O(L (m B + B + F) d).
    Which ring slots and block keys are visible follows from `pos` alone.
    """
    cfg, att = self.cfg, self.cfg.attention
    L, kh, hd, dt = cfg.num_layers, cfg.n_kv, cfg.hd, self.dtype
    state = {"pos": jnp.zeros((), jnp.int32)}
    if att.mode == "full":
      if not max_len:
        raise ValueError("init_stream: mode 'full' needs max_len (the KV "
                         "cache size); bswa and fam need none.")
      z = jnp.zeros((L, batch, max_len, kh, hd), dt)
      state.update(cache_k=z, cache_v=z)
      return state
    blk, m, f = att.block_size, att.memory_segments, att.fam
    z = jnp.zeros((L, batch, m * blk, kh, hd), dt)
    state.update(ring_k=z, ring_v=z)
    z = jnp.zeros((L, batch, blk, kh, hd), dt)
    state.update(blk_k=z, blk_v=z)
    if att.mode == "fam":
      if fam_state is None:
        fam_state = self.initial_fam(batch)
      fam_state = fam_state.astype(dt)
      ang = self._angles(self.layout.fam_positions(0), None)

      def body(layer, loc, _, phi):
        _, k, v = layer.project(phi, self._pick(loc, ang))
        return None, (k, v)

      _, (fk, fv) = self._scan_layers(body, None, fam_state)
      state.update(phi=fam_state, fam_k=fk, fam_v=fv)
    return state

  def stream(self, state, tokens):
    """Feed tokens [b, c]; returns (logits [b, c, vocab], new state).

    In bswa / fam mode the chunk must not cross a block boundary
    (see `famjax.decode.feed` for a driver that splits any length).
    """
    check_token_ids(tokens, self.cfg.vocab_size)
    cfg, att = self.cfg, self.cfg.attention
    att = self.cfg.attention
    c = tokens.shape[1]
    pos0 = state["pos"]
    q_pos = pos0 + jnp.arange(c)
    x = self._embed(tokens)
    attender, layout = self.attender, self.layout
    ang = self._angles(q_pos, None)
    new = dict(state, pos=pos0 + c)

    if att.mode == "full":
      def body(layer, loc, x, kv):
        ck, cv = kv
        q, k, v = layer.project(x, self._pick(loc, ang))
        ck = jax.lax.dynamic_update_slice_in_dim(ck, k, pos0, axis=1)
        cv = jax.lax.dynamic_update_slice_in_dim(cv, v, pos0, axis=1)
        o = attender(q[:, None], attn.causal_rows(ck, cv, q_pos,
                                                  self._window(loc)))[:, 0]
        return layer.finish(x, o), (ck, cv)

      x, (new["cache_k"], new["cache_v"]) = self._scan_layers(
          body, x, (state["cache_k"], state["cache_v"]))
      return self.logits(x), new

    blk, m, f = att.block_size, att.memory_segments, att.fam
    t = pos0 // blk
    j0 = pos0 % blk
    complete = j0 + c == blk
    names = ["ring_k", "ring_v", "blk_k", "blk_v"] + (
        ["phi", "fam_k", "fam_v"] if f else [])
    if f:
      ang_now = self._angles(layout.fam_positions(t), None)
      ang_next = self._angles(layout.fam_positions(t + 1), None)

    def body(layer, loc, x, ls):
      ls = dict(zip(names, ls))
      window = self._window(loc)
      q, k, v = layer.project(x, self._pick(loc, ang))
      bk = jax.lax.dynamic_update_slice_in_dim(ls["blk_k"], k, j0, axis=1)
      bv = jax.lax.dynamic_update_slice_in_dim(ls["blk_v"], v, j0, axis=1)
      o = attender(q[:, None], layout.stream_rows(
          q_pos, t, (ls["ring_k"], ls["ring_v"]),
          (ls["fam_k"], ls["fam_v"]) if f else None, (bk, bv), window))[:, 0]
      x = layer.finish(x, o)
      out = dict(ls, blk_k=bk, blk_v=bv)
      if m:
        out["ring_k"] = jnp.where(
            complete, jnp.concatenate([ls["ring_k"][:, blk:], bk], 1), ls["ring_k"])
        out["ring_v"] = jnp.where(
            complete, jnp.concatenate([ls["ring_v"][:, blk:], bv], 1), ls["ring_v"])
      if f:
        def update(_):
          phi, _, _ = attn.fam_pass(
              attender, layout,
              lambda p: layer.project(p, self._pick(loc, ang_now)),
              layer.finish, ls["phi"], bk, bv, blk, t == 0, window,
              self.cfg.attention.fam_state_rms, layer.fam_keep())
          _, fk, fv = layer.project(phi, self._pick(loc, ang_next))
          return phi, fk, fv

        out["phi"], out["fam_k"], out["fam_v"] = jax.lax.cond(
            complete, update, lambda _: (ls["phi"], ls["fam_k"], ls["fam_v"]),
            None)
      return x, tuple(out[k] for k in names)

    x, ls = self._scan_layers(body, x, tuple(state[k] for k in names))
    new.update(zip(names, ls))
    return self.logits(x), new
