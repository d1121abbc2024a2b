"""LoRA: config checks, merge == unmerged, masked training, checkpoint loading."""
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from famjax import lora
from famjax.config import ModelConfig
from famjax.model import Transformer
from famjax.params_io import assign_params, params_dict
from famjax.train import trainer
from tests.helpers import jit_forward, tiny_config, tokens


def tiny(**kw):
  return tiny_config("fam", block=8, f=4, vocab_size=64, ffn_dim=48, **kw)


CFG = tiny(lora_rank=4, lora_alpha=8.0)     # the LoRA model of most tests
# LoRA is independent of the attention mode; full attention compiles fastest.
CFG_FULL = CFG.with_attention(mode="full")


def forward(model, x):
  return jit_forward(model)(x)


def randomize_lora_b(model, seed=1):
  """LoRA B starts at zero (a no-op); make it non-zero so tests can fail."""
  state = nnx.state(model, nnx.Param)
  flat = dict(state.flat_state())
  key = jax.random.key(seed)
  for i, (path, var) in enumerate(sorted(flat.items(), key=lambda kv: str(kv[0]))):
    if path[-1] == "lora_b":
      var[...] = 0.05 * jax.random.normal(jax.random.fold_in(key, i), var.shape)


def strip_lora(tree):
  if not isinstance(tree, dict):
    return tree
  return {k: strip_lora(v) for k, v in tree.items() if "lora" not in k}


def lora_paths(model):
  return sorted(".".join(map(str, p)) for p, _ in
                nnx.state(model, nnx.Param).flat_state() if "lora" in str(p))


def test_config_validation_and_json():
  for bad, field in [(dict(lora_rank=-1), "lora_rank"),
                     (dict(lora_rank=2.0), "lora_rank"),
                     (dict(lora_alpha=0.0), "lora_alpha"),
                     (dict(lora_targets=("q", "qkv")), "lora_targets"),
                     (dict(lora_targets="q"), "lora_targets")]:
    with pytest.raises(ValueError, match=field):
      tiny(**bad).validate()
  cfg = tiny(lora_rank=4, lora_alpha=8.0, lora_targets=["q", "down"])
  assert cfg.lora_targets == ("q", "down") and hash(cfg)
  assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_rank0_has_no_lora_and_targets_select_projections():
  assert lora_paths(Transformer(tiny(), rngs=nnx.Rngs(0))) == []
  m = Transformer(tiny(lora_rank=4, lora_targets=("q", "v", "down")),
                  rngs=nnx.Rngs(0))
  assert lora_paths(m) == [
      "layers.mlp.down.lora_a", "layers.mlp.down.lora_b",
      "layers.q.lora_a", "layers.q.lora_b", "layers.v.lora_a", "layers.v.lora_b"]
  q = m.layers.q
  assert q.lora_a.shape == (2, 32, 4) and q.lora_b.shape == (2, 4, 4, 8)
  assert q.lora_a.get_metadata()["logical_axes"] == ("layers", "embed", "lora")
  assert q.lora_b.get_metadata()["logical_axes"] == ("layers", "lora", "heads", "kv")
  assert not np.any(q.lora_b[...])
  # LoRA does not change the base initialisation.
  base = params_dict(Transformer(tiny(), rngs=nnx.Rngs(0)))
  with_lora = params_dict(m)
  np.testing.assert_array_equal(base["layers"]["k"]["kernel"],
                                with_lora["layers"]["k"]["kernel"])
  np.testing.assert_array_equal(base["embed"]["embedding"],
                                with_lora["embed"]["embedding"])


def test_merged_model_matches_lora_model():
  cfg = CFG_FULL
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  randomize_lora_b(model)
  x = tokens(2, 20, vocab=64)
  want = forward(model, x)
  merged, cfg0 = lora.merge_lora(params_dict(model), cfg)
  assert cfg0.lora_rank == 0 and cfg0.lora_alpha == cfg.lora_alpha
  assert not any("lora" in str(p) for p in jax.tree_util.tree_flatten_with_path(
      merged)[0])
  plain = Transformer(cfg0, rngs=nnx.Rngs(7))
  assign_params(plain, merged)
  got = forward(plain, x)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # The LoRA branch matters: the base weights alone give other logits.
  base = Transformer(cfg0, rngs=nnx.Rngs(7))
  assign_params(base, strip_lora(params_dict(model)))
  assert np.abs(np.asarray(forward(base, x)) - np.asarray(want)).max() > 1e-3


def test_merge_rank0_is_identity():
  cfg = tiny()
  p = params_dict(Transformer(cfg, rngs=nnx.Rngs(0)))
  out, cfg2 = lora.merge_lora(p, cfg)
  assert out is p and cfg2 is cfg


def test_lora_mask_training_leaves_base_weights_identical():
  # Full attention compiles fastest; fam_prompt's place in the mask is
  # checked on the fam model below.
  model = Transformer(CFG_FULL, rngs=nnx.Rngs(0))
  randomize_lora_b(model)        # so lora_a gets a gradient too
  gdef, params, rest = nnx.split(model, nnx.Param, ...)
  mask = lora.trainable_mask(params, "lora")
  flat_mask = {".".join(map(str, p)): m for p, m in
               jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert all(m == (("lora" in k) or ("fam_prompt" in k))
             for k, m in flat_mask.items())
  assert all(jax.tree.leaves(lora.trainable_mask(params, "all")))
  fam_mask = lora.trainable_mask(
      nnx.state(Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param), "lora")
  assert fam_mask["fam_prompt"].get_value() is True
  decay_mask = lora.trainable_mask(nnx.state(Transformer(
      CFG.with_attention(fam_decay=0.9), rngs=nnx.Rngs(0)), nnx.Param), "lora")
  assert decay_mask["layers"]["fam_decay_logit"].get_value() is True
  assert fam_mask["layers"]["q"]["kernel"].get_value() is False
  # The trainer's way: the optimizer sees only the trainable subset.
  pure = params.to_pure_dict()
  keys = trainer.trainable_keys(pure, "lora")
  assert keys == {k for k, on in trainer.flat(
      lora.trainable_mask(pure, "lora")).items() if on}
  train, frozen = trainer.split_params(pure, keys)
  tx = optax.adam(1e-2)
  opt_state = tx.init(train)
  x = tokens(2, 21, vocab=64)

  def loss_fn(t):
    logits = nnx.merge(gdef, trainer.join_params(t, frozen), rest)(x[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()

  @jax.jit
  def step(t, s):
    loss, g = jax.value_and_grad(loss_fn)(t)
    u, s = tx.update(g, s, t)
    return optax.apply_updates(t, u), s, loss

  new, s1, loss0 = step(train, opt_state)
  new, s1, _ = step(new, s1)
  _, _, loss2 = step(new, s1)
  assert loss2 < loss0
  before = trainer.flat(pure)
  after = trainer.flat(trainer.join_params(new, frozen))
  assert before.keys() == after.keys()
  for k in before:
    name = "/".join(map(str, k))
    trainable = ("lora" in name) or ("fam_prompt" in name)
    moved = not np.array_equal(before[k], after[k])
    assert moved == trainable, name   # base weights bit-identical, LoRA moved


def test_lora_mask_needs_lora_weights():
  params = nnx.state(Transformer(tiny().with_attention(mode="bswa"),
                                 rngs=nnx.Rngs(0)), nnx.Param)
  with pytest.raises(ValueError, match="lora_rank"):
    lora.trainable_mask(params, "lora")
  with pytest.raises(ValueError, match="mode="):
    lora.trainable_mask(params, "some")


def test_checkpoint_without_lora_loads_into_lora_model():
  plain = Transformer(CFG_FULL.replace(lora_rank=0), rngs=nnx.Rngs(3))
  x = tokens(2, 20, vocab=64)
  want = forward(plain, x)
  lm = Transformer(CFG_FULL, rngs=nnx.Rngs(9))
  assign_params(lm, params_dict(plain))
  np.testing.assert_array_equal(lm.layers.q.kernel[...], plain.layers.q.kernel[...])
  # Fresh LoRA (B = 0) leaves the function unchanged.
  np.testing.assert_allclose(forward(lm, x), want, atol=1e-6, rtol=0)
