"""Vocabularies by name or path: all of them `seqio.Vocabulary` objects."""
from __future__ import annotations

import functools
import os

import seqio


@functools.lru_cache(maxsize=None)
def get_vocabulary(name_or_path: str) -> seqio.Vocabulary:
  """A seqio vocabulary.

  * "byte": `seqio.ByteVocabulary()` (259 ids: pad 0, eos 1, unk 2, bytes).
  * a SentencePiece `.model` file: `seqio.SentencePieceVocabulary`.
  * a famjax model directory holding `extra/tokenizer/tokenizer.json`, a
    `tokenizer.json` file, or a Hugging Face directory: the Hugging Face
    tokenizer wrapped by `famjax.convert.vocab.HFVocabulary(path)`.
  """
  if not isinstance(name_or_path, str) or not name_or_path:
    raise ValueError(f"vocabulary must be 'byte' or a path, got {name_or_path!r}")
  if name_or_path == "byte":
    return seqio.ByteVocabulary()
  path = os.path.expanduser(name_or_path)
  if os.path.isfile(path) and path.endswith(".model"):
    return seqio.SentencePieceVocabulary(path)
  if has_hf_tokenizer(path):
    from famjax.convert.vocab import HFVocabulary
    return HFVocabulary(path)
  if not os.path.exists(path):
    raise ValueError(
        f"vocabulary {name_or_path!r} is neither 'byte' nor an existing path "
        "(a SentencePiece .model file, a tokenizer.json, or a famjax model "
        "directory with extra/tokenizer/tokenizer.json).")
  raise ValueError(
      f"vocabulary {name_or_path!r} is not a SentencePiece .model file, a "
      "tokenizer.json, or a famjax model directory with extra/tokenizer.json.")


def has_hf_tokenizer(path: str) -> bool:
  """True for a tokenizer.json file or a directory holding one (an HF
  checkpoint, or a famjax model directory at extra/tokenizer/)."""
  if os.path.isfile(path):
    return path.endswith(".json")
  return any(os.path.isfile(os.path.join(path, *p)) for p in
             (("tokenizer.json",), ("extra", "tokenizer", "tokenizer.json")))
