"""GGUF files (llama.cpp) -> famjax.

Supported `general.architecture`: llama (Llama 2/3, Mistral, SmolLM2, ...),
qwen2, gemma3. Tensors are dequantised to float32 with `gguf.quants`, then
two llama.cpp conventions are undone before the shared weight table
(`famjax.convert.table`, GGUF column) is applied:

* llama: Q and K weights are stored row-permuted (llama.cpp's "interleaved"
  RoPE layout); un-permuting restores HF's rotate-half layout.
* gemma3: every norm weight is stored as `w + 1`.

The config comes from the `<arch>.*` metadata; what a GGUF does not record
follows llama.cpp's own defaults (Gemma 3: local RoPE base 10000, every 6th
layer global, query scale 1/sqrt(head_dim) except 27B). The tokenizer stored
in the file is rebuilt as a tokenizer.json (famjax.convert.gguf_tokenizer).
"""
from __future__ import annotations

import os

import numpy as np

from famjax.config import ModelConfig
from famjax.convert.errors import ConvertError
from famjax.convert.gguf_reader import fast_gguf_reader, open_gguf  # noqa: F401
from famjax.convert.hf_config import HF_CLASSES
from famjax.convert.source import CheckpointSource

ARCHITECTURES = ("llama", "qwen2", "gemma3")


def metadata(reader, key, default=None):
  field = reader.fields.get(key)
  if field is None:
    return default
  value = field.contents()
  return value


def config_from_gguf(reader, path: str = "gguf") -> dict:
  """The HF config dict equivalent to a GGUF's metadata."""
  arch = metadata(reader, "general.architecture")
  if arch not in ARCHITECTURES:
    raise ConvertError(
        f"{path}: unsupported GGUF architecture {arch!r}; famjax converts "
        f"{ARCHITECTURES} GGUFs.")

  def need(key):
    v = metadata(reader, f"{arch}.{key}")
    if v is None:
      raise ConvertError(f"{path}: metadata {arch}.{key} is missing.")
    return v

  def opt(key, default=None):
    return metadata(reader, f"{arch}.{key}", default)

  tensors = {t.name: t for t in reader.tensors}
  if "token_embd.weight" not in tensors:
    raise ConvertError(f"{path}: tensor token_embd.weight is missing.")
  emb_shape = [int(x) for x in tensors["token_embd.weight"].shape]  # [d, V]
  d = int(need("embedding_length"))
  heads = int(need("attention.head_count"))
  kv = opt("attention.head_count_kv", heads)
  if not np.isscalar(kv):
    raise ConvertError(f"{path}: per-layer head counts are not supported.")
  head_dim = int(opt("attention.key_length", d // heads))
  rope_dim = opt("rope.dimension_count")
  if rope_dim is not None and int(rope_dim) != head_dim:
    raise ConvertError(f"{path}: partial RoPE (rope.dimension_count="
                       f"{rope_dim}, head_dim={head_dim}) is not supported.")
  ffn = opt("feed_forward_length")
  if ffn is None or not np.isscalar(ffn):
    raise ConvertError(f"{path}: feed_forward_length missing or per-layer.")
  hf = dict(
      vocab_size=int(opt("vocab_size", emb_shape[1])), hidden_size=d,
      intermediate_size=int(ffn), num_hidden_layers=int(need("block_count")),
      num_attention_heads=heads, num_key_value_heads=int(kv),
      head_dim=head_dim,
      rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
      tie_word_embeddings="output.weight" not in tensors,
      max_position_embeddings=int(opt("context_length", 4096)))
  for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos"),
                    ("pad_token_id", "padding")):
    v = metadata(reader, f"tokenizer.ggml.{name}_token_id")
    if v is not None:
      hf[key] = int(v)
  rope = {"rope_theta": float(opt("rope.freq_base", 10000.0)),
          "rope_type": "default"}
  scaling = opt("rope.scaling.type")
  if scaling not in (None, "none"):
    if scaling != "linear":
      raise ConvertError(f"{path}: RoPE scaling {scaling!r} is not supported.")
    rope.update(rope_type="linear", factor=float(need("rope.scaling.factor")))
  if "rope_freqs.weight" in tensors:
    rope = _llama3_from_freqs(tensors["rope_freqs.weight"], rope, head_dim,
                              path)
  if arch in ("llama", "qwen2"):
    hf.update(model_type=arch, hidden_act="silu", rope_parameters=rope)
  else:
    hf.update(_gemma3_hf(hf, opt, rope, d, heads, head_dim))
  hf["architectures"] = [HF_CLASSES[hf["model_type"]]]
  return hf


def _gemma3_hf(hf, opt, rope, d, heads, head_dim) -> dict:
  """The Gemma 3 fields of the HF config of a gemma3 GGUF."""
  n = hf["num_hidden_layers"]
  pattern = opt("attention.sliding_window_pattern")
  if pattern is None or np.isscalar(pattern):
    p = int(pattern or 6)
    types = ["sliding_attention" if (i + 1) % p else "full_attention"
             for i in range(n)]
  else:
    types = ["sliding_attention" if bool(x) else "full_attention"
             for x in pattern]
  # llama.cpp: 1/sqrt(head_dim), except Gemma 3 27B: 1/sqrt(d / heads).
  qpas = d // heads if (n == 62 and d == 5376) else head_dim
  return dict(
      model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh",
      query_pre_attn_scalar=qpas, layer_types=types,
      sliding_window=int(opt("attention.sliding_window", 4096)),
      rope_parameters={
          "full_attention": rope,
          "sliding_attention": {
              "rope_theta": float(opt("rope.freq_base_swa", 10000.0)),
              "rope_type": "default"}},
      final_logit_softcapping=opt("final_logit_softcapping"),
      attn_logit_softcapping=opt("attn_logit_softcapping"))


def _llama3_from_freqs(tensor, rope, head_dim, path):
  """Llama 3.1+ GGUFs store per-frequency divisors instead of rope_scaling
  metadata; recognise the standard llama3 settings they come from."""
  from famjax.layers.rope import inv_frequencies
  freqs = np.asarray(tensor.data, np.float64).reshape(-1)
  theta = rope["rope_theta"]
  target = inv_frequencies(head_dim, theta) / freqs
  for factor in (8.0, 16.0, 32.0, 4.0, 2.0):
    for orig in (8192, 4096, 2048, 16384, 32768, 131072):
      cand = inv_frequencies(head_dim, theta, "llama3", factor, 1.0, 4.0, orig)
      if np.allclose(cand, target, rtol=1e-4, atol=0):
        return {"rope_theta": theta, "rope_type": "llama3", "factor": factor,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": orig}
  raise ConvertError(f"{path}: rope_freqs.weight does not match a standard "
                     "llama3 RoPE scaling; not supported.")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undo llama.cpp's Q/K row permutation (works for weights and biases)."""
  out = w.shape[0]
  rest = w.shape[1:]
  return (w.reshape(n_head, out // n_head // 2, 2, *rest).swapaxes(1, 2)
          .reshape(out, *rest))


class GGUFSource(CheckpointSource):
  """A GGUF file: tensors dequantised to float32 in HF layout, with
  llama.cpp's quirks undone; the tokenizer rebuilt from its metadata."""

  format = "gguf"

  def __init__(self, path: str):
    self.path = path
    self.reader = open_gguf(path)
    _truncation_check(self.reader, path)
    self.hf_config = config_from_gguf(self.reader, path)
    self.arch = metadata(self.reader, "general.architecture")
    self.tensors = {t.name: t for t in self.reader.tensors}
    self.cfg = self.config()

  def names(self):
    return list(self.tensors)

  def extra_names(self, cfg: ModelConfig):
    return {"rope_freqs.weight"}     # read into the config (llama3 RoPE)

  def __call__(self, name):
    import gguf
    t = self.tensors[name]   # KeyError -> "missing" in table.to_famjax
    try:
      w = gguf.quants.dequantize(t.data, t.tensor_type)
    except Exception as e:
      raise ConvertError(f"{self.path}: tensor {name} ({t.tensor_type.name}) "
                         f"cannot be dequantised ({type(e).__name__}: {e}).") \
          from None
    w = np.asarray(w, np.float32)
    want = tuple(int(x) for x in reversed(t.shape))
    if w.size != int(np.prod(want)):
      raise ConvertError(f"{self.path}: tensor {name} holds {w.size} values, "
                         f"its header says {want}; the file is truncated.")
    w = w.reshape(want)
    if self.arch == "llama":
      if name.endswith(("attn_q.weight", "attn_q.bias")):
        w = _unpermute(w, self.cfg.num_heads)
      elif name.endswith(("attn_k.weight", "attn_k.bias")):
        w = _unpermute(w, self.cfg.n_kv)
    if self.arch == "gemma3" and name.endswith("norm.weight"):
      w = w - 1.0
    return w.reshape(-1) if len(want) == 1 else w

  def write_tokenizer(self, out: str) -> bool:
    from famjax.convert.gguf_tokenizer import write_gguf_tokenizer
    return write_gguf_tokenizer(self.reader, out, self.path)


def _truncation_check(reader, path):
  size = os.path.getsize(path)
  for t in reader.tensors:
    if t.data_offset + t.n_bytes > size:
      raise ConvertError(f"{path} is truncated: tensor {t.name} ends at byte "
                         f"{t.data_offset + t.n_bytes}, the file has {size}.")
