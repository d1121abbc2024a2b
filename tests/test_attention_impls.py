"""Every attention implementation equals `xla` (explicit mask, whole score
matrix) on logits, FAM states and gradients, in every mode.

`chunked` runs with a tiny `attention_chunk` so that its query chunks, its
key-chunk loops with bounds read from the key ranges and its partial last
chunks are all exercised; `cudnn` runs its `jax.nn.dot_product_attention`
call path with the XLA implementation (no GPU here: the cuDNN kernel itself
is not checked; soft-capped models use `xla` under `cudnn`, so it runs on
the Llama cases); `splash` runs the Pallas kernel in interpret mode (its
static masks cover the block rows of models without local layers; the rest
falls back to `chunked`). One compile per (case, implementation).

The `fam_logit_bias` cases (an option outside docs/fam.md's rules) check the
per-part logit offset of every implementation the same way (splash hands
biased calls to `chunked`); `test_part_bias_kernels` checks the offset of
each implementation against a float64 numpy softmax, -inf included.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from famjax import Transformer
from famjax import kernels
from tests import reference as R
from tests.helpers import gemma_cfg, llama_cfg, max_abs, random_params, tokens

TOL = 1e-5

# (config, batch, T, chunk, implementations). Partial last blocks, GQA /
# MQA, m = 0 with F = B, m >= n, a native local window and attention
# soft-capping (Gemma).
LLAMA_FAM = llama_cfg("fam", 4, 1, 2)
CASES = [
    (LLAMA_FAM, 2, 11, 3, "chunked", "fam-partial-gqa"),
    (LLAMA_FAM, 2, 11, 3, "cudnn", "fam-partial-gqa"),
    (LLAMA_FAM, 2, 11, 3, "splash", "fam-partial-gqa"),
    (gemma_cfg("fam", 4, 0, 4), 1, 10, 3, "chunked", "fam-gemma-m0-F=B"),
    (llama_cfg("bswa", 4, 5, num_kv_heads=1), 1, 9, 2, "chunked",
     "bswa-m>=n-mqa"),
    (llama_cfg("bswa", 4, 5, num_kv_heads=1), 1, 9, 2, "cudnn",
     "bswa-m>=n-mqa"),
    (gemma_cfg("bswa", 4, 2), 2, 13, 3, "chunked", "bswa-gemma-m2"),
    (gemma_cfg("full"), 1, 13, 4, "chunked", "full-gemma"),
]
# fam_logit_bias: partial last block with GQA, and Gemma (soft-cap: the
# offset comes after the cap) with m = 0, F = B.
LLAMA_BIAS = LLAMA_FAM.with_attention(fam_logit_bias=-1.5)
GEMMA_BIAS = gemma_cfg("fam", 4, 0, 4).with_attention(fam_logit_bias=-2.0)
CASES += [
    (LLAMA_BIAS, 2, 11, 3, "chunked", "fam-bias-partial-gqa"),
    (LLAMA_BIAS, 2, 11, 3, "cudnn", "fam-bias-partial-gqa"),
    (LLAMA_BIAS, 2, 11, 3, "splash", "fam-bias-partial-gqa"),
    (GEMMA_BIAS, 1, 10, 3, "chunked", "fam-bias-gemma-m0-F=B"),
]


def with_impl(cfg, impl, chunk=512):
  return cfg.with_attention(attention_impl=impl, attention_chunk=chunk)


_RUNS = {}


def run(cfg, batch, length):
  """(logits, FAM state, gradients) of a loss over logits and FAM state."""
  key = (cfg, batch, length)
  if key in _RUNS:
    return _RUNS[key]
  params = random_params(cfg.with_attention(attention_impl="xla"))
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  gdef, state = nnx.split(abstract)
  state.replace_by_pure_dict(jax.tree.map(jnp.asarray, params))
  tok = jnp.asarray(tokens(batch, length))
  rng = np.random.default_rng(5)
  w = jnp.asarray(rng.standard_normal((batch, length, cfg.vocab_size)),
                  jnp.float32)

  def loss(st):
    logits, aux = nnx.merge(gdef, st)(tok, return_state=True)
    out = jnp.mean(logits * w)
    if "fam_state" in aux:
      out = out + jnp.mean(jnp.sin(aux["fam_state"]))
    return out, (logits, aux.get("fam_state"))

  (_, (logits, phi)), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      state)
  _RUNS[key] = (params, tok, logits, phi, g.to_pure_dict())
  return _RUNS[key]


@pytest.mark.parametrize("cfg,batch,length,chunk,impl", [
    pytest.param(*c[:5], id=f"{c[5]}-{c[4]}") for c in CASES])
def test_impl_equals_xla(cfg, batch, length, chunk, impl):
  params, tok, want, want_phi, want_g = run(with_impl(cfg, "xla"), batch,
                                            length)
  _, _, got, got_phi, got_g = run(with_impl(cfg, impl, chunk), batch, length)
  assert max_abs(got, want) <= TOL
  if cfg.attention.mode == "fam":
    # FAM states grow to |phi| ~ 7 over the layers: float32 round-off scales
    # with them (as for the gradients below)
    scale = max(1.0, float(np.max(np.abs(want_phi))))
    assert max_abs(got_phi, want_phi) <= TOL * scale
  flat_w = dict(jax.tree_util.tree_flatten_with_path(want_g)[0])
  flat_g = dict(jax.tree_util.tree_flatten_with_path(got_g)[0])
  assert flat_w.keys() == flat_g.keys()
  for k, gw in flat_w.items():
    scale = max(1.0, float(np.max(np.abs(gw))))
    assert max_abs(flat_g[k], gw) <= TOL * scale, jax.tree_util.keystr(k)
  if impl == "chunked":
    # the xla path itself follows the independent reference (non-vacuity:
    # the gradients compared above are not all zero).
    ref, _ = R.forward(cfg, params, tok)
    assert max_abs(want, ref) <= 1e-4
    assert max(float(np.max(np.abs(g))) for g in flat_w.values()) > 1e-3


def test_auto_and_unknown_impl():
  assert kernels.resolve("auto") == "chunked"            # this is a CPU
  with pytest.raises(ValueError, match="attention_impl"):
    llama_cfg("fam").with_attention(attention_impl="flash").validate()
  with pytest.raises(ValueError, match="attention_chunk"):
    llama_cfg("fam").with_attention(attention_chunk=0).validate()


def test_auto_is_xla_for_small_score_tensors(monkeypatch):
  """`auto` takes the platform default, except for a score tensor of at most
  SMALL_SCORES entries per sequence and head (a decoding step, a FAM pass),
  which uses `xla`; both give the same numbers."""
  from famjax.kernels import chunked, xla
  monkeypatch.setattr(kernels, "SMALL_SCORES", 20)    # 7 keys: 2 queries fit
  used = []
  for mod, name in ((xla, "xla"), (chunked, "chunked")):
    real = mod.attend
    monkeypatch.setattr(mod, "attend", lambda *a, _r=real, _n=name, **k: (
        used.append(_n), _r(*a, **k))[1])
  r = np.random.RandomState(0)
  k, v = (jnp.asarray(r.randn(1, 1, 7, 2, 4), jnp.float32) for _ in range(2))
  for nq, want in ((1, "xla"), (2, "xla"), (3, "chunked")):
    q = jnp.asarray(r.randn(1, 1, nq, 2, 4), jnp.float32)
    parts = [kernels.KeyPart(k, v, 0, 6)]
    used.clear()
    out = kernels.attend(q, parts, impl="auto", scale=0.5)
    assert used == [want]
    ref = kernels.attend(q, parts, impl="xla" if want == "chunked" else
                         "chunked", scale=0.5)
    assert max_abs(out, ref) <= TOL


def test_chunked_never_stores_scores():
  """The compiled forward + backward of `chunked` (default chunk) at
  T = 2048 (B = 512) needs far less temporary memory than the B x
  (m B + F + B) score tensors of `xla`: both measured by XLA's own memory
  analysis."""
  def temp_bytes(impl):
    cfg = dataclasses.replace(llama_cfg("fam", 512, 1, 32, d_model=32,
                                        num_layers=1, num_heads=4,
                                        num_kv_heads=4),
                              ).with_attention(attention_impl=impl)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    gdef, st = nnx.split(model)
    f = jax.jit(jax.grad(lambda s, t: jnp.mean(nnx.merge(gdef, s)(t))))
    tok = jax.ShapeDtypeStruct((1, 2048), jnp.int32)
    return f.lower(st, tok).compile().memory_analysis().temp_size_in_bytes

  xla, chunked = temp_bytes("xla"), temp_bytes("chunked")
  # one layer's scores: 4 heads x 2048 x 1056 floats = 34.6 MB, kept for
  # the backward pass (with their probabilities) by xla
  assert xla > 2 * 4 * 2048 * 1056 * 4
  assert chunked < xla / 3, (chunked, xla)


def _numpy_attention(q, parts, scale, softcap):
  """float64 numpy attention of q [b, G, Q, H, D] over KeyParts, from the
  ranges and biases alone (independent of famjax.kernels)."""
  q = np.asarray(q, np.float64)
  b, g, nq, h, _ = q.shape
  out = np.zeros(q.shape)
  for gi in range(g):
    for i in range(nq):
      keys, vals, offs = [], [], []
      for p in parts:
        src = gi - p.shift
        if src < 0 or p.bias == -np.inf:
          continue
        lo = int(np.broadcast_to(p.lo, (g, nq))[gi, i])
        hi = min(int(np.broadcast_to(p.hi, (g, nq))[gi, i]), p.k.shape[2] - 1)
        for j in range(lo, hi + 1):
          keys.append(np.asarray(p.k, np.float64)[:, src, j])
          vals.append(np.asarray(p.v, np.float64)[:, src, j])
          offs.append(p.bias)
      k, v = np.stack(keys, 1), np.stack(vals, 1)          # [b, S, K, D]
      rep = h // k.shape[2]
      k, v = np.repeat(k, rep, 2), np.repeat(v, rep, 2)
      s = np.einsum("bhd,bshd->bhs", q[:, gi, i] * scale, k)
      if softcap:
        s = softcap * np.tanh(s / softcap)
      s = s + np.asarray(offs)
      w = np.exp(s - s.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      out[:, gi, i] = np.einsum("bhs,bshd->bhd", w, v)
  return out


@pytest.mark.parametrize("softcap", [None, 3.0], ids=["plain", "softcap"])
def test_part_bias_kernels(softcap):
  """`attend` with biased parts (finite, 0 and -inf; a shifted part too) in
  every implementation equals a float64 numpy softmax over the visible keys
  with the offsets added after the soft-cap, and the -inf part changes
  nothing compared with leaving it out."""
  rng = np.random.default_rng(3)
  b, g, nq, h, kh, d, s = 2, 3, 5, 4, 2, 8, 7
  arr = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  q = arr(b, g, nq, h, d)
  blk_k, blk_v = arr(b, g, s, kh, d), arr(b, g, s, kh, d)
  f_k, f_v = arr(b, g, 3, kh, d), arr(b, g, 3, kh, d)
  x_k, x_v = arr(b, g, 4, kh, d), arr(b, g, 4, kh, d)
  j = np.arange(nq)[None, :]
  parts = [kernels.KeyPart(blk_k, blk_v, 0, s - 1, 1, bias=0.75),
           kernels.KeyPart(f_k, f_v, 0, 2, bias=-1.25),
           kernels.KeyPart(x_k, x_v, 1, 3, bias=float("-inf")),
           kernels.KeyPart(blk_k, blk_v, 0, j)]
  want = _numpy_attention(q, parts, 0.4, softcap)
  for impl in ("xla", "chunked", "cudnn", "splash"):
    got = kernels.attend(q, parts, impl=impl, scale=0.4, softcap=softcap,
                         chunk=2)
    assert max_abs(got, want) <= TOL, impl
    without = kernels.attend(q, parts[:2] + parts[3:], impl=impl, scale=0.4,
                             softcap=softcap, chunk=2)
    assert max_abs(got, without) == 0.0, impl
  # non-vacuity: the offsets change the result
  plain = [p._replace(bias=0.0) for p in parts]
  assert max_abs(_numpy_attention(q, plain, 0.4, softcap), want) > 1e-2
  # gradients of chunked (its own VJP) equal those of xla
  def loss(impl):
    def f(q, bk, bv, fk, fv):
      ps = [p._replace(k=bk, v=bv) if p.k is blk_k else
            p._replace(k=fk, v=fv) if p.k is f_k else p for p in parts]
      o = kernels.attend(q, ps, impl=impl, scale=0.4, softcap=softcap,
                         chunk=2)
      return jnp.sum(jnp.sin(o))
    return jax.grad(f, argnums=(0, 1, 2, 3, 4))(q, blk_k, blk_v, f_k, f_v)
  for gx, gc in zip(loss("xla"), loss("chunked")):
    assert max_abs(gc, gx) <= TOL
    assert float(jnp.max(jnp.abs(gx))) > 1e-3
