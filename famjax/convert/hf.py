"""Hugging Face checkpoints (config.json + safetensors) -> famjax.

Supported architectures (the Llama family and Gemma 3):

  model_type    HF class                         notes
  llama         LlamaForCausalLM                 Llama 2/3, SmolLM2, ...
  mistral       MistralForCausalLM               sliding_window -> all layers local
  qwen2         Qwen2ForCausalLM                 q/k/v bias, optional sliding layers
  gemma3_text   Gemma3ForCausalLM                local/global layers, sandwich
  gemma3        Gemma3ForConditionalGeneration   the text part only

`config_from_hf` / `config_to_hf` translate configs in both directions
(also used by the GGUF importer and the exporter); the weights go through
the one table in `famjax.convert.table`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from famjax.config import AttentionConfig, ModelConfig
from famjax.convert import table
from famjax.convert.errors import ConvertError

SUPPORTED = ("llama", "mistral", "qwen2", "gemma3_text", "gemma3")
SUPPORTED_TEXT = ("LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                  "Gemma3ForCausalLM, Gemma3ForConditionalGeneration (text)")
_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
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
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "tokenizer.model",
                    "chat_template.jinja", "chat_template.json",
                    "vocab.json", "merges.txt", "added_tokens.json")


# ======================================================= config: HF -> famjax
def _text_config(hf: dict) -> dict:
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
  hf = _text_config(hf)
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

  # ----- gemma3_text
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
  return ModelConfig(**kw).validate()


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
      raise ConvertError(f"cannot export to {_ARCH[fam]}: unsupported "
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
  base = _text_config(base) if base and base.get("model_type") in SUPPORTED \
      else {}
  fam = family_of(cfg, base.get("model_type"))
  dtype = {"float32": "float32", "bfloat16": "bfloat16",
           "float16": "float16"}[cfg.param_dtype]
  keep = {k: base[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id",
                               "max_position_embeddings", "initializer_range")
          if k in base}
  out = dict(
      architectures=[_ARCH[fam]], model_type=fam, vocab_size=cfg.vocab_size,
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


# ================================================================ weights
def _read_json(path: str, what: str) -> dict:
  if not os.path.isfile(path):
    raise ConvertError(f"{what} {path} is missing.")
  try:
    with open(path) as fh:
      return json.load(fh)
  except (ValueError, UnicodeDecodeError) as e:
    raise ConvertError(f"{path} is not valid JSON ({e}).") from None


class SafetensorsDir:
  """Lazy name -> numpy array over model.safetensors or a sharded index."""

  def __init__(self, path: str):
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
      wm = _read_json(index, "shard index").get("weight_map")
      if not isinstance(wm, dict):
        raise ConvertError(f"{index} has no weight_map.")
      self.where = {k: os.path.join(path, v) for k, v in wm.items()}
    elif os.path.isfile(single):
      self.where = None
      self.files = [single]
    else:
      raise ConvertError(
          f"{path} has no model.safetensors (nor model.safetensors.index.json)"
          "; only safetensors checkpoints are supported.")
    if self.where is not None:
      self.files = sorted(set(self.where.values()))
    self._handles = {}
    self._names = {}
    for f in self.files:
      names = self._open(f).keys()
      for n in names:
        self._names[n] = f
    if self.where is not None:
      missing = sorted(k for k in self.where if k not in self._names)
      if missing:
        raise ConvertError(f"shards do not contain {missing[:3]} listed in "
                           "model.safetensors.index.json (incomplete copy?).")

  def _open(self, f):
    from safetensors import safe_open
    if f not in self._handles:
      if not os.path.isfile(f):
        raise ConvertError(f"checkpoint shard {f} is missing.")
      try:
        self._handles[f] = safe_open(f, framework="flax")
      except Exception as e:  # SafetensorError for truncated / corrupt files
        raise ConvertError(f"{f} cannot be read ({type(e).__name__}: {e}); "
                           "the file is truncated or corrupt.") from None
    return self._handles[f]

  def names(self):
    return list(self._names)

  def __call__(self, name):
    if name not in self._names:
      raise KeyError(name)
    try:
      return np.asarray(self._open(self._names[name]).get_tensor(name))
    except Exception as e:
      raise ConvertError(f"tensor {name!r} of {self._names[name]} cannot be "
                         f"read ({type(e).__name__}: {e}); the file is "
                         "truncated or corrupt.") from None


_IGNORED = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
            "model.multi_modal_projector.")


def _model_prefix(names) -> str:
  hits = [n[:-len("embed_tokens.weight")] for n in names
          if n.endswith("embed_tokens.weight") and not n.startswith(_IGNORED)]
  if len(hits) != 1:
    raise ConvertError("cannot find the token embedding (…embed_tokens.weight)"
                       f" among the checkpoint's tensors (found {hits}).")
  return hits[0]


def load_hf(path: str, *, dtype: str = "float32"):
  """(ModelConfig, params dict) of an HF checkpoint directory (mode full)."""
  cfg, params, _ = read_hf(path, dtype=dtype)
  return cfg, params


def read_hf(path: str, *, dtype: str = "float32"):
  """load_hf plus info: {"hf_config": the config.json dict,
  "tokenizer_files": [paths], "fam_prompt": array or None (an exported
  famjax model's), "fam_config": dict or None, "source", "format"}."""
  if not os.path.isdir(path):
    raise ConvertError(f"{path} is not a directory (expected a Hugging Face "
                       "checkpoint with config.json and *.safetensors).")
  hf = _read_json(os.path.join(path, "config.json"), "config file")
  cfg = config_from_hf(hf).replace(dtype=dtype, param_dtype=dtype)
  cfg.validate()
  st = SafetensorsDir(path)
  names = st.names()
  prefix = _model_prefix(names)
  lm_head = next((n for n in ("lm_head.weight", "language_model.lm_head.weight")
                  if n in names), "lm_head.weight")

  def get(name):
    return st(lm_head if name == "lm_head.weight" else name)

  params = table.to_famjax(cfg, get, "hf", prefix=prefix,
                           dtype=np.dtype(_np_dtype(dtype)), source=path)
  used = table.known_hf_names(cfg, prefix) | {lm_head}
  unused = sorted(n for n in names if n not in used
                  and not n.startswith(_IGNORED) and "rotary_emb" not in n)
  if unused:
    raise ConvertError(
        f"{path}: tensors {unused[:4]} have no place in famjax (features this "
        "converter does not support, or a config that does not match).")
  info = dict(hf_config=hf, source=os.path.abspath(path), format="hf",
              tokenizer_files=[os.path.join(path, f) for f in _TOKENIZER_FILES
                               if os.path.isfile(os.path.join(path, f))],
              fam_prompt=None, fam_config=None)
  fp = os.path.join(path, "fam_prompt.npy")
  if os.path.isfile(fp):
    info["fam_prompt"] = np.load(fp)
    fc = os.path.join(path, "fam_config.json")
    if os.path.isfile(fc):
      info["fam_config"] = _read_json(fc, "FAM config")
  return cfg, params, info


def _np_dtype(name):
  import jax.numpy as jnp
  return jnp.dtype(name)


# ============================================================ attention
def with_attention(cfg: ModelConfig, params: dict, info: dict,
                   attention: Optional[AttentionConfig], seed: int = 0):
  """cfg / params for the chosen attention. `fam` adds `fam_prompt`: the one
  stored beside the checkpoint (an exported famjax model), else a fresh
  normal(0.02) init. attention=None: the stored FAM config, else `full`."""
  if attention is None:
    fc = info.get("fam_config")
    attention = AttentionConfig(**fc) if fc else AttentionConfig()
  attention.validate()
  cfg = cfg.replace(attention=attention).validate()
  params = dict(params)
  params.pop("fam_prompt", None)
  if attention.mode == "fam":
    stored = info.get("fam_prompt")
    f = attention.fam_length
    if stored is not None:
      if tuple(stored.shape) != (f, cfg.d_model):
        raise ConvertError(
            f"the checkpoint's fam_prompt.npy has shape {tuple(stored.shape)} "
            f"but fam_length={f} needs ({f}, {cfg.d_model}); use "
            f"--fam_length {stored.shape[0]} or delete fam_prompt.npy.")
      params["fam_prompt"] = np.asarray(stored, _np_dtype(cfg.param_dtype))
    else:
      import jax
      key = jax.random.PRNGKey(seed)
      params["fam_prompt"] = np.asarray(
          0.02 * jax.random.normal(key, (f, cfg.d_model)),
          _np_dtype(cfg.param_dtype))
  return cfg, params


def build_model(cfg: ModelConfig, params: dict, source: str = "checkpoint"):
  """A Transformer holding exactly `params` (see params_io.build_model)."""
  from famjax import params_io
  try:
    return params_io.build_model(cfg, params, source=source, allow_new=False)
  except ValueError as e:
    raise ConvertError(str(e)) from e


def from_pretrained(src: str, *, attention: Optional[AttentionConfig] = None,
                    dtype: str = "float32", seed: int = 0):
  """A famjax Transformer from an HF directory or a .gguf file.

  attention: AttentionConfig(mode=...) to run the weights with; `fam` adds
  only `fam_prompt` (normal, std 0.02, from `seed`).
  """
  if os.path.isfile(src) and src.endswith(".gguf"):
    from famjax.convert.gguf import read_gguf
    cfg, params, info = read_gguf(src, dtype=dtype, tokenizer=False)
  else:
    cfg, params, info = read_hf(src, dtype=dtype)
  cfg, params = with_attention(cfg, params, info, attention, seed)
  return build_model(cfg, params, src)


# ============================================================ to directory
def write_model_dir(out: str, cfg: ModelConfig, params: dict, info: dict, *,
                    tokenizer_dir: Optional[str] = None,
                    overwrite: bool = False) -> str:
  """save_model_dir with the converter's extras: hf_config.json (for export),
  the tokenizer files under extra/tokenizer/."""
  from famjax.params_io import save_model_dir
  _check_out(out, overwrite)
  tmp = tempfile.mkdtemp(prefix="famjax-convert-")
  try:
    extra = {}
    hf_cfg = os.path.join(tmp, "hf_config.json")
    with open(hf_cfg, "w") as fh:
      json.dump(info.get("hf_config") or {}, fh, indent=2)
    extra["hf_config.json"] = hf_cfg
    src = os.path.join(tmp, "source.json")
    with open(src, "w") as fh:
      json.dump({"format": info.get("format"), "source": info.get("source")},
                fh, indent=2)
    extra["source.json"] = src
    tok = tokenizer_dir
    if tok is None and info.get("tokenizer_files"):
      tok = os.path.join(tmp, "tokenizer")
      os.makedirs(tok)
      for f in info["tokenizer_files"]:
        shutil.copyfile(f, os.path.join(tok, os.path.basename(f)))
    if tok is not None:
      extra["tokenizer"] = tok
    return save_model_dir(out, cfg, params, extra_files=extra,
                          overwrite=overwrite)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _check_out(out: str, overwrite: bool):
  if os.path.exists(out) and not overwrite:
    if not os.path.isdir(out) or os.listdir(out):
      raise ConvertError(f"output directory {out} exists and is not empty; "
                         "choose a new path or remove it (nothing was "
                         "written).")


def convert_hf(src: str, out: str, *,
               attention: Optional[AttentionConfig] = None,
               dtype: str = "float32", seed: int = 0,
               overwrite: bool = False) -> str:
  """HF directory -> famjax model directory (atomic)."""
  _check_out(out, overwrite)
  cfg, params, info = read_hf(src, dtype=dtype)
  cfg, params = with_attention(cfg, params, info, attention, seed)
  return write_model_dir(out, cfg, params, info, overwrite=overwrite)
