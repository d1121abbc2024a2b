"""Small shared pieces of the famjax tests: tiny configs, random parameters,
compiled fast-path calls (one compile per config and shape)."""
from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from famjax import AttentionConfig, ModelConfig, Transformer

VOCAB = 40


def llama_cfg(mode="fam", block=4, mem=1, fam=2, **kw) -> ModelConfig:
  """Tiny Llama-like config (GQA, SwiGLU, untied head)."""
  base = dict(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4,
              num_kv_heads=2, ffn_dim=48, activation="silu",
              tie_embeddings=False, rope_theta=10000.0, norm_eps=1e-6)
  base.update(kw)
  return ModelConfig(attention=AttentionConfig(
      mode=mode, block_size=block, memory_segments=mem, fam_length=fam),
                     **base)


def gemma_cfg(mode="fam", block=4, mem=2, fam=2, **kw) -> ModelConfig:
  """Tiny Gemma-3-like config: (1 + w) norms, sandwich norms, qk norm,
  embed scale, GeGLU, soft-caps, query scale, local/global layers with a
  window smaller than a block plus memory, local RoPE theta."""
  base = dict(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4,
              num_kv_heads=1, head_dim=8, ffn_dim=48, activation="gelu_tanh",
              norm_scale_plus_one=True, sandwich_norm=True, qk_norm=True,
              embed_scale=True, tie_embeddings=True, query_scale=0.5,
              attn_logit_softcap=2.0, final_logit_softcap=6.0,
              sliding_window=3, layer_types=("local", "global"),
              rope_theta=1000000.0, rope_local_theta=10000.0)
  base.update(kw)
  return ModelConfig(attention=AttentionConfig(
      mode=mode, block_size=block, memory_segments=mem, fam_length=fam),
                     **base)


def qwen_cfg(mode="fam", block=4, mem=1, fam=2, **kw) -> ModelConfig:
  """Tiny Qwen2-like config: qkv bias, tied embeddings, linear RoPE scaling."""
  base = dict(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4,
              num_kv_heads=2, ffn_dim=48, qkv_bias=True, tie_embeddings=True,
              rope_scaling="linear", rope_scaling_factor=2.0,
              rope_theta=100000.0)
  base.update(kw)
  return ModelConfig(attention=AttentionConfig(
      mode=mode, block_size=block, memory_segments=mem, fam_length=fam),
                     **base)


def random_params(cfg: ModelConfig, seed: int = 0, std: float = 0.2):
  """Random values for every parameter of a model of `cfg` (plain dict).

  The value of a parameter depends only on (seed, its name, its shape), so
  configs that differ only in attention share their weights. Norm scales,
  biases and the FAM prompt are random too (never the init's 0 / 1).
  """
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  pure = nnx.state(abstract, nnx.Param).to_pure_dict()

  def leaf(path, sds):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    rng = np.random.default_rng(
        [seed, zlib.crc32(name.encode()), *sds.shape])
    z = rng.standard_normal(sds.shape)
    if name.endswith("scale"):                        # norm weights
      v = 0.3 * z + (0.0 if cfg.norm_scale_plus_one else 1.0)
    elif name.startswith("embed") or name.startswith("fam_prompt"):
      v = 0.5 * z
    else:
      v = std * z
    return v.astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, pure)


@functools.lru_cache(maxsize=None)
def fast_for(cfg: ModelConfig, seed: int = 0) -> "Fast":
  """One Fast model per (config, seed), shared by all tests of a session."""
  return Fast(cfg, random_params(cfg, seed))


class Fast:
  """The famjax model of `cfg` with given parameters, compiled calls."""

  def __init__(self, cfg: ModelConfig, params: dict):
    self.cfg = cfg
    self.params = params
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    self.graphdef, state = nnx.split(abstract)
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, params))
    self.state = state

  def model(self):
    return nnx.merge(self.graphdef, self.state)

  def __call__(self, tokens, fam_state=None, position_offset=None,
               return_state=False):
    # always compiled with return_state=True: one compile serves both uses.
    out, state = _forward(self.graphdef, self.state, jnp.asarray(tokens),
                          fam_state, position_offset)
    return (out, state) if return_state else out

  def value_and_grad(self, loss_fn, tokens):
    """(logits, d loss_fn(logits) / d params as a plain nested dict)."""
    def f(state):
      logits = nnx.merge(self.graphdef, state)(jnp.asarray(tokens))
      return loss_fn(logits), logits
    (_, logits), g = jax.jit(jax.value_and_grad(f, has_aux=True))(self.state)
    return logits, g.to_pure_dict()

  def init_stream(self, batch, max_len=None, fam_state=None):
    return _init_stream(self.graphdef, self.state, batch, max_len, fam_state)

  def stream(self, stream_state, tokens):
    return _stream(self.graphdef, self.state, stream_state, jnp.asarray(tokens))


@functools.partial(jax.jit, static_argnums=(0,))
def _forward(graphdef, state, tokens, fam_state, position_offset):
  return nnx.merge(graphdef, state)(tokens, fam_state=fam_state,
                                    position_offset=position_offset,
                                    return_state=True)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init_stream(graphdef, state, batch, max_len, fam_state):
  return nnx.merge(graphdef, state).init_stream(batch, max_len=max_len,
                                                fam_state=fam_state)


@functools.partial(jax.jit, static_argnums=(0,))
def _stream(graphdef, state, stream_state, tokens):
  return nnx.merge(graphdef, state).stream(stream_state, tokens)


def tokens(batch, length, seed=0, vocab=VOCAB):
  """Random token ids [batch, length] (int32) below `vocab`."""
  return np.random.default_rng(1000 + seed).integers(
      0, vocab, size=(batch, length)).astype(np.int32)


def max_abs(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) -
                             np.asarray(b, np.float64))))


def tiny_config(mode="fam", block=4, m=1, f=2, **kw):
  """A tiny tied-embedding GQA config (decode and model-directory tests)."""
  base = dict(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4,
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


_JIT_FORWARD = {}


def jit_forward(model):
  """A jitted whole-sequence forward of `model` (one compile per model
  structure and shape)."""
  gdef, state = nnx.split(model)
  if gdef not in _JIT_FORWARD:
    _JIT_FORWARD[gdef] = jax.jit(lambda s, t: nnx.merge(gdef, s)(t))
  fn = _JIT_FORWARD[gdef]
  return lambda tokens: fn(state, tokens)


def free_port() -> int:
  """A TCP port on localhost that is free now (for jax.distributed)."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
