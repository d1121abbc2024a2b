"""LoRA: merging adapters into kernels, and which parameters train.

A LoRA projection (`famjax.layers.Dense` with lora_rank r) computes
`x W + (alpha / r) (x A) B`; `merge_lora` folds that into `W' = W + (alpha/r) A B`
so a fine-tuned model can be saved and served as a plain model.

`trainable_mask(params, "lora")` marks the LoRA weights and the FAM prompt
(the paper fine-tunes both); the trainer (`train.trainable = 'lora'`)
optimizes only those and leaves every other parameter bit-identical.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LORA_NAMES = ("lora_a", "lora_b")
LORA_TRAINABLE = LORA_NAMES + ("fam_prompt", "fam_decay_logit")
MASK_MODES = ("all", "lora")


def _merge_one(kernel, a, b, scale):
  nstack = (a.ndim - 1) + (b.ndim - 1) - kernel.ndim
  lead = kernel.shape[:nstack]
  r = a.shape[-1]
  if b.shape[nstack] != r or a.shape[:nstack] != lead or b.shape[:nstack] != lead:
    raise ValueError(f"LoRA shapes do not fit: kernel {kernel.shape}, "
                     f"lora_a {a.shape}, lora_b {b.shape}")
  xp = jnp if isinstance(kernel, jax.Array) else np
  a2 = xp.asarray(a, xp.float32).reshape(lead + (-1, r))
  b2 = xp.asarray(b, xp.float32).reshape(lead + (r, -1))
  delta = xp.matmul(a2, b2).reshape(kernel.shape)
  return (xp.asarray(kernel, xp.float32) + scale * delta).astype(kernel.dtype)


def merge_lora(params: dict, cfg):
  """(params with every LoRA pair folded into its kernel, cfg with lora_rank 0).

  params: a nested dict (e.g. `nnx.state(model, nnx.Param).to_pure_dict()`)
  of a model built with `cfg`. Arrays are merged in float32 and cast back to
  the kernel's dtype. With lora_rank 0 the params come back unchanged.
  """
  if cfg.lora_rank == 0:
    return params, cfg
  scale = cfg.lora_alpha / cfg.lora_rank

  def walk(tree, path):
    if not isinstance(tree, dict):
      return tree
    out = {k: walk(v, path + (k,)) for k, v in tree.items()
           if k not in LORA_NAMES}
    has = [k in tree and tree[k] is not None for k in LORA_NAMES]
    if any(has):
      name = ".".join(map(str, path))
      if not all(has) or "kernel" not in tree:
        raise ValueError(f"{name}: LoRA weights need kernel, lora_a and lora_b "
                         f"together; found {sorted(tree)}.")
      out["kernel"] = _merge_one(tree["kernel"], tree["lora_a"], tree["lora_b"],
                                 scale)
    return out

  return walk(params, ()), dataclasses.replace(cfg, lora_rank=0)


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def trainable_mask(params: Any, mode: str = "all"):
  """A pytree of bools shaped like `params`: True where a parameter trains.

  mode "all": every parameter; "lora": only lora_a / lora_b, fam_prompt and
  (with AttentionConfig.fam_decay) the learned decay.
  Works on nested dicts and on `nnx.State` alike (the mask has the input's
  tree structure).
  """
  if mode not in MASK_MODES:
    raise ValueError(f"trainable_mask: mode={mode!r} must be one of {MASK_MODES}.")
  if mode == "all":
    return jax.tree.map(lambda _: True, params)

  def is_trainable(path, _):
    return any(_key_name(p) in LORA_TRAINABLE for p in path)

  mask = jax.tree_util.tree_map_with_path(is_trainable, params)
  if not any(jax.tree.leaves(mask)):
    raise ValueError("trainable_mask(mode='lora'): the parameters hold no LoRA "
                     "weights and no fam_prompt; set ModelConfig.lora_rank > 0.")
  return mask
