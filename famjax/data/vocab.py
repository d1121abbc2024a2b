"""Vocabularies by name or path: all of them `seqio.Vocabulary` objects."""
from __future__ import annotations

import functools
import importlib.util
import os

import seqio


@functools.lru_cache(maxsize=None)
def get_vocabulary(name_or_path: str) -> seqio.Vocabulary:
  """A seqio vocabulary.

  * "byte": `seqio.ByteVocabulary()` (259 ids: pad 0, eos 1, unk 2, bytes).
  * a SentencePiece `.model` file: `seqio.SentencePieceVocabulary`.
  * a famjax model directory holding `extra/tokenizer.json`, or a
    `tokenizer.json` file: the Hugging Face tokenizer wrapped by
    `famjax.convert.vocab.HFTokenizerVocabulary(path)`.
  """
  if not isinstance(name_or_path, str) or not name_or_path:
    raise ValueError(f"vocabulary must be 'byte' or a path, got {name_or_path!r}")
  if name_or_path == "byte":
    return seqio.ByteVocabulary()
  path = os.path.expanduser(name_or_path)
  if os.path.isfile(path) and path.endswith(".model"):
    return seqio.SentencePieceVocabulary(path)
  is_hf = (os.path.isfile(os.path.join(path, "extra", "tokenizer.json")) or
           (os.path.isfile(path) and os.path.basename(path) == "tokenizer.json"))
  if is_hf:
    if importlib.util.find_spec("famjax.convert.vocab") is None:
      raise ValueError(
          f"vocabulary {name_or_path!r} is a Hugging Face tokenizer, which needs "
          "famjax.convert.vocab (not installed in this famjax).")
    from famjax.convert import vocab as hf_vocab  # pylint: disable=g-import-not-at-top
    return hf_vocab.HFTokenizerVocabulary(path)
  if not os.path.exists(path):
    raise ValueError(
        f"vocabulary {name_or_path!r} is neither 'byte' nor an existing path "
        "(a SentencePiece .model file, a tokenizer.json, or a famjax model "
        "directory with extra/tokenizer.json).")
  raise ValueError(
      f"vocabulary {name_or_path!r} is not a SentencePiece .model file, a "
      "tokenizer.json, or a famjax model directory with extra/tokenizer.json.")
