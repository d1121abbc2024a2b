"""Meshes, logical-axis rules and sharding helpers.

Parameters carry logical axis names (`nnx.Param(..., logical_axes=(...))`,
see `famjax.layers.linear`); one rules table maps each name to mesh axes of a
`jax.sharding.Mesh` with axes ("data", "fsdp", "tensor"):

    mesh = make_mesh({"data": -1, "fsdp": 2, "tensor": 1})
    shardings = param_shardings(nnx.state(model), mesh)     # NamedShardings
    state = shard_params(nnx.state(model), shardings)
    batch = host_local_to_global(local_batch, mesh)          # multi-host input
    step = jax.jit(f, in_shardings=(shardings, data_sharding(mesh)), ...)

Activations are pinned the same way: the model calls
`constrain(x, ("batch", "length", "act_embed"))` on its block and FAM paths;
under a mesh context (`with jax.set_mesh(mesh):` around tracing) that is a
sharding constraint by the rules (`activation_rules(rules)` overrides them),
without one a no-op.

Rule resolution for one array (`logical_to_spec`): each dimension takes the
mesh axes its name maps to, minus axes an earlier dimension already uses;
if the dimension is not divisible by their total size, axes are dropped from
the right until it is (possibly down to replication). So every rule table
works on every mesh and every model size, silently degrading to replication
where a split is impossible.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

AxisRule = Union[None, str, Tuple[str, ...]]

# logical name -> mesh axes (None: replicated).
DEFAULT_RULES: Mapping[str, AxisRule] = {
    # activations
    "batch": ("data", "fsdp"),
    "length": None,
    "blocks": None,
    "act_embed": None,
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "kv": None,
    "mlp": "tensor",
    "layers": None,
    "fam": None,
    "lora": None,
}


def make_rules(overrides: Optional[Mapping[str, AxisRule]] = None,
               **kw: AxisRule) -> dict:
  """DEFAULT_RULES updated with `overrides` / keyword overrides."""
  rules = dict(DEFAULT_RULES)
  rules.update(overrides or {})
  rules.update(kw)
  for name, axes in rules.items():
    for a in _as_axes(axes):
      if a not in MESH_AXES:
        raise ValueError(f"rule {name!r} -> {axes!r}: unknown mesh axis {a!r}; "
                         f"mesh axes are {MESH_AXES}.")
  return rules


def _as_axes(rule: AxisRule) -> Tuple[str, ...]:
  if rule is None:
    return ()
  if isinstance(rule, str):
    return (rule,)
  return tuple(rule)


# ----------------------------------------------------------------- meshes
def make_mesh(shape: Union[Mapping[str, int], Sequence[int]] = (-1, 1, 1),
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A Mesh with axes ("data", "fsdp", "tensor") over `devices`.

  shape: {"data": -1, "fsdp": 1, "tensor": 1} or a 3-sequence in that
  order; one entry may be -1 (all remaining devices). devices default to
  `jax.devices()`, which spans every host of a multi-host job (processes
  then lie along the leading axes, tensor/fsdp groups within a host when
  they fit).
  """
  if isinstance(shape, Mapping):
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"make_mesh: unknown axes {sorted(unknown)}; mesh axes "
                       f"are {MESH_AXES}.")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  else:
    sizes = [int(s) for s in shape]
    if len(sizes) != len(MESH_AXES):
      raise ValueError(f"make_mesh: shape {tuple(shape)} needs one size per "
                       f"axis {MESH_AXES}.")
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"make_mesh: sizes {sizes} must be positive, with at most "
                     "one -1.")
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if n % known:
      raise ValueError(f"make_mesh: {n} devices cannot be split into "
                       f"{dict(zip(MESH_AXES, sizes))}.")
    sizes[sizes.index(-1)] = n // known
  if math.prod(sizes) != n:
    raise ValueError(f"make_mesh: mesh {dict(zip(MESH_AXES, sizes))} needs "
                     f"{math.prod(sizes)} devices, there are {n}.")
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_device_mesh(sizes, devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(grid, MESH_AXES)


def _mesh_sizes(mesh) -> Mapping[str, int]:
  if mesh is None:
    return {}
  if isinstance(mesh, Mapping):
    return dict(mesh)
  return dict(mesh.shape)


# ---------------------------------------------------------------- specs
def logical_to_spec(axes: Sequence[Optional[str]],
                    rules: Optional[Mapping[str, AxisRule]] = None, *,
                    shape: Optional[Sequence[int]] = None,
                    mesh: Union[Mesh, Mapping[str, int], None] = None) -> P:
  """PartitionSpec of an array whose dimensions have logical names `axes`.

  With `shape` and `mesh` (a Mesh or {axis: size}), a dimension keeps only
  as many of its mesh axes (from the left) as divide it.
  """
  rules = DEFAULT_RULES if rules is None else rules
  sizes = _mesh_sizes(mesh)
  if shape is not None and len(shape) != len(axes):
    raise ValueError(f"logical axes {tuple(axes)} do not match shape "
                     f"{tuple(shape)}.")
  used, out = set(), []
  for i, name in enumerate(axes):
    if name is None:
      out.append(None)
      continue
    if name not in rules:
      raise ValueError(
          f"logical axis {name!r} has no sharding rule; add one, e.g. "
          f"make_rules({name}=None) to replicate it. Known: {sorted(rules)}.")
    mesh_axes = [a for a in _as_axes(rules[name])
                 if a not in used and (not sizes or a in sizes)]
    if shape is not None and sizes:
      while mesh_axes and shape[i] % math.prod(sizes[a] for a in mesh_axes):
        mesh_axes.pop()
    used.update(mesh_axes)
    if not mesh_axes:
      out.append(None)
    elif len(mesh_axes) == 1:
      out.append(mesh_axes[0])
    else:
      out.append(tuple(mesh_axes))
  return P(*out)


_ACTIVATION_RULES: list = []


class activation_rules:
  """Context manager: rules for `constrain` while tracing (default rules
  otherwise)."""

  def __init__(self, rules: Optional[Mapping[str, AxisRule]]):
    self.rules = rules

  def __enter__(self):
    _ACTIVATION_RULES.append(self.rules)
    return self

  def __exit__(self, *exc):
    _ACTIVATION_RULES.pop()


def constrain(x, axes: Sequence[Optional[str]]):
  """x with its sharding pinned to logical `axes` under the current mesh
  context (`jax.set_mesh`); unchanged when no mesh is set."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  rules = _ACTIVATION_RULES[-1] if _ACTIVATION_RULES else None
  spec = logical_to_spec(axes, rules, shape=x.shape, mesh=dict(mesh.shape))
  return jax.lax.with_sharding_constraint(x, spec)


def _is_var(x):
  return isinstance(x, nnx.Variable)


def _var_spec(var, rules, mesh):
  axes = var.get_metadata().get("logical_axes")
  shape = tuple(np.shape(var.get_value()))
  if axes is None:
    return P()
  return logical_to_spec(axes, rules, shape=shape, mesh=mesh)


def param_specs(state, rules: Optional[Mapping[str, AxisRule]] = None,
                mesh: Union[Mesh, Mapping[str, int], None] = None):
  """A pytree like `state` (an nnx.State, concrete or abstract) of
  PartitionSpecs, read from each Variable's `logical_axes` metadata
  (no metadata: replicated)."""
  return jax.tree.map(
      lambda v: v.replace(_var_spec(v, rules, mesh)) if _is_var(v) else P(),
      state, is_leaf=_is_var)


def param_shardings(state, mesh: Mesh,
                    rules: Optional[Mapping[str, AxisRule]] = None):
  """NamedShardings with the tree structure of `state` (`nnx.state(model)` or
  `nnx.state(nnx.eval_shape(...))`): usable as jit in/out_shardings for it.
  `.to_pure_dict()` of the result matches `state.to_pure_dict()`."""
  return jax.tree.map(
      lambda v: (v.replace(NamedSharding(mesh, _var_spec(v, rules, mesh)))
                 if _is_var(v) else NamedSharding(mesh, P())),
      state, is_leaf=_is_var)


def data_sharding(mesh: Mesh, rules: Optional[Mapping[str, AxisRule]] = None,
                  ndim: int = 2) -> NamedSharding:
  """Sharding of [batch, length, ...] input arrays (batch over data x fsdp)."""
  names = ("batch", "length") + (None,) * (ndim - 2)
  return NamedSharding(mesh, logical_to_spec(names[:ndim], rules))


def shard_params(model_state, shardings):
  """Place every array of `model_state` with its sharding (jax.device_put).

  Multi-host: arrays that are not fully addressable are built from each
  host's copy of the value (which must be identical on every host, as
  after initialising with the same seed or loading the same checkpoint).
  """
  def put(x, s):
    if s.is_fully_addressable:
      return jax.device_put(x, s)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

  return jax.tree.map(put, model_state, shardings)


def host_local_to_global(batch, mesh: Mesh,
                         rules: Optional[Mapping[str, AxisRule]] = None):
  """Global jax.Arrays from this host's rows of the batch.

  Each process passes its own `batch_size / process_count` rows (e.g. from
  `make_iterator(..., shard_index=jax.process_index(),
  num_shards=jax.process_count())`); the global batch concatenates the
  processes' rows in process order.
  """
  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(
        data_sharding(mesh, rules, ndim=x.ndim), x)

  return jax.tree.map(one, batch)
