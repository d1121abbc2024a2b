"""Fixtures of the eval-suite tests: generated book text, a tiny BPE
tokenizer, and a hand-written R serializer for lazy-load databases."""
from __future__ import annotations

import gzip
import json
import os
import struct
import zlib

import numpy as np

_SUBJ = ("The old sailor", "A quiet clerk", "The young doctor", "Her cousin",
         "The captain", "A tired farmer", "The widow", "His brother")
_VERB = ("looked at", "spoke of", "walked past", "thought about", "admired",
         "forgot", "mended", "carried")
_OBJ = ("the harbour", "a letter", "the garden wall", "an old map",
        "the lamp", "a basket of pears", "the bridge", "the last coin")


def book_text(seed: int, n_sentences: int) -> str:
  """Paragraphs of generated sentences (no bAbI names or places)."""
  rng = np.random.RandomState(seed)
  out, para = [], []
  for i in range(n_sentences):
    s = (f"{_SUBJ[rng.randint(len(_SUBJ))]} {_VERB[rng.randint(len(_VERB))]}"
         f" {_OBJ[rng.randint(len(_OBJ))]}")
    if rng.rand() < 0.3:
      s += f" while it was still {('early', 'raining', 'dark')[i % 3]}"
    para.append(s + ".")
    if rng.rand() < 0.15:
      out.append(" ".join(para))
      para = []
  out.append(" ".join(para))
  return "\n\n".join(out)


def write_books(path: str, sizes=(3000, 2000)) -> str:
  """A prepared books directory (manifest + text files) as `prepare` makes."""
  os.makedirs(path, exist_ok=True)
  books = []
  for i, n in enumerate(sizes):
    name = f"fixture_{i}.txt"
    with open(os.path.join(path, name), "w", encoding="utf-8") as fh:
      fh.write(book_text(i, n))
    books.append({"id": f"fixture_{i}", "title": name, "file": name})
  with open(os.path.join(path, "manifest.json"), "w") as fh:
    json.dump({"books": books}, fh)
  return path


def write_bpe_tokenizer(path: str, text: str, vocab_size: int = 400) -> str:
  """A byte-level BPE tokenizer.json trained on `text` (+ config)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<unk>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator([text], trainer)
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as fh:
    json.dump({"eos_token": "<eos>", "pad_token": "<pad>",
               "unk_token": "<unk>"}, fh)
  return path


# ----------------------------------------- R serialization (XDR, version 2)
def _i(n):
  return struct.pack(">i", n)


def _charsxp(s: str) -> bytes:
  b = s.encode("utf-8")
  return _i(9 | (64 << 12)) + _i(len(b)) + b   # CHARSXP, ASCII flag


def _strsxp(items) -> bytes:
  return _i(16) + _i(len(items)) + b"".join(_charsxp(s) for s in items)


def _intsxp(vals) -> bytes:
  return _i(13) + _i(len(vals)) + b"".join(_i(v) for v in vals)


def _named_list(items: dict) -> bytes:
  """VECSXP with a names attribute (pairlist: tag 'names' -> STRSXP)."""
  out = _i(19 | (1 << 9)) + _i(len(items)) + b"".join(items.values())
  out += _i(2 | (1 << 10)) + _i(1) + _charsxp("names")   # LISTSXP, SYMSXP
  out += _strsxp(list(items)) + _i(254)                  # CAR, NILVALUE
  return out


def _serialize(body: bytes) -> bytes:
  return b"X\n" + _i(2) + _i(0x040300) + _i(0x020300) + body


def _entry(body: bytes) -> bytes:
  data = _serialize(body)
  return struct.pack(">I", len(data)) + zlib.compress(data)


def write_rdb(prefix: str, objects: dict) -> None:
  """`prefix.rdb` / `prefix.rdx` holding character vectors `objects`."""
  blob, offsets = b"", {}
  for name, lines in objects.items():
    e = _entry(_strsxp(lines))
    offsets[name] = _intsxp([len(blob), len(e)])
    blob += e
  index = _named_list({"variables": _named_list(offsets),
                       "references": _named_list({}),
                       "compressed": _i(10) + _i(1) + _i(1)})
  with open(prefix + ".rdb", "wb") as fh:
    fh.write(blob)
  with open(prefix + ".rdx", "wb") as fh:
    fh.write(gzip.compress(_serialize(index)))
