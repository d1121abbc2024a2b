"""The whole-sequence fast path (`Transformer.__call__`) against the naive
block-outer reference of SPEC (tests/reference.py): logits, final FAM
states, FAM-state input, position offsets and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import reference as R
from tests.helpers import (VOCAB, fast_for, gemma_cfg, llama_cfg, max_abs,
                           qwen_cfg, tokens)

TOL = 1e-4

# (config, batch, T). Each case combines several of the shapes SPEC names;
# every case is one compile, so they are few.
CASES = [
    # mode fam
    pytest.param(llama_cfg("fam", 4, 1, 2), 2, 11, id="fam-partial-gqa-b2"),
    pytest.param(llama_cfg("fam", 4, 2, 1), 1, 12, id="fam-exact-m2-F1"),
    pytest.param(llama_cfg("fam", 8, 1, 3), 2, 5, id="fam-T<B"),
    pytest.param(llama_cfg("fam", 4, 0, 4), 1, 10, id="fam-m0-F=B"),
    pytest.param(llama_cfg("fam", 4, 5, 2, num_kv_heads=1), 2, 9,
                 id="fam-m>=n-mqa"),
    pytest.param(llama_cfg("fam", 4, 1, 2, num_heads=2, num_kv_heads=2,
                           head_dim=8, scan_layers=False, remat_policy="full"),
                 2, 10, id="fam-noscan-remat-mha"),
    pytest.param(gemma_cfg("fam", 4, 2, 2), 2, 13, id="fam-gemma"),
    pytest.param(qwen_cfg("fam", 5, 1, 3), 2, 14, id="fam-qwen"),
    # mode bswa
    pytest.param(llama_cfg("bswa", 4, 1), 2, 11, id="bswa-partial-b2"),
    pytest.param(llama_cfg("bswa", 4, 0), 1, 10, id="bswa-m0"),
    pytest.param(llama_cfg("bswa", 4, 2, scan_layers=False,
                           remat_policy="full"), 1, 12, id="bswa-m2-noscan"),
    pytest.param(llama_cfg("bswa", 8, 1), 2, 5, id="bswa-T<B"),
    pytest.param(llama_cfg("bswa", 4, 5, num_kv_heads=1), 2, 9,
                 id="bswa-m>=n-mqa"),
    pytest.param(gemma_cfg("bswa", 4, 2), 2, 13, id="bswa-gemma"),
    pytest.param(qwen_cfg("bswa", 5, 1), 2, 14, id="bswa-qwen"),
    # mode full
    pytest.param(llama_cfg("full"), 2, 11, id="full"),
    pytest.param(llama_cfg("full", num_kv_heads=1), 2, 9, id="full-mqa"),
    pytest.param(gemma_cfg("full"), 2, 13, id="full-gemma"),
    pytest.param(qwen_cfg("full"), 2, 14, id="full-qwen"),
]


@pytest.mark.parametrize("cfg,batch,length", CASES)
def test_logits_and_fam_state_match_reference(cfg, batch, length):
  fast = fast_for(cfg)
  tok = tokens(batch, length)
  out, state = fast(tok, return_state=True)
  ref, ref_state = R.forward(cfg, fast.params, tok)
  assert out.shape == (batch, length, VOCAB)
  assert np.isfinite(np.asarray(out)).all()
  assert max_abs(out, ref) <= TOL
  if cfg.attention.mode == "fam":
    f = cfg.attention.fam_length
    assert state["fam_state"].shape == (cfg.num_layers, batch, f, cfg.d_model)
    assert max_abs(state["fam_state"], ref_state) <= TOL


def test_modes_differ():
  """Non-vacuity: on these weights the three masks give different logits,
  so the comparisons above can see a wrong mask."""
  tok = tokens(2, 11)
  outs = {mode: np.asarray(fast_for(llama_cfg(mode, 4, 1, 2))(tok))
          for mode in ("full", "bswa", "fam")}
  assert max_abs(outs["full"], outs["bswa"]) > 1e-2
  assert max_abs(outs["bswa"], outs["fam"]) > 1e-2
  # the first block of bswa sees exactly what full attention sees
  assert max_abs(outs["full"][:, :4], outs["bswa"][:, :4]) <= TOL


@pytest.mark.parametrize("make,batch,length,kw", [
    (llama_cfg, 2, 9, {"num_kv_heads": 1}), (gemma_cfg, 2, 13, {})],
                         ids=["llama", "gemma"])
def test_bswa_with_m_ge_n_equals_full(make, batch, length, kw):
  """SPEC: bswa with m >= n equals full (families without local layers).
  With Gemma 3 local layers the block rule hides nothing either when m >= n,
  and both modes apply the same native window, so they agree too."""
  tok = tokens(batch, length)
  assert 5 >= -(-length // 4)                         # m >= n
  bswa = fast_for(make("bswa", 4, 5, **kw))
  full = fast_for(make("full", **kw))
  assert bswa.params.keys() == full.params.keys()
  out_b, out_f = bswa(tok), full(tok)
  assert max_abs(out_b, out_f) <= TOL
  ref_f, _ = R.forward(full.cfg, full.params, tok)
  assert max_abs(out_b, ref_f) <= TOL


def _random_fam_state(cfg, batch, seed=3):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(
      (cfg.num_layers, batch, cfg.attention.fam_length, cfg.d_model)),
                     jnp.float32)


@pytest.mark.parametrize("cfg,batch,length,with_state,offset", [
    pytest.param(llama_cfg("fam", 4, 1, 2), 2, 11, True, 23456.7,
                 id="llama-state-offset"),
    pytest.param(gemma_cfg("fam", 4, 2, 2), 2, 13, False,
                 2 * np.pi * 10000 * 0.61, id="gemma-offset"),
    pytest.param(gemma_cfg("fam", 4, 2, 2), 2, 13, True, None,
                 id="gemma-state"),
])
def test_fam_state_and_position_offset(cfg, batch, length, with_state, offset):
  fast = fast_for(cfg)
  tok = tokens(batch, length)
  phi = _random_fam_state(cfg, batch) if with_state else None
  out, state = fast(tok, fam_state=phi, position_offset=None if offset is None
                    else jnp.float32(offset), return_state=True)
  ref, ref_state = R.forward(cfg, fast.params, tok, fam_state=phi,
                             position_offset=offset)
  assert max_abs(out, ref) <= TOL
  assert max_abs(state["fam_state"], ref_state) <= TOL
  plain, plain_state = fast(tok, return_state=True)
  if with_state:
    # the given state must matter (non-vacuity)
    assert max_abs(plain, out) > 1e-3
  else:
    # RoPE sees position differences only: an offset changes nothing
    assert max_abs(plain, out) <= TOL


def test_gradients_match_reference():
  """Gradients of a scalar loss with respect to every parameter flow through
  the whole FAM chain (no stop-gradient at block boundaries) exactly as
  through the block-outer reference (jax.grad of it, float32).

  One config carries every parameter kind (Gemma norms, qk norm, sandwich
  norms, qkv bias, untied head, FAM prompt), remat 'full' and a partial last
  block; m = 1 so that blocks 0 and 2 talk only through the FAM chain.
  """
  cfg = gemma_cfg("fam", 4, 1, 2, qkv_bias=True, tie_embeddings=False,
                  remat_policy="full")
  batch, length = 1, 10
  fast = fast_for(cfg)
  tok = tokens(batch, length)
  w = jnp.asarray(np.random.default_rng(7).standard_normal(
      (batch, length, VOCAB)), jnp.float32)

  def loss(logits):
    return jnp.mean(logits * w)

  logits, g_fast = fast.value_and_grad(loss, tok)
  ref_np, _ = R.forward(cfg, fast.params, tok)
  assert max_abs(logits, ref_np) <= TOL
  g_ref = jax.jit(jax.grad(
      lambda p: loss(R.forward(cfg, p, tok, xp=jnp)[0])))(
          jax.tree.map(jnp.asarray, fast.params))
  flat_f = dict(jax.tree_util.tree_flatten_with_path(g_fast)[0])
  flat_r = dict(jax.tree_util.tree_flatten_with_path(g_ref)[0])
  assert flat_f.keys() == flat_r.keys()
  gmax = max(float(jnp.max(jnp.abs(g))) for g in flat_r.values())
  for key, gr in flat_r.items():
    gf = flat_f[key]
    assert gf.shape == gr.shape, key
    scale = max(float(jnp.max(jnp.abs(gr))), 1e-2 * gmax)
    err = max_abs(gf, gr)
    assert err <= 1e-4 * scale, (jax.tree_util.keystr(key), err, scale)
  # the FAM prompt is reached through the chain (not a zero gradient)
  assert float(jnp.max(jnp.abs(g_ref["fam_prompt"]))) > 1e-3 * gmax
