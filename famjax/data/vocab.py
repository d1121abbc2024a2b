"""Vocabularies by name or path (all of them `seqio.Vocabulary` objects), a
model directory's own vocabulary, and the check that a task's vocabulary is
the model's.

    get_vocabulary("byte" | PATH)         -> a seqio vocabulary
    model_vocabulary(model_dir, name=None) -> the directory's tokenizer
                                             (gin: TASK_VOCABULARY = @model_vocabulary())
    vocabulary_name(vocab)                -> "byte", or a tokenizer's short name
    check_task_vocabulary(task, model)    -> UserError unless they match

A famjax model directory keeps its tokenizer under `extra/tokenizer/`
(`tokenizer.json`, run by `tokenizers`, or a SentencePiece
`tokenizer.model`); `famjax convert`, exports and fine-tuning carry it along.
A directory without one is a byte model: its vocab_size must be 259.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Optional, Union

import gin
import seqio

from famjax.errors import UserError

BYTE_VOCAB_SIZE = 259   # seqio.ByteVocabulary: pad 0, eos 1, unk 2, 256 bytes
TOKENIZER_DIR = ("extra", "tokenizer")


def gin_register(fn):
  """Make `fn` usable as `@name()` in gin files, leaving direct calls alone;
  a module imported again (importlib.reload) keeps the first registration."""
  try:
    gin.register(fn)
  except ValueError:       # already registered under this name
    pass
  return fn


@functools.lru_cache(maxsize=None)
def get_vocabulary(name_or_path: str) -> seqio.Vocabulary:
  """A seqio vocabulary.

  * "byte": `seqio.ByteVocabulary()` (259 ids: pad 0, eos 1, unk 2, bytes).
  * a SentencePiece `.model` file: `seqio.SentencePieceVocabulary`.
  * a famjax model directory holding `extra/tokenizer/`, a `tokenizer.json`
    file, or a Hugging Face directory: the tokenizer (see `model_vocabulary`).
  """
  if not isinstance(name_or_path, str) or not name_or_path:
    raise UserError(f"vocabulary must be 'byte' or a path, got {name_or_path!r}")
  if name_or_path == "byte":
    return seqio.ByteVocabulary()
  path = os.path.expanduser(name_or_path)
  if os.path.isfile(path) and path.endswith(".model"):
    return seqio.SentencePieceVocabulary(path)
  if has_hf_tokenizer(path):
    from famjax.convert.vocab import HFVocabulary
    return HFVocabulary(path, name=default_name(path))
  if _sentencepiece_file(path):
    return seqio.SentencePieceVocabulary(_sentencepiece_file(path))
  if not os.path.exists(path):
    raise UserError(
        f"vocabulary {name_or_path!r} is neither 'byte' nor an existing path "
        "(a SentencePiece .model file, a tokenizer.json, or a famjax model "
        "directory with extra/tokenizer/).")
  raise UserError(
      f"vocabulary {name_or_path!r} is not a SentencePiece .model file, a "
      "tokenizer.json, or a famjax model directory with extra/tokenizer/.")


def has_hf_tokenizer(path: str) -> bool:
  """True for a tokenizer.json file or a directory holding one (an HF
  checkpoint, or a famjax model directory at extra/tokenizer/)."""
  if os.path.isfile(path):
    return path.endswith(".json")
  return any(os.path.isfile(os.path.join(path, *p)) for p in
             (("tokenizer.json",), TOKENIZER_DIR + ("tokenizer.json",)))


def _sentencepiece_file(path: str) -> Optional[str]:
  f = os.path.join(path, *TOKENIZER_DIR, "tokenizer.model")
  return f if os.path.isfile(f) else None


def has_tokenizer(model_dir: str) -> bool:
  """True if the famjax model directory carries its own tokenizer."""
  return bool(os.path.isfile(os.path.join(model_dir, *TOKENIZER_DIR,
                                          "tokenizer.json"))
              or _sentencepiece_file(model_dir))


def default_name(path: str) -> str:
  """A short vocabulary name from a model directory's name (`export/` and
  `extra/tokenizer/` are skipped): lower case, [a-z0-9_]."""
  path = os.path.abspath(os.path.expanduser(path))
  if path.endswith(".json"):
    path = os.path.dirname(path)
  parts = [p for p in path.split(os.sep) if p]
  while parts and parts[-1] in ("tokenizer", "extra", "export"):
    parts.pop()
  name = re.sub(r"[^a-z0-9]+", "_", (parts[-1] if parts else "model").lower())
  return name.strip("_") or "model"


@gin_register
def model_vocabulary(model_dir: str = gin.REQUIRED,
                     name: Optional[str] = None) -> seqio.Vocabulary:
  """The vocabulary of a famjax model directory: its own tokenizer
  (extra/tokenizer/tokenizer.json, else tokenizer.model), or bytes for a
  model without one whose vocab_size is 259.

  name: the short name tasks built for it carry (`passkey_<name>`); default
  the directory's name (see `default_name`).
  """
  if not isinstance(model_dir, str) or not os.path.isdir(model_dir):
    raise UserError(f"model_vocabulary: {model_dir!r} is not a famjax model "
                    "directory (set model_vocabulary.model_dir, e.g. to "
                    "%LOAD_PARAMS_FROM).")
  name = name or default_name(model_dir)
  if os.path.isfile(os.path.join(model_dir, *TOKENIZER_DIR, "tokenizer.json")):
    return _cached_hf(os.path.abspath(model_dir), name)
  sp = _sentencepiece_file(model_dir)
  if sp:
    return seqio.SentencePieceVocabulary(sp)
  size = _model_vocab_size(model_dir)
  if size == BYTE_VOCAB_SIZE:
    return get_vocabulary("byte")
  raise UserError(
      f"model {model_dir} has no tokenizer (extra/tokenizer/) and vocab_size "
      f"{size}, not the byte vocabulary's {BYTE_VOCAB_SIZE}: convert the "
      "checkpoint again with its tokenizer (famjax convert, without "
      "--no_tokenizer).")


@functools.lru_cache(maxsize=None)
def _cached_hf(model_dir: str, name: str):
  from famjax.convert.vocab import HFVocabulary
  return HFVocabulary(model_dir, name=name)


def _model_vocab_size(model_dir: str) -> int:
  from famjax.params_io import load_config
  try:
    return load_config(model_dir).vocab_size
  except (FileNotFoundError, ValueError) as e:
    raise UserError(str(e)) from None


def vocabulary_name(vocab: seqio.Vocabulary) -> str:
  """"byte" for bytes, else the tokenizer's short name."""
  if isinstance(vocab, seqio.ByteVocabulary):
    return "byte"
  name = getattr(vocab, "name", None)
  if name:
    return name
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    return default_name(os.path.dirname(vocab.sentencepiece_model_file))
  return type(vocab).__name__.lower()


def describe(vocab: seqio.Vocabulary) -> str:
  """'the byte vocabulary (259 ids)' / 'the smollm2 tokenizer (49152 ids)'."""
  if isinstance(vocab, seqio.ByteVocabulary):
    return f"the byte vocabulary ({vocab.vocab_size} ids)"
  return f"the {vocabulary_name(vocab)} tokenizer ({vocab.vocab_size} ids)"


def same_vocabulary(a: seqio.Vocabulary, b: seqio.Vocabulary) -> bool:
  """Same ids for the same text (names aside)."""
  if isinstance(a, seqio.ByteVocabulary) or isinstance(b, seqio.ByteVocabulary):
    return (isinstance(a, seqio.ByteVocabulary)
            and isinstance(b, seqio.ByteVocabulary)
            and a.extra_ids == b.extra_ids)
  return a == b


def task_vocabulary(task: Union[str, seqio.Task, seqio.Vocabulary]
                    ) -> Optional[seqio.Vocabulary]:
  """The vocabulary of a seqio task (name or object); None for a name
  seqio does not know (a custom data_fn's)."""
  if isinstance(task, seqio.Vocabulary):
    return task
  if isinstance(task, str):
    import famjax.data.tasks  # noqa: F401  (registers the default tasks)
    if task not in seqio.TaskRegistry.names():
      return None
    task = seqio.TaskRegistry.get(task)
  return task.output_features["targets"].vocabulary


def check_task_vocabulary(task, model) -> Optional[seqio.Vocabulary]:
  """Refuse a task whose vocabulary is not the model's (UserError, one line
  naming both); returns the task's vocabulary (None: unknown task name).

  task: a seqio task name or object, or a seqio.Vocabulary.
  model: a famjax model directory (its tokenizer decides), a ModelConfig
    (no tokenizer known: the task's ids must fit its vocab_size), or None.
  """
  vocab = task_vocabulary(task)
  if vocab is None or model is None:
    return vocab
  what = (f"task {task}" if isinstance(task, str) else
          f"task {task.name}" if isinstance(task, seqio.Task) else "the input")
  if not isinstance(model, str):
    size = int(model.vocab_size)
    if vocab.vocab_size > size:
      raise UserError(
          f"{what} uses {describe(vocab)} but the model has vocab_size {size}: "
          "use a task in the model's vocabulary or a larger "
          "ModelConfig.vocab_size.")
    return vocab
  if has_tokenizer(model):
    own = model_vocabulary(model)
    if not same_vocabulary(vocab, own):
      raise UserError(
          f"{what} uses {describe(vocab)} but model {model} has its own "
          f"tokenizer ({vocabulary_name(own)}, {own.vocab_size} ids): use a "
          "task in the model's tokenizer, e.g. gin/tasks/passkey_model.gin or "
          "gin/tasks/pylib_lm_model.gin (TASK_VOCABULARY = "
          "@model_vocabulary()).")
    return vocab
  size = _model_vocab_size(model)
  if not isinstance(vocab, seqio.ByteVocabulary) or size != BYTE_VOCAB_SIZE:
    raise UserError(
        f"{what} uses {describe(vocab)} but model {model} has no tokenizer "
        f"(extra/tokenizer/) and vocab_size {size}"
        + ("" if size != BYTE_VOCAB_SIZE else ", a byte model")
        + ": use a byte task (gin/tasks/*_byte.gin) for a byte model, or "
        "convert the checkpoint again with its tokenizer.")
  return vocab
