"""seqio tasks, registered on import (idempotent: re-import or re-register
replaces a task of the same name).

Default tasks (byte vocabulary, need no files or downloads):
* `passkey_byte`, `multikey_byte`, `variable_tracking_byte`: the synthetic
  long-context tasks of `famjax.data.synthetic` as prefix-LM examples
  ("inputs" = the long prompt, "targets" = the answer + EOS). Unless a fixed
  `num_chars` is given, the prompt is generated to fill the "inputs" length
  the pipeline asks for, so one task serves every sequence length.
  Splits: "train" (unbounded, different examples for each data seed) and
  "validation" (a fixed set of `num_eval_examples`).
* `pylib_lm_byte`: language modelling over the Python standard library's
  top-level `*.py` files (always present offline), cut into chunks of the
  target length; files split by name hash, ~10% "validation".

The same families exist for any vocabulary: `register_for_vocabulary(vocab)`
registers `<family>_<vocabulary_name(vocab)>` for each family of
`TASK_FAMILIES` (`add_task_family` adds one). From gin, a task file picks a
model directory's own tokenizer:

    TASK_VOCABULARY = @model_vocabulary()
    model_vocabulary.model_dir = %LOAD_PARAMS_FROM
    TASK = @vocabulary_task()
    vocabulary_task.family = 'passkey'
    vocabulary_task.vocabulary = %TASK_VOCABULARY

(`vocabulary_task` registers the task and returns its name.)

Metrics: `exact_match` on decoded predictions, `target_log_likelihood` on
scores.

The evaluation suite for the byte vocabulary (`passkey_byte_2k`,
`ruler_byte`, ...; see `famjax.data.eval_tasks` and docs/evals.md) is
registered here too.
"""
from __future__ import annotations

import functools
import glob
import os
import zlib
from typing import Callable, Dict, Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

from famjax.data import synthetic
from famjax.data.vocab import get_vocabulary, gin_register, vocabulary_name
from famjax.errors import UserError

# Length of the "targets" feature for tasks with "inputs" (prefix LM): the
# pipeline gives "inputs" seq_len - TARGETS_LENGTH[name].
TARGETS_LENGTH: Dict[str, int] = {}
DEFAULT_NUM_EVAL_EXAMPLES = 256
SYNTHETIC_SHUFFLE_BUFFER = 16   # examples are i.i.d. already
LM_SHUFFLE_BUFFER = 512


# ------------------------------------------------------------------ metrics
def exact_match(targets, predictions):
  """Percentage of predictions equal to their target (whitespace-stripped)."""
  if not targets:
    return {"exact_match": 0.0}
  hits = [str(t).strip() == str(p).strip() for t, p in zip(targets, predictions)]
  return {"exact_match": 100.0 * float(np.mean(hits))}


def target_log_likelihood(targets, scores):
  """Mean log-likelihood of the target sequences (higher is better).

  scores: per example [2, n_targets] (famjax.evals): row 0 the per-token
  log-probabilities, summed here (NaN: padding of ragged tasks).
  """
  del targets
  def total(s):   # [2, n] (famjax.evals), [n] per-token, or a plain sum
    s = np.asarray(s, np.float64)
    return float(np.nansum(s[0] if s.ndim == 2 else s))
  totals = [total(s) for s in scores]
  return {"target_log_likelihood": float(np.mean(totals)) if totals else 0.0}


def strip_postprocessor(output, example=None, is_target=False):
  del example, is_target
  if isinstance(output, bytes):
    output = output.decode("utf-8", errors="replace")
  return output.strip() if isinstance(output, str) else output


# ------------------------------------------------------------ preprocessors
def chars_per_token(vocab: seqio.Vocabulary) -> float:
  """Characters of filler text per token of `vocab` (1.0 for bytes)."""
  if isinstance(vocab, seqio.ByteVocabulary):
    return 1.0
  text = "".join(synthetic.FILLER) * 20
  ids = vocab.encode(text)
  return len(text) / max(1, len(ids))


def _num_chars(num_chars, sequence_length, vocab):
  if num_chars is not None:
    return int(num_chars)
  if sequence_length and sequence_length.get("inputs"):
    cpt = chars_per_token(vocab)
    # Non-byte vocabularies: aim a little short; trim_inputs_left cuts the rest.
    return int(sequence_length["inputs"] * cpt * (1.0 if cpt == 1.0 else 0.97))
  return 2048


def generate_synthetic(dataset, sequence_length=None, output_features=None, *,
                       generator: Callable, num_chars: Optional[int] = None,
                       gen_kwargs: Optional[dict] = None):
  """{'index', 'seed', 'split'} -> {'inputs': str, 'targets': str}."""
  gen_kwargs = dict(gen_kwargs or {})
  vocab = output_features["inputs"].vocabulary
  n = _num_chars(num_chars, sequence_length, vocab)
  try:  # Fail here, with a clear message, rather than inside tf.data.
    generator(0, num_chars=n, **gen_kwargs)
  except ValueError as e:
    raise ValueError(
        f"synthetic task {getattr(generator, '__name__', generator)}: {e} "
        f"(sequence_length={dict(sequence_length or {})}); use a longer "
        "seq_len.") from e

  def gen(index, seed, split):
    ex = generator(int(index), num_chars=n, seed=int(seed),
                   split=split.decode(), **gen_kwargs)
    return ex["inputs"].encode(), ex["targets"].encode()

  def fn(ex):
    inputs, targets = tf.numpy_function(
        gen, [ex["index"], ex["seed"], ex["split"]], [tf.string, tf.string],
        stateful=False)
    inputs.set_shape([])
    targets.set_shape([])
    return {"inputs": inputs, "targets": targets}

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def trim_inputs_left(dataset, sequence_length=None, output_features=None):
  """Keep the LAST sequence_length['inputs'] tokens of 'inputs' (the question)."""
  del output_features
  if not sequence_length or not sequence_length.get("inputs"):
    return dataset
  n = sequence_length["inputs"]

  def fn(ex):
    ex = dict(ex)
    ex["inputs"] = ex["inputs"][-n:]
    return ex

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(dataset, sequence_length=None, output_features=None,
                 feature: str = "targets"):
  """Cut each token sequence into pieces of sequence_length[feature] tokens."""
  del output_features
  if not sequence_length or not sequence_length.get(feature):
    return dataset
  size = int(sequence_length[feature])

  def fn(ex):
    t = ex[feature]
    n = tf.size(t, out_type=tf.int64)
    num = (n + size - 1) // size
    lengths = tf.minimum(tf.constant(size, tf.int64),
                         n - tf.range(num, dtype=tf.int64) * size)
    return tf.data.Dataset.from_tensor_slices(
        {feature: tf.RaggedTensor.from_row_lengths(t, lengths)})

  return dataset.flat_map(fn)


# ---------------------------------------------------------------- registry
def _add(task: seqio.Task):
  if task.name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(task.name)
  seqio.TaskRegistry.add_provider(task.name, task)
  return task


def _synthetic_dataset_fn(num_eval_examples: int):
  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files
    if split == "train":
      ds = tf.data.Dataset.counter(0, 1, tf.int64)    # unbounded
      s = 0 if seed is None else int(seed)
    else:
      ds = tf.data.Dataset.range(num_eval_examples)   # a fixed set
      s = 0
    return ds.map(lambda i: {"index": i, "seed": tf.constant(s, tf.int64),
                             "split": tf.constant(split)})
  return dataset_fn


def register_synthetic_task(name: str, vocab, *, generator="passkey",
                            num_chars: Optional[int] = None,
                            num_eval_examples: int = DEFAULT_NUM_EVAL_EXAMPLES,
                            targets_length: Optional[int] = None,
                            **gen_kwargs) -> seqio.Task:
  """Register a synthetic long-context task (prefix LM) under `name`.

  vocab: a seqio.Vocabulary or a name/path for `get_vocabulary`.
  generator: a key of `famjax.data.synthetic.GENERATORS` or a callable
    `(index, *, num_chars, seed, split, **gen_kwargs) -> {inputs, targets}`.
  num_chars: fixed prompt length in characters; None fills the "inputs"
    length of the requested sequence length (in tokens of `vocab`).
  targets_length: tokens reserved for the answer + EOS (default: enough for
    the generator's answers).
  """
  if isinstance(vocab, str):
    vocab = get_vocabulary(vocab)
  gen = synthetic.GENERATORS[generator] if isinstance(generator, str) else generator
  if targets_length is None:
    sample = [gen(i, num_chars=100_000, split="validation", **gen_kwargs)["targets"]
              for i in range(8)]
    targets_length = max(len(vocab.encode(t)) for t in sample) + 3
  TARGETS_LENGTH[name] = int(targets_length)
  task = seqio.Task(
      name,
      source=seqio.FunctionDataSource(
          _synthetic_dataset_fn(num_eval_examples),
          splits=("train", "validation")),
      preprocessors=[
          functools.partial(generate_synthetic, generator=gen,
                            num_chars=num_chars, gen_kwargs=gen_kwargs),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos,
          trim_inputs_left,
      ],
      output_features={
          "inputs": seqio.Feature(vocab, add_eos=False),
          "targets": seqio.Feature(vocab, add_eos=True),
      },
      postprocess_fn=strip_postprocessor,
      metric_fns=[exact_match, target_log_likelihood],
      shuffle_buffer_size=SYNTHETIC_SHUFFLE_BUFFER,
  )
  return _add(task)


def register_passkey_task(name: str, vocab, *, num_chars: Optional[int] = None,
                          num_eval_examples: int = DEFAULT_NUM_EVAL_EXAMPLES,
                          key_digits: int = 5) -> seqio.Task:
  """PassKey retrieval task (see `register_synthetic_task`)."""
  return register_synthetic_task(
      name, vocab, generator="passkey", num_chars=num_chars,
      num_eval_examples=num_eval_examples, key_digits=key_digits)


def pylib_files(split: str):
  """Sorted top-level *.py files of the standard library in `split`."""
  root = os.path.dirname(os.__file__)
  files = sorted(glob.glob(os.path.join(root, "*.py")))
  is_val = [zlib.crc32(os.path.basename(f).encode()) % 10 == 0 for f in files]
  if split == "validation":
    return [f for f, v in zip(files, is_val) if v]
  if split == "train":
    return [f for f, v in zip(files, is_val) if not v]
  raise ValueError(f"unknown split {split!r}")


def register_pylib_lm_task(name: str, vocab) -> seqio.Task:
  """Language modelling over standard-library source files."""
  if isinstance(vocab, str):
    vocab = get_vocabulary(vocab)

  def dataset_fn(split, shuffle_files, seed=None):
    files = pylib_files(split)
    if not files:
      raise ValueError(f"no standard-library *.py files found for {split!r} "
                       f"under {os.path.dirname(os.__file__)}")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
      ds = ds.shuffle(len(files), seed=seed)
    return ds.map(lambda f: {"text": tf.io.read_file(f)})

  task = seqio.Task(
      name,
      source=seqio.FunctionDataSource(dataset_fn, splits=("train", "validation")),
      preprocessors=[
          functools.partial(seqio.preprocessors.rekey,
                            key_map={"targets": "text"}),
          functools.partial(seqio.preprocessors.tokenize,
                            copy_pretokenized=False),
          seqio.preprocessors.append_eos,
          split_tokens,
      ],
      output_features={"targets": seqio.Feature(vocab, add_eos=True)},
      metric_fns=[],
      shuffle_buffer_size=LM_SHUFFLE_BUFFER,
  )
  return _add(task)


# ------------------------------------------------- families x vocabularies
# family -> builder(task_name, vocabulary) registering one seqio task.
TaskBuilder = Callable[[str, seqio.Vocabulary], seqio.Task]
TASK_FAMILIES: Dict[str, TaskBuilder] = {}


def add_task_family(family: str, builder: TaskBuilder) -> None:
  """Make `family` buildable for every vocabulary (`<family>_<vocab name>`)."""
  TASK_FAMILIES[family] = builder


add_task_family("passkey", register_passkey_task)
add_task_family("multikey", functools.partial(register_synthetic_task,
                                              generator="multikey"))
add_task_family("variable_tracking", functools.partial(
    register_synthetic_task, generator="variable_tracking"))
add_task_family("pylib_lm", register_pylib_lm_task)


def task_name(family: str, vocab: seqio.Vocabulary) -> str:
  return f"{family}_{vocabulary_name(vocab)}"


def register_for_vocabulary(vocab, families=None) -> Dict[str, str]:
  """Register `<family>_<vocabulary_name(vocab)>` for each family (default:
  all of TASK_FAMILIES); returns {family: task name}.

  vocab: a seqio.Vocabulary or a name/path for `get_vocabulary`.
  """
  if isinstance(vocab, str):
    vocab = get_vocabulary(vocab)
  families = list(TASK_FAMILIES) if families is None else list(families)
  unknown = [f for f in families if f not in TASK_FAMILIES]
  if unknown:
    raise UserError(f"unknown task families {unknown}; known: "
                    f"{sorted(TASK_FAMILIES)}.")
  names = {}
  for family in families:   # (re-)registering replaces a task of that name
    names[family] = task_name(family, vocab)
    TASK_FAMILIES[family](names[family], vocab)
  return names


@gin_register
def vocabulary_task(family: str = gin.REQUIRED,
                    vocabulary=gin.REQUIRED) -> str:
  """Register the `family` task for `vocabulary` and return its name (gin:
  `TASK = @vocabulary_task()`)."""
  return register_for_vocabulary(vocabulary, [family])[family]


def register_defaults():
  register_for_vocabulary(get_vocabulary("byte"))
  # The long-context eval suite (famjax.data.eval_tasks; docs/evals.md).
  from famjax.data import eval_tasks
  eval_tasks.register_eval_suite(get_vocabulary("byte"), "byte")


register_defaults()
