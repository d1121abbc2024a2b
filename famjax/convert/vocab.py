"""A checkpoint's tokenizer as a `seqio.Vocabulary`.

Wraps a Hugging Face fast tokenizer (`tokenizer.json`, run by the
`tokenizers` library) rather than re-implementing it. Accepts a
tokenizer.json file, an HF checkpoint directory, a tokenizer directory, or a
famjax model directory (its extra/tokenizer/, written by `famjax convert`).

Special ids come from tokenizer_config.json (bos/eos/unk/pad tokens), else
from the model config's token ids. `pad_id` is the tokenizer's pad token if
it has one, else seqio's 0.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from famjax.convert.errors import ConvertError


def _find_tokenizer_json(path: str) -> str:
  candidates = [path] if path.endswith(".json") else [
      os.path.join(path, "tokenizer.json"),
      os.path.join(path, "extra", "tokenizer", "tokenizer.json")]
  for c in candidates:
    if os.path.isfile(c):
      return c
  raise ConvertError(f"no tokenizer.json at {path} (looked at {candidates}).")


def _read(path):
  if os.path.isfile(path):
    with open(path) as fh:
      return json.load(fh)
  return {}


def _text(x) -> str:
  if isinstance(x, np.ndarray):
    x = x.item()
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _token_text(t):
  if isinstance(t, dict):
    return t.get("content")
  return t


class HFVocabulary(seqio.Vocabulary):
  """seqio vocabulary over a `tokenizers.Tokenizer`.

  add_special_tokens: let the tokenizer's post-processor add its special
    tokens (e.g. Gemma's <bos>) when encoding. seqio's convention, and the
    default here, is plain text ids (preprocessors add BOS/EOS).
  name: a short name (task names `passkey_<name>`, error messages); it does
    not enter equality.
  """

  def __init__(self, path: str, *, extra_ids: int = 0,
               add_special_tokens: bool = False, name: Optional[str] = None):
    from tokenizers import Tokenizer
    self.name = name or "tokenizer"
    self._json_path = _find_tokenizer_json(path)
    self._tok = Tokenizer.from_file(self._json_path)
    self._add_special = bool(add_special_tokens)
    here = os.path.dirname(self._json_path)
    tcfg = _read(os.path.join(here, "tokenizer_config.json"))
    stm = _read(os.path.join(here, "special_tokens_map.json"))
    mcfg = _read(os.path.join(here, "config.json")) or _read(
        os.path.join(os.path.dirname(os.path.dirname(here)), "extra",
                     "hf_config.json"))
    mcfg = mcfg.get("text_config", mcfg) if isinstance(mcfg, dict) else {}

    def special(name):
      text = _token_text(tcfg.get(f"{name}_token") or stm.get(f"{name}_token"))
      if text is not None:
        i = self._tok.token_to_id(text)
        if i is not None:
          return i
      v = mcfg.get(f"{name}_token_id")
      if isinstance(v, list):
        v = v[0] if v else None
      return v

    self._bos, self._eos = special("bos"), special("eos")
    self._unk, self._pad = special("unk"), special("pad")
    super().__init__(extra_ids=extra_ids)

  # ------------------------------------------------------------ properties
  @property
  def tokenizer(self):
    return self._tok

  @property
  def bos_id(self) -> Optional[int]:
    return self._bos

  @property
  def eos_id(self) -> Optional[int]:
    return self._eos

  @property
  def unk_id(self) -> Optional[int]:
    return self._unk

  @property
  def pad_id(self) -> int:
    return self._pad if self._pad is not None else seqio.vocabularies.PAD_ID

  @property
  def _base_vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  # ---------------------------------------------------------------- python
  def _encode(self, s: str) -> Sequence[int]:
    return self._tok.encode(s, add_special_tokens=self._add_special).ids

  def _decode(self, ids) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  # ------------------------------------------------------------ tensorflow
  def _encode_tf(self, s):
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      def one(x):
        return np.asarray(self._encode(_text(x)), np.int32)
      out = tf.numpy_function(one, [s], tf.int32, stateful=False)
      out.set_shape([None])
      return out
    if s.shape.rank == 1:
      def many(xs):
        enc = [self._encode(_text(x)) for x in xs]
        flat = np.asarray([i for e in enc for i in e], np.int32)
        return flat, np.asarray([len(e) for e in enc], np.int64)
      flat, lengths = tf.numpy_function(many, [s], (tf.int32, tf.int64),
                                        stateful=False)
      flat.set_shape([None])
      lengths.set_shape([None])
      return tf.RaggedTensor.from_row_lengths(flat, lengths)
    raise ValueError("HFVocabulary.encode_tf takes a scalar or 1-D string "
                     f"tensor, got rank {s.shape.rank}.")

  def _decode_tf(self, ids):
    ids = tf.convert_to_tensor(ids)
    eos = self.eos_id

    def py(a):
      a = np.asarray(a)
      rows = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
      out = []
      for row in rows:
        row = [int(i) for i in row]
        if eos is not None and eos in row:
          row = row[:row.index(eos)]
        out.append(self._decode(row).encode("utf-8"))
      return np.asarray(out, dtype=object).reshape(a.shape[:-1])

    out = tf.numpy_function(py, [ids], tf.string, stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  def __eq__(self, other) -> bool:
    if not isinstance(other, HFVocabulary):
      return False
    return (self._tok.to_str() == other._tok.to_str()
            and self._add_special == other._add_special
            and self.extra_ids == other.extra_ids)

  def __hash__(self):
    return hash((self._json_path, self._add_special, self.extra_ids))

  def __repr__(self):
    return (f"HFVocabulary({self._json_path!r}, name={self.name!r}, "
            f"size={self.vocab_size}, "
            f"eos={self.eos_id})")
