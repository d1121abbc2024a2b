"""Fixtures of the evaluator tests: tiny needle tasks and model directories.

Importing this module registers (byte vocabulary, offline, deterministic):
  evtest_needle_byte_<L> for L in LENGTHS: a key of 2-4 digits hidden at a
    recorded depth in L characters of filler; metrics follow the eval
    interface: accuracy and accuracy@depth=D from predictions, the mean
    sequence log-likelihood and token accuracy from [2, n] scores.
  evtest_needle_byte: the mixture of those tasks; TASK_INFO entries for all.
A gin file can `import tests.evaluator_fixtures` to use them from `famjax eval`.
"""
from __future__ import annotations

import os

import numpy as np
import seqio
import tensorflow as tf

from famjax.data.eval_info import TASK_INFO

LENGTHS = (48, 80)
DEPTHS = (0.0, 0.5, 1.0)
NUM_EXAMPLES = 6
FAMILY = "evtest_needle"


def needle_example(index: int, length: int):
  rng = np.random.default_rng([index, length])
  key = str(rng.integers(10, 10_000))
  depth = DEPTHS[index % len(DEPTHS)]
  filler = "".join(rng.choice(list("abcdefgh "), size=length))
  at = int(round(depth * length))
  text = filler[:at] + f" key {key}. " + filler[at:] + " key?"
  return text, key, depth


def _dataset_fn(length):
  def fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    rows = [needle_example(i, length) for i in range(NUM_EXAMPLES)]
    return tf.data.Dataset.from_tensor_slices({
        "inputs": [r[0] for r in rows], "targets": [r[1] for r in rows],
        "depth": np.asarray([r[2] for r in rows], np.float32),
        "context_length": np.full(len(rows), length, np.int32)})
  return fn


def postprocess(output, example=None, is_target=False):
  text = output.decode() if isinstance(output, bytes) else str(output)
  if not is_target:
    return text.strip()
  return {"answer": text.strip(), "depth": float(example["depth"]),
          "length": int(example["context_length"])}


def needle_accuracy(targets, predictions):
  hits = np.array([t["answer"] == p for t, p in zip(targets, predictions)])
  out = {"accuracy": 100.0 * hits.mean()}
  depths = np.array([t["depth"] for t in targets])
  for d in sorted(set(depths.tolist())):
    out[f"accuracy@depth={d:.2f}"] = 100.0 * hits[depths == d].mean()
  return out


def sequence_scores(targets, scores):
  """Scores [2, n] per example; NaN columns are padding (ragged tasks)."""
  del targets
  rows = [np.asarray(s, np.float64) for s in scores]
  rows = [s[:, ~np.isnan(s[0])] for s in rows]
  return {"log_likelihood": float(np.mean([np.sum(s[0]) for s in rows])),
          "token_accuracy": 100.0 * float(np.mean(np.concatenate(
              [s[1] for s in rows])))}


def register():
  vocab = seqio.ByteVocabulary()
  names = []
  for length in LENGTHS:
    name = f"{FAMILY}_byte_{length}"
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, seqio.FunctionDataSource(_dataset_fn(length),
                                       splits=("validation",)),
        preprocessors=[seqio.preprocessors.tokenize,
                       seqio.preprocessors.append_eos],
        output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                         "targets": seqio.Feature(vocab, add_eos=True)},
        postprocess_fn=postprocess,
        metric_fns=[needle_accuracy, sequence_scores])
    TASK_INFO[name] = {"family": FAMILY, "vocab": "byte", "length": length,
                       "kind": "predict"}
    names.append(name)
  mixture = f"{FAMILY}_byte"
  if mixture in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(mixture)
  seqio.MixtureRegistry.add(mixture, names, default_rate=1.0)
  return names


TASKS = register()


# ------------------------------------------------------------ model dirs
def tiny_cfg(mode="fam", vocab=259):
  from famjax.config import AttentionConfig, ModelConfig
  return ModelConfig(vocab_size=vocab, d_model=32, num_layers=2, num_heads=4,
                     num_kv_heads=2, ffn_dim=64,
                     attention=AttentionConfig(mode=mode, block_size=8,
                                               memory_segments=1,
                                               fam_length=2))


def random_params(cfg, seed):
  import jax
  from flax import nnx
  from famjax.model import Transformer
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  state = nnx.state(model, nnx.Param).to_pure_dict()
  keys = iter(jax.random.split(jax.random.key(seed + 7), 100))
  return jax.tree.map(lambda x: np.asarray(
      x + 0.3 * jax.random.normal(next(keys), x.shape, x.dtype)), state)


def make_run_dir(path, cfg, steps=(1, 2), seq_len=256):
  """A training run directory as `famjax train` leaves it: config.gin and
  orbax checkpoints (params, step) at `steps`, different params each."""
  from famjax import params_io
  from famjax.train.checkpoints import Checkpoints
  os.makedirs(path, exist_ok=True)
  gin_text = params_io.config_to_gin(cfg) + (
      f"train.model_config = @ModelConfig()\ntrain.seq_len = {seq_len}\n")
  with open(os.path.join(path, "config.gin"), "w") as fh:
    fh.write(gin_text)
  ck = Checkpoints(path, async_save=False)
  for s in steps:
    ck.save(s, {"params": random_params(cfg, s), "step": np.int32(s)},
            {"n": 0}, gin_text)
  ck.close()
  return path
