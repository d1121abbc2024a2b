"""The long-context evaluation suite as seqio tasks, for any vocabulary.

`register_eval_suite(vocab, vocab_name, lengths)` registers, lazily (no
example is generated until a dataset is read), one task per family and
length named `<family>_<vocab_name>_<length>` (length 2048 -> "2k"), one
mixture per family `<family>_<vocab_name>` over the lengths, and the suites
`ruler_<vocab_name>` and `babilong_<vocab_name>`. The byte vocabulary's
suite (`..._byte_...`) is registered on `import famjax.data.tasks`.

Lengths count tokens of the vocabulary: a task of length L has prompts
("inputs") of at most L - targets_length tokens, so prompt and answer fit
in L positions (`famjax.data.eval_info.TASK_INFO` holds the numbers). LM
tasks ("targets" only) are chunks of exactly L tokens of one book.

Every example is a pure function of (seed, family, index): split
"validation" has `num_examples` of them.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from famjax.data import babi, books, eval_info, eval_metrics, needles
from famjax.data.vocab import get_vocabulary

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_NUM_EXAMPLES = 50
CARRY_LENGTHS = tuple(128 * 2 ** i for i in range(7))    # 128 ... 8192


@dataclasses.dataclass(frozen=True)
class Family:
  """A task family: generator(rng, ctx, **kw) -> needles.Example."""
  generator: Callable
  metric: Callable
  answer_chars: int             # longest answer, characters
  uses_depth: bool = False      # example i at depths[i % len(depths)]
  needs_books: bool = False
  kwargs: tuple = ()
  byte_only: bool = False       # laid out in byte positions
  lengths: tuple = ()           # its own lengths instead of the suite's
  num_examples: int = 0         # its own default count (0: the suite's)


FAMILIES: Dict[str, Family] = {
    "passkey": Family(needles.passkey, eval_metrics.needle_accuracy, 5,
                      uses_depth=True),
    # One-digit keys 1-9 (the from-scratch byte models of docs/results.md).
    "passkey1": Family(needles.passkey, eval_metrics.needle_accuracy, 1,
                       uses_depth=True, kwargs=(("key_digits", 1),)),
    # One digit carried across blocks of 16 bytes (benchmarks/digit_carry.py
    # --vocab byte trains on 128-byte sequences: lengths 1x to 64x).
    "digit_carry": Family(needles.digit_carry,
                          eval_metrics.first_char_accuracy, 1,
                          uses_depth=True, byte_only=True,
                          lengths=CARRY_LENGTHS, num_examples=100),
    "niah_single_noise": Family(needles.niah, eval_metrics.needle_accuracy,
                                7, uses_depth=True),
    "niah_single_book": Family(needles.niah, eval_metrics.needle_accuracy,
                               7, uses_depth=True, needs_books=True,
                               kwargs=(("haystack", "book"),)),
    "niah_multikey": Family(needles.niah, eval_metrics.needle_accuracy, 7,
                            uses_depth=True, kwargs=(("num_keys", 4),)),
    "niah_multivalue": Family(needles.niah, eval_metrics.partial_credit, 34,
                              uses_depth=True, kwargs=(("num_values", 4),)),
    "niah_multiquery": Family(needles.niah, eval_metrics.partial_credit, 34,
                              uses_depth=True,
                              kwargs=(("num_keys", 4), ("num_queries", 4))),
    "vt": Family(needles.variable_tracking, eval_metrics.partial_credit, 29),
    "cwe": Family(needles.common_words, eval_metrics.partial_credit, 78),
    "fwe": Family(needles.frequent_words, eval_metrics.partial_credit, 22),
    "babilong_qa1": Family(babi.babilong, eval_metrics.qa_metrics, 8,
                           needs_books=True, kwargs=(("task", "qa1"),)),
    "babilong_qa2": Family(babi.babilong, eval_metrics.qa_metrics, 8,
                           needs_books=True, kwargs=(("task", "qa2"),)),
    "babilong_qa3": Family(babi.babilong, eval_metrics.qa_metrics, 8,
                           needs_books=True, kwargs=(("task", "qa3"),)),
}
LM_FAMILIES = ("book_lm",)
SUITES = {
    "ruler": ("niah_single_noise", "niah_single_book", "niah_multikey",
              "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe"),
    "babilong": ("babilong_qa1", "babilong_qa2", "babilong_qa3"),
}
_VALIDATION = "validation"


def token_counter(vocab: seqio.Vocabulary) -> Callable[[str], int]:
  if isinstance(vocab, seqio.ByteVocabulary):
    return lambda s: len(s.encode("utf-8"))
  return lambda s: len(vocab.encode(s))


def _encode(vocab, text: str) -> np.ndarray:
  return np.asarray(vocab.encode(text), dtype=np.int32)


def targets_length(vocab, family: str) -> int:
  """Target tokens reserved (answer + EOS): an answer of c ASCII characters
  has at most c tokens (+1 for a SentencePiece word-start piece)."""
  extra = 0 if isinstance(vocab, seqio.ByteVocabulary) else 1
  return FAMILIES[family].answer_chars + extra + 1


def make_example(family: str, index: int, *, vocab, length: int,
                 seed: int = 0, depths: Sequence[float] = DEFAULT_DEPTHS,
                 books_path: Optional[str] = None) -> needles.Example:
  """Example `index` of `family` at `length` tokens of `vocab` (as text)."""
  fam = FAMILIES[family]
  kw = dict(fam.kwargs)
  if fam.uses_depth:
    kw["depth"] = float(depths[index % len(depths)])
  ctx = needles.Context(
      budget=length - targets_length(vocab, family),
      count=token_counter(vocab),
      book_sentences=(lambda: books.sentences(books_path))
      if fam.needs_books else None)
  rng = needles.example_rng(index, seed, family)
  return fam.generator(rng, ctx, **kw)


def _dataset_fn(num_examples: int, needs_books: bool, books_path):
  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    if split != _VALIDATION:
      raise ValueError(f"eval tasks have only the {_VALIDATION!r} split, "
                       f"not {split!r}")
    if needs_books:
      books.check_books_dir(books_path)  # a clear error before tf.data
    return tf.data.Dataset.range(num_examples).map(lambda i: {"index": i})
  return dataset_fn


def _generate(dataset, sequence_length=None, output_features=None, *,
              family, vocab, length, seed, depths, books_path):
  """{"index"} -> the example's tokens, text and metadata features."""
  del sequence_length, output_features

  def gen(index):
    ex = make_example(family, int(index), vocab=vocab, length=length,
                      seed=seed, depths=depths,
                      books_path=books_path or books.books_dir())
    ids = _encode(vocab, ex.inputs)
    return (ids, _encode(vocab, ex.targets), ex.inputs.encode(),
            ex.targets.encode(), "\n".join(ex.answers).encode(),
            np.float32(ex.depth), np.int32(len(ids)))

  types = [tf.int32, tf.int32, tf.string, tf.string, tf.string, tf.float32,
           tf.int32]
  names = ["inputs", "targets", "inputs_pretokenized", "targets_pretokenized",
           "answers", "depth", "context_length"]

  def fn(ex):
    out = tf.numpy_function(gen, [ex["index"]], types, stateful=False)
    for t, shape in zip(out, [[None], [None], [], [], [], [], []]):
      t.set_shape(shape)
    feats = dict(zip(names, out))
    feats["length"] = tf.constant(length, tf.int32)
    feats["index"] = ex["index"]
    return feats

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _add(task: seqio.Task) -> seqio.Task:
  if task.name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(task.name)
  seqio.TaskRegistry.add_provider(task.name, task)
  return task


def add_mixture(name: str, task_names: Sequence[str]) -> str:
  """Register (or replace) a mixture of equal rates; returns its name, with
  "_all" appended when a Task already has the name (the training task
  `passkey_byte`: its eval mixture is `passkey_byte_all`)."""
  if name in seqio.TaskRegistry.names():
    name += "_all"
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(task_names), default_rate=1.0)
  eval_info.MIXTURE_TASKS[name] = list(task_names)
  return name


def register_task(family: str, vocab, vocab_name: str, length: int, *,
                  num_examples: int = DEFAULT_NUM_EXAMPLES, seed: int = 0,
                  depths: Sequence[float] = DEFAULT_DEPTHS,
                  books_path: Optional[str] = None) -> seqio.Task:
  """Register one prefix-LM eval task (`<family>_<vocab_name>_<length>`)."""
  fam = FAMILIES[family]
  if num_examples == DEFAULT_NUM_EXAMPLES and fam.num_examples:
    num_examples = fam.num_examples
  name = eval_info.task_name(family, vocab_name, length)
  t_len = targets_length(vocab, family)
  if length <= t_len:
    raise ValueError(f"length {length} is too short for {family}")
  task = seqio.Task(
      name,
      source=seqio.FunctionDataSource(
          _dataset_fn(num_examples, fam.needs_books, books_path),
          splits=(_VALIDATION,)),
      preprocessors=[
          functools.partial(_generate, family=family, vocab=vocab,
                            length=length, seed=seed, depths=tuple(depths),
                            books_path=books_path),
          seqio.preprocessors.append_eos,
      ],
      output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                       "targets": seqio.Feature(vocab, add_eos=True)},
      postprocess_fn=eval_metrics.postprocess,
      metric_fns=[fam.metric])
  eval_info.register_info(name, family=family, vocab=vocab_name,
                          length=length, kind="predict",
                          inputs_length=length - t_len,
                          targets_length=t_len,
                          num_examples=num_examples, seed=seed,
                          needs_books=fam.needs_books)
  return _add(task)


def register_eval_suite(vocab: Union[str, seqio.Vocabulary], vocab_name: str,
                        lengths: Sequence[int] = DEFAULT_LENGTHS, *,
                        families: Optional[Sequence[str]] = None,
                        num_examples: int = DEFAULT_NUM_EXAMPLES,
                        seed: int = 0,
                        depths: Sequence[float] = DEFAULT_DEPTHS,
                        books_path: Optional[str] = None,
                        tfds: bool = True) -> List[str]:
  """Register the whole suite for `vocab` (a seqio.Vocabulary, "byte", or a
  model directory / tokenizer path); returns the task names.

  vocab_name: the short name in task names (e.g. "byte", "smollm2").
  lengths: context lengths in tokens of `vocab`.
  families: a subset of the families (default: all, incl. LM and TFDS).
  """
  from famjax.data import lm_tasks, tfds_tasks
  if isinstance(vocab, str):
    vocab = get_vocabulary(vocab)
  if not re.fullmatch(r"[A-Za-z0-9.-]+", vocab_name or ""):
    raise ValueError(f"vocab_name must be a short name without '_', got "
                     f"{vocab_name!r}")
  known = list(FAMILIES) + list(LM_FAMILIES) + list(tfds_tasks.FAMILIES)
  families = list(families) if families is not None else [
      f for f in known if tfds or f not in tfds_tasks.FAMILIES]
  unknown = [f for f in families if f not in known]
  if unknown:
    raise ValueError(f"unknown task families {unknown}; known: {known}")
  names: Dict[str, List[str]] = {}
  byte = isinstance(vocab, seqio.ByteVocabulary)
  for family in families:
    fam = FAMILIES.get(family)
    if fam is not None and fam.byte_only and not byte:
      continue
    for length in family_lengths(family, lengths):
      if family in FAMILIES:
        t = register_task(family, vocab, vocab_name, length,
                          num_examples=num_examples, seed=seed,
                          depths=depths, books_path=books_path)
      elif family in LM_FAMILIES:
        t = lm_tasks.register_book_lm_task(
            vocab, vocab_name, length, num_examples=num_examples, seed=seed,
            books_path=books_path)
      elif tfds_tasks.fits(family, length):
        t = tfds_tasks.register_tfds_task(family, vocab, vocab_name, length)
      else:
        continue  # shorter than the answer tokens SCROLLS reserves
      names.setdefault(family, []).append(t.name)
  for family, tasks in names.items():
    add_mixture(f"{family}_{vocab_name}", tasks)
  for suite, members in SUITES.items():
    tasks = [t for f in members for t in names.get(f, [])]
    if tasks:
      add_mixture(f"{suite}_{vocab_name}", tasks)
  return [t for ts in names.values() for t in ts]


def family_lengths(family: str, lengths: Sequence[int]) -> List[int]:
  """The lengths `family` is registered at: its own (Family.lengths) plus
  any asked for beyond the default ones, else `lengths`."""
  own = FAMILIES[family].lengths if family in FAMILIES else ()
  asked = {int(n) for n in lengths}
  if own:
    asked = set(own) | (asked - set(DEFAULT_LENGTHS))
  return sorted(asked)


def parse_task_name(name: str):
  """'passkey_smollm2_4k' -> ('passkey', 'smollm2', 4096); a mixture name
  'ruler_smollm2' -> ('ruler', 'smollm2', None); None if not suite-shaped."""
  from famjax.data import tfds_tasks
  known = (list(FAMILIES) + list(LM_FAMILIES) + list(tfds_tasks.FAMILIES)
           + list(SUITES))
  for family in sorted(known, key=len, reverse=True):
    if not name.startswith(family + "_"):
      continue
    rest = name[len(family) + 1:].split("_")
    if len(rest) == 1 and rest[0]:
      return family, rest[0], None
    if len(rest) == 2 and rest[0]:
      try:
        return family, rest[0], eval_info.parse_length(rest[1])
      except ValueError:
        return None
  return None


def ensure_registered(name: str, vocab: Union[str, seqio.Vocabulary],
                      lengths: Sequence[int] = DEFAULT_LENGTHS) -> bool:
  """Register the suite for `vocab` (e.g. a model directory) under the
  vocabulary name that task/mixture `name` carries, when `name` is not
  registered yet; adds the length named in `name` to `lengths`. Returns
  True if it registered anything.

  `ensure_registered("passkey_smollm2_16k", model_dir)` registers
  `..._smollm2_...` tasks with the model's own tokenizer;
  `ensure_registered("digit_carry_byte_64k", "byte")` registers that one
  task beyond the family's own lengths.
  """
  if name in seqio.TaskRegistry.names() or \
      name in seqio.MixtureRegistry.names():
    return False
  parsed = parse_task_name(name)
  if parsed is None:
    return False
  family, vocab_name, length = parsed
  fam = FAMILIES.get(family)
  if length and fam is not None and fam.lengths:
    # a family with its own lengths (digit_carry), asked at another one:
    # that one task, its family's mixture unchanged
    if isinstance(vocab, str):
      vocab = get_vocabulary(vocab)
    if fam.byte_only and not isinstance(vocab, seqio.ByteVocabulary):
      return False
    register_task(family, vocab, vocab_name, length)
    return True
  lengths = sorted(set(lengths) | ({length} if length else set()))
  register_eval_suite(vocab, vocab_name, lengths)
  return True


def main(argv=None) -> int:
  """`python -m famjax.data.eval_tasks TASK [--index I]`: print an example."""
  import argparse
  import sys
  from famjax.data import tasks  # noqa: F401  (the byte suite)
  ap = argparse.ArgumentParser(prog="python -m famjax.data.eval_tasks",
                               description=main.__doc__)
  ap.add_argument("task", help="a registered eval task, e.g. passkey_byte_1k")
  ap.add_argument("--index", type=int, default=0)
  args = ap.parse_args(argv)
  if args.task not in eval_info.TASK_INFO:
    import difflib
    close = difflib.get_close_matches(args.task, sorted(eval_info.TASK_INFO),
                                      n=6, cutoff=0.5)
    print(f"error: {args.task!r} is not a registered eval task"
          + (f"; close matches: {', '.join(close)}" if close else ""),
          file=sys.stderr)
    return 2
  task = seqio.get_mixture_or_task(args.task)
  ds = task.get_dataset(None, split=_VALIDATION, shuffle=False)
  for i, ex in enumerate(ds.as_numpy_iterator()):
    if i == args.index:
      break
  vocab = task.output_features["targets"].vocabulary
  for key in ("inputs_pretokenized", "targets_pretokenized"):
    if key in ex:
      print(f"--- {key[:-len('_pretokenized')]}:\n{ex[key].decode()}")
  meta = {k: ex[k].item() for k in ("depth", "length", "context_length")
          if k in ex}
  print(f"--- {meta}, target tokens: "
        f"{len(ex['targets'])} ({vocab.__class__.__name__})")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
