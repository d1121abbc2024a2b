"""Matrix-multiply FLOPs of a traced JAX program, read from its jaxpr.

XLA's `compiled.cost_analysis()` counts the body of every while loop once,
so for a train step whose layers (and microbatches, and FAM blocks) run
under `lax.scan` it undercounts by the trip counts. This counter walks the
jaxpr instead: every `dot_general` is 2 * (product of the output dimensions)
* (product of the contracting dimensions); a `scan` body counts `length`
times; a `cond` counts its most expensive branch; a Pallas kernel counts
its body once per grid point; any other primitive holding sub-programs
(jit, checkpoint, custom_vjp, ...) counts them once. `while` loops with a
trip count unknown at trace time count once and are reported, so that a
caller can say the total is a lower bound.
"""
from __future__ import annotations

import dataclasses
import math

from jax.extend import core


@dataclasses.dataclass
class FlopCount:
  """matmul: FLOPs of dot_generals; unbounded_loops: while loops of unknown
  trip count (counted once each)."""
  matmul: float = 0.0
  unbounded_loops: int = 0

  def add(self, other: "FlopCount", times: float = 1.0) -> None:
    self.matmul += times * other.matmul
    self.unbounded_loops += other.unbounded_loops


def _dot_flops(eqn) -> float:
  (lc, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lc)


def _subjaxprs(value):
  """Jaxprs inside one equation parameter (a jaxpr, or a tuple of them)."""
  if isinstance(value, core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _subjaxprs(v)


def _grid_points(eqn) -> int:
  grid = getattr(eqn.params.get("grid_mapping"), "grid", ())
  return math.prod(int(g) for g in grid if isinstance(g, int)) or 1


def count_jaxpr(jaxpr) -> FlopCount:
  """FlopCount of a Jaxpr or ClosedJaxpr (see module doc)."""
  if isinstance(jaxpr, core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = FlopCount()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total.matmul += _dot_flops(eqn)
    elif name == "scan":
      total.add(count_jaxpr(eqn.params["jaxpr"]), eqn.params["length"])
    elif name == "cond":
      branches = [count_jaxpr(b) for b in eqn.params["branches"]]
      total.add(max(branches, key=lambda c: c.matmul))
    elif name == "while":
      total.add(count_jaxpr(eqn.params["body_jaxpr"]))
      total.add(count_jaxpr(eqn.params["cond_jaxpr"]))
      total.unbounded_loops += 1
    elif name == "pallas_call":
      total.add(count_jaxpr(eqn.params["jaxpr"]), _grid_points(eqn))
    else:
      for value in eqn.params.values():
        for sub in _subjaxprs(value):
          total.add(count_jaxpr(sub))
  return total
