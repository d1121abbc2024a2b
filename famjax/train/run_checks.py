"""What `train` checks before it writes or deletes anything.

`check_run` validates the whole configuration of a run (numbers, the model
config, attention, the task, the mesh and batch divisibility) and raises one
`UserError` naming what to fix; only then does `train` create MODEL_DIR or,
with `overwrite=True`, delete the old run. `explain_oom` turns an
out-of-memory compile or step into a `UserError` that says how big the step
is and which knobs shrink it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Callable, NamedTuple, Optional

import jax

from famjax import partitioning
from famjax.config import AttentionConfig, ModelConfig
from famjax.errors import UserError

ATTENTION_HINT = ("include a gin/attention/*.gin file (it sets ATTENTION; run "
                  "files bind train.attention = %ATTENTION)")


class RunPlan(NamedTuple):
  """The checked pieces `train` builds the run from."""
  cfg: ModelConfig
  step_cfg: object
  mesh: object
  rules: dict


def _int_at_least(name: str, value, lo: int):
  if not isinstance(value, int) or isinstance(value, bool) or value < lo:
    raise UserError(f"{name}={value!r} must be an integer >= {lo}.")


def check_numbers(*, num_steps, batch_size, seq_len, eval_every, eval_batches,
                  save_every, keep_checkpoints):
  for name, value, lo in (
      ("num_steps", num_steps, 1), ("batch_size", batch_size, 1),
      ("seq_len", seq_len, 2), ("eval_every", eval_every, 0),
      ("eval_batches", eval_batches, 1), ("save_every", save_every, 1),
      ("keep_checkpoints", keep_checkpoints, 1)):
    _int_at_least(f"train.{name}", value, lo)


def model_config(model_config: Optional[ModelConfig],
                 attention: Optional[AttentionConfig], overrides: Optional[dict],
                 load_params_from: Optional[str]) -> ModelConfig:
  """The run's ModelConfig: MODEL's (gin) or LOAD_PARAMS_FROM's, with the one
  attention of the run (train.attention) and train.model_overrides."""
  if attention is None:
    raise UserError(f"train.attention is not set: {ATTENTION_HINT}.")
  if not isinstance(attention, AttentionConfig):
    raise UserError(f"train.attention={attention!r} must be an "
                    f"AttentionConfig: {ATTENTION_HINT}.")
  changes = dict(overrides or {})
  if "attention" in changes:
    raise UserError("train.model_overrides may not set 'attention': the "
                    f"attention of a run has one path, {ATTENTION_HINT}.")
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(changes) - known)
  if unknown:
    close = [c for u in unknown
             for c in difflib.get_close_matches(u, known, n=1)]
    hint = f"; did you mean {close}?" if close else "."
    raise UserError(f"train.model_overrides has unknown ModelConfig fields "
                    f"{unknown}{hint}")
  if model_config is None:
    if not load_params_from:
      raise UserError("train.model_config is not set: include a "
                      "gin/models/*.gin file (it sets MODEL) or set "
                      "train.load_params_from (LOAD_PARAMS_FROM) to take the "
                      "config of a model directory.")
    from famjax.params_io import load_config
    model_config = load_config(load_params_from)
    _check_fam_prompt(model_config.attention, attention, load_params_from)
  elif not isinstance(model_config, ModelConfig):
    raise UserError(f"train.model_config={model_config!r} must be a "
                    "ModelConfig (include a gin/models/*.gin file).")
  elif model_config.attention not in (AttentionConfig(), attention):
    raise UserError(
        f"ModelConfig.attention is set ({model_config.attention}) and differs "
        f"from train.attention ({attention}); remove the ModelConfig.attention "
        f"binding: {ATTENTION_HINT}.")
  changes["attention"] = attention
  return dataclasses.replace(model_config, **changes).validate()


def _check_fam_prompt(saved: AttentionConfig, attention: AttentionConfig,
                      path: str):
  """A saved fam_prompt has saved.fam_length rows; the run must use as many."""
  if (saved.mode == "fam" and attention.mode == "fam" and
      saved.fam_length != attention.fam_length):
    raise UserError(
        f"train.load_params_from={path!r} has a fam_prompt of "
        f"{saved.fam_length} rows but ATTENTION has fam_length="
        f"{attention.fam_length}: set AttentionConfig.fam_length="
        f"{saved.fam_length} (or convert again with --fam_length "
        f"{attention.fam_length}).")


def check_load_params_from(path: Optional[str]):
  if path and not os.path.isfile(os.path.join(path, "config.json")):
    what = "does not exist" if not os.path.exists(path) else (
        "is not a famjax model directory (no config.json)")
    raise UserError(f"train.load_params_from={path!r} {what}; give a "
                    "directory written by `famjax convert` or a run's export/.")


def check_task(task, splits):
  """Task and splits exist (for the default seqio data pipeline)."""
  import seqio
  import famjax.data.tasks  # noqa: F401  (registers the tasks)
  names = sorted(set(seqio.TaskRegistry.names()) |
                 set(seqio.MixtureRegistry.names()))
  if not isinstance(task, str) or task not in names:
    close = difflib.get_close_matches(str(task), names, n=3)
    hint = (f"; did you mean {' or '.join(map(repr, close))}?" if close
            else f"; registered: {names}")
    raise UserError(f"train.task={task!r} is not a registered seqio task or "
                    f"mixture{hint}")
  have = list(seqio.get_mixture_or_task(task).splits)
  for name, split in splits:
    if split is not None and split not in have:
      raise UserError(f"train.{name}={split!r}: task {task!r} has no such "
                      f"split; it has {have}.")


def check_mesh(mesh_shape, sharding_rules, batch_size):
  """The mesh and rules, and a batch that divides the data-parallel axes."""
  try:
    mesh = partitioning.make_mesh(mesh_shape)
    rules = partitioning.make_rules(sharding_rules)
    spec = partitioning.logical_to_spec(("batch", "length"), rules)
  except ValueError as e:   # these functions check only their arguments
    raise UserError(f"train.mesh_shape / train.sharding_rules: {e}") from None
  axes = spec[0] if len(spec) else None
  axes = () if axes is None else ((axes,) if isinstance(axes, str) else axes)
  ways = math.prod(mesh.shape[a] for a in axes)
  ways = math.lcm(ways, jax.process_count())
  if batch_size % ways:
    raise UserError(
        f"train.batch_size={batch_size} must split evenly over the {ways} "
        f"data-parallel shards of the mesh {dict(mesh.shape)} (batch axes "
        f"{tuple(axes)}, {jax.process_count()} process(es)); use a multiple "
        f"of {ways} or change train.mesh_shape.")
  return mesh, rules


def check_run(*, num_steps, batch_size, seq_len, eval_every, eval_batches,
              save_every, keep_checkpoints, model_config_=None, attention=None,
              model_overrides=None, load_params_from=None, step_config=None,
              task=None, train_split="train", eval_split=None,
              default_data=True, mesh_shape=(-1, 1, 1),
              sharding_rules=None) -> RunPlan:
  """Every check `train` can make before touching MODEL_DIR."""
  from famjax.train import trainer
  check_numbers(num_steps=num_steps, batch_size=batch_size, seq_len=seq_len,
                eval_every=eval_every, eval_batches=eval_batches,
                save_every=save_every, keep_checkpoints=keep_checkpoints)
  check_load_params_from(load_params_from)
  cfg = model_config(model_config_, attention, model_overrides,
                     load_params_from)
  try:
    step_cfg = (step_config or trainer.StepConfig()).validate(
        batch_size).check_mode(cfg.attention.mode)
  except ValueError as e:   # StepConfig checks only its fields and the mode
    raise UserError(str(e)) from None
  if default_data:
    check_task(task, (("train_split", train_split),
                      ("eval_split", eval_split)))
  from famjax.data.vocab import check_task_vocabulary
  check_task_vocabulary(task, load_params_from or cfg)
  mesh, rules = check_mesh(mesh_shape, sharding_rules, batch_size)
  return RunPlan(cfg, step_cfg, mesh, rules)


# ------------------------------------------------------------ out of memory
def is_oom(err: BaseException) -> bool:
  text = str(err)
  return isinstance(err, jax.errors.JaxRuntimeError) and (
      "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or
      "out of memory" in text)


def oom_message(err, *, cfg: ModelConfig, batch_size, seq_len, microbatches,
                n_params, n_trainable, what="train step") -> str:
  first = next((l for l in str(err).splitlines() if l.strip()), "")[:200]
  micro = batch_size // max(microbatches, 1)
  return (
      f"the {what} does not fit in memory ({first.strip()}). It runs "
      f"batch_size {batch_size} x seq_len {seq_len} = "
      f"{batch_size * seq_len:,} tokens ({microbatches} microbatch(es) of "
      f"{micro} x {seq_len}) through {n_params:,} parameters "
      f"({n_trainable:,} trainable), dtype {cfg.dtype}, remat_policy "
      f"{cfg.remat_policy!r}. Shrink it with train.batch_size, train.seq_len, "
      f"StepConfig.microbatches (gradient accumulation: same batch, less "
      f"memory), remat_policy 'dots' or 'full' and dtype 'bfloat16' "
      f"(ModelConfig.* for a gin model, train.model_overrides when "
      f"fine-tuning).")


def explain_oom(fn: Callable, **sizes) -> Callable:
  """`fn` whose out-of-memory errors become a UserError with `oom_message`."""
  def wrapped(*args, **kw):
    try:
      return fn(*args, **kw)
    except Exception as e:  # pylint: disable=broad-except
      if is_oom(e):
        raise UserError(oom_message(e, **sizes)) from e
      raise
  return wrapped
