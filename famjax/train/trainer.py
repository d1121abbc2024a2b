"""The jitted train and eval steps, and the train state they update.

Training-only behaviour (Random Position Offset, Random State Passing) is
that of docs/fam.md; `famjax.train.loop` runs these steps.

The train state is a plain dict pytree (what the checkpoints hold):
  step       int32, updates done so far
  params     nested dict of float32 arrays (all weights, frozen ones included)
  opt_state  optax state of the trainable subset of `params`
  rng        uint32[2] base key; step `s` uses `fold_in(rng, s)`, so the
             Random Position Offset and Random State Passing draws of a
             resumed run are those of an uninterrupted one
  rsp        float32 (FAM mode only), the FAM states kept for Random State
             Passing: [L, F, d], batch element 0's final state of the
             previous step (`state_passing="row0"`), or [L, batch, F, d],
             every row's own (`state_passing="rows"`)

`make_train_step` builds one jit-compiled, state-donating function
`(state, batch) -> (state, metrics)`: gradient accumulation over
`microbatches` with a `lax.scan` (gradients of token-weighted sums, divided by
the total weight once, so k microbatches equal one batch of k times the size),
then one optax update of the trainable parameters. Frozen parameters are not
differentiated and pass through unchanged (bit-identical).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax import traverse_util

INPUTS, TARGETS, WEIGHTS = ("decoder_input_tokens", "decoder_target_tokens",
                            "decoder_loss_weights")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What one train step does besides forward/backward.

  microbatches: gradient accumulation steps (must divide the batch size).
  p_rsp: Random State Passing probability (FAM mode; 0 disables it).
  random_position_offset: Random Position Offset (docs/fam.md) on/off.
  z_loss: weight of the log(Z)^2 auxiliary loss (0 = off).
  state_passing: which FAM state a step starts from when it passes one:
    "row0"  batch element 0's final state of the previous step, for every
            row, on one coin of p_rsp a step (the paper's RSP);
    "rows"  row i continues from row i's own final state of the previous
            step, each row on its own coin of p_rsp, as the next block of
            one long sequence (block 0 updates the kept state with its
            residual: `Transformer.__call__(continue_stream=...)`). For
            streams: data in which row i of a batch continues row i of the
            batch before (truncated backpropagation through the FAM; with
            m > 0 the memory blocks before the cut are not seen). A batch
            may carry `fam_continue` [batch] (1: this row continues, 0: it
            starts a new document); it then replaces the coins.
  fam_growth_penalty: weight of a training loss on the change of the FAM
    state's size from block to block (FAM mode; 0 = off, the default).
    Under docs/fam.md's rules the FAM rows are a residual stream that every
    block adds to, and they grow with the blocks read. The term is the mean
    over layers, rows and consecutive blocks of log(RMS(Phi_t) /
    RMS(Phi_t-1))^2 (`state_growth`), weighted like one token's loss per
    target token. It changes what is learned, not the model's computation.
  fam_size_penalty: weight of a training loss on the FAM state's size
    against the first block of the step's sequence (FAM mode; 0 = off, the
    default): the mean over layers, rows and blocks t >= 1 of
    log(RMS(Phi_t) / RMS(Phi_0))^2 (`state_drift`), weighted like
    fam_growth_penalty. The block-to-block term lets a slow growth through
    (1% a block costs 1e-4 a block, and is 3.5x over 128 blocks); this one
    charges the whole drift of the sequence. Under state_passing "rows" a
    continued row's Phi_0 is its first block of this step.
  """
  microbatches: int = 1
  p_rsp: float = 0.8
  random_position_offset: bool = True
  z_loss: float = 0.0
  state_passing: str = "row0"
  fam_growth_penalty: float = 0.0
  fam_size_penalty: float = 0.0

  def validate(self, batch_size: int) -> "StepConfig":
    if self.microbatches < 1 or batch_size % self.microbatches:
      raise ValueError(
          f"StepConfig.microbatches={self.microbatches} must be >= 1 and "
          f"divide the batch size {batch_size}.")
    if not 0.0 <= self.p_rsp <= 1.0:
      raise ValueError(f"StepConfig.p_rsp={self.p_rsp} must be in [0, 1].")
    if self.state_passing not in STATE_PASSING:
      raise ValueError(f"StepConfig.state_passing={self.state_passing!r} is "
                       f"unknown; use one of {STATE_PASSING}.")
    for name in ("fam_growth_penalty", "fam_size_penalty"):
      if not getattr(self, name) >= 0.0:
        raise ValueError(f"StepConfig.{name}={getattr(self, name)} must be "
                         f">= 0.")
    return self

  def check_mode(self, mode: str) -> "StepConfig":
    """The fields that need a FAM model, against the attention mode."""
    for name, what in (("fam_growth_penalty", "the growth of the FAM state"),
                       ("fam_size_penalty",
                        "the drift of the FAM state's size")):
      if getattr(self, name) > 0 and mode != "fam":
        raise ValueError(
            f"StepConfig.{name}={getattr(self, name)} penalises {what}, but "
            f"the attention mode (AttentionConfig.mode) is {mode!r}, which "
            f"has none: set it to 0 or use mode 'fam'.")
    return self

  def rsp_rows(self, batch_size: int) -> int | None:
    """`init_state`'s rsp_rows: one kept state a row under "rows"."""
    return batch_size if self.state_passing == "rows" else None


STATE_PASSING = ("row0", "rows")
CONTINUE = "fam_continue"


# ----------------------------------------------------------- parameter trees
def flat(tree) -> dict:
  return traverse_util.flatten_dict(tree)


def split_params(params, trainable_keys):
  """(trainable, frozen) nested dicts of the flat keys in `trainable_keys`."""
  f = flat(params)
  train = {k: v for k, v in f.items() if k in trainable_keys}
  frozen = {k: v for k, v in f.items() if k not in trainable_keys}
  return (traverse_util.unflatten_dict(train),
          traverse_util.unflatten_dict(frozen))


def join_params(a, b):
  return traverse_util.unflatten_dict({**flat(a), **flat(b)})


def trainable_keys(params, trainable: str = "all") -> frozenset:
  """Flat keys of the parameters to train.

  "all": every parameter. "lora": LoRA weights and fam_prompt
  (`famjax.lora.trainable_mask`). "regex:PATTERN": names ("a/b/c") matching.
  """
  f = flat(params)
  if trainable == "all":
    keys = set(f)
  elif trainable == "lora":
    from famjax.lora import trainable_mask
    mask = flat(trainable_mask(params, "lora"))
    keys = {k for k, on in mask.items() if bool(on)}
  elif trainable.startswith("regex:"):
    pat = re.compile(trainable[len("regex:"):])
    keys = {k for k in f if pat.search("/".join(map(str, k)))}
  else:
    raise ValueError(f"train.trainable={trainable!r} is unknown; use 'all', "
                     "'lora' or 'regex:PATTERN'.")
  if not keys:
    raise ValueError(f"train.trainable={trainable!r} selects no parameter "
                     "(for 'lora', set ModelConfig.lora_rank > 0).")
  return frozenset(keys)


# ------------------------------------------------------------------- state
def init_state(model, tx, keys, *, seed: int, rsp_rows: int | None = None):
  """Train state of an initialised model (see module doc).

  rsp_rows: the batch size, for `StepConfig.state_passing="rows"` (one kept
  FAM state a row); None keeps one state (`"row0"`).
  """
  _, params, _ = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  train, _ = split_params(params, keys)
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": tx.init(train),
           "rng": jax.random.key_data(jax.random.key(seed))}
  cfg = model.cfg
  if cfg.attention.mode == "fam":
    rows = () if rsp_rows is None else (rsp_rows,)
    state["rsp"] = jnp.zeros(
        (cfg.num_layers,) + rows + (cfg.attention.fam_length, cfg.d_model),
        jnp.float32)
  return state


def step_randomness(rng, step, cfg: StepConfig, rope_theta: float,
                    rows: int | None = None):
  """(position offset or None, RSP coin) of train step `step`; with `rows`,
  one coin a row ([rows] booleans, `state_passing="rows"`)."""
  key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
  k_off, k_on, k_coin = jax.random.split(key, 3)
  offset = None
  if cfg.random_position_offset:
    # offset = U(0, 2 pi theta) * round(U(0, 1)): zero half of the time.
    offset = (jax.random.uniform(k_off) * (2 * math.pi * rope_theta) *
              jnp.round(jax.random.uniform(k_on)))
  shape = () if rows is None else (rows,)
  coin = (jax.random.uniform(k_coin, shape) < cfg.p_rsp) & (step > 0)
  return offset, coin


# -------------------------------------------------------------------- loss
def token_stats(logits, batch, z_loss: float = 0.0):
  """Weighted sums over tokens: loss, z-loss, correct, weight."""
  targets = batch[TARGETS]
  w = batch[WEIGHTS].astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  gold = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  ce = lse - gold
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  stats = {"loss_sum": jnp.sum(ce * w), "correct_sum": jnp.sum(correct * w),
           "weight_sum": jnp.sum(w)}
  stats["z_sum"] = jnp.sum(z_loss * jnp.square(lse) * w) if z_loss else (
      jnp.zeros((), jnp.float32))
  return stats


def _forward(graphdef, rest, params, batch, *, offset=None, fam_state=None,
             use_fam_state=None, continue_stream=False):
  model = nnx.merge(graphdef, params, rest)
  fam = model.cfg.attention.mode == "fam"
  if fam and fam_state is not None:
    b = batch[INPUTS].shape[0]
    if fam_state.ndim == 3:                       # one state for every row
      fam_state = jnp.broadcast_to(
          fam_state[:, None], (fam_state.shape[0], b) + fam_state.shape[1:])
    logits, aux = model(batch[INPUTS], fam_state=fam_state,
                        use_fam_state=use_fam_state,
                        continue_stream=continue_stream,
                        position_offset=offset, return_state=True)
  else:
    logits, aux = model(batch[INPUTS], position_offset=offset,
                        return_state=True)
  return logits, aux


def _log_rms_gap(rms, reference: str):
  """Mean over layers, rows and blocks t >= 1 of (log RMS(Phi_t) - log
  RMS(Phi_ref))^2, ref = t-1 ("previous") or 0 ("first"), from the
  per-block RMS [L, b, n] of the model's `fam_rms` (0 for a single block)."""
  lr = jnp.log(jnp.maximum(rms.astype(jnp.float32), 1e-30))
  if lr.shape[-1] < 2:
    return jnp.zeros((), jnp.float32)
  ref = lr[..., :-1] if reference == "previous" else lr[..., :1]
  return jnp.mean(jnp.square(lr[..., 1:] - ref))


def state_growth(rms):
  """fam_growth_penalty's term: log(RMS(Phi_t) / RMS(Phi_t-1))^2."""
  return _log_rms_gap(rms, "previous")


def state_drift(rms):
  """fam_size_penalty's term: log(RMS(Phi_t) / RMS(Phi_0))^2."""
  return _log_rms_gap(rms, "first")


def _summaries(stats, grad_norm=None, lr=None):
  denom = jnp.maximum(stats["weight_sum"], 1.0)
  out = {"loss": stats["loss_sum"] / denom,
         "accuracy": stats["correct_sum"] / denom,
         "tokens": stats["weight_sum"]}
  if "z_sum" in stats:
    out["z_loss"] = stats["z_sum"] / denom
  if "growth_sum" in stats:
    out["fam_growth"] = stats["growth_sum"] / denom
  if "size_sum" in stats:
    out["fam_size"] = stats["size_sum"] / denom
  if grad_norm is not None:
    out["grad_norm"] = grad_norm
  if lr is not None:
    out["learning_rate"] = lr
  return out


# -------------------------------------------------------------------- steps
def microbatches(batch, k: int):
  """[B, ...] -> [k, B/k, ...], microbatch j = rows j, j+k, j+2k, ...

  Interleaved, so that a batch split over devices in contiguous row blocks
  gives every device its share of every microbatch, and row 0 (whose FAM
  state Random State Passing keeps) is row 0 of microbatch 0.
  """
  return jax.tree.map(
      lambda x: x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1),
      batch)


def make_train_step(model, tx, schedule: Callable, keys, cfg: StepConfig, *,
                    jit: bool = True, state_shardings=None,
                    batch_sharding=None):
  """(state, batch) -> (state, metrics), jit-compiled with the state donated.

  state_shardings / batch_sharding: NamedShardings of the train state and
  of the batch (famjax.train.sharding); None lets jit follow the inputs.
  """
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  mcfg = model.cfg
  fam = mcfg.attention.mode == "fam"
  k = cfg.microbatches
  rows = fam and cfg.state_passing == "rows"
  growth = cfg.check_mode(mcfg.attention.mode).fam_growth_penalty > 0
  size = cfg.fam_size_penalty > 0
  sums = ("loss_sum", "correct_sum", "weight_sum", "z_sum") + (
      ("growth_sum",) if growth else ()) + (("size_sum",) if size else ())

  def loss_fn(train, frozen, mb, offset, fam_state, use):
    params = join_params(train, frozen)
    logits, aux = _forward(graphdef, rest, params, mb, offset=offset,
                           fam_state=fam_state, use_fam_state=use,
                           continue_stream=rows)
    phi = aux.get("fam_state")
    stats = token_stats(logits, mb, cfg.z_loss)
    loss = stats["loss_sum"] + stats["z_sum"]
    if growth:
      g = state_growth(aux["fam_rms"])
      stats["growth_sum"] = g * stats["weight_sum"]
      loss = loss + cfg.fam_growth_penalty * stats["growth_sum"]
    if size:
      stats["size_sum"] = state_drift(aux["fam_rms"]) * stats["weight_sum"]
      loss = loss + cfg.fam_size_penalty * stats["size_sum"]
    return loss, (stats, phi)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def step(state, batch):
    n = batch[INPUTS].shape[0]
    if rows and state["rsp"].shape[1:2] != (n,):
      raise ValueError(
          f"StepConfig.state_passing='rows' keeps one FAM state a row, but "
          f"the train state holds {state['rsp'].shape} for a batch of {n}: "
          f"build it with init_state(..., rsp_rows={n}).")
    offset, coin = step_randomness(state["rng"], state["step"], cfg,
                                   mcfg.rope_theta, n if rows else None)
    batch = dict(batch)
    cont = batch.pop(CONTINUE, None)
    if rows and cont is not None:
      coin = (jnp.asarray(cont) > 0) & (state["step"] > 0)
    passing = fam and (cfg.p_rsp > 0 or (rows and cont is not None))
    fam_state = state.get("rsp") if passing else None
    train, frozen = split_params(state["params"], keys)
    mbs = microbatches(batch, k)
    if rows:
      # Row r is row r // k of microbatch r % k (see `microbatches`).
      mbs["_coin"] = microbatches({"c": coin}, k)["c"]
      if fam_state is not None:
        mbs["_phi"] = jnp.moveaxis(
            fam_state.reshape(fam_state.shape[0], n // k, k,
                              *fam_state.shape[2:]), 2, 0)

    def micro(acc, mb):
      mb = dict(mb)
      use = mb.pop("_coin") if rows else coin
      phi0 = mb.pop("_phi", None) if rows else fam_state
      g, (stats, phi) = grad_fn(train, frozen, mb, offset, phi0, use)
      acc = jax.tree.map(jnp.add, acc, (g, stats))
      if phi is None:
        return acc, None
      return acc, (phi if rows else phi[:, 0])

    zeros = (jax.tree.map(jnp.zeros_like, train),
             {n: jnp.zeros((), jnp.float32) for n in sums})
    if k == 1:
      (grads, stats), kept = micro(zeros, jax.tree.map(lambda x: x[0], mbs))
    else:
      (grads, stats), kept = jax.lax.scan(micro, zeros, mbs)
      if kept is not None and rows:              # [k, L, n/k, ..] -> [L, n, ..]
        kept = jnp.moveaxis(kept, 0, 2).reshape(
            (kept.shape[1], n) + kept.shape[3:])
      elif kept is not None:
        kept = kept[0]
    denom = jnp.maximum(stats["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], train)
    train = optax.apply_updates(train, updates)
    new = dict(state, step=state["step"] + 1, opt_state=opt_state,
               params=join_params(train, frozen))
    if fam:
      new["rsp"] = jax.lax.stop_gradient(kept).astype(jnp.float32)
    metrics = _summaries(stats, grad_norm, schedule(state["step"]))
    metrics["rsp_used"] = (jnp.mean(coin.astype(jnp.float32)) if passing
                           else jnp.zeros(()))
    if offset is not None:
      metrics["position_offset"] = offset
    return new, metrics

  if not jit:
    return step
  if state_shardings is None:
    return jax.jit(step, donate_argnums=0)
  repl = _replicated(state_shardings)
  return jax.jit(step, donate_argnums=0,
                 in_shardings=(state_shardings, batch_sharding),
                 out_shardings=(state_shardings, repl))


def _replicated(shardings):
  mesh = jax.tree.leaves(shardings)[0].mesh
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def make_eval_step(model, *, jit: bool = True, params_shardings=None,
                   batch_sharding=None):
  """(params, batch) -> summed stats; no offset, initial FAM (docs/fam.md)."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  def step(params, batch):
    logits, _ = _forward(graphdef, rest, params, batch)
    return token_stats(logits, batch)

  if not jit:
    return step
  if params_shardings is None:
    return jax.jit(step)
  return jax.jit(step, in_shardings=(params_shardings, batch_sharding),
                 out_shardings=_replicated(params_shardings))


def evaluate(eval_step, params, batches) -> dict:
  """Token-weighted mean loss and accuracy over an iterable of batches."""
  total = None
  for batch in batches:
    s = jax.device_get(eval_step(params, batch))
    total = s if total is None else {k: total[k] + s[k] for k in s}
  if total is None:
    return {}
  denom = max(float(total["weight_sum"]), 1.0)
  return {"loss": float(total["loss_sum"]) / denom,
          "accuracy": float(total["correct_sum"]) / denom,
          "tokens": float(total["weight_sum"])}


def is_finite(metrics) -> bool:
  return all(np.isfinite(float(metrics[k])) for k in ("loss", "grad_norm")
             if k in metrics)
