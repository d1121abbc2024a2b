"""PassKey in miniature, token level, from scratch: can the FAM carry one
digit across blocks, and how far past the training length?

    python -m benchmarks.digit_carry --mode fam --out benchmarks/results/digit_carry_fam.json

Vocabulary of 16 tokens: digits 0-9, the question token 11, filler 12-15
(random). A sequence is `blocks` blocks of B tokens. m = 0 memory segments:
a block sees only itself and the FAM, so anything from an earlier block can
only come through the FAM (in `bswa` with m = 0: not at all, chance is 10%).

Training runs famjax's own train step (`famjax.train.trainer`: microbatch
scan, Random State Passing, Random Position Offset, AdamW) in two phases:
  dense  the digit in block 0 and, in every later block, the question
         followed by the digit (the loss on those answers): each block must
         read the FAM and re-carry what the previous one held;
  far    the digit in a random block, one question in the last block and
         nothing in between: the FAM must hold the digit over up to
         blocks - 1 updates of filler;
  far2   (optional, --far2_steps) `far` at --far2_blocks blocks: a length
         curriculum (--far2_mix 1: alternating with `far` batches; a list
         such as 32,128 takes its lengths in turn);
  stream (optional, --stream_steps) every row is an endless stream, cut
         into `blocks`-block pieces, one a step; row i of a step continues
         row i of the step before from its own final FAM state
         (StepConfig.state_passing="rows": truncated backpropagation
         through the FAM). New digits appear now and then (the newest one
         counts), questions often; a row starts a new stream (from the
         initial FAM, its first digit after 0 to blocks - 1 filler blocks)
         with --stream_reset a step; --stream_digit 0: one digit a stream;
         --stream_digit_start: a curriculum from short gaps to long ones.
  --far_continue P: in the far2 phase each row goes on, with chance P a
         step, from its own final FAM state of the step before (which still
         holds the previous sequence's digit): truncated backpropagation,
         states of every age, and a new digit that must overwrite the old.
  --far_hold P: in the far2 phase a row goes on, with chance P a step,
         into a piece without a digit whose question asks again for the
         digit it holds (the answer is never shown as input then): holds
         over several pieces, gradients over one.
  --far_warm P: in the far2 phase half the rows that start afresh run
         lossless filler pieces first, each going on from its own state,
         and wake into a task piece with chance P a step: digits are
         written into FAM states of every age (with --far_hold: then held).
  --filler_rows K: in the far phases the last K rows of every batch are
         endless filler streams without loss, each going on from its own
         FAM state (a fresh start with --filler_reset a step), so that
         --growth_penalty (StepConfig.fam_growth_penalty) also sees states
         hundreds of blocks old.
  --init_model_dir DIR: start from a saved model's weights (a famjax model
         directory, e.g. one --model_dir wrote) instead of fresh ones; with
         --dense_steps 0 --far_steps 0 this fine-tunes it in the far2 phase
         alone (fresh optimizer state, --lr).
Evaluation: `far` sequences of 1x to 64x the training blocks, the needle at
depth 0, 0.5 and 1 (block 0, the middle block, the block before the
question); accuracy = argmax of the answer (greedy decoding).
Writes JSON (per length x depth accuracy, the loss curve) and a heatmap PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

QUESTION, FILLER_LO, VOCAB = 11, 12, 16
# --vocab byte: token -> seqio.ByteVocabulary id (a byte + 3): the digits,
# "?" for the question and the letters of the eval task's filler.
_CHARS = "0123456789" + "_?" + "abcd"
BYTE_OF = np.array([ord(c) + 3 for c in _CHARS], np.int64)
BYTE_VOCAB = 259


def dense_batch(rng, n, blocks, block):
  """Digit in block 0; in every later block the question and the digit."""
  t = blocks * block
  toks = rng.randint(FILLER_LO, VOCAB, (n, t + 1))
  rows = np.arange(n)
  digit = rng.randint(0, 10, n)
  toks[rows, rng.randint(0, block - 1, n)] = digit
  w = np.zeros((n, t), np.float32)
  for b in range(1, blocks):
    q = b * block + rng.randint(0, block - 2, n)
    toks[rows, q] = QUESTION
    toks[rows, q + 1] = digit
    w[rows, q] = 1.0
  return toks, w


def far_batch(rng, n, blocks, block, depth=None):
  """Digit in block round(depth * (blocks - 2)) (random when depth is None),
  one question in the last block."""
  t = blocks * block
  toks = rng.randint(FILLER_LO, VOCAB, (n, t + 1))
  rows = np.arange(n)
  digit = rng.randint(0, 10, n)
  needle_block = (rng.randint(0, blocks - 1, n) if depth is None
                  else np.full(n, int(round(depth * (blocks - 2)))))
  toks[rows, needle_block * block + rng.randint(0, block - 1, n)] = digit
  q = (blocks - 1) * block + rng.randint(0, block - 2, n)
  toks[rows, q] = QUESTION
  toks[rows, q + 1] = digit
  w = np.zeros((n, t), np.float32)
  w[rows, q] = 1.0
  return toks, w


def byte_layout(toks, w, answers=None):
  """The same sequences in the byte vocabulary (seqio.ByteVocabulary, the
  vocabulary of `famjax eval`'s digit_carry task): a BOS (id 0) at position
  0 shifts every token one place right, and the tokens become the bytes
  '0'-'9', '?' and 'a'-'d'. Every needle, question and answer stays in its
  block (their in-block offsets are at most block - 2 before the shift).
  toks [n, T+1] -> [n, T+1] (the last token falls off), w [n, T] -> [n, T];
  with answers [n, T] (targets the inputs do not show): (toks, w, answers)."""
  def right(x):
    return np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
  if answers is not None:
    return right(BYTE_OF[toks]), right(w), right(BYTE_OF[answers])
  return right(BYTE_OF[toks]), right(w)


def continued_without_bos(rng, toks, cont):
  """Byte pieces that go on from an earlier piece's state are the middle
  of one long sequence: their position 0 is filler, not a BOS."""
  toks = toks.copy()
  on = np.flatnonzero(cont)
  toks[on, 0] = BYTE_OF[rng.randint(FILLER_LO, VOCAB, len(on))]
  return toks


def filler_rows(rng, toks, w, cont, k, p_reset, first=False):
  """Make the last k rows endless filler streams without loss (in place):
  each goes on from its own FAM state (cont 1) unless it starts afresh,
  with chance p_reset, or this is the first such step. The growth penalty
  then sees states of every age. Returns (toks, w)."""
  toks[-k:] = rng.randint(FILLER_LO, VOCAB, toks[-k:].shape)
  w[-k:] = 0.0
  cont[-k:] = (rng.rand(k) >= p_reset) & (not first)
  return toks, w


def as_batch(toks, w, cont=None, answers=None):
  """answers [n, T]: targets where w > 0 that the inputs do not show."""
  targets = toks[:, 1:]
  if answers is not None:
    targets = np.where(w > 0, answers, targets)
  batch = {"decoder_input_tokens": toks[:, :-1],
           "decoder_target_tokens": targets, "decoder_loss_weights": w}
  if cont is not None:
    batch["fam_continue"] = cont
  return batch


class Streams:
  """n endless digit streams; `next(blocks, block)` cuts the next piece of
  each (tokens [n, T+1], weights [n, T], continues [n], answers [n, T]).
  The answer of a question is its target only: the input after the question
  is filler, so answers never re-write the digit into the stream."""

  def __init__(self, rng, n, p_digit, p_question, p_reset):
    self.rng, self.n = rng, n
    self.p_digit, self.p_question, self.p_reset = p_digit, p_question, p_reset
    self.digit = np.full(n, -1)                  # -1: a new stream
    self.wait = np.zeros(n, int)                 # filler blocks before it

  def next(self, blocks, block):
    rng, n = self.rng, self.n
    toks = rng.randint(FILLER_LO, VOCAB, (n, blocks * block + 1))
    w = np.zeros((n, blocks * block), np.float32)
    answers = np.zeros((n, blocks * block), np.int64)
    cont = (self.digit >= 0) & (rng.rand(n) >= self.p_reset)
    self.digit[~cont] = -1
    self.wait[~cont] = rng.randint(0, blocks, (~cont).sum())
    for b in range(blocks):
      lo = b * block
      waiting = (self.digit < 0) & (self.wait > 0)
      self.wait[waiting] -= 1
      new = ~waiting & ((self.digit < 0) | (rng.rand(n) < self.p_digit))
      ask = ~waiting & ~new & (rng.rand(n) < self.p_question)
      for r in np.flatnonzero(new):
        self.digit[r] = rng.randint(0, 10)
        toks[r, lo + rng.randint(0, block)] = self.digit[r]
      for r in np.flatnonzero(ask):
        q = lo + rng.randint(0, block - 1)
        toks[r, q], answers[r, q] = QUESTION, self.digit[r]
        w[r, q] = 1.0
    return toks, w, cont.astype(np.int32), answers


def drop_digits(rng, toks, rows):
  """Replace every digit of the inputs toks[rows, :-1] by filler, in place
  (rows: a boolean mask)."""
  held = np.flatnonzero(rows)
  body = toks[held, :-1]
  digits = body < 10
  body[digits] = rng.randint(FILLER_LO, VOCAB, digits.sum())
  toks[held, :-1] = body


class Holds:
  """`far` batches in which a row's digit can outlive its piece: with
  chance p_hold a step, a row goes on (its own FAM state) into a piece with
  no digit whose question asks again for the digit it holds. A piece that
  goes on does not show its answer (the input after its question is filler;
  the digit is the target only), so nothing re-writes the digit: the FAM
  must hold it over several pieces, while gradients reach back one piece.
  `next(blocks, block)` -> (tokens [n, T+1], weights [n, T], continues [n],
  answers [n, T])."""

  def __init__(self, rng, n, p_hold):
    self.rng, self.n, self.p_hold = rng, n, p_hold
    self.digit = np.full(n, -1)
    self.go_on = np.zeros(n, bool)

  def next(self, blocks, block):
    rng, n, rows = self.rng, self.n, np.arange(self.n)
    toks, w = far_batch(rng, n, blocks, block)
    q = w.argmax(1)
    cont = self.go_on & (self.digit >= 0)
    drop_digits(rng, toks, cont)
    digit = np.where(cont, self.digit, toks[rows, q + 1])
    toks[rows, q + 1] = digit
    self.go_on = rng.rand(n) < self.p_hold
    hide = np.flatnonzero(self.go_on)
    toks[hide, q[hide] + 1] = rng.randint(FILLER_LO, VOCAB, len(hide))
    answers = toks[:, 1:].copy()
    answers[rows, q] = digit
    self.digit = digit
    return toks, w, cont.astype(np.int32), answers


class Lives:
  """Far-task rows with a life: a row that starts afresh runs, with chance
  1/2, lossless filler pieces first (`warm`), going on from its own FAM
  state, and wakes into a task piece with chance p_wake a step; else it
  starts with a task piece from the initial FAM. After a task piece a row
  holds its digit into a digit-free piece that asks for it again with
  chance p_hold (as in Holds), else it starts afresh. Task pieces thus
  write their digit into FAM states of every age. `next(blocks, block)` ->
  (tokens [n, T+1], weights [n, T], continues [n], answers [n, T])."""

  WARM, TASK = 1, 2

  def __init__(self, rng, n, p_wake, p_hold):
    self.rng, self.n, self.p_wake, self.p_hold = rng, n, p_wake, p_hold
    self.last = np.zeros(n, int)          # 0 fresh, WARM or TASK
    self.go_on = np.zeros(n, bool)        # a TASK row holds on
    self.digit = np.full(n, -1)

  def next(self, blocks, block):
    rng, n, rows = self.rng, self.n, np.arange(self.n)
    toks, w = far_batch(rng, n, blocks, block)
    q = w.argmax(1)
    hold = (self.last == self.TASK) & self.go_on
    wake = (self.last == self.WARM) & (rng.rand(n) < self.p_wake)
    stay = (self.last == self.WARM) & ~wake
    fresh = ~(hold | wake | stay)
    warm = stay | (fresh & (rng.rand(n) < 0.5))
    cont = (hold | wake | stay).astype(np.int32)
    drop_digits(rng, toks, hold)            # no new digit in a hold piece
    digit = np.where(hold, self.digit, toks[rows, q + 1])
    toks[rows, q + 1] = digit
    task = ~warm
    self.go_on = task & (rng.rand(n) < self.p_hold)
    hide = np.flatnonzero(self.go_on)
    toks[hide, q[hide] + 1] = rng.randint(FILLER_LO, VOCAB, len(hide))
    toks[warm] = rng.randint(FILLER_LO, VOCAB, toks[warm].shape)
    w[warm] = 0.0
    answers = toks[:, 1:].copy()
    answers[rows, q] = np.where(task, digit, answers[rows, q])
    self.digit = np.where(task, digit, -1)
    self.last = np.where(warm, self.WARM, self.TASK)
    return toks, w, cont, answers


def annealed(start, end, i, n):
  """Step i of n of a geometric anneal from `start` to `end`."""
  return start * (end / start) ** (i / max(n - 1, 1))


def far2_lengths(args):
  """The far2 phase's sequence lengths in blocks, taken in turn."""
  out = [int(x) for x in str(args.far2_blocks).split(",") if x.strip()]
  if not out or min(out) < 1:
    raise ValueError(f"--far2_blocks {args.far2_blocks!r}: give one or more "
                     "positive block counts, e.g. 32 or 32,128")
  return out


def far2_step(args, s, lengths2=None):
  """(phase, blocks) of step s of the far2 phase: with --far2_mix, even
  steps are `far` at --blocks; the far2 steps take --far2_blocks in turn."""
  lengths2 = lengths2 or far2_lengths(args)
  if args.far2_mix and s % 2 == 0:
    return "far", args.blocks
  k = s - args.dense_steps - args.far_steps
  if args.far2_mix:
    k //= 2
  return "far2", lengths2[k % len(lengths2)]


def build(args):
  from flax import nnx
  from famjax import ModelConfig, Transformer
  from famjax.config import AttentionConfig
  attention = AttentionConfig(mode=args.mode, block_size=args.block,
                              memory_segments=args.memory,
                              fam_length=args.fam_length,
                              fam_state_rms=args.fam_state_rms,
                              fam_decay=args.fam_decay)
  cfg = ModelConfig(
      vocab_size=BYTE_VOCAB if args.vocab == "byte" else VOCAB, d_model=args.d_model, num_layers=args.layers,
      num_heads=args.heads, num_kv_heads=args.heads,
      head_dim=args.d_model // args.heads, ffn_dim=2 * args.d_model,
      attention=attention)
  if args.init_model_dir:
    from famjax import params_io
    saved = params_io.load_config(args.init_model_dir)
    for field in ("vocab_size", "d_model", "num_layers", "num_heads",
                  "ffn_dim"):
      if getattr(saved, field) != getattr(cfg, field):
        raise ValueError(
            f"--init_model_dir {args.init_model_dir}: its {field} is "
            f"{getattr(saved, field)}, these arguments make "
            f"{getattr(cfg, field)}; pass the saved model's --vocab, "
            "--d_model, --layers and --heads")
    return params_io.load_model_dir(args.init_model_dir,
                                    attention=attention, seed=args.seed)[1]
  return Transformer(cfg, rngs=nnx.Rngs(args.seed))


def train(model, args, log):
  import jax
  import optax
  from famjax import params_io
  from famjax.train import trainer
  params = params_io.params_dict(model)
  keys = trainer.trainable_keys(params, "all")
  sched = optax.constant_schedule(args.lr)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched))
  stream = args.stream_steps
  fillers = args.filler_rows if args.mode == "fam" else 0
  carry_on = args.far_continue if args.mode == "fam" else 0.0
  hold = args.far_hold if args.mode == "fam" else 0.0
  warm = args.far_warm if args.mode == "fam" else 0.0
  rows_mode = bool(stream or fillers or carry_on or hold or warm)
  rng = np.random.RandomState(args.seed)
  holds = (Lives(rng, args.batch, warm, hold) if warm
           else Holds(rng, args.batch, hold))
  cfg = trainer.StepConfig(p_rsp=args.p_rsp if args.mode == "fam" else 0.0,
                           random_position_offset=bool(args.rpo),
                           state_passing="rows" if rows_mode else "row0",
                           fam_growth_penalty=(args.growth_penalty
                                               if args.mode == "fam" else 0.0),
                           fam_size_penalty=(args.size_penalty
                                             if args.mode == "fam" else 0.0))
  state = trainer.init_state(model, tx, keys, seed=args.seed,
                             rsp_rows=cfg.rsp_rows(args.batch))
  step = trainer.make_train_step(model, tx, sched, keys, cfg)
  curve, t0 = [], time.time()
  far2 = args.far2_steps
  lengths2 = far2_lengths(args)
  total = args.dense_steps + args.far_steps + far2 + stream
  streams = Streams(rng, args.batch, args.stream_digit,
                    args.stream_question,
                    args.stream_reset)
  for s in range(total):
    cont = np.zeros(args.batch, np.int32) if rows_mode else None
    if s >= args.dense_steps + args.far_steps + far2:
      start = args.stream_digit_start
      if start is not None:
        streams.p_digit = annealed(start, args.stream_digit,
                                   s - (total - stream), stream)
      phase, (*toks, cont, ans) = "stream", streams.next(args.blocks,
                                                         args.block)
    elif s < args.dense_steps:
      phase, toks = "dense", dense_batch(rng, args.batch, args.blocks,
                                         args.block)
    elif s < args.dense_steps + args.far_steps:
      phase, toks = "far", far_batch(rng, args.batch, args.blocks, args.block)
    else:
      phase, n = far2_step(args, s, lengths2)
      if hold or warm:
        *toks, cont, ans = holds.next(n, args.block)
      else:
        toks = far_batch(rng, args.batch, n, args.block)
    first2 = args.dense_steps + args.far_steps
    if carry_on and phase.startswith("far") and s >= first2:
      cont[:] = (rng.rand(args.batch) < carry_on) & (s != first2)
    if fillers and phase.startswith("far"):
      toks = filler_rows(rng, *toks, cont, fillers, args.filler_reset,
                         first=s == args.dense_steps)
    with_answers = phase == "stream" or ((hold or warm) and
                                         phase.startswith("far") and
                                         s >= first2)
    if args.vocab == "byte":
      if phase == "stream":
        raise ValueError("--vocab byte does not support --stream_steps")
      if with_answers:
        *toks, ans = byte_layout(*toks, ans)
      else:
        toks = byte_layout(*toks)
      if cont is not None:
        toks = [continued_without_bos(rng, toks[0], cont), *toks[1:]]
    state, m = step(state, as_batch(*toks, cont,
                                    ans if with_answers else None))
    mixed = args.far2_mix and phase.startswith("far")
    if (s % args.log_every == 0 or s == total - 1 or
        (mixed and s % args.log_every == 1)):    # the other length too
      m = jax.device_get(m)
      curve.append([s, phase, float(m["loss"]), float(m["accuracy"])])
      grow = (f" growth {float(m['fam_growth']):.3f}" if "fam_growth" in m
              else "") + (f" size {float(m['fam_size']):.3f}"
                          if "fam_size" in m else "")
      log(f"{args.mode} step {s} ({phase}) loss {curve[-1][2]:.4f} "
          f"acc {curve[-1][3]:.3f}{grow} {time.time() - t0:.0f}s")
  return state["params"], curve, time.time() - t0


def scorer(model, with_state=False):
  """jit (params, tokens [n, T+1], weights [n, T]) -> weighted accuracy of
  the argmax (initial FAM, no position offset); with_state: also the root-
  mean-square of the final FAM state per layer [L] (fam only)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def correct(p, toks, w):
    logits, aux = nnx.merge(graphdef, p, rest)(toks[:, :-1],
                                               return_state=True)
    ok = jnp.argmax(logits, -1) == toks[:, 1:]
    acc = jnp.sum(ok * w) / jnp.sum(w)
    if not with_state:
      return acc
    phi = aux["fam_state"].astype(jnp.float32)          # [L, n, F, d]
    return acc, jnp.sqrt(jnp.mean(jnp.square(phi), axis=(1, 2, 3)))

  return correct


def evaluate(model, params, args, state_rms=None):
  """{blocks: {depth: accuracy}} of far sequences, initial FAM, no offset;
  state_rms (a dict, fam): filled with {blocks: [RMS of the final FAM state
  per layer]}, averaged over the depths."""
  fam = args.mode == "fam"
  correct = scorer(model, with_state=fam)
  out = {}
  for mult in [int(x) for x in args.eval_mults.split(",")]:
    blocks = args.blocks * mult
    rng = np.random.RandomState(1000 + blocks)
    out[str(blocks)] = {}
    rmss = []
    for depth in (0.0, 0.5, 1.0):
      accs = []
      for _ in range(max(1, args.eval_samples // args.eval_batch)):
        toks, w = far_batch(rng, args.eval_batch, blocks, args.block, depth)
        if args.vocab == "byte":
          toks, w = byte_layout(toks, w)
        if fam:
          acc, rms = correct(params, toks, w)
          rmss.append(np.asarray(rms))
        else:
          acc = correct(params, toks, w)
        accs.append(float(acc))
      out[str(blocks)][str(depth)] = float(np.mean(accs))
    if fam and state_rms is not None:
      state_rms[str(blocks)] = np.mean(rmss, axis=0).round(4).tolist()
  return out


def title(args) -> str:
  t = f"digit carry, {args.mode}: trained on {args.blocks} blocks of {args.block}"
  if args.far2_steps:
    mix = '8/' if args.far2_mix else ''
    t += (f", then {mix}{args.far2_blocks} blocks"
          f" (lr {args.lr:g})")
  if args.init_model_dir:
    t += f", from {os.path.basename(os.path.normpath(args.init_model_dir))}"
  if args.fam_state_rms:
    t += f", FAM rows rescaled to RMS {args.fam_state_rms:g}"
  if args.fam_decay:
    t += f", learned FAM decay from {args.fam_decay:g}"
  if args.stream_steps:
    t += f", then {args.stream_steps} stream steps (lr {args.lr:g})"
  if args.growth_penalty:
    t += f", growth penalty {args.growth_penalty:g}"
  if args.size_penalty:
    t += f", size penalty {args.size_penalty:g}"
  if args.filler_rows:
    t += f", {args.filler_rows} filler stream rows"
  if args.far_continue:
    t += f", rows go on from their own state ({args.far_continue:g})"
  if args.far_hold:
    t += f", holds across pieces ({args.far_hold:g})"
  if args.far_warm:
    t += f", tasks from old filler states ({args.far_warm:g})"
  return t


def heatmap(path, res, caption):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from benchmarks import plotting
  lengths = list(res)
  depths = list(res[lengths[0]])
  grid = np.array([[res[l][d] for l in lengths] for d in depths])
  fig, ax = plt.subplots(figsize=(1.1 * len(lengths) + 2, 3))
  ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", origin="lower",
            aspect="auto")
  for i in range(len(depths)):
    for j in range(len(lengths)):
      ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", fontsize=8)
  ax.set_xticks(range(len(lengths)), lengths)
  ax.set_yticks(range(len(depths)), depths)
  ax.set_xlabel("sequence length (blocks)")
  ax.set_ylabel("needle depth")
  plotting._save(fig, path, caption)  # pylint: disable=protected-access


def parser():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--mode", default="fam", choices=("fam", "bswa", "full"))
  p.add_argument("--vocab", default="tokens", choices=("tokens", "byte"),
                 help="byte: the same task in the byte vocabulary, a BOS at "
                      "position 0 (the layout of famjax eval's digit_carry "
                      "task)")
  p.add_argument("--model_dir", default=None,
                 help="also save the trained model as a famjax model "
                      "directory (e.g. to score it with `famjax eval`)")
  p.add_argument("--block", type=int, default=16)
  p.add_argument("--memory", type=int, default=0)
  p.add_argument("--fam_length", type=int, default=4)
  p.add_argument("--fam_state_rms", type=float, default=None,
                 help="AttentionConfig.fam_state_rms (outside the rules)")
  p.add_argument("--fam_decay", type=float, default=None,
                 help="AttentionConfig.fam_decay (outside the rules): a "
                 "learned per-layer decay of the FAM state, starting here")
  p.add_argument("--blocks", type=int, default=8,
                 help="blocks per training sequence")
  p.add_argument("--init_model_dir", default=None,
                 help="start from this famjax model directory's weights "
                      "(same --vocab, --d_model, --layers, --heads)")
  p.add_argument("--d_model", type=int, default=64)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--dense_steps", type=int, default=300)
  p.add_argument("--far_steps", type=int, default=600)
  p.add_argument("--far2_steps", type=int, default=0,
                 help="a third phase: `far` at --far2_blocks blocks")
  p.add_argument("--far2_blocks", default="32",
                 help="blocks of a far2 sequence; a list (32,128) is taken "
                      "in turn")
  p.add_argument("--far2_mix", type=int, default=0,
                 help="1: every other far2 step is an ordinary `far` batch")
  p.add_argument("--stream_steps", type=int, default=0,
                 help="a last phase of endless per-row streams")
  p.add_argument("--stream_digit", type=float, default=1 / 48,
                 help="chance of a new digit in a stream block")
  p.add_argument("--stream_digit_start", type=float, default=None,
                 help="anneal the new-digit chance from this value to "
                      "--stream_digit over the stream phase (a gap "
                      "curriculum)")
  p.add_argument("--stream_question", type=float, default=0.25,
                 help="chance of a question in a stream block")
  p.add_argument("--stream_reset", type=float, default=0.02,
                 help="chance a step that a row starts a new stream")
  p.add_argument("--growth_penalty", type=float, default=0.0,
                 help="StepConfig.fam_growth_penalty: a training loss on the "
                      "growth of the FAM state's RMS over a sequence")
  p.add_argument("--size_penalty", type=float, default=0.0,
                 help="StepConfig.fam_size_penalty: a training loss on the "
                      "FAM state's RMS against the sequence's first block")
  p.add_argument("--filler_rows", type=int, default=0,
                 help="in the far phases, this many rows of each batch are "
                      "endless filler streams without loss that go on from "
                      "their own FAM state (state_passing='rows'), so that "
                      "--growth_penalty sees old states")
  p.add_argument("--filler_reset", type=float, default=1 / 64,
                 help="chance a step that a filler stream starts afresh")
  p.add_argument("--far_continue", type=float, default=0.0,
                 help="in the far2 phase (both lengths of a mix), the "
                      "chance a step that a row's "
                      "sequence starts from that row's own final FAM state "
                      "of the step before (state_passing='rows'), which "
                      "still holds the previous sequence's digit, instead "
                      "of the initial FAM; the question asks for the new "
                      "digit, so the model learns to overwrite, and the "
                      "states it trains on are of every age")
  p.add_argument("--far_hold", type=float, default=0.0,
                 help="in the far2 phase (both lengths of a mix), the chance "
                      "a step that a row goes on into a piece without a "
                      "digit whose question asks again for the digit it "
                      "holds (see Holds): holds longer than a piece")
  p.add_argument("--far_warm", type=float, default=0.0,
                 help="in the far2 phase, half the rows that start afresh "
                      "first run lossless filler pieces from their own "
                      "state and wake into a task piece with this chance a "
                      "step (Lives; with --far_hold: holds after it)")
  p.add_argument("--p_rsp", type=float, default=0.0)
  p.add_argument("--rpo", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--eval_mults", default="1,2,4,8,16,32,64")
  p.add_argument("--eval_samples", type=int, default=64)
  p.add_argument("--eval_batch", type=int, default=32)
  p.add_argument("--log_every", type=int, default=50)
  p.add_argument("--out", default=None)
  return p


def arguments(**overrides):
  """The command line's defaults with `overrides` (for callers in Python)."""
  args = parser().parse_args([])
  for k, v in overrides.items():
    if not hasattr(args, k):
      raise TypeError(f"digit_carry has no argument {k!r}")
    setattr(args, k, v)
  return args


def main(argv=None):
  return main_with(parser().parse_args(argv))


def main_with(args):
  """Train, save (--model_dir), evaluate and write (--out) for `args`."""

  def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)

  model = build(args)
  params, curve, train_s = train(model, args, log)
  if args.model_dir:
    from famjax import params_io
    params_io.save_model_dir(args.model_dir, model.cfg, params,
                             overwrite=True)
    log(f"saved the model to {args.model_dir}")
  rms = {}
  res = evaluate(model, params, args, rms)
  for blocks, row in res.items():
    log(f"{args.mode} {blocks} blocks: " +
        " ".join(f"depth {d}: {a:.0%}" for d, a in row.items()) +
        (f"; FAM state RMS by layer {rms[blocks]}" if blocks in rms else ""))
  keep = None
  if args.fam_decay:
    w = np.asarray(params["layers"]["fam_decay_logit"], np.float64)
    keep = [round(float(x), 5) for x in 1.0 / (1.0 + np.exp(-w))]
    log(f"learned FAM decay by layer: {keep}")
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
      json.dump({"args": vars(args), "train_s": round(train_s, 1),
                 "curve": curve, "accuracy": res, "fam_state_rms": rms,
                 "fam_decay_learned": keep}, fh, indent=1)
    heatmap(os.path.splitext(args.out)[0] + ".png", res, title(args))
    log(f"wrote {args.out}")
  return res


if __name__ == "__main__":
  main()
