"""The train step against independent computations: gradient accumulation,
Random State Passing and Random Position Offset (docs/fam.md), optimizers."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from famjax import AttentionConfig, ModelConfig, Transformer
from famjax.train import optimizers, trainer

from tests import reference

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2,
                  ffn_dim=64, attention=AttentionConfig(
                      mode="fam", block_size=8, memory_segments=1,
                      fam_length=4))


def make_batch(seed, b=8, t=32, vocab=64):
  rng = np.random.default_rng(seed)
  tok = rng.integers(0, vocab, (b, t + 1)).astype(np.int32)
  # Different token counts per row: microbatch means would weight wrongly.
  w = (rng.random((b, t)) < np.linspace(0.2, 1.0, b)[:, None]).astype(np.float32)
  w[:, -3:] *= 0.5
  return {"decoder_input_tokens": tok[:, :-1], "decoder_target_tokens": tok[:, 1:],
          "decoder_loss_weights": w}


def copy(tree):
  return jax.tree.map(lambda x: np.array(x), tree)


def setup(step_cfg, tx=None, cfg=CFG):
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  keys = trainer.trainable_keys(params)
  tx = tx or optax.sgd(1.0)
  state = trainer.init_state(model, tx, keys, seed=3)
  step = trainer.make_train_step(model, tx, lambda s: jnp.float32(1.0), keys,
                                 step_cfg)
  return model, state, step


def test_grad_accumulation_equals_big_batch():
  batch = make_batch(0)
  out = {}
  for k in (1, 4):
    _, state, step = setup(trainer.StepConfig(microbatches=k, p_rsp=0.8))
    before = copy(state["params"])
    state, m = step(state, batch)
    # SGD with learning rate 1: params_before - params_after = gradient.
    grads = jax.tree.map(lambda a, b: a - np.asarray(b), before, state["params"])
    out[k] = (grads, copy(state), jax.device_get(m))
  g1, s1, m1 = out[1]
  g4, s4, m4 = out[4]
  assert max(jax.tree.leaves(jax.tree.map(
      lambda a: float(np.abs(a).max()), g1))) > 1e-3   # a real gradient
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s4["params"])):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  np.testing.assert_allclose(m1["loss"], m4["loss"], atol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
  assert m1["tokens"] == m4["tokens"] == batch["decoder_loss_weights"].sum()
  # The kept FAM state is batch element 0's, whatever the microbatching.
  np.testing.assert_allclose(s1["rsp"], s4["rsp"], atol=1e-5)


def direct_loss(model, params, batch, **kw):
  """Token-weighted cross-entropy from a plain model call (numpy)."""
  m = nnx.merge(nnx.graphdef(model), params)
  logits, aux = m(jnp.asarray(batch["decoder_input_tokens"]), return_state=True,
                  **kw)
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  nll = -np.take_along_axis(np.asarray(logp), batch["decoder_target_tokens"][..., None],
                            -1)[..., 0]
  w = batch["decoder_loss_weights"]
  return float((nll * w).sum() / w.sum()), np.asarray(aux["fam_state"])


@pytest.mark.parametrize("p_rsp", [1.0, 0.0])
def test_random_state_passing(p_rsp):
  cfg = trainer.StepConfig(p_rsp=p_rsp, random_position_offset=True)
  model, state, step = setup(cfg, tx=optax.adam(1e-2))
  b1, b2 = make_batch(1, b=4), make_batch(2, b=4)
  rng = np.asarray(state["rng"])
  off1, _ = trainer.step_randomness(rng, 0, cfg, CFG.rope_theta)
  off2, coin2 = trainer.step_randomness(rng, 1, cfg, CFG.rope_theta)
  assert bool(coin2) == (p_rsp == 1.0)

  p0 = copy(state["params"])
  state, m1 = step(state, b1)
  # Step 1 starts from the initial FAM; it keeps element 0's final state.
  loss1, phi1 = direct_loss(model, p0, b1, position_offset=off1)
  np.testing.assert_allclose(m1["loss"], loss1, atol=1e-5)
  assert state["rsp"].shape == (2, 4, 32)
  np.testing.assert_allclose(state["rsp"], phi1[:, 0], atol=1e-5)
  assert not np.allclose(phi1[:, 0], phi1[:, 1], atol=1e-3)   # really elem 0

  kept = np.asarray(state["rsp"])
  p1 = copy(state["params"])
  state, m2 = step(state, b2)
  with_state, _ = direct_loss(
      model, p1, b2, position_offset=off2,
      fam_state=jnp.broadcast_to(kept[:, None], (2, 4, 4, 32)))
  from_prompt, _ = direct_loss(model, p1, b2, position_offset=off2)
  assert abs(with_state - from_prompt) > 1e-4     # the two are distinguishable
  want = with_state if p_rsp == 1.0 else from_prompt
  np.testing.assert_allclose(m2["loss"], want, atol=1e-5)
  assert float(m2["rsp_used"]) == p_rsp


def _log_change(r):          # fam_growth_penalty: block to block
  return jnp.mean(jnp.square(r[..., 1:] - r[..., :-1]))


def _log_drift(r):           # fam_size_penalty: against the first block
  return jnp.mean(jnp.square(r[..., 1:] - r[..., :1]))


@pytest.mark.parametrize("p_rsp", [0.0, 1.0])
@pytest.mark.parametrize("field,metric,term", [
    ("fam_growth_penalty", "fam_growth", _log_change),
    ("fam_size_penalty", "fam_size", _log_drift)])
def test_fam_state_size_penalties(p_rsp, field, metric, term):
  """The step's update is the gradient of cross-entropy + lam * a term of
  the FAM state's per-block RMS (the mean squared log-change from block to
  block, or the mean squared log-ratio to the first block), both from the
  block-outer reference of docs/fam.md."""
  lam = 0.5
  cfg = trainer.StepConfig(p_rsp=p_rsp, random_position_offset=False,
                           **{field: lam})
  model, state, step = setup(cfg)
  b1, b2 = make_batch(1, b=4), make_batch(2, b=4)

  def ref_loss(params, batch, start=None):
    rms = []
    logits, _ = reference.forward(
        CFG, params, np.asarray(batch["decoder_input_tokens"]), xp=jnp,
        block_rms=rms, fam_state=None if start is None else np.broadcast_to(
            start[:, None], (2, 4) + start.shape[1:]))
    lp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(lp, batch["decoder_target_tokens"][..., None],
                               -1)[..., 0]
    w = batch["decoder_loss_weights"]
    ce = jnp.sum(nll * w) / jnp.sum(w)
    g = term(jnp.log(jnp.stack(rms, -1)))              # rms: [L, b, n]
    return ce + lam * g, (ce, g, jnp.stack(rms, -1))

  # SGD at learning rate 1: the update is the gradient.
  p0 = copy(state["params"])
  state, m1 = step(state, b1)
  (_, (ce, g, rms)), grads = jax.value_and_grad(ref_loss, has_aux=True)(
      p0, b1)
  np.testing.assert_allclose(m1["loss"], ce, atol=1e-5)
  np.testing.assert_allclose(m1[metric], g, rtol=1e-4)
  assert float(g) > 1e-3                     # the state's size does change
  _, aux = nnx.merge(nnx.graphdef(model), p0)(
      jnp.asarray(b1["decoder_input_tokens"]), return_state=True)
  assert aux["fam_rms"].shape == (2, 4, 4)   # [L, b, blocks]
  np.testing.assert_allclose(aux["fam_rms"], rms, rtol=1e-5)
  moved = jax.tree.map(lambda x, y: x - np.asarray(y), p0, state["params"])
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(moved)):
    np.testing.assert_allclose(a, b, atol=3e-5)

  # Step 2 (under RSP, from the kept state) has the same two terms.
  kept = np.asarray(state["rsp"])
  p1 = copy(state["params"])
  state, m2 = step(state, b2)
  _, (ce2, g2, _) = ref_loss(p1, b2, kept if p_rsp else None)
  np.testing.assert_allclose(m2["loss"], ce2, atol=1e-5)
  np.testing.assert_allclose(m2[metric], g2, rtol=1e-4)
  with pytest.raises(ValueError, match=field):
    trainer.StepConfig(**{field: -1.0}).validate(4)
  bswa = CFG.with_attention(mode="bswa", block_size=8, memory_segments=1)
  with pytest.raises(ValueError, match=f"{field}=0.5 .* 'bswa'"):
    setup(cfg, cfg=bswa)


CFG_M0 = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2,
                     ffn_dim=64, attention=AttentionConfig(
                         mode="fam", block_size=8, memory_segments=0,
                         fam_length=4))


def joined(a, b):
  """Row i of `a` followed by row i of `b`: one stream a row."""
  return {k: np.concatenate([a[k], b[k]], axis=1) for k in a}


def nll_rows(model, params, batch, **kw):
  """Per-token negative log-likelihood [b, t] of a plain model call."""
  m = nnx.merge(nnx.graphdef(model), params)
  logits = m(jnp.asarray(batch["decoder_input_tokens"]), **kw)
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  return -np.take_along_axis(logp, batch["decoder_target_tokens"][..., None],
                             -1)[..., 0]


@pytest.mark.parametrize("how", ["coins", "fam_continue", "off"])
def test_state_passing_rows_continues_each_row(how):
  """state_passing='rows': step 2 on chunk B of every row continues that
  row's own state after chunk A, which (m = 0, no position offset) is the
  whole-sequence forward of the stream A;B; rows told not to continue start
  from the initial FAM, as a plain forward of B does."""
  b = 4
  cfg = trainer.StepConfig(microbatches=2, p_rsp=0.0 if how == "off" else 1.0,
                           random_position_offset=False, state_passing="rows")
  model = Transformer(CFG_M0, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  keys = trainer.trainable_keys(params)
  tx = optax.sgd(0.0)                                    # weights stay put
  state = trainer.init_state(model, tx, keys, seed=3, rsp_rows=b)
  params = copy(state["params"])                 # the step donates the state
  assert state["rsp"].shape == (2, b, 4, 32)
  step = trainer.make_train_step(model, tx, lambda s: jnp.float32(0.0), keys,
                                 cfg)
  a, bb = make_batch(1, b=b, t=16), make_batch(2, b=b, t=16)
  state, m1 = step(state, a)
  _, phi_a = direct_loss(model, params, a)
  np.testing.assert_allclose(state["rsp"], phi_a, atol=1e-5)   # every row's
  assert not np.allclose(phi_a[:, 0], phi_a[:, 1], atol=1e-3)
  assert float(m1["rsp_used"]) == 0.0                 # nothing before step 1

  cont = np.array([1, 0, 1, 0] if how == "fam_continue" else
                  [0] * b if how == "off" else [1] * b)
  batch2 = dict(bb, fam_continue=cont) if how == "fam_continue" else bb
  state, m2 = step(state, batch2)
  stream = nll_rows(model, params, joined(a, bb))[:, 16:]
  fresh = nll_rows(model, params, bb)
  assert np.abs(stream - fresh).max() > 1e-3          # distinguishable
  nll = np.where(cont[:, None] > 0, stream, fresh)
  w = bb["decoder_loss_weights"]
  np.testing.assert_allclose(m2["loss"], (nll * w).sum() / w.sum(), atol=1e-5)
  np.testing.assert_allclose(m2["rsp_used"], cont.mean())
  _, phi_ab = direct_loss(model, params, joined(a, bb))
  _, phi_b = direct_loss(model, params, bb)
  want = np.where(cont[None, :, None, None] > 0, phi_ab, phi_b)
  np.testing.assert_allclose(state["rsp"], want, atol=1e-5)


def test_state_passing_rows_errors():
  with pytest.raises(ValueError, match="state_passing"):
    trainer.StepConfig(state_passing="row").validate(8)
  cfg = trainer.StepConfig(state_passing="rows")
  model, state, step = setup(cfg)                       # one kept state only
  with pytest.raises(ValueError, match="rsp_rows=8"):
    step(state, make_batch(0))


def test_random_position_offset_draws():
  cfg = trainer.StepConfig(p_rsp=0.8, random_position_offset=True)
  rng = jax.random.key_data(jax.random.key(7))
  draws = [trainer.step_randomness(rng, s, cfg, 10000.0) for s in range(400)]
  offs = np.array([float(o) for o, _ in draws])
  coins = np.array([bool(c) for _, c in draws])
  zero = offs == 0.0
  assert 0.4 < zero.mean() < 0.6                     # round(U(0,1)): half
  assert offs[~zero].min() > 0 and offs.max() < 2 * math.pi * 10000.0
  assert offs[~zero].max() > math.pi * 10000.0       # spans the range
  assert not coins[0] and 0.7 < coins[1:].mean() < 0.9
  # Same key and step -> same draw (what makes resumed runs exact).
  again = trainer.step_randomness(rng, 123, cfg, 10000.0)
  assert float(again[0]) == offs[123] and bool(again[1]) == coins[123]
  off, _ = trainer.step_randomness(
      rng, 5, trainer.StepConfig(random_position_offset=False), 10000.0)
  assert off is None


def test_schedules():
  lin = optimizers.make_schedule(100, peak_learning_rate=1.0, warmup_steps=10,
                                 schedule="cosine", end_fraction=0.1)
  assert float(lin(0)) == pytest.approx(0.1)
  assert float(lin(9)) == pytest.approx(1.0)
  assert float(lin(10)) == pytest.approx(1.0)
  assert float(lin(55)) == pytest.approx(0.55, abs=1e-6)
  assert float(lin(100)) == pytest.approx(0.1)
  assert float(lin(1000)) == pytest.approx(0.1)
  rs = optimizers.make_schedule(100, peak_learning_rate=1.0, warmup_steps=16,
                                schedule="rsqrt")
  assert float(rs(15)) == pytest.approx(1.0)
  assert float(rs(63)) == pytest.approx(0.5)
  const = optimizers.make_schedule(100, peak_learning_rate=0.3, warmup_steps=0,
                                   schedule="constant")
  assert float(const(0)) == float(const(99)) == pytest.approx(0.3)
  with pytest.raises(ValueError, match="schedule='linear'"):
    optimizers.make_schedule(10, schedule="linear")


def test_weight_decay_mask_and_optimizers():
  model = Transformer(CFG.replace(qkv_bias=True, lora_rank=2),
                      rngs=nnx.Rngs(0))
  # Every weight non-zero (LoRA B starts at 0), so decay would move it.
  params = jax.tree.map(jnp.ones_like,
                        nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  mask = trainer.flat(optimizers.decay_mask(params))
  named = {"/".join(k): v for k, v in mask.items()}
  assert named["layers/q/kernel"] and named["layers/mlp/down/kernel"]
  for off in ("layers/q/bias", "layers/attn_norm/scale", "final_norm/scale",
              "fam_prompt", "embed/embedding", "layers/q/lora_a",
              "layers/q/lora_b", "layers/mlp/down/lora_a",
              "layers/mlp/down/lora_b"):
    assert not named[off], off
  assert trainer.flat(optimizers.decay_mask(params, True))[("embed", "embedding")]
  # Decay only shrinks the masked-in weights (zero gradients: pure decay).
  zeros = jax.tree.map(jnp.zeros_like, params)
  for name in ("adamw", "adafactor"):
    tx, _ = optimizers.make_optimizer(params, 10, name=name, weight_decay=0.5,
                                      clip_norm=1.0)
    upd, _ = tx.update(zeros, tx.init(params), params)
    moved = {"/".join(k): bool(np.any(np.asarray(v) != 0))
             for k, v in trainer.flat(upd).items()}
    assert moved == named, name
