"""Hugging Face config.json <-> famjax ModelConfig, for the supported
architectures (the Llama family and Gemma 3):

  model_type    HF class                         notes
  llama         LlamaForCausalLM                 Llama 2/3, SmolLM2, ...
  mistral       MistralForCausalLM               sliding_window -> all layers local
  qwen2         Qwen2ForCausalLM                 q/k/v bias, optional sliding layers
  gemma3_text   Gemma3ForCausalLM                local/global layers, sandwich
  gemma3        Gemma3ForConditionalGeneration   the text part only

`config_from_hf` / `config_to_hf` translate in both directions; every
checkpoint source (`famjax.convert.source`) states its config as an HF
config dict, so this is the one config mapping.
"""
from __future__ import annotations

import math
from typing import Optional

from famjax.config import ModelConfig
from famjax.convert.errors import ConvertError

SUPPORTED = ("llama", "mistral", "qwen2", "gemma3_text", "gemma3")
SUPPORTED_TEXT = ("LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                  "Gemma3ForCausalLM, Gemma3ForConditionalGeneration (text)")
HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
         "qwen2": "Qwen2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
# HF's class defaults for fields a config.json may omit.
_DEFAULTS = {
    "llama": dict(tie_word_embeddings=False, rope_theta=10000.0,
                  rms_norm_eps=1e-6, hidden_act="silu"),
    "mistral": dict(tie_word_embeddings=False, rope_theta=10000.0,
                    rms_norm_eps=1e-6, hidden_act="silu", sliding_window=4096),
    "qwen2": dict(tie_word_embeddings=False, rope_theta=10000.0,
                  rms_norm_eps=1e-6, hidden_act="silu", sliding_window=4096,
                  use_sliding_window=False, max_window_layers=28),
    "gemma3_text": dict(tie_word_embeddings=True, rope_theta=1_000_000.0,
                        rope_local_base_freq=10000.0, rms_norm_eps=1e-6,
                        hidden_activation="gelu_pytorch_tanh",
                        query_pre_attn_scalar=256, sliding_window=4096,
                        sliding_window_pattern=6, head_dim=256),
}
_ACTIVATIONS = {"silu": "silu", "swish": "silu",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "gelu": "gelu"}
_LAYER_TYPES = {"sliding_attention": "local", "full_attention": "global"}


# ======================================================= config: HF -> famjax
def text_config(hf: dict) -> dict:
  mt = hf.get("model_type")
  if mt not in SUPPORTED:
    arch = (hf.get("architectures") or [None])[0]
    raise ConvertError(
        f"unsupported architecture: model_type={mt!r} ({arch}); famjax "
        f"converts {SUPPORTED_TEXT}.")
  if mt == "gemma3":
    text = dict(hf.get("text_config") or {})
    text.setdefault("model_type", "gemma3_text")
    if text["model_type"] != "gemma3_text":
      raise ConvertError(f"gemma3 text_config has model_type "
                         f"{text['model_type']!r}, expected 'gemma3_text'.")
    # transformers' Gemma3ForConditionalGeneration computes plain lm_head
    # logits: it never applies final_logit_softcapping (null in every
    # released Gemma 3 anyway). Match it.
    text["final_logit_softcapping"] = None
    return text
  return dict(hf)


def _rope(params: Optional[dict], legacy_theta, legacy_scaling, default_theta,
          what: str) -> dict:
  """famjax RoPE fields from HF rope_parameters (5.x) or rope_theta /
  rope_scaling (older configs)."""
  if params is None:
    params = dict(legacy_scaling or {})
    params.setdefault("rope_theta",
                      legacy_theta if legacy_theta is not None else default_theta)
  kind = params.get("rope_type", params.get("type", "default"))
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise ConvertError(f"{what}: partial_rotary_factor="
                       f"{params['partial_rotary_factor']} is not supported.")
  out = dict(rope_theta=float(params.get("rope_theta", default_theta)))
  if kind == "default":
    return out
  if kind == "linear":
    return dict(out, rope_scaling="linear",
                rope_scaling_factor=float(params["factor"]))
  if kind == "llama3":
    return dict(out, rope_scaling="llama3",
                rope_scaling_factor=float(params["factor"]),
                rope_low_freq_factor=float(params["low_freq_factor"]),
                rope_high_freq_factor=float(params["high_freq_factor"]),
                rope_original_max_position=int(
                    params["original_max_position_embeddings"]))
  raise ConvertError(f"{what}: RoPE type {kind!r} is not supported "
                     "(supported: default, linear, llama3).")


def config_from_hf(hf: dict) -> ModelConfig:
  """ModelConfig of an HF config.json dict (attention mode `full`)."""
  hf = text_config(hf)
  mt = hf["model_type"]
  d = dict(_DEFAULTS[mt])
  d.update({k: v for k, v in hf.items() if v is not None or k in (
      "sliding_window", "final_logit_softcapping", "attn_logit_softcapping")})
  try:
    heads = int(d["num_attention_heads"])
    kw = dict(
        vocab_size=int(d["vocab_size"]), d_model=int(d["hidden_size"]),
        num_layers=int(d["num_hidden_layers"]), num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
        ffn_dim=int(d["intermediate_size"]), norm_eps=float(d["rms_norm_eps"]),
        tie_embeddings=bool(d["tie_word_embeddings"]))
  except KeyError as e:
    raise ConvertError(f"config.json lacks the field {e.args[0]!r}.") from None
  act_name = d.get("hidden_activation") or d.get("hidden_act")
  if act_name not in _ACTIVATIONS:
    raise ConvertError(f"activation {act_name!r} is not supported "
                       f"(supported: {sorted(_ACTIVATIONS)}).")
  kw["activation"] = _ACTIVATIONS[act_name]
  what = f"{mt} config"
  rp = d.get("rope_parameters")

  if mt in ("llama", "mistral", "qwen2"):
    if d.get("attention_bias") or d.get("mlp_bias"):
      raise ConvertError(f"{what}: attention_bias / mlp_bias are not "
                         "supported (famjax has q/k/v biases only, as Qwen2).")
    kw.update(_rope(rp, d.get("rope_theta"), d.get("rope_scaling"),
                    _DEFAULTS[mt]["rope_theta"], what))
    kw["qkv_bias"] = mt == "qwen2"
    if mt == "mistral" and d.get("sliding_window"):
      kw.update(sliding_window=int(d["sliding_window"]),
                layer_types=("local",) * kw["num_layers"])
    if mt == "qwen2":
      types = d.get("layer_types")
      window = d.get("sliding_window") if d.get("use_sliding_window") else None
      if types is None:
        types = ["sliding_attention" if window and i >= d["max_window_layers"]
                 else "full_attention" for i in range(kw["num_layers"])]
      types = _layer_types(types, what)
      if "local" in types:
        if not window:
          raise ConvertError(f"{what}: sliding layers but no sliding_window.")
        kw.update(sliding_window=int(window), layer_types=types)
    return ModelConfig(**kw).validate()
  return ModelConfig(**_gemma3_fields(d, kw, rp, what)).validate()


def _gemma3_fields(d: dict, kw: dict, rp, what: str) -> dict:
  """kw completed with the Gemma 3 text fields of config d."""
  if d.get("attention_bias"):
    raise ConvertError(f"{what}: attention_bias is not supported.")
  if d.get("use_bidirectional_attention"):
    raise ConvertError(f"{what}: use_bidirectional_attention=True (an "
                       "encoder) is not supported.")
  types = d.get("layer_types")
  if types is None:
    pattern = int(d.get("sliding_window_pattern") or 6)
    types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
             for i in range(kw["num_layers"])]
  types = _layer_types(types, what)
  if isinstance(rp, dict) and ("full_attention" in rp or
                               "sliding_attention" in rp):
    glob = _rope(rp.get("full_attention"), None, None, 1_000_000.0, what)
    loc = _rope(rp.get("sliding_attention"), None, None, 10000.0, what)
  else:
    glob = _rope(rp, d.get("rope_theta"), d.get("rope_scaling"),
                 1_000_000.0, what)
    loc = dict(rope_theta=float(d["rope_local_base_freq"]))
  if len(loc) != 1:
    raise ConvertError(f"{what}: RoPE scaling on sliding layers is not "
                       "supported.")
  kw.update(glob)
  kw.update(
      rope_local_theta=loc["rope_theta"], norm_scale_plus_one=True,
      sandwich_norm=True, qk_norm=True, embed_scale=True,
      query_scale=float(d["query_pre_attn_scalar"]) ** -0.5,
      # transformers' Gemma 3 keeps attn_logit_softcapping in its config but
      # never applies it (Gemma 3 replaced it by qk-norm); so neither do we.
      attn_logit_softcap=None,
      final_logit_softcap=_opt_float(d.get("final_logit_softcapping")),
      layer_types=types,
      sliding_window=int(d["sliding_window"]) if "local" in types else None)
  return kw


def _opt_float(v):
  return None if v is None else float(v)


def _layer_types(types, what):
  bad = [t for t in types if t not in _LAYER_TYPES]
  if bad:
    raise ConvertError(f"{what}: layer types {sorted(set(bad))} are not "
                       f"supported (supported: {sorted(_LAYER_TYPES)}).")
  return tuple(_LAYER_TYPES[t] for t in types)


# ======================================================= config: famjax -> HF
def family_of(cfg: ModelConfig, hint: Optional[str] = None) -> str:
  """The HF model_type that represents cfg exactly (hint: the source's)."""
  gemma = (cfg.norm_scale_plus_one, cfg.sandwich_norm, cfg.qk_norm,
           cfg.embed_scale)
  if all(gemma):
    fam = "gemma3_text"
  elif any(gemma):
    raise ConvertError("cannot export: this config mixes Gemma features "
                       "(1+w norms, sandwich norms, qk norm, embed scale) with "
                       "Llama ones; no HF architecture matches.")
  elif cfg.qkv_bias:
    fam = "qwen2"
  elif any(cfg.local_layers):
    fam = "mistral" if all(cfg.local_layers) else "qwen2"
  else:
    fam = hint if hint in ("llama", "mistral", "qwen2") else "llama"
  if fam == "gemma3_text" and cfg.attn_logit_softcap:
    raise ConvertError("cannot export: transformers' Gemma3ForCausalLM does "
                       "not apply attention logit soft-capping "
                       f"(attn_logit_softcap={cfg.attn_logit_softcap}).")
  if fam != "gemma3_text":
    problems = [n for n, bad in (
        ("activation", cfg.activation != "silu"),
        ("attn_logit_softcap", cfg.attn_logit_softcap),
        ("final_logit_softcap", cfg.final_logit_softcap),
        ("rope_local_theta", cfg.rope_local_theta is not None and
         any(cfg.local_layers) and cfg.rope_local_theta != cfg.rope_theta),
        ("query_scale", cfg.query_scale is not None and
         not math.isclose(cfg.query_scale, cfg.hd ** -0.5, rel_tol=1e-6)),
    ) if bad]
    if fam == "qwen2" and any(cfg.local_layers):
      first = cfg.local_layers.index(True)
      if not all(cfg.local_layers[first:]):
        problems.append("layer_types (Qwen2 needs all local layers last)")
    if problems:
      raise ConvertError(f"cannot export to {HF_CLASSES[fam]}: unsupported "
                         f"settings {problems}.")
  return fam


def _rope_to_hf(cfg: ModelConfig) -> dict:
  r = {"rope_theta": cfg.rope_theta, "rope_type": cfg.rope_scaling or "default"}
  if cfg.rope_scaling in ("linear", "llama3"):
    r["factor"] = cfg.rope_scaling_factor
  if cfg.rope_scaling == "llama3":
    r.update(low_freq_factor=cfg.rope_low_freq_factor,
             high_freq_factor=cfg.rope_high_freq_factor,
             original_max_position_embeddings=cfg.rope_original_max_position)
  return r


def config_to_hf(cfg: ModelConfig, base: Optional[dict] = None) -> dict:
  """HF config.json dict for cfg. base: the source checkpoint's config, whose
  non-architectural fields (token ids, max positions, ...) are kept."""
  base = text_config(base) if base and base.get("model_type") in SUPPORTED \
      else {}
  fam = family_of(cfg, base.get("model_type"))
  dtype = {"float32": "float32", "bfloat16": "bfloat16",
           "float16": "float16"}[cfg.param_dtype]
  keep = {k: base[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id",
                               "max_position_embeddings", "initializer_range")
          if k in base}
  out = dict(
      architectures=[HF_CLASSES[fam]], model_type=fam,
      vocab_size=cfg.vocab_size,
      hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.n_kv, head_dim=cfg.hd, rms_norm_eps=cfg.norm_eps,
      tie_word_embeddings=cfg.tie_embeddings, dtype=dtype, **keep)
  types = ["sliding_attention" if loc else "full_attention"
           for loc in cfg.local_layers]
  if fam == "gemma3_text":
    qpas = cfg.query_scale ** -2 if cfg.query_scale else float(cfg.hd)
    local = {"rope_theta": cfg.rope_local_theta or 10000.0,
             "rope_type": "default"}
    out.update(
        hidden_activation={"gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu",
                           "silu": "silu"}[cfg.activation],
        query_pre_attn_scalar=int(round(qpas)) if abs(qpas - round(qpas)) < 1e-3
        else qpas,
        sliding_window=cfg.sliding_window or 4096, layer_types=types,
        rope_parameters={"full_attention": _rope_to_hf(cfg),
                         "sliding_attention": local},
        attn_logit_softcapping=None,
        final_logit_softcapping=cfg.final_logit_softcap,
        attention_bias=False, use_bidirectional_attention=False)
    return out
  out.update(hidden_act="silu", rope_parameters=_rope_to_hf(cfg))
  if fam == "llama":
    out.update(attention_bias=False, mlp_bias=False)
  elif fam == "mistral":
    out.update(sliding_window=cfg.sliding_window if any(cfg.local_layers)
               else None)
  else:  # qwen2
    local = any(cfg.local_layers)
    out.update(use_sliding_window=local,
               sliding_window=cfg.sliding_window if local else None,
               max_window_layers=(cfg.local_layers.index(True) if local
                                  else cfg.num_layers),
               layer_types=types)
  return out
