"""One table of weight names and transforms, shared by every family and by
both directions (import from HF / GGUF, export to HF).

A row says: famjax parameter <- Hugging Face tensor name <- GGUF tensor name,
with the transform between HF's layout and famjax's, and the config
condition under which the row exists. Rows whose famjax path starts with
`layers.` are per layer: the names contain `{i}` and the famjax parameter is
the stack over layers (leading axis L).

HF names contain `{p}`, the model's prefix (`model.` for the *ForCausalLM
classes, `model.language_model.` for Gemma 3 multimodal checkpoints).

Layouts: an HF Linear weight is W [out, in], y = x @ W.T. famjax kernels are
[in, out] with heads split out: q/k/v [d, heads, head_dim], o
[heads, head_dim, d]. Norm weights are stored the same way in both (Gemma's
`1 + w` convention included); GGUF quirks (llama.cpp's Q/K permutation,
Gemma's stored `w + 1`) are undone by `famjax.convert.gguf` before the table
is applied.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Iterator

import numpy as np

from famjax.config import ModelConfig
from famjax.convert.errors import ConvertError


# --------------------------------------------------------------- transforms
@dataclasses.dataclass(frozen=True)
class Transform:
  """HF layout <-> famjax layout of one tensor (per layer for stacked rows)."""
  name: str
  to_famjax: Callable[[np.ndarray, ModelConfig], np.ndarray]
  to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]


SAME = Transform("same", lambda w, c: w, lambda x, c: x)
LINEAR = Transform("linear", lambda w, c: w.T, lambda x, c: x.T)
# q/k/v: W [heads*hd, d] -> [d, heads, hd]
HEADS_IN = Transform(
    "heads_in",
    lambda w, c: w.T.reshape(w.shape[1], -1, c.hd),
    lambda x, c: x.reshape(x.shape[0], -1).T)
# q/k/v bias: [heads*hd] -> [heads, hd]
HEADS_BIAS = Transform(
    "heads_bias",
    lambda w, c: w.reshape(-1, c.hd),
    lambda x, c: x.reshape(-1))
# o: W [d, heads*hd] -> [heads, hd, d]
HEADS_OUT = Transform(
    "heads_out",
    lambda w, c: w.T.reshape(-1, c.hd, w.shape[0]),
    lambda x, c: x.reshape(-1, x.shape[-1]).T)


def _always(c):
  return True


def _untied(c):
  return not c.tie_embeddings


def _bias(c):
  return c.qkv_bias


def _qk_norm(c):
  return c.qk_norm


def _sandwich(c):
  return c.sandwich_norm


def _plain(c):
  return not c.sandwich_norm


@dataclasses.dataclass(frozen=True)
class Row:
  famjax: str                 # dotted path in the famjax param dict
  hf: str                     # HF name ({p} = model prefix, {i} = layer)
  gguf: str                   # GGUF name ({i} = layer)
  transform: Transform = SAME
  when: Callable[[ModelConfig], bool] = _always

  @property
  def per_layer(self) -> bool:
    return self.famjax.startswith("layers.")


_L = "{p}layers.{i}."
WEIGHTS = (
    Row("embed.embedding", "{p}embed_tokens.weight", "token_embd.weight"),
    Row("final_norm.scale", "{p}norm.weight", "output_norm.weight"),
    Row("lm_head.kernel", "lm_head.weight", "output.weight", LINEAR, _untied),
    Row("layers.attn_norm.scale", _L + "input_layernorm.weight",
        "blk.{i}.attn_norm.weight"),
    Row("layers.q.kernel", _L + "self_attn.q_proj.weight",
        "blk.{i}.attn_q.weight", HEADS_IN),
    Row("layers.k.kernel", _L + "self_attn.k_proj.weight",
        "blk.{i}.attn_k.weight", HEADS_IN),
    Row("layers.v.kernel", _L + "self_attn.v_proj.weight",
        "blk.{i}.attn_v.weight", HEADS_IN),
    Row("layers.q.bias", _L + "self_attn.q_proj.bias",
        "blk.{i}.attn_q.bias", HEADS_BIAS, _bias),
    Row("layers.k.bias", _L + "self_attn.k_proj.bias",
        "blk.{i}.attn_k.bias", HEADS_BIAS, _bias),
    Row("layers.v.bias", _L + "self_attn.v_proj.bias",
        "blk.{i}.attn_v.bias", HEADS_BIAS, _bias),
    Row("layers.o.kernel", _L + "self_attn.o_proj.weight",
        "blk.{i}.attn_output.weight", HEADS_OUT),
    Row("layers.q_norm.scale", _L + "self_attn.q_norm.weight",
        "blk.{i}.attn_q_norm.weight", SAME, _qk_norm),
    Row("layers.k_norm.scale", _L + "self_attn.k_norm.weight",
        "blk.{i}.attn_k_norm.weight", SAME, _qk_norm),
    # Llama family: the pre-FFN norm is HF's `post_attention_layernorm`.
    Row("layers.ffn_norm.scale", _L + "post_attention_layernorm.weight",
        "blk.{i}.ffn_norm.weight", SAME, _plain),
    # Gemma (sandwich norms): pre-FFN is `pre_feedforward_layernorm`, and
    # `post_attention_layernorm` is the norm after the attention block.
    Row("layers.ffn_norm.scale", _L + "pre_feedforward_layernorm.weight",
        "blk.{i}.ffn_norm.weight", SAME, _sandwich),
    Row("layers.post_attn_norm.scale", _L + "post_attention_layernorm.weight",
        "blk.{i}.post_attention_norm.weight", SAME, _sandwich),
    Row("layers.post_ffn_norm.scale", _L + "post_feedforward_layernorm.weight",
        "blk.{i}.post_ffw_norm.weight", SAME, _sandwich),
    Row("layers.mlp.gate.kernel", _L + "mlp.gate_proj.weight",
        "blk.{i}.ffn_gate.weight", LINEAR),
    Row("layers.mlp.up.kernel", _L + "mlp.up_proj.weight",
        "blk.{i}.ffn_up.weight", LINEAR),
    Row("layers.mlp.down.kernel", _L + "mlp.down_proj.weight",
        "blk.{i}.ffn_down.weight", LINEAR),
)


def rows(cfg: ModelConfig) -> Iterator[Row]:
  return (r for r in WEIGHTS if r.when(cfg))


def source_names(row: Row, column: str, cfg: ModelConfig, prefix: str = ""):
  """The source tensor names of a row (one per layer for stacked rows)."""
  pattern = getattr(row, column)
  if row.per_layer:
    return [pattern.format(p=prefix, i=i) for i in range(cfg.num_layers)]
  return [pattern.format(p=prefix)]


# ------------------------------------------------------------ shape checks
def expected_shapes(cfg: ModelConfig) -> Dict[str, tuple]:
  """{dotted famjax path: shape} of a model built from cfg (no allocation)."""
  from flax import nnx

  from famjax.model import Transformer
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  return {".".join(map(str, k)): tuple(v.shape)
          for k, v in state.flat_state()}


def set_path(tree: dict, dotted: str, value):
  *head, last = dotted.split(".")
  for k in head:
    tree = tree.setdefault(k, {})
  tree[last] = value


def get_path(tree: dict, dotted: str):
  for k in dotted.split("."):
    if not isinstance(tree, dict) or k not in tree:
      return None
    tree = tree[k]
  return tree


# -------------------------------------------------------------- directions
def to_famjax(cfg: ModelConfig, get: Callable[[str], np.ndarray], column: str,
              *, prefix: str = "", dtype=np.float32,
              source: str = "checkpoint") -> dict:
  """Build the famjax param dict from source tensors.

  get(name) returns the tensor in HF layout (GGUF quirks already undone) or
  raises KeyError. column: "hf" or "gguf". Every parameter the model has
  must come out with exactly the model's shape.
  """
  shapes = expected_shapes(cfg)
  params: dict = {}
  for row in rows(cfg):
    parts = []
    for name in source_names(row, column, cfg, prefix):
      try:
        w = get(name)
      except KeyError:
        raise ConvertError(
            f"{source}: tensor {name!r} is missing (needed for famjax "
            f"{row.famjax}); the checkpoint is incomplete or its config does "
            "not match its weights.") from None
      try:
        parts.append(np.asarray(row.transform.to_famjax(np.asarray(w), cfg),
                                dtype=dtype))
      except ValueError:
        raise ConvertError(
            f"{source}: tensor {name!r} has shape {tuple(np.shape(w))}, which "
            f"does not fit famjax {row.famjax} of shape "
            f"{shapes.get(row.famjax)} (config / weights mismatch).") from None
    value = np.stack(parts) if row.per_layer else parts[0]
    want = shapes.get(row.famjax)
    if want is None:
      raise ConvertError(f"{source}: famjax has no parameter {row.famjax} for "
                         "this config (internal table error).")
    if tuple(value.shape) != want:
      raise ConvertError(
          f"{source}: {source_names(row, column, cfg, prefix)[0]!r} gives "
          f"famjax {row.famjax} the shape {tuple(value.shape)}, the config "
          f"expects {want} (config / weights mismatch).")
    set_path(params, row.famjax, value)
  missing = sorted(k for k in shapes
                   if get_path(params, k) is None and k != "fam_prompt")
  if missing:
    raise ConvertError(f"{source}: no source for famjax parameters {missing} "
                       "(internal table error).")
  return params


def to_hf(cfg: ModelConfig, params: dict, *, prefix: str = "model.",
          dtype=np.float32) -> Dict[str, np.ndarray]:
  """HF state dict {name: array in HF layout} of a famjax param dict."""
  out = {}
  for row in rows(cfg):
    value = get_path(params, row.famjax)
    if value is None:
      raise ConvertError(f"famjax parameter {row.famjax} is missing; the "
                         "parameters do not match their config.")
    value = np.asarray(value)
    names = source_names(row, "hf", cfg, prefix)
    if row.per_layer:
      if value.shape[0] != len(names):
        raise ConvertError(
            f"famjax parameter {row.famjax} has {value.shape[0]} layers, the "
            f"config says num_layers={cfg.num_layers}.")
      for i, name in enumerate(names):
        out[name] = np.ascontiguousarray(
            row.transform.to_hf(value[i], cfg)).astype(dtype)
    else:
      out[names[0]] = np.ascontiguousarray(
          row.transform.to_hf(value, cfg)).astype(dtype)
  return out


def known_names(cfg: ModelConfig, column: str, prefix: str = "") -> set:
  """Every source tensor name the table reads (column "hf" or "gguf")."""
  names = set()
  for r in rows(cfg):
    names.update(source_names(r, column, cfg, prefix))
  return names


def np_dtype(name: str):
  """numpy dtype of "float32" / "bfloat16" / "float16" (ml_dtypes' bf16)."""
  import jax.numpy as jnp
  return jnp.dtype(name)
