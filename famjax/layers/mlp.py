"""Gated feed-forward networks: SwiGLU (Llama) and GeGLU (Gemma)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from famjax.layers.linear import Dense

_ACT = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class GatedMLP(nnx.Module):
  """down(act(gate(x)) * up(x))."""

  def __init__(self, d_model, ffn_dim, activation, *, rngs, param_dtype, stack,
               lora_rank=0, lora_alpha=16.0, lora_targets=()):
    kw = dict(rngs=rngs, param_dtype=param_dtype, stack=stack)
    lora = lambda name: dict(lora_rank=lora_rank if name in lora_targets else 0,
                             lora_alpha=lora_alpha)
    self.activation = activation
    self.gate = Dense(d_model, ffn_dim, in_axes=("embed",), out_axes=("mlp",),
                      **kw, **lora("gate"))
    self.up = Dense(d_model, ffn_dim, in_axes=("embed",), out_axes=("mlp",),
                    **kw, **lora("up"))
    self.down = Dense(ffn_dim, d_model, in_axes=("mlp",), out_axes=("embed",),
                      **kw, **lora("down"))

  def __call__(self, x):
    return self.down(_ACT[self.activation](self.gate(x)) * self.up(x))
