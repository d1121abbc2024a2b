"""Model and attention configuration.

Both dataclasses are frozen, hashable (so they can be static arguments of
`jax.jit`) and gin-configurable. `validate()` turns every configuration that
breaks the attention contract (docs/fam.md) or simply cannot be built into
one `UserError` (a ValueError) that names the field to fix.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Optional, Tuple

import gin

from famjax.errors import UserError

ATTENTION_MODES = ("full", "bswa", "fam")
ATTENTION_IMPLS = ("auto", "xla", "chunked", "splash", "cudnn")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
LAYER_TYPES = ("global", "local")
ROPE_SCALINGS = (None, "linear", "llama3")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """How tokens see each other (docs/fam.md), and how it is computed.

  mode: "full" (causal), "bswa" (block sliding window) or "fam" (BSWA plus
    feedback attention memory).
  block_size: B, tokens per block (bswa, fam).
  memory_segments: m, previous whole blocks a block token sees (bswa, fam).
  fam_length: F, FAM rows per layer, 1 <= F <= B (fam).
  attention_impl: how attention is computed, the same math every way
    (famjax/kernels): "xla" (explicit mask, whole score matrix), "chunked"
    (online softmax over key chunks, never stores scores), "splash" (Pallas
    TPU kernel), "cudnn" (jax.nn.dot_product_attention) or "auto" (chunked
    on CPU, splash on TPU, cudnn on GPU; xla where the scores of one
    sequence and head are few: a decoding step, the FAM rows' pass).
  attention_chunk: query and key chunk of "chunked": its loops visit one
    [chunk x chunk] tile of scores per block and head at a time.
  fam_logit_bias: None (default, the rules of docs/fam.md) or a constant
    B <= 0 (fam only) that block queries add to their attention logits on
    the FAM keys; FAM queries are unchanged. NOT part of the paper's rules:
    an option for running weights trained without FAM (a converted model)
    in fam. B = 0 is the rules, B = -inf drops the FAM keys from the block
    rows, so the tokens' outputs are exactly bswa's; values in between
    interpolate.
  fam_state_rms: None (default, the rules) or r > 0 (fam only): after every
    block's FAM update, each FAM row is rescaled to root-mean-square r over
    d_model. NOT part of the paper's rules: under them the FAM rows are a
    residual stream that every block adds to, so the state's size grows
    about linearly with the number of blocks read (docs/fam.md).
  fam_decay: None (default, the rules) or lambda0 in (0, 1) (fam only): each
    layer's FAM update keeps lambda * Phi_{t-1} as its attention residual
    instead of Phi_{t-1}, with lambda = sigmoid(w) and w a learned weight
    per layer (`layers.fam_decay_logit`) that starts at logit(lambda0). NOT
    part of the paper's rules: it adds L weights and makes the state a
    leaky residual stream whose size stays bounded (docs/fam.md).
  """
  mode: str = "full"
  block_size: int = 512
  memory_segments: int = 1
  fam_length: int = 32
  attention_impl: str = "auto"
  attention_chunk: int = 128
  fam_logit_bias: Optional[float] = None
  fam_state_rms: Optional[float] = None
  fam_decay: Optional[float] = None

  def validate(self) -> "AttentionConfig":
    if self.mode not in ATTENTION_MODES:
      raise UserError(
          f"AttentionConfig.mode={self.mode!r} is unknown; choose one of "
          f"{ATTENTION_MODES}.")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise UserError(
          f"AttentionConfig.attention_impl={self.attention_impl!r} is unknown; "
          f"choose one of {ATTENTION_IMPLS}.")
    if (not isinstance(self.attention_chunk, int) or
        isinstance(self.attention_chunk, bool) or self.attention_chunk <= 0):
      raise UserError(
          f"AttentionConfig.attention_chunk={self.attention_chunk!r} must be a "
          "positive integer.")
    bias = self.fam_logit_bias
    if bias is not None:
      if (not isinstance(bias, (int, float)) or isinstance(bias, bool) or
          math.isnan(bias) or bias > 0):
        raise UserError(
            f"AttentionConfig.fam_logit_bias={bias!r} must be None or a number "
            "<= 0 (-inf allowed).")
      if self.mode != "fam":
        raise UserError(
            f"AttentionConfig.fam_logit_bias={bias!r} means nothing in mode "
            f"{self.mode!r}; use mode 'fam' or leave fam_logit_bias None.")
    rms = self.fam_state_rms
    if rms is not None:
      if (not isinstance(rms, (int, float)) or isinstance(rms, bool) or
          not math.isfinite(rms) or rms <= 0):
        raise UserError(
            f"AttentionConfig.fam_state_rms={rms!r} must be None or a "
            "positive finite number.")
      if self.mode != "fam":
        raise UserError(
            f"AttentionConfig.fam_state_rms={rms!r} means nothing in mode "
            f"{self.mode!r}; use mode 'fam' or leave fam_state_rms None.")
    decay = self.fam_decay
    if decay is not None:
      if (not isinstance(decay, (int, float)) or isinstance(decay, bool) or
          not 0.0 < decay < 1.0):
        raise UserError(
            f"AttentionConfig.fam_decay={decay!r} must be None or a number "
            "strictly between 0 and 1 (the learned decay's starting value).")
      if self.mode != "fam":
        raise UserError(
            f"AttentionConfig.fam_decay={decay!r} means nothing in mode "
            f"{self.mode!r}; use mode 'fam' or leave fam_decay None.")
    if self.mode == "full":
      return self
    if not isinstance(self.block_size, int) or self.block_size <= 0:
      raise UserError(
          f"AttentionConfig.block_size={self.block_size!r} must be a positive "
          "integer.")
    if not isinstance(self.memory_segments, int) or self.memory_segments < 0:
      raise UserError(
          f"AttentionConfig.memory_segments={self.memory_segments!r} must be an "
          "integer >= 0.")
    if self.mode == "fam":
      if not isinstance(self.fam_length, int) or self.fam_length < 1:
        raise UserError(
            f"AttentionConfig.fam_length={self.fam_length!r} must be an "
            "integer >= 1.")
      if self.fam_length > self.block_size:
        raise UserError(
            f"AttentionConfig.fam_length={self.fam_length} is larger than "
            f"block_size={self.block_size}; FAM needs 1 <= F <= B.")
    return self

  @property
  def fam(self) -> int:
    """FAM rows actually used (0 unless mode == 'fam')."""
    return self.fam_length if self.mode == "fam" else 0

  @property
  def fam_bias(self) -> float:
    """The logit offset of block queries on FAM keys (0.0: the rules)."""
    if self.mode != "fam" or self.fam_logit_bias is None:
      return 0.0
    return float(self.fam_logit_bias)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only Transformer of the Llama or Gemma 3 family."""
  vocab_size: int = 256
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: Optional[int] = None      # None: = num_heads (MHA)
  head_dim: Optional[int] = None          # None: d_model // num_heads
  ffn_dim: int = 1024
  activation: str = "silu"                # silu -> SwiGLU, gelu_tanh -> GeGLU
  norm_eps: float = 1e-6
  norm_scale_plus_one: bool = False       # Gemma: y = x_hat * (1 + w)
  sandwich_norm: bool = False             # Gemma: post-attn / post-ffn norms
  qk_norm: bool = False                   # RMSNorm over head_dim on q and k
  qkv_bias: bool = False                  # Qwen2
  rope_theta: float = 10000.0
  rope_local_theta: Optional[float] = None  # Gemma 3 local layers
  rope_scaling: Optional[str] = None      # None | "linear" | "llama3"
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0       # llama3 scaling
  rope_high_freq_factor: float = 4.0      # llama3 scaling
  rope_original_max_position: int = 8192  # llama3 scaling
  tie_embeddings: bool = True
  embed_scale: bool = False               # Gemma: x *= sqrt(d_model)
  query_scale: Optional[float] = None     # None: head_dim ** -0.5
  attn_logit_softcap: Optional[float] = None
  final_logit_softcap: Optional[float] = None
  sliding_window: Optional[int] = None    # native window of local layers
  layer_types: Optional[Tuple[str, ...]] = None  # per layer global|local
  dtype: str = "float32"                  # compute dtype
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = True
  lora_rank: int = 0                      # 0: no LoRA weights
  lora_alpha: float = 16.0                # LoRA update scaled by alpha / rank
  lora_targets: Tuple[str, ...] = LORA_TARGETS  # projections that get LoRA
  attention: AttentionConfig = dataclasses.field(
      default_factory=AttentionConfig)

  def __post_init__(self):
    if isinstance(self.lora_targets, list):   # keep the config hashable
      object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

  # ------------------------------------------------------------------ derived
  @property
  def n_kv(self) -> int:
    return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

  @property
  def hd(self) -> int:
    return self.head_dim if self.head_dim is not None else (
        self.d_model // self.num_heads)

  @property
  def local_layers(self) -> Tuple[bool, ...]:
    if self.layer_types is None:
      return (False,) * self.num_layers
    return tuple(t == "local" for t in self.layer_types)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def with_attention(self, **kw) -> "ModelConfig":
    return dataclasses.replace(
        self, attention=dataclasses.replace(self.attention, **kw))

  # ---------------------------------------------------------------- checking
  def validate(self) -> "ModelConfig":
    def positive(name):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise UserError(f"ModelConfig.{name}={v!r} must be a positive integer.")
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "ffn_dim"):
      positive(name)
    if self.num_kv_heads is not None:
      positive("num_kv_heads")
      if self.num_heads % self.num_kv_heads:
        raise UserError(
            f"ModelConfig.num_kv_heads={self.num_kv_heads} must divide "
            f"num_heads={self.num_heads} (grouped-query attention).")
    if self.head_dim is not None:
      positive("head_dim")
    elif self.d_model % self.num_heads:
      raise UserError(
          f"ModelConfig.num_heads={self.num_heads} does not divide "
          f"d_model={self.d_model}; set head_dim explicitly.")
    if self.hd % 2:
      raise UserError(f"ModelConfig.head_dim={self.hd} must be even for RoPE.")
    if self.activation not in ACTIVATIONS:
      raise UserError(f"ModelConfig.activation={self.activation!r} is unknown; "
                       f"choose one of {ACTIVATIONS}.")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise UserError(f"ModelConfig.rope_scaling={self.rope_scaling!r} is "
                       f"unknown; choose one of {ROPE_SCALINGS}.")
    if self.rope_theta <= 0:
      raise UserError(f"ModelConfig.rope_theta={self.rope_theta} must be > 0.")
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_layers:
        raise UserError(
            f"ModelConfig.layer_types has {len(self.layer_types)} entries but "
            f"num_layers={self.num_layers}.")
      bad = [t for t in self.layer_types if t not in LAYER_TYPES]
      if bad:
        raise UserError(f"ModelConfig.layer_types has unknown entries {bad}; "
                         f"choose from {LAYER_TYPES}.")
      if any(self.local_layers) and not self.sliding_window:
        raise UserError("ModelConfig.layer_types has 'local' layers but "
                         "sliding_window is not set.")
    if self.sliding_window is not None and self.sliding_window <= 0:
      raise UserError(
          f"ModelConfig.sliding_window={self.sliding_window} must be > 0.")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise UserError(f"ModelConfig.{name}={getattr(self, name)!r} is "
                         f"unknown; choose one of {DTYPES}.")
    if self.remat_policy not in REMAT_POLICIES:
      raise UserError(f"ModelConfig.remat_policy={self.remat_policy!r} is "
                       f"unknown; choose one of {REMAT_POLICIES}.")
    if (not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool)
        or self.lora_rank < 0):
      raise UserError(f"ModelConfig.lora_rank={self.lora_rank!r} must be an "
                       "integer >= 0 (0 turns LoRA off).")
    if (not isinstance(self.lora_alpha, (int, float)) or
        isinstance(self.lora_alpha, bool) or not self.lora_alpha > 0):
      raise UserError(f"ModelConfig.lora_alpha={self.lora_alpha!r} must be a "
                       "number > 0.")
    if isinstance(self.lora_targets, str) or not isinstance(
        self.lora_targets, (tuple, list)):
      raise UserError(f"ModelConfig.lora_targets={self.lora_targets!r} must be "
                       f"a tuple of names from {LORA_TARGETS}.")
    bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
    if bad:
      raise UserError(f"ModelConfig.lora_targets has unknown entries {bad}; "
                       f"choose from {LORA_TARGETS}.")
    if not isinstance(self.attention, AttentionConfig):
      raise UserError("ModelConfig.attention must be an AttentionConfig.")
    self.attention.validate()
    return self

  # ------------------------------------------------------------ (de)serialise
  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    if d["layer_types"] is not None:
      d["layer_types"] = list(d["layer_types"])
    d["lora_targets"] = list(d["lora_targets"])
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    d = dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise UserError(f"unknown ModelConfig fields {unknown}")
    att = d.pop("attention", None) or {}
    if isinstance(att, dict):
      att = AttentionConfig(**att)
    if d.get("layer_types") is not None:
      d["layer_types"] = tuple(d["layer_types"])
    if isinstance(d.get("lora_targets"), list):
      d["lora_targets"] = tuple(d["lora_targets"])
    return cls(attention=att, **d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, s: str) -> "ModelConfig":
    return cls.from_dict(json.loads(s))
