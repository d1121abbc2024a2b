"""Long-document language modelling over the prepared books (`book_lm`).

Example i of `book_lm_<vocab>_<length>` is a chunk of exactly `length`
tokens of one book (books taken in turn, the start a random paragraph
chosen from (seed, i)). Scored, not generated: the metrics
(`eval_metrics.lm_position_metrics`) report perplexity and next-token
accuracy per position bucket, which shows whether a model keeps using far
context.
"""
from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import seqio
import tensorflow as tf

from famjax.data import books, eval_info, eval_metrics, needles


def book_chunk(index: int, *, vocab, length: int, seed: int = 0,
               books_path: Optional[str] = None):
  """(book id, token ids [length]) of example `index`."""
  all_books = books.load_books(books_path)
  book_id, text = all_books[index % len(all_books)]
  rng = needles.example_rng(index, seed, "book_lm")
  sample = text[:20000]
  cpt = len(sample) / max(1, len(vocab.encode(sample)))
  need = int(length * cpt * 1.2) + 64
  start = int(rng.randint(0, max(1, len(text) - need)))
  para = text.find("\n\n", start)
  start = para + 2 if 0 <= para < start + need // 4 else start
  span = need
  while True:
    ids = vocab.encode(text[start:start + span])
    if len(ids) > length or start + span >= len(text):
      break
    span *= 2
  if len(ids) < length:
    start, ids = 0, vocab.encode(text)
    if len(ids) < length:
      raise ValueError(f"book {book_id} has {len(ids)} tokens, fewer than "
                       f"the {length} of a book_lm chunk; use a shorter "
                       "length")
    ids = ids[:length]
  return book_id, np.asarray(ids[:length], np.int32)


def _generate(dataset, sequence_length=None, output_features=None, *,
              vocab, length, seed, books_path):
  del sequence_length, output_features

  def gen(index):
    path = books_path or books.books_dir()
    book_id, ids = book_chunk(int(index), vocab=vocab, length=length,
                              seed=seed, books_path=path)
    return ids, vocab.decode(ids.tolist()).encode(), book_id.encode()

  def fn(ex):
    ids, text, book = tf.numpy_function(
        gen, [ex["index"]], [tf.int32, tf.string, tf.string], stateful=False)
    ids.set_shape([None])
    text.set_shape([])
    book.set_shape([])
    return {"targets": ids, "targets_pretokenized": text, "book": book,
            "index": ex["index"], "length": tf.constant(length, tf.int32),
            "context_length": tf.constant(length, tf.int32)}

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def register_book_lm_task(vocab, vocab_name: str, length: int, *,
                          num_examples: int = 50, seed: int = 0,
                          books_path: Optional[str] = None) -> seqio.Task:
  """Register `book_lm_<vocab_name>_<length>` (a "targets"-only task)."""
  from famjax.data import eval_tasks
  name = eval_info.task_name("book_lm", vocab_name, length)
  task = seqio.Task(
      name,
      source=seqio.FunctionDataSource(
          eval_tasks._dataset_fn(num_examples, True, books_path),  # pylint: disable=protected-access
          splits=("validation",)),
      preprocessors=[functools.partial(
          _generate, vocab=vocab, length=length, seed=seed,
          books_path=books_path)],
      output_features={"targets": seqio.Feature(vocab, add_eos=False)},
      postprocess_fn=eval_metrics.postprocess,
      metric_fns=[eval_metrics.lm_position_metrics])
  eval_info.register_info(name, family="book_lm", vocab=vocab_name,
                          length=length, kind="score", targets_length=length,
                          num_examples=num_examples, seed=seed,
                          needs_books=True)
  return eval_tasks._add(task)  # pylint: disable=protected-access
