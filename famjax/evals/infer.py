"""The model functions seqio.Evaluator calls: predict and score.

Both take the evaluator's enumerated dataset of model features
(decoder_input_tokens, decoder_target_tokens, decoder_loss_weights: the
prefix-LM or decoder-only layout of the feature converter, unpacked) and
return [(index, output)].

* predict: greedy decoding with the streaming decoder. The prompt of an
  example is decoder_input_tokens up to the first target position (BOS +
  inputs); it is fed block by block (bswa / fam: the state does not grow with
  the prompt), then tokens are generated one at a time until every row of the
  batch has produced EOS or the task's longest target length is reached.
  The stream state has one position for the whole batch, so a batch holds
  examples of equal prompt length only. Output: the generated tokens, padded
  with 0 after EOS to that length (one fixed width per task).
* score: one whole-sequence forward per batch; per example a float32 array
  [2, n_targets]: row 0 the log-probability of each target token (natural
  log, EOS included, padding excluded), row 1 1.0 where the argmax equals the
  target token.

Multi-host: every host holds the whole dataset, computes every
`process_count`-th example (after sorting by length) with its own copy of the
model, and the results are gathered on every host.
"""
from __future__ import annotations

import functools
import pickle
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from famjax.errors import UserError

INPUTS, TARGETS, WEIGHTS = ("decoder_input_tokens", "decoder_target_tokens",
                            "decoder_loss_weights")
FULL_PREFILL_CHUNK = 512     # prompt tokens per call in `full` mode
FULL_CACHE_BUCKET = 256      # `full` KV caches hold a multiple of this
SCORE_LENGTH_BUCKET = 128    # score batches are padded to a multiple of this


def examples(dataset) -> List[Tuple[int, dict]]:
  """[(index, {feature: numpy array})] of an enumerated dataset."""
  out = []
  for index, ex in dataset.as_numpy_iterator():
    out.append((int(index), {k: np.asarray(ex[k]) for k in
                             (INPUTS, TARGETS, WEIGHTS)}))
  return out


def layout(ex) -> Tuple[int, int, int]:
  """(prompt length: BOS + inputs, number of target tokens, total length)."""
  w = ex[WEIGHTS]
  nz = np.flatnonzero(w)
  if not nz.size:
    return 1, 0, 1
  first, last = int(nz[0]), int(nz[-1])
  return first + 1, int(w.sum()), last + 1


def shard(items, key):
  """This host's share of `items`: every process_count-th after sorting."""
  items = sorted(items, key=key)
  return items[jax.process_index()::jax.process_count()]


def allgather(obj) -> list:
  """[obj of process 0, obj of process 1, ...] on every process."""
  if jax.process_count() == 1:
    return [obj]
  from jax.experimental import multihost_utils
  mine = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(
      np.array([mine.size], np.int64))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:mine.size] = mine
  every = np.asarray(multihost_utils.process_allgather(padded))
  return [pickle.loads(every[i, :sizes[i]].tobytes())
          for i in range(jax.process_count())]


def _rows(n: int, batch_size: int) -> int:
  """Batch rows for n examples: a power of two, at most batch_size (fewer
  distinct shapes to compile)."""
  r = 1
  while r < n:
    r *= 2
  return min(r, batch_size)


def _pad_rows(arr, rows):
  if arr.shape[0] == rows:
    return arr
  return np.concatenate([arr, np.repeat(arr[-1:], rows - arr.shape[0], 0)])


def check_ids(items, vocab_size: int, what: str):
  top = max((int(ex[INPUTS].max()) for _, ex in items if ex[INPUTS].size),
            default=0)
  top = max([top] + [int(ex[TARGETS].max()) for _, ex in items
                     if ex[TARGETS].size])
  if top >= vocab_size:
    raise UserError(f"{what} has token id {top}, outside the model's "
                    f"vocabulary of {vocab_size}: evaluate with tasks built "
                    "for the model's own tokenizer.")


# ------------------------------------------------------------------ predict
@functools.lru_cache(maxsize=32)
def _greedy(gdef, n: int):
  """Jitted: (params, state, last logits [b, V], eos id) -> (tokens [b, n]
  padded with 0 after EOS, log-probability of the generated tokens [b])."""

  @jax.jit
  def run(params, state, logits, eos_id):
    model = nnx.merge(gdef, params)
    b = logits.shape[0]

    def cond(c):
      i, _, _, done, _, _ = c
      return (i < n) & ~jnp.all(done)

    def body(c):
      i, state, logits, done, out, lp = c
      tok = jnp.argmax(logits, -1).astype(jnp.int32)
      logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None],
                                 -1)[:, 0]
      lp = lp + jnp.where(done, 0.0, logp)
      tok = jnp.where(done, 0, tok)
      out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1)
      done = done | (tok == eos_id)
      new_logits, state = model.stream(state, tok[:, None])
      return i + 1, state, new_logits[:, -1], done, out, lp

    init = (jnp.int32(0), state, logits, jnp.zeros((b,), bool),
            jnp.zeros((b, n), jnp.int32), jnp.zeros((b,), jnp.float32))
    _, _, _, _, out, lp = jax.lax.while_loop(cond, body, init)
    return out, lp
  return run


class Runner:
  """A model's predict / score functions (compiled once per shape)."""

  def __init__(self, model, *, batch_size: int = 8):
    from famjax.decode import Streamer
    self.cfg = model.cfg
    self.batch_size = int(batch_size)
    self.streamer = Streamer(model)
    self.gdef, self.params = self.streamer.gdef, self.streamer.params

  def prefill(self, prompts: np.ndarray, cap: int):
    """(state, logits of the last prompt position [b, V]) in constant memory
    (bswa / fam): chunks of one block, only the last logits kept."""
    s, att = self.streamer, self.cfg.attention
    b, p = prompts.shape
    state = s.init(b, max_len=cap)
    chunk = FULL_PREFILL_CHUNK if att.mode == "full" else att.block_size
    last, i = None, 0
    while i < p:
      c = min(chunk - i % chunk, p - i)
      logits, state = s.step(state, jnp.asarray(prompts[:, i:i + c]))
      last = logits[:, -1]
      i += c
    return state, last

  def generate(self, prompts: np.ndarray, n: int, eos_id: int):
    """Greedy tokens [b, n] (0 after EOS) and their log-probability [b]."""
    cap = -(-(prompts.shape[1] + n + 1) // FULL_CACHE_BUCKET) * FULL_CACHE_BUCKET
    state, last = self.prefill(prompts, cap=cap)
    out, lp = _greedy(self.gdef, int(n))(self.params, state, last,
                                         jnp.int32(eos_id))
    return np.asarray(out), np.asarray(lp)

  def predict(self, dataset, *, eos_id: int, with_aux: bool = False,
              what: str = "the task"):
    """[(index, tokens [n])] for every example (all hosts), and with_aux
    {"scores": log-probability of the generated tokens, "prompt_length"}."""
    items = examples(dataset)
    if not items:
      return ([], {"scores": [], "prompt_length": []}) if with_aux else []
    check_ids(items, self.cfg.vocab_size, what)
    n = max(layout(ex)[1] for _, ex in items)
    mine = shard(items, key=lambda it: (layout(it[1])[0], it[0]))
    groups = {}
    for index, ex in mine:
      groups.setdefault(layout(ex)[0], []).append((index, ex))
    local = []
    for p, group in sorted(groups.items()):
      for a in range(0, len(group), self.batch_size):
        part = group[a:a + self.batch_size]
        prompts = np.stack([ex[INPUTS][:p] for _, ex in part])
        toks, lp = self.generate(
            _pad_rows(prompts, _rows(len(part), self.batch_size)), n, eos_id)
        local += [(index, toks[r], float(lp[r]), p)
                  for r, (index, _) in enumerate(part)]
    every = sorted(x for host in allgather(local) for x in host)
    out = [(i, t) for i, t, _, _ in every]
    if not with_aux:
      return out
    return out, {"scores": [s for _, _, s, _ in every],
                 "prompt_length": [p for _, _, _, p in every]}

  # ---------------------------------------------------------------- score
  def token_scores(self, tokens, targets):
    """(log p(target) [b, T], argmax == target [b, T]) of one batch."""
    return _score_fn(self.gdef)(self.params, jnp.asarray(tokens),
                                jnp.asarray(targets))

  def score(self, dataset, *, what: str = "the task"):
    """[(index, float32 [2, n_targets])] for every example (all hosts)."""
    items = examples(dataset)
    if not items:
      return []
    check_ids(items, self.cfg.vocab_size, what)
    mine = shard(items, key=lambda it: (layout(it[1])[2], it[0]))
    full_len = items[0][1][INPUTS].shape[0]
    local = []
    for a in range(0, len(mine), self.batch_size):
      part = mine[a:a + self.batch_size]
      t = max(layout(ex)[2] for _, ex in part)
      t = min(-(-t // SCORE_LENGTH_BUCKET) * SCORE_LENGTH_BUCKET, full_len)
      rows = _rows(len(part), self.batch_size)
      stack = lambda k: _pad_rows(np.stack([ex[k][:t] for _, ex in part]), rows)
      logp, hit = self.token_scores(stack(INPUTS), stack(TARGETS))
      logp, hit = np.asarray(logp), np.asarray(hit)
      for r, (index, ex) in enumerate(part):
        w = ex[WEIGHTS][:t] > 0
        local.append((index, np.stack([logp[r][w], hit[r][w]]).astype(
            np.float32)))
    return sorted((x for host in allgather(local) for x in host),
                  key=lambda x: x[0])


@functools.lru_cache(maxsize=32)
def _score_fn(gdef):
  @jax.jit
  def run(params, tokens, targets):
    logits = nnx.merge(gdef, params)(tokens)
    logp = jax.nn.log_softmax(logits)
    lp = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    hit = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return lp, hit
  return run


def model_on_host(model):
  """The model with every parameter fully on this host (a no-op unless the
  parameters are sharded over several processes)."""
  gdef, state = nnx.split(model)
  leaves = jax.tree.leaves(state)
  if all(getattr(x, "is_fully_addressable", True) for x in leaves):
    return model
  from jax.experimental import multihost_utils
  state = jax.tree.map(
      lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
      if not getattr(x, "is_fully_addressable", True) else x, state)
  return nnx.merge(gdef, state)


def trim(tokens: np.ndarray, eos_id: Optional[int]) -> np.ndarray:
  """Generated tokens up to and including EOS."""
  tokens = np.asarray(tokens)
  if eos_id is not None:
    hits = np.flatnonzero(tokens == eos_id)
    if hits.size:
      return tokens[:hits[0] + 1]
  return tokens
