"""A GGUF's tokenizer (llama.cpp metadata `tokenizer.ggml.*`) rebuilt as a
Hugging Face `tokenizer.json` with the `tokenizers` library (a base
dependency), so converting needs no `transformers`.

Rebuilt here: byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`:
SmolLM2, Llama 3, Qwen2, ...: the vocabulary and merges as stored, the
pre-tokenizer split the vocabulary was learned with (`tokenizer.ggml.pre`),
byte-level decoding) and Gemma 3's SentencePiece-style BPE (merges rebuilt
from the token order, byte fallback); control tokens become special tokens,
BOS is added when the file says so. Other SentencePiece vocabularies (Llama 2,
Mistral GGUFs) use `transformers`' rebuild when it is installed; otherwise the
error says to pass --no_tokenizer.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Optional

from famjax.convert.errors import ConvertError

CONTROL, USER_DEFINED = 3, 4       # llama.cpp token types
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                 r"|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> the split regex; others use GPT-2's byte-level split.
SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
          "llama-bpe": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT,
          "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}
_SPECIAL = {"bos": "bos_token_id", "eos": "eos_token_id",
            "unk": "unknown_token_id", "pad": "padding_token_id"}


def _field(reader, key, default=None):
  f = reader.fields.get(key)
  return default if f is None else f.contents()


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> dict:
  """GPT-2's reversible byte -> printable character map."""
  keep = (list(range(ord("!"), ord("~") + 1))
          + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
  chars, extra = {}, 0
  for b in range(256):
    if b in keep:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


def byte_level_bpe(reader, path: str = "gguf"):
  """A `tokenizers.Tokenizer` of a gpt2-type GGUF vocabulary."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models
  from tokenizers import pre_tokenizers
  tokens = list(_field(reader, "tokenizer.ggml.tokens") or [])
  merges = _field(reader, "tokenizer.ggml.merges")
  if not tokens or merges is None:
    raise ConvertError(f"{path}: the byte-level tokenizer lacks "
                       "tokenizer.ggml.tokens or tokenizer.ggml.merges.")
  alphabet = set(byte_alphabet().values())
  spell = byte_alphabet()
  vocab = {(t if set(t) <= alphabet
            else "".join(spell[b] for b in t.encode("utf-8"))): i
           for i, t in enumerate(tokens)}
  tok = Tokenizer(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges],
                             continuing_subword_prefix="",
                             end_of_word_suffix="", fuse_unk=False,
                             byte_fallback=False))
  prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", False))
  split = SPLITS.get(_field(reader, "tokenizer.ggml.pre"))
  if split is None:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
  else:
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  types = list(_field(reader, "tokenizer.ggml.token_type") or [])
  tok.add_special_tokens([
      AddedToken(t, normalized=False, special=True)
      for t, k in zip(tokens, types) if k == CONTROL and set(t) <= alphabet])
  tok.add_tokens([AddedToken(t, normalized=False, special=False)
                  for t, k in zip(tokens, types) if k == USER_DEFINED])
  _set_bos(tok, reader, tokens, default=False)
  return tok


def _set_bos(tok, reader, tokens, default: bool):
  """The post-processor: BOS first when the file says so (else `default`)."""
  from tokenizers import processors
  bos = _field(reader, "tokenizer.ggml.bos_token_id")
  add = _field(reader, "tokenizer.ggml.add_bos_token", default)
  if add and bos is not None:
    b = tokens[int(bos)]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{b}:0 $A:0", pair=f"{b}:0 $A:0 {b}:1 $B:1",
        special_tokens=[(b, int(bos))])
  else:
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0", pair="$A:0 $B:1", special_tokens=[])


def merges_by_rank(vocab: dict, rank: dict) -> list:
  """BPE merges implied by a vocabulary without stored merges: every split
  of a token into two tokens, best rank (highest) first; ties: longer left,
  then longer right piece first."""
  out = []
  for token, score in rank.items():
    pairs = [(token[:i], token[i:], score) for i in range(1, len(token))
             if token[:i] in vocab and token[i:] in vocab]
    out.extend(sorted(pairs, key=lambda p: (vocab[p[0]], vocab[p[1]])))
  out = sorted(out, key=lambda p: (p[2], len(p[0]), len(p[1])), reverse=True)
  return [(a, b) for a, b, _ in out]


def gemma_bpe(reader, path: str = "gguf"):
  """A `tokenizers.Tokenizer` of a Gemma GGUF (SentencePiece-style BPE with
  byte fallback): merges rebuilt from the token order (the file lists
  none; a token earlier in the file merges first), spaces as "▁"."""
  from tokenizers import AddedToken, Tokenizer, decoders, models
  from tokenizers import normalizers, pre_tokenizers
  stored = list(_field(reader, "tokenizer.ggml.tokens") or [])
  if not stored:
    raise ConvertError(f"{path}: tokenizer.ggml.tokens is missing.")
  # A token of spaces only is stored with real spaces; the model looks
  # them up as "▁" runs.
  tokens = ["▁" * len(t) if " " in t and not t.strip() else t
            for t in stored]
  vocab = {t: i for i, t in enumerate(tokens)}
  rank = {t: -i for i, t in enumerate(tokens)}
  tok = Tokenizer(models.BPE(vocab, merges_by_rank(vocab, rank),
                             fuse_unk=True, unk_token="<unk>",
                             byte_fallback=True, dropout=None))
  tok.normalizer = normalizers.Replace(" ", "▁")
  tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous",
                                           invert=False)
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "),
                                   decoders.ByteFallback(), decoders.Fuse()])
  types = list(_field(reader, "tokenizer.ggml.token_type") or [])
  tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                          for t, k in zip(tokens, types) if k == CONTROL])
  tok.add_tokens([AddedToken(t, normalized=False, special=False)  # as stored
                  for t, k in zip(stored, types)
                  if k == USER_DEFINED and t in vocab])
  _set_bos(tok, reader, tokens, default=True)
  return tok


def tokenizer_config(reader) -> dict:
  """tokenizer_config.json: the special tokens named by the file."""
  tokens = _field(reader, "tokenizer.ggml.tokens") or []
  out = {"tokenizer_class": "PreTrainedTokenizerFast"}
  for name, key in _SPECIAL.items():
    i = _field(reader, f"tokenizer.ggml.{key}")
    if i is not None and 0 <= int(i) < len(tokens):
      out[f"{name}_token"] = tokens[int(i)]
  for key in ("add_bos_token", "add_eos_token"):
    v = _field(reader, f"tokenizer.ggml.{key}")
    if v is not None:
      out[key] = bool(v)
  return out


def write_gguf_tokenizer(reader, out: str, path: str = "gguf") -> bool:
  """Write tokenizer.json (+ tokenizer_config.json, chat_template.jinja)
  into the new directory `out`; False when the file has no tokenizer."""
  kind = _field(reader, "tokenizer.ggml.model")
  if kind is None:
    return False
  arch = _field(reader, "general.architecture")
  if kind == "gpt2":
    tok = byte_level_bpe(reader, path)
  elif kind == "llama" and arch == "gemma3":
    tok = gemma_bpe(reader, path)
  else:
    return _with_transformers(path, out, kind)
  os.makedirs(out)
  tok.save(os.path.join(out, "tokenizer.json"))
  with open(os.path.join(out, "tokenizer_config.json"), "w") as fh:
    json.dump(tokenizer_config(reader), fh, indent=2)
  template = _field(reader, "tokenizer.chat_template")
  if template:
    with open(os.path.join(out, "chat_template.jinja"), "w") as fh:
      fh.write(template)
  return True


def _with_transformers(path: str, out: str, kind: Optional[str]) -> bool:
  """SentencePiece-style vocabularies: transformers' GGUF tokenizer rebuild."""
  try:
    from transformers import AutoTokenizer
  except ImportError:
    raise ConvertError(
        f"{path}: rebuilding its {kind!r} tokenizer needs `transformers` "
        "(pip install transformers); or pass --no_tokenizer to convert the "
        "weights only.") from None
  from famjax.convert.gguf_reader import fast_gguf_reader
  try:
    with fast_gguf_reader():
      tok = AutoTokenizer.from_pretrained(
          os.path.dirname(os.path.abspath(path)),
          gguf_file=os.path.basename(path))
    tok.save_pretrained(out)
  except Exception as e:
    raise ConvertError(f"{path}: its tokenizer cannot be rebuilt "
                       f"({type(e).__name__}: {e}); pass --no_tokenizer to "
                       "convert the weights only.") from None
  return True
