"""Optimizers (AdamW, Adafactor) and learning-rate schedules, gin-configurable.

`make_optimizer(params, total_steps)` returns `(tx, schedule)`:
  tx        optax transformation: global-norm clipping, then the optimizer
            with decoupled weight decay on the masked-in parameters.
  schedule  step -> learning rate (linear warmup, then constant / cosine /
            rsqrt); also reported as the `learning_rate` metric.

Weight decay never touches norm scales, biases, `fam_prompt`, the learned
FAM decay (`fam_decay_logit`) or LoRA
weights (`lora_a`, `lora_b`: decay would pull the adapted model back to the
base model, not towards small weights); embeddings only with
`decay_embeddings=True`.
"""
from __future__ import annotations

import math

import gin
import jax
import jax.numpy as jnp
import optax

from famjax.lora import LORA_NAMES

SCHEDULES = ("constant", "cosine", "rsqrt")
OPTIMIZERS = ("adamw", "adafactor")


@gin.configurable
def make_schedule(total_steps: int, *, peak_learning_rate: float = 1e-3,
                  schedule: str = "cosine", warmup_steps: int = 100,
                  end_fraction: float = 0.1):
  """Linear warmup from 0 to the peak over `warmup_steps`, then:

  constant  the peak.
  cosine    cosine decay from the peak to `end_fraction * peak` at
            `total_steps`.
  rsqrt     peak * sqrt(warmup_steps / step) (inverse square root).
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"make_schedule.schedule={schedule!r} is unknown; choose "
                     f"one of {SCHEDULES}.")
  peak = float(peak_learning_rate)
  warm = max(int(warmup_steps), 0)
  decay_steps = max(int(total_steps) - warm, 1)

  def fn(step):
    s = jnp.asarray(step, jnp.float32)
    ramp = jnp.minimum((s + 1.0) / max(warm, 1), 1.0) if warm else 1.0
    after = jnp.maximum(s - warm, 0.0)
    if schedule == "constant":
      tail = peak
    elif schedule == "cosine":
      frac = jnp.minimum(after / decay_steps, 1.0)
      tail = peak * (end_fraction + (1 - end_fraction) * 0.5 *
                     (1 + jnp.cos(math.pi * frac)))
    else:
      tail = peak * jax.lax.rsqrt(jnp.maximum(s + 1.0, max(warm, 1)) /
                                  max(warm, 1))
    return jnp.asarray(ramp * tail, jnp.float32)

  return fn


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def decay_mask(params, decay_embeddings: bool = False):
  """True where weight decay applies (matrices of projections and FFNs)."""

  def decide(path, _):
    name = _path_name(path)
    leaf = name.rsplit("/", 1)[-1]
    if ("norm" in name or leaf in ("bias",) + LORA_NAMES or
        "fam_prompt" in name or leaf == "fam_decay_logit"):
      return False
    if leaf == "embedding":
      return decay_embeddings
    return True

  return jax.tree_util.tree_map_with_path(decide, params)


@gin.configurable
def make_optimizer(params, total_steps: int, *, name: str = "adamw",
                   weight_decay: float = 0.0, clip_norm: float = 1.0,
                   b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8,
                   decay_embeddings: bool = False,
                   adafactor_factored: bool = True):
  """(optax transformation, schedule) for the trainable `params` tree."""
  if name not in OPTIMIZERS:
    raise ValueError(f"make_optimizer.name={name!r} is unknown; choose one of "
                     f"{OPTIMIZERS}.")
  schedule = make_schedule(total_steps)
  mask = decay_mask(params, decay_embeddings)
  parts = []
  if clip_norm and clip_norm > 0:
    parts.append(optax.clip_by_global_norm(clip_norm))
  if name == "adamw":
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps,
                             weight_decay=weight_decay, mask=mask))
  else:
    parts.append(optax.adafactor(
        schedule, factored=adafactor_factored, multiply_by_parameter_scale=False,
        clipping_threshold=None, weight_decay_rate=weight_decay or None,
        weight_decay_mask=mask))
  return optax.chain(*parts), schedule
