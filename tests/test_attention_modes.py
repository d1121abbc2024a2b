"""The whole-sequence fast path (`Transformer.__call__`) against the naive
block-outer reference of docs/fam.md (tests/reference.py): logits, final FAM
states, FAM-state input, position offsets and gradients; and the option
`fam_logit_bias` (outside the rules) against the reference's explicit logit
offsets, against `bswa` (B = -inf) and against the rules (B = 0 / None)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from famjax.model import Transformer
from tests import reference as R
from tests.helpers import (VOCAB, Fast, fast_for, gemma_cfg, llama_cfg,
                           max_abs, qwen_cfg, tokens)

TOL = 1e-4

# (config, batch, T). Each case combines several of the shapes docs/fam.md names;
# every case is one compile, so they are few.
CASES = [
    # mode fam
    pytest.param(llama_cfg("fam", 4, 1, 2), 2, 11, id="fam-partial-gqa-b2"),
    pytest.param(llama_cfg("fam", 4, 2, 1), 1, 12, id="fam-exact-m2-F1"),
    pytest.param(llama_cfg("fam", 8, 1, 3), 2, 5, id="fam-T<B"),
    pytest.param(gemma_cfg("fam", 4, 0, 4), 1, 10, id="fam-gemma-m0-F=B"),
    pytest.param(llama_cfg("fam", 4, 5, 2, num_kv_heads=1, scan_layers=False,
                           remat_policy="full"), 2, 9,
                 id="fam-m>=n-mqa-noscan-remat"),
    pytest.param(gemma_cfg("fam", 4, 2, 2), 2, 13, id="fam-gemma"),
    pytest.param(qwen_cfg("fam", 5, 1, 3), 2, 14, id="fam-qwen"),
    # mode fam with fam_logit_bias (outside the rules)
    pytest.param(llama_cfg("fam", 4, 1, 2).with_attention(fam_logit_bias=-1.5),
                 2, 11, id="fam-bias-partial-gqa-b2"),
    pytest.param(gemma_cfg("fam", 4, 0, 4).with_attention(fam_logit_bias=-2.0),
                 1, 10, id="fam-bias-gemma-m0-F=B"),
    # mode fam with fam_state_rms (outside the rules)
    pytest.param(llama_cfg("fam", 4, 1, 2).with_attention(fam_state_rms=0.7),
                 2, 11, id="fam-rms-partial-gqa-b2"),
    # mode fam with fam_decay (outside the rules); random per-layer decays
    pytest.param(gemma_cfg("fam", 4, 2, 2).with_attention(fam_decay=0.9),
                 2, 13, id="fam-decay-gemma"),
    # mode bswa
    pytest.param(llama_cfg("bswa", 4, 1), 2, 11, id="bswa-partial-b2"),
    pytest.param(llama_cfg("bswa", 4, 0), 1, 10, id="bswa-m0"),
    pytest.param(llama_cfg("bswa", 4, 5), 2, 11, id="bswa-m>=n"),
    pytest.param(gemma_cfg("bswa", 4, 2), 2, 13, id="bswa-gemma"),
    pytest.param(qwen_cfg("bswa", 5, 2, scan_layers=False), 2, 14,
                 id="bswa-qwen-m2-noscan"),
    # mode full
    pytest.param(llama_cfg("full"), 2, 11, id="full"),
    pytest.param(gemma_cfg("full"), 2, 13, id="full-gemma"),
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


def with_bias(cfg, bias):
  return cfg.with_attention(fam_logit_bias=bias)


@pytest.mark.parametrize("make,batch,length,mem", [
    (llama_cfg, 2, 11, 1), (gemma_cfg, 1, 10, 0)], ids=["llama", "gemma-m0"])
def test_fam_logit_bias_between_rules_and_bswa(make, batch, length, mem):
  """fam_logit_bias = -inf gives exactly bswa's logits (the FAM keys are
  dropped from the block rows; FAM rows still update, so the FAM state is
  not bswa's); 0 and None are the rules; a finite B gives neither."""
  tok = tokens(batch, length)
  fam = make("fam", 4, mem, 2)
  rules, rules_state = fast_for(fam)(tok, return_state=True)
  bswa = fast_for(make("bswa", 4, mem))(tok)
  closed, closed_state = fast_for(with_bias(fam, float("-inf")))(
      tok, return_state=True)
  zero = fast_for(with_bias(fam, 0.0))(tok)
  finite = fast_for(with_bias(fam, -2.0))(tok)
  assert max_abs(closed, bswa) <= 1e-6
  assert max_abs(zero, rules) == 0.0
  # FAM queries never carry the bias: layer 0's FAM rows (whose block keys
  # are embeddings) update as in the rules; deeper layers read block keys
  # that the bias changed
  assert max_abs(closed_state["fam_state"][0],
                 rules_state["fam_state"][0]) <= 1e-6
  assert max_abs(closed_state["fam_state"], rules_state["fam_state"]) > 1e-3
  # non-vacuity: the rules differ from bswa, and B = -2 from both
  assert max_abs(rules, bswa) > 1e-2
  assert max_abs(finite, rules) > 1e-3 and max_abs(finite, bswa) > 1e-3
  # the reference agrees on both ends
  ref, _ = R.forward(with_bias(fam, float("-inf")), fast_for(fam).params, tok)
  assert max_abs(closed, ref) <= TOL


@pytest.mark.parametrize("make,batch,length", [
    (llama_cfg, 2, 11), (gemma_cfg, 2, 13)], ids=["llama", "gemma"])
def test_bswa_with_m_ge_n_equals_full(make, batch, length):
  """docs/fam.md: bswa with m >= n equals full (families without local layers).
  With Gemma 3 local layers the block rule hides nothing either when m >= n,
  and both modes apply the same native window, so they agree too."""
  tok = tokens(batch, length)
  assert 5 >= -(-length // 4)                         # m >= n
  bswa = fast_for(make("bswa", 4, 5))
  full = fast_for(make("full"))
  assert bswa.params.keys() == full.params.keys()
  out_b, out_f = bswa(tok), full(tok)
  assert max_abs(out_b, out_f) <= TOL
  ref_f, _ = R.forward(full.cfg, full.params, tok)
  assert max_abs(out_b, ref_f) <= TOL


def test_fam_state_and_position_offset():
  """Start from given FAM states (per batch element) with a large Random
  Position Offset, on local/global layers with two RoPE thetas."""
  cfg = gemma_cfg("fam", 4, 2, 2)
  batch, length = 2, 13
  fast = fast_for(cfg)
  tok = tokens(batch, length)
  phi = jnp.asarray(np.random.default_rng(3).standard_normal(
      (cfg.num_layers, batch, cfg.attention.fam_length, cfg.d_model)),
                    jnp.float32)
  offset = 2 * np.pi * 10000 * 0.61
  out, state = fast(tok, fam_state=phi, position_offset=jnp.float32(offset),
                    return_state=True)
  ref, ref_state = R.forward(cfg, fast.params, tok, fam_state=phi,
                             position_offset=offset)
  assert max_abs(out, ref) <= TOL
  assert max_abs(state["fam_state"], ref_state) <= TOL
  # the given state matters (non-vacuity) ...
  plain = fast(tok)
  assert max_abs(plain, out) > 1e-3
  # ... and RoPE sees position differences only: the offset changes nothing
  ref0, ref0_state = R.forward(cfg, fast.params, tok, fam_state=phi)
  assert max_abs(ref0, out) <= TOL
  assert max_abs(ref0_state, state["fam_state"]) <= TOL


@pytest.mark.parametrize("decay", [None, 0.9], ids=["rules", "fam_decay"])
def test_gradients_match_reference(decay):
  """Gradients of a scalar loss with respect to every parameter flow through
  the whole FAM chain (no stop-gradient at block boundaries) as through the
  block-outer reference.

  The reference side is float64 central differences of the numpy reference
  along random directions, one set per parameter tensor (a jitted jax.grad
  of the unrolled reference costs ~30 s of XLA compile on a small CPU; the
  directional derivatives cost ~1 s and do not share autodiff with the
  fast path). Each tensor is probed along its own gradient and along
  random directions. m = 0, so blocks talk only through the FAM chain;
  qkv bias and an untied head give every parameter kind of the Llama family.
  With fam_decay (outside the rules) the learned decay is one more tensor.
  """
  cfg = llama_cfg("fam", 4, 0, 2, qkv_bias=True).with_attention(
      fam_decay=decay)
  batch, length = 2, 10
  fast = fast_for(cfg)
  tok = tokens(batch, length)
  w = np.random.default_rng(7).standard_normal((batch, length, VOCAB))

  logits, g_fast = fast.value_and_grad(
      lambda lg: jnp.mean(lg * jnp.asarray(w, jnp.float32)), tok)
  ref_logits, _ = R.forward(cfg, fast.params, tok)
  assert max_abs(logits, ref_logits) <= TOL

  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), fast.params)
  flat_p, treedef = jax.tree_util.tree_flatten_with_path(p64)
  flat_g = dict(jax.tree_util.tree_flatten_with_path(g_fast)[0])
  assert set(flat_g) == {k for k, _ in flat_p}

  def loss(leaves):
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    return float(np.mean(R.forward(cfg, params, tok)[0] * w))

  base = [v for _, v in flat_p]
  gnorm_all = np.sqrt(sum(float(np.sum(np.square(g))) for g in flat_g.values()))
  rng = np.random.default_rng(11)
  for i, (key, value) in enumerate(flat_p):
    g = np.asarray(flat_g[key], np.float64)
    assert g.shape == value.shape, key
    gnorm = float(np.linalg.norm(g))
    if any(n in jax.tree_util.keystr(key)
           for n in ("fam_prompt", "fam_decay_logit")):
      # these reach the loss only through the FAM chain
      assert gnorm > 1e-3 * gnorm_all, (key, gnorm)
    dirs = [g / gnorm] if gnorm > 0 else []
    dirs += [rng.standard_normal(g.shape) for _ in range(2)]
    for u in dirs:
      u = u / np.linalg.norm(u)
      eps = 1e-4 * max(1.0, float(np.max(np.abs(value))))
      plus = list(base)
      minus = list(base)
      plus[i] = value + eps * u
      minus[i] = value - eps * u
      fd = (loss(plus) - loss(minus)) / (2 * eps)
      got = float(np.sum(g * u))
      tol = 1e-4 * max(gnorm, 1e-2 * gnorm_all)
      assert abs(got - fd) <= tol, (jax.tree_util.keystr(key), got, fd, tol)


def test_fam_state_rms_rescales_every_fam_row():
  """fam_state_rms = r (outside the rules): every FAM row of the final state
  has root-mean-square r, and the logits are no longer the rules' ones
  (None is the rules)."""
  tok = tokens(2, 11)
  fam = llama_cfg("fam", 4, 1, 2)
  rules, rules_state = fast_for(fam)(tok, return_state=True)
  out, state = fast_for(fam.with_attention(fam_state_rms=0.7))(
      tok, return_state=True)
  phi = np.asarray(state["fam_state"], np.float64)
  np.testing.assert_allclose(np.sqrt((phi ** 2).mean(-1)), 0.7, rtol=1e-5)
  rules_rms = np.sqrt((np.asarray(rules_state["fam_state"]) ** 2).mean(-1))
  assert np.abs(rules_rms - 0.7).max() > 0.05
  assert max_abs(out, rules) > 1e-4


def test_fam_decay_keeps_a_learned_share_of_the_state():
  """fam_decay (outside the rules): lambda = sigmoid(w_l), w_l a weight per
  layer starting at logit(lambda0). A decay of 1 is the rules (w made huge),
  a smaller one changes the logits and shrinks the state."""
  tok = tokens(2, 11)
  fam = llama_cfg("fam", 4, 1, 2)
  rules, rules_state = fast_for(fam)(tok, return_state=True)
  decayed = fam.with_attention(fam_decay=0.5)
  fast = fast_for(decayed)
  w = fast.params["layers"]["fam_decay_logit"]
  assert w.shape == (fam.num_layers,)
  # the rules' weights plus the decay weight: nothing else is new
  keys = lambda p: {jax.tree_util.keystr(k)
                    for k, _ in jax.tree_util.tree_flatten_with_path(p)[0]}
  assert keys(fast.params) - keys(fast_for(fam).params) == {
      "['layers']['fam_decay_logit']"}
  assert keys(fast_for(fam).params) <= keys(fast.params)
  # a fresh model starts every layer at logit(lambda0)
  model = Transformer(decayed, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(model.layers.fam_keep()), 0.5,
                             rtol=1e-6)
  with_w = lambda v: Fast(decayed, fast.params | {
      "layers": fast.params["layers"] | {"fam_decay_logit": v}})
  one = with_w(np.full_like(w, 40.0))
  out_one, state_one = one(tok, return_state=True)
  assert max_abs(out_one, rules) <= 1e-5
  assert max_abs(state_one["fam_state"], rules_state["fam_state"]) <= 1e-5
  half = with_w(np.zeros_like(w))
  out_half, state_half = half(tok, return_state=True)
  assert max_abs(out_half, rules) > 1e-3
  rms = lambda s: float(np.sqrt(np.mean(np.square(np.asarray(s)))))
  assert rms(state_half["fam_state"]) < rms(rules_state["fam_state"])
