"""Helpers for the conversion tests: tiny random HF models, their logits,
explicit BSWA masks for transformers, a tiny tokenizer and tiny GGUF files."""
from __future__ import annotations

import functools
import json
import os

import numpy as np

from tests import helpers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

VOCAB = 128
TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16)


def hf_config(family: str):
  """A tiny config of each supported family, exercising its special parts."""
  import transformers as tr
  if family == "llama":      # untied, llama3 RoPE scaling in all 3 regions
    return tr.LlamaConfig(**TINY, tie_word_embeddings=False, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500.0, "factor": 4.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})
  if family == "llama_plain":  # what a llama GGUF can express: plain RoPE
    return tr.LlamaConfig(**TINY, tie_word_embeddings=True, rope_parameters={
        "rope_type": "default", "rope_theta": 1000.0})
  if family == "qwen2":      # q/k/v bias, tied, last 2 layers sliding
    return tr.Qwen2Config(**TINY, tie_word_embeddings=True,
                          use_sliding_window=True, sliding_window=6,
                          max_window_layers=1)
  if family == "mistral":    # sliding window on every layer
    return tr.MistralConfig(**TINY, sliding_window=5,
                            tie_word_embeddings=False)
  if family == "gemma3":     # local/global mix, small window, soft-caps,
    return tr.Gemma3TextConfig(  # custom query scale, linear RoPE on globals
        **TINY, sliding_window=4, query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention",
                     "sliding_attention"],
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 4.0,
                               "rope_theta": 1000.0},
            "sliding_attention": {"rope_type": "default",
                                  "rope_theta": 100.0}})
  raise ValueError(family)


FAMILIES = ("llama", "qwen2", "mistral", "gemma3")


def randomize(model, seed=0):
  """Every parameter random and O(1)-scaled (norm weights and biases too,
  so a dropped or misplaced one shows in the logits)."""
  import torch
  g = torch.Generator().manual_seed(seed)
  gemma = "gemma" in type(model).__name__.lower()
  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=g)
      if "norm" in name:
        p.copy_(0.2 * r if gemma else 1.0 + 0.2 * r)
      elif name.endswith("bias"):
        p.copy_(0.2 * r)
      elif "embed" in name:
        p.copy_(0.5 * r)
      else:
        p.copy_(r / np.sqrt(p.shape[-1]))
  return model


def make_hf_model(family, path, seed=0, **save_kw):
  import torch
  from transformers import AutoModelForCausalLM
  torch.manual_seed(seed)
  model = AutoModelForCausalLM.from_config(
      hf_config(family), dtype=torch.float32, attn_implementation="eager")
  randomize(model.eval(), seed)
  model.save_pretrained(path, **save_kw)
  return model


def load_hf_model(path, **kw):
  import torch
  from transformers import AutoModelForCausalLM
  return AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation="eager", **kw).eval()


def hf_logits(model, ids, attention_mask=None):
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(np.asarray(ids)),
                attention_mask=attention_mask)
  return out.logits.float().numpy()


_JIT = {}


def famjax_logits(model, ids):
  """Jitted whole-sequence logits (one compilation per model structure)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  gdef, state = nnx.split(model)
  if gdef not in _JIT:
    _JIT[gdef] = jax.jit(lambda s, x: nnx.merge(gdef, s)(x))
  return np.asarray(_JIT[gdef](state, jnp.asarray(np.asarray(ids))))


def famjax_greedy(model, ids, new):
  """Greedy decoding with famjax's streaming state (a KV cache in `full`
  mode): the prompt in one chunk, then one token per step."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  gdef, params = nnx.split(model)
  step = jax.jit(lambda p, st, x: nnx.merge(gdef, p).stream(st, x))
  ids = np.asarray(ids)
  state = model.init_stream(1, max_len=ids.shape[1] + new)
  logits, state = step(params, state, jnp.asarray(ids[:1]))
  seq = list(ids[0])
  for _ in range(new):
    seq.append(int(np.argmax(np.asarray(logits[0, -1]))))
    logits, state = step(params, state, jnp.asarray([[seq[-1]]]))
  return [int(t) for t in seq]


tokens = functools.partial(helpers.tokens, vocab=VOCAB)


# ------------------------------------------------------------ BSWA masks
def bswa_visible(t, block, memory, window=None):
  """[T, T] bool, written from docs/fam.md independently of famjax: a query at p in
  block p//B sees its own block's keys <= p and every key of blocks
  p//B - m .. p//B - 1; a native window additionally needs p - k < W."""
  q = np.arange(t)[:, None]
  k = np.arange(t)[None, :]
  see = (k <= q) & (k // block >= q // block - memory)
  if window is not None:
    see &= (q - k) < window
  return see


def additive(see, batch):
  """transformers' custom 4-D float mask [b, 1, T, T] (0 / large negative)."""
  import torch
  m = np.where(see, 0.0, np.finfo(np.float32).min).astype(np.float32)
  return torch.as_tensor(np.broadcast_to(m, (batch, 1) + see.shape).copy())


def hf_bswa_mask(family, hf_cfg, t, block, memory, batch):
  """The mask argument that makes transformers compute famjax's bswa."""
  window = getattr(hf_cfg, "sliding_window", None)
  full = additive(bswa_visible(t, block, memory), batch)
  if family == "mistral":            # every layer local
    return additive(bswa_visible(t, block, memory, window), batch)
  if family in ("qwen2", "gemma3"):  # per-layer-type masks
    return {"full_attention": full,
            "sliding_attention": additive(
                bswa_visible(t, block, memory, window), batch)}
  return full


# -------------------------------------------------------------- tokenizer
def save_tokenizer(tok, path):
  """tokenizer.json + a tokenizer_config.json naming the special tokens."""
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as fh:
    json.dump({"eos_token": "<eos>", "bos_token": "<bos>",
               "unk_token": "<unk>", "pad_token": "<pad>",
               "tokenizer_class": "PreTrainedTokenizerFast"}, fh)


def write_tiny_tokenizer(path, vocab=VOCAB):
  """A word-level tokenizer.json (+ tokenizer_config.json) of `vocab` ids."""
  from tokenizers import Tokenizer, models, pre_tokenizers, decoders
  words = ["<pad>", "<eos>", "<bos>", "<unk>"] + [
      f"w{i}" for i in range(vocab - 4)]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)},
                                   unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.decoder = decoders.WordPiece(prefix="##")
  tok.add_special_tokens(["<pad>", "<eos>", "<bos>", "<unk>"])
  save_tokenizer(tok, path)


def write_tiny_bpe_tokenizer(path, vocab=VOCAB):
  """A BPE tokenizer.json of `vocab` ids (pad 0, eos 1, bos 2, unk 3)
  trained on some standard-library sources: it encodes Python text (the
  pylib_lm task) with few unknowns and decodes it back exactly."""
  import glob
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__),
                                        "*.py")))[:20]
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  tok.train(files, trainers.BpeTrainer(
      vocab_size=vocab, limit_alphabet=100, show_progress=False,
      special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"]))
  save_tokenizer(tok, path)


# ------------------------------------------------------------------ GGUF
def llama_cpp_permute(w, n_head):
  """What llama.cpp's converter does to Llama Q/K rows (the inverse of the
  un-permutation famjax applies)."""
  out = w.shape[0]
  return (w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def tiny_byte_level_bpe():
  """(tokens, merges, token types) of a small byte-level BPE vocabulary
  (< VOCAB ids; 3 control tokens first), as llama.cpp stores a gpt2-type
  tokenizer."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  text = (["the quick brown fox jumps over the lazy dog 0123456789.\n"] * 50
          + ["def main(): return 42, 'hello world'\n"] * 50)
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  tok.train_from_iterator(text, trainers.BpeTrainer(
      vocab_size=VOCAB - 3, show_progress=False, special_tokens=specials))
  model = json.loads(tok.to_str())["model"]
  tokens = sorted(model["vocab"], key=model["vocab"].get)
  merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
  types = [3 if t in specials else 1 for t in tokens]
  return tokens, merges, types


def write_tiny_gguf(hf_model, path, arch="llama", tokenizer=False):
  """A float32 GGUF of a tiny HF Llama, laid out the way llama.cpp writes it
  (Q/K rows permuted); with `tokenizer`, the metadata of a byte-level BPE
  (`tiny_byte_level_bpe`, eos <|im_end|>). `arch` only names the file's
  architecture (to test the unsupported-architecture error)."""
  import gguf
  from famjax.convert import table
  from famjax.convert.hf_config import config_from_hf
  cfg = config_from_hf(hf_model.config.to_dict())
  sd = {k: v.detach().numpy().astype(np.float32)
        for k, v in hf_model.state_dict().items()}
  c = hf_model.config
  w = gguf.GGUFWriter(path, arch)
  w.add_uint32(f"{arch}.block_count", c.num_hidden_layers)
  w.add_uint32(f"{arch}.embedding_length", c.hidden_size)
  w.add_uint32(f"{arch}.feed_forward_length", c.intermediate_size)
  w.add_uint32(f"{arch}.attention.head_count", c.num_attention_heads)
  w.add_uint32(f"{arch}.attention.head_count_kv", c.num_key_value_heads)
  w.add_uint32(f"{arch}.context_length", 256)
  w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
  w.add_float32(f"{arch}.rope.freq_base", cfg.rope_theta)
  if tokenizer:
    tokens, merges, types = tiny_byte_level_bpe()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
  for row in table.rows(cfg):
    for hf_name, g_name in zip(table.source_names(row, "hf", cfg, "model."),
                               table.source_names(row, "gguf", cfg)):
      t = sd[hf_name]
      if g_name.endswith("attn_q.weight"):
        t = llama_cpp_permute(t, c.num_attention_heads)
      if g_name.endswith("attn_k.weight"):
        t = llama_cpp_permute(t, c.num_key_value_heads)
      w.add_tensor(g_name, np.ascontiguousarray(t))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path
