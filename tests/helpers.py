"""Small shared test utilities."""
import jax
from flax import nnx

from famjax import AttentionConfig, ModelConfig, Transformer


def tiny_config(mode="fam", block=4, m=1, f=2, **kw):
  base = dict(vocab_size=40, d_model=32, num_layers=2, num_heads=4,
              num_kv_heads=2, ffn_dim=64)
  base.update(kw)
  return ModelConfig(attention=AttentionConfig(mode=mode, block_size=block,
                                               memory_segments=m, fam_length=f),
                     **base)


def perturbed_model(cfg, seed=0, scale=0.3):
  """A model whose every parameter (norms, biases, fam_prompt too) is random."""
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param)
  leaves, tdef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))
  nnx.update(model, jax.tree.unflatten(
      tdef, [x + scale * jax.random.normal(k, x.shape, x.dtype)
             for x, k in zip(leaves, keys)]))
  return model


def jit_forward(model):
  """A jitted whole-sequence forward of `model` (one compile per shape)."""
  gdef, state = nnx.split(model)
  fn = jax.jit(lambda s, t: nnx.merge(gdef, s)(t))
  return lambda tokens: fn(state, tokens)
