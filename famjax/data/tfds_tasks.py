"""PG-19 and SCROLLS (Qasper, QuALITY, NarrativeQA) against TFDS.

For users who have the data prepared in TFDS (`tfds build pg19`, `tfds
build scrolls/qasper`, ... with downloads allowed, or a data_dir holding
them): nothing is read when the tasks are registered.

* `pg19_lm_<vocab>_<length>`: the first `length` tokens of each book
  ("book_text"), scored like `book_lm` (perplexity per position bucket).
* `scrolls_<name>_<vocab>_<length>`: the SCROLLS input ("question\\n\\n
  document") rearranged for a decoder: the document, cut to fit, then the
  question; the target is the reference "output". QA metrics (exact match,
  F1).
"""
from __future__ import annotations

import functools
from typing import Dict, Tuple

import numpy as np
import seqio
import tensorflow as tf

from famjax.data import eval_info, eval_metrics

# family -> (TFDS name, kind, target tokens reserved)
FAMILIES: Dict[str, Tuple[str, str, int]] = {
    "pg19_lm": ("pg19:0.1.1", "score", 0),
    "scrolls_qasper": ("scrolls/qasper:1.0.0", "predict", 128),
    "scrolls_quality": ("scrolls/quality:1.0.0", "predict", 64),
    "scrolls_narrative_qa": ("scrolls/narrative_qa:1.0.0", "predict", 64),
}
SPLITS = ("validation", "test")


def split_scrolls_input(text: str) -> Tuple[str, str]:
  """(question, document) of a SCROLLS input (question first)."""
  q, sep, doc = text.partition("\n\n")
  return (q.strip(), doc) if sep else ("", text)


def _scrolls(dataset, sequence_length=None, output_features=None, *,
             vocab, inputs_length, targets_length, length):
  del sequence_length, output_features

  def gen(text, output):
    question, doc = split_scrolls_input(text.decode("utf-8", "replace"))
    tail = f"\n\nQuestion: {question}\nAnswer: "
    tail_ids = list(vocab.encode(tail))[-inputs_length // 2:]
    doc_ids = list(vocab.encode(doc))[:inputs_length - len(tail_ids)]
    answer = output.decode("utf-8", "replace").strip()
    tgt = list(vocab.encode(answer))[:targets_length - 1]
    ids = np.asarray(doc_ids + tail_ids, np.int32)
    return (ids, np.asarray(tgt, np.int32), answer.encode(),
            question.encode(), np.int32(len(ids)))

  def fn(ex):
    ids, tgt, ans, question, n = tf.numpy_function(
        gen, [ex["input"], ex["output"]],
        [tf.int32, tf.int32, tf.string, tf.string, tf.int32], stateful=False)
    ids.set_shape([None])
    tgt.set_shape([None])
    for t in (ans, question, n):
      t.set_shape([])
    return {"inputs": ids, "targets": tgt, "targets_pretokenized": ans,
            "question": question, "answers": ans, "context_length": n,
            "length": tf.constant(length, tf.int32)}

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _pg19(dataset, sequence_length=None, output_features=None, *, length):
  del sequence_length, output_features

  def fn(ex):
    return {"targets": ex["targets"][:length],
            "length": tf.constant(length, tf.int32),
            "context_length": tf.minimum(tf.size(ex["targets"]), length)}
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def fits(family: str, length: int) -> bool:
  """Whether `length` leaves room for a document besides the answer."""
  return FAMILIES[family][1] == "score" or length > 2 * FAMILIES[family][2]


def register_tfds_task(family: str, vocab, vocab_name: str,
                       length: int) -> seqio.Task:
  """Register `<family>_<vocab_name>_<length>` over its TFDS dataset."""
  from famjax.data import eval_tasks
  tfds_name, kind, t_len = FAMILIES[family]
  name = eval_info.task_name(family, vocab_name, length)
  source = seqio.TfdsDataSource(tfds_name,
                                splits={s: s for s in SPLITS})
  if kind == "score":
    preprocessors = [
        functools.partial(seqio.preprocessors.rekey,
                          key_map={"targets": "book_text"}),
        functools.partial(seqio.preprocessors.tokenize,
                          copy_pretokenized=False),
        functools.partial(_pg19, length=length)]
    features = {"targets": seqio.Feature(vocab, add_eos=False)}
    metric = eval_metrics.lm_position_metrics
    info = dict(targets_length=length)
  else:
    if not fits(family, length):
      raise ValueError(f"length {length} is too short for {family}")
    preprocessors = [
        functools.partial(_scrolls, vocab=vocab, inputs_length=length - t_len,
                          targets_length=t_len, length=length),
        seqio.preprocessors.append_eos]
    features = {"inputs": seqio.Feature(vocab, add_eos=False),
                "targets": seqio.Feature(vocab, add_eos=True)}
    metric = eval_metrics.qa_metrics
    info = dict(inputs_length=length - t_len, targets_length=t_len)
  task = seqio.Task(name, source=source, preprocessors=preprocessors,
                    output_features=features,
                    postprocess_fn=eval_metrics.postprocess,
                    metric_fns=[metric])
  eval_info.register_info(name, family=family, vocab=vocab_name,
                          length=length, kind=kind, tfds_name=tfds_name,
                          **info)
  return eval_tasks._add(task)  # pylint: disable=protected-access
