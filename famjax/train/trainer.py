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
  rsp        [L, F, d] float32 (FAM mode only): the FAM state kept from batch
             element 0 of the previous step (Random State Passing)

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
  """
  microbatches: int = 1
  p_rsp: float = 0.8
  random_position_offset: bool = True
  z_loss: float = 0.0

  def validate(self, batch_size: int) -> "StepConfig":
    if self.microbatches < 1 or batch_size % self.microbatches:
      raise ValueError(
          f"StepConfig.microbatches={self.microbatches} must be >= 1 and "
          f"divide the batch size {batch_size}.")
    if not 0.0 <= self.p_rsp <= 1.0:
      raise ValueError(f"StepConfig.p_rsp={self.p_rsp} must be in [0, 1].")
    return self


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
def init_state(model, tx, keys, *, seed: int):
  """Train state of an initialised model (see module doc)."""
  _, params, _ = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  train, _ = split_params(params, keys)
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "opt_state": tx.init(train),
           "rng": jax.random.key_data(jax.random.key(seed))}
  cfg = model.cfg
  if cfg.attention.mode == "fam":
    state["rsp"] = jnp.zeros(
        (cfg.num_layers, cfg.attention.fam_length, cfg.d_model), jnp.float32)
  return state


def step_randomness(rng, step, cfg: StepConfig, rope_theta: float):
  """(position offset or None, RSP coin) of train step `step`."""
  key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
  k_off, k_on, k_coin = jax.random.split(key, 3)
  offset = None
  if cfg.random_position_offset:
    # offset = U(0, 2 pi theta) * round(U(0, 1)): zero half of the time.
    offset = (jax.random.uniform(k_off) * (2 * math.pi * rope_theta) *
              jnp.round(jax.random.uniform(k_on)))
  coin = (jax.random.uniform(k_coin) < cfg.p_rsp) & (step > 0)
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
             use_fam_state=None):
  model = nnx.merge(graphdef, params, rest)
  fam = model.cfg.attention.mode == "fam"
  if fam and fam_state is not None:
    b = batch[INPUTS].shape[0]
    fam_state = jnp.broadcast_to(fam_state[:, None],
                                 (fam_state.shape[0], b) + fam_state.shape[1:])
    logits, aux = model(batch[INPUTS], fam_state=fam_state,
                        use_fam_state=use_fam_state, position_offset=offset,
                        return_state=True)
  else:
    logits, aux = model(batch[INPUTS], position_offset=offset,
                        return_state=True)
  return logits, aux.get("fam_state")


def _summaries(stats, grad_norm=None, lr=None):
  denom = jnp.maximum(stats["weight_sum"], 1.0)
  out = {"loss": stats["loss_sum"] / denom,
         "accuracy": stats["correct_sum"] / denom,
         "tokens": stats["weight_sum"]}
  if "z_sum" in stats:
    out["z_loss"] = stats["z_sum"] / denom
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

  def loss_fn(train, frozen, mb, offset, fam_state, use):
    params = join_params(train, frozen)
    logits, phi = _forward(graphdef, rest, params, mb, offset=offset,
                           fam_state=fam_state, use_fam_state=use)
    stats = token_stats(logits, mb, cfg.z_loss)
    return stats["loss_sum"] + stats["z_sum"], (stats, phi)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def step(state, batch):
    offset, coin = step_randomness(state["rng"], state["step"], cfg,
                                   mcfg.rope_theta)
    fam_state = state.get("rsp") if fam and cfg.p_rsp > 0 else None
    train, frozen = split_params(state["params"], keys)
    mbs = microbatches(batch, k)

    def micro(acc, mb):
      g, (stats, phi) = grad_fn(train, frozen, mb, offset, fam_state, coin)
      acc = jax.tree.map(jnp.add, acc, (g, stats))
      return acc, (phi[:, 0] if phi is not None else None)

    zeros = (jax.tree.map(jnp.zeros_like, train),
             {n: jnp.zeros((), jnp.float32)
              for n in ("loss_sum", "correct_sum", "weight_sum", "z_sum")})
    if k == 1:
      (grads, stats), kept = micro(zeros, jax.tree.map(lambda x: x[0], mbs))
    else:
      (grads, stats), kept = jax.lax.scan(micro, zeros, mbs)
      kept = None if kept is None else kept[0]
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
    metrics["rsp_used"] = coin.astype(jnp.float32) if fam else jnp.zeros(())
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
