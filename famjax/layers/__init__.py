"""Building blocks: dense projections, norms, RoPE, gated FFNs."""
from famjax.layers.linear import Dense, Embed, param_with_axes
from famjax.layers.norms import RMSNorm
from famjax.layers.rope import apply_rope, inv_frequencies
from famjax.layers.mlp import GatedMLP

__all__ = ["Dense", "Embed", "param_with_axes", "RMSNorm",
           "apply_rope", "inv_frequencies", "GatedMLP"]
