"""`train`: the gin-configurable training loop behind `famjax train`.

Resume and load-params are two different operations:
  * MODEL_DIR/checkpoints has a checkpoint -> resume from the newest readable
    one (train state, data position, RSP state): the run continues exactly.
  * otherwise, `load_params_from` (a famjax model directory) initialises the
    parameters only; weights the model has and the directory lacks
    (fam_prompt when switching to FAM, LoRA) keep their initial values.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from typing import Callable, Optional

import gin
import jax
import numpy as np
from flax import nnx

from famjax import partitioning
from famjax.config import AttentionConfig, ModelConfig
from famjax.train import checkpoints as ckpt_lib
from famjax.train import sharding
from famjax.train import trainer
from famjax.train.metrics import MetricsWriter
from famjax.train.optimizers import make_optimizer

log = logging.getLogger("famjax.train")


class TrainError(RuntimeError):
  """A failure the user must act on; `main` prints it without a traceback."""
  exit_code = 1


class NonFiniteLoss(TrainError):
  pass


# ------------------------------------------------------------ configuration
def build_config(model_config: Optional[ModelConfig], attention, overrides,
                 load_params_from: Optional[str]) -> ModelConfig:
  """The run's ModelConfig: gin's, or LOAD_PARAMS_FROM's with changes."""
  if model_config is None:
    if not load_params_from:
      raise ValueError("train.model_config is not set: bind it "
                       "(e.g. include gin/models/tiny.gin) or set "
                       "train.load_params_from to take the config of a model "
                       "directory.")
    from famjax.params_io import load_config
    model_config = load_config(load_params_from)
  changes = dict(overrides or {})
  if attention is not None:
    changes["attention"] = attention
  known = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(changes) - known)
  if unknown:
    raise ValueError(f"train.model_overrides has unknown ModelConfig fields "
                     f"{unknown}.")
  return dataclasses.replace(model_config, **changes).validate()


def _data_fn(data_fn):
  if data_fn is not None:
    return data_fn
  import famjax.data.tasks  # noqa: F401  (registers the seqio tasks)
  from famjax.data.pipeline import make_iterator
  return make_iterator


def _check_batch(batch, *, batch_size, seq_len, vocab_size, what):
  for name in (trainer.INPUTS, trainer.TARGETS, trainer.WEIGHTS):
    if name not in batch:
      raise TrainError(f"{what}: the batch has no {name!r} feature.")
    if batch[name].shape != (batch_size, seq_len):
      raise TrainError(f"{what}: {name} has shape {batch[name].shape}, "
                       f"expected {(batch_size, seq_len)}.")
  for name in (trainer.INPUTS, trainer.TARGETS):
    ids = batch[name]
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
      raise TrainError(f"{what}: {name} has token ids in "
                       f"[{ids.min()}, {ids.max()}] but the model's "
                       f"vocab_size is {vocab_size}.")


def _eval(eval_step, params, make_it, eval_batches, prepare):
  """Mean loss / accuracy over the first `eval_batches` batches of a fresh
  (unshuffled) eval iterator: the same tokens at every eval."""
  it = make_it()

  def batches():
    for _ in range(eval_batches):
      try:
        b = next(it)
      except StopIteration:
        return
      yield prepare(b)

  try:
    return trainer.evaluate(eval_step, params, batches())
  finally:
    _close(it)


def _close(it):
  if hasattr(it, "close"):
    it.close()


def _write_operative_config(model_dir):
  path = os.path.join(model_dir, "config.gin")
  tmp = path + ".tmp"
  with open(tmp, "w") as fh:
    fh.write(gin.operative_config_str())
  os.replace(tmp, path)


def export_model(path, cfg, params, extra_from=None):
  """Final params as a famjax model directory (LoRA merged; extra_from's
  tokenizer and hf_config.json kept); host 0 writes."""
  from famjax import params_io
  params = sharding.to_host(params)
  if jax.process_index() != 0:
    return os.path.abspath(path)
  if cfg.lora_rank:
    from famjax.lora import merge_lora
    params, cfg = merge_lora(params, cfg)
  return params_io.save_model_dir(path, cfg, params, overwrite=True,
                                 extra_from=extra_from)


def gather_data_states(state) -> dict:
  """Every process's data iterator state (hosts read different rows), for
  the checkpoint, which host 0 writes."""
  if jax.process_count() == 1:
    return {"process_count": 1, "iterators": [state]}
  from jax.experimental import multihost_utils
  mine = np.frombuffer(json.dumps(state).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([mine.size], np.int64))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[:mine.size] = mine
  every = multihost_utils.process_allgather(padded)
  sizes = np.asarray(sizes).reshape(-1)
  return {"process_count": jax.process_count(),
          "iterators": [json.loads(bytes(every[i, :sizes[i]]))
                        for i in range(jax.process_count())]}


def own_data_state(saved: dict):
  n = saved.get("process_count")
  if n != jax.process_count():
    raise TrainError(
        f"the checkpoint's data position was saved by {n} processes; this "
        f"run has {jax.process_count()}. Resume with the same number of hosts.")
  return saved["iterators"][jax.process_index()]


def init_distributed():
  """jax.distributed.initialize from FAMJAX_COORDINATOR_ADDRESS,
  FAMJAX_NUM_PROCESSES, FAMJAX_PROCESS_ID when set, else the cluster's own
  environment (TPU pods, SLURM, ...)."""
  env = os.environ
  kw = {}
  if env.get("FAMJAX_COORDINATOR_ADDRESS"):
    kw = dict(coordinator_address=env["FAMJAX_COORDINATOR_ADDRESS"],
              num_processes=int(env["FAMJAX_NUM_PROCESSES"]),
              process_id=int(env["FAMJAX_PROCESS_ID"]))
  if env.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kw)


# --------------------------------------------------------------------- loop
@gin.configurable("train")
def train(*, model_dir: str = gin.REQUIRED, task: str = gin.REQUIRED,
          num_steps: int = gin.REQUIRED, batch_size: int = 8,
          seq_len: int = 256, model_config: Optional[ModelConfig] = None,
          attention: Optional[AttentionConfig] = None,
          model_overrides: Optional[dict] = None,
          load_params_from: Optional[str] = None, trainable: str = "all",
          step_config: Optional[trainer.StepConfig] = None,
          seed: int = 0, data_seed: Optional[int] = None, pack: bool = False,
          train_split: str = "train", eval_split: Optional[str] = "validation",
          eval_every: int = 0, eval_batches: int = 4,
          save_every: int = 1000, keep_checkpoints: int = 3,
          async_checkpoints: bool = True, export: bool = False,
          overwrite: bool = False, data_fn: Optional[Callable] = None,
          mesh_shape=(-1, 1, 1), sharding_rules: Optional[dict] = None,
          multi_host: bool = False,
          progress_bar: bool = True, tensorboard: bool = True) -> dict:
  """Train (or resume training) the model of MODEL_DIR; returns a summary.

  model_dir: the run directory: checkpoints/, metrics.jsonl, config.gin
    (operative gin config), train/ and eval/ TensorBoard events, export/.
  task: seqio task name (famjax.data.tasks), for train_split and eval_split.
  num_steps: total optimizer steps of the run (a resumed run stops there).
  batch_size: global batch size in sequences of seq_len tokens.
  model_config / attention / model_overrides: the model; attention and
    model_overrides (a dict of ModelConfig fields, e.g. lora_rank) change
    model_config or, when it is None, the config of load_params_from.
  load_params_from: famjax model directory to initialise the weights from
    (ignored, with a log line, when model_dir already has checkpoints).
  trainable: 'all', 'lora' (LoRA weights + fam_prompt) or 'regex:PATTERN'.
  step_config: trainer.StepConfig (microbatches, p_rsp, RPO, z-loss).
  eval_every: eval on eval_split every that many steps (0: only at the end);
    eval_batches batches each time, always the same ones.
  save_every / keep_checkpoints / async_checkpoints: checkpoint policy; the
    last step and a SIGTERM'd step are saved too.
  export: write MODEL_DIR/export as a model directory at the end.
  overwrite: delete existing checkpoints and logs and start from scratch.
  data_fn: iterator factory with famjax.data.pipeline.make_iterator's
    signature (default: that function).
  mesh_shape: ("data", "fsdp", "tensor") sizes or a dict (one may be -1);
    sharding_rules: overrides of famjax.partitioning.DEFAULT_RULES.
  multi_host: call jax.distributed.initialize first (see init_distributed);
    every host runs the same command.
  """
  if multi_host:
    init_distributed()
  chief = jax.process_index() == 0
  step_cfg = (step_config or trainer.StepConfig()).validate(batch_size)
  from famjax.data.vocab import check_task_vocabulary   # before any write
  check_task_vocabulary(task, load_params_from or model_config)
  model_dir = os.path.abspath(os.path.expanduser(model_dir))
  os.makedirs(model_dir, exist_ok=True)
  if overwrite:
    log.warning("train.overwrite=True: deleting checkpoints and logs in %s",
                model_dir)
    ckpt_lib.remove_run(model_dir)
  cfg = build_config(model_config, attention, model_overrides,
                     load_params_from)
  model = _build(cfg, seed)
  ckpts = ckpt_lib.Checkpoints(model_dir, keep=keep_checkpoints,
                               async_save=async_checkpoints)
  has_ckpt = bool(ckpts.steps())
  if load_params_from:
    if has_ckpt:
      log.info("%s has checkpoints: resuming; train.load_params_from=%s is "
               "ignored.", model_dir, load_params_from)
    else:
      from famjax import params_io
      log.info("initialising parameters from %s", load_params_from)
      params_io.assign_params(model, params_io.load_params(load_params_from),
                              load_params_from)

  params0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  keys = trainer.trainable_keys(params0, trainable)
  tx, schedule = make_optimizer(trainer.split_params(params0, keys)[0],
                                num_steps)
  state = trainer.init_state(model, tx, keys, seed=seed)
  mesh = partitioning.make_mesh(mesh_shape)
  rules = partitioning.make_rules(sharding_rules)
  state_sh = sharding.state_shardings(model, state, tx, keys, mesh, rules)
  state = sharding.place(state, state_sh)
  batch_sh = partitioning.data_sharding(mesh, rules)
  log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape),
           mesh.size, jax.process_count())
  n_train = sum(int(np.prod(v.shape)) for k, v in trainer.flat(params0).items()
                if k in keys)
  n_all = sum(int(np.prod(v.shape)) for v in trainer.flat(params0).values())
  log.info("model: %s attention, %d parameters, %d trainable", cfg.attention.mode,
           n_all, n_train)
  del params0

  start, data_state = 0, None
  if has_ckpt:
    try:
      restored = ckpts.restore_latest(sharding.abstract(state))
    except ckpt_lib.NoRestorableCheckpoint as e:
      raise TrainError(str(e)) from None
    start, state, data_state, _ = restored
    data_state = own_data_state(data_state)
    log.info("resuming from checkpoint %d in %s", start, ckpts.directory)

  make_it = _data_fn(data_fn)
  seed_d = seed if data_seed is None else data_seed
  shard = dict(shard_index=jax.process_index(), num_shards=jax.process_count())
  it = make_it(task, train_split, seq_len=seq_len, batch_size=batch_size,
               seed=seed_d, shuffle=True, pack=pack, **shard)
  if data_state is not None:
    it.set_state(data_state)

  local_batch = batch_size // jax.process_count()

  def prepare(b, what="train batch"):
    """Check this host's rows, then form the global (sharded) batch."""
    _check_batch(b, batch_size=local_batch, seq_len=seq_len,
                 vocab_size=cfg.vocab_size, what=f"task {task!r}, {what}")
    return partitioning.host_local_to_global(b, mesh, rules)

  def prepare_eval(b):
    return prepare(b, "eval batch")

  def make_eval_it():
    return make_it(task, eval_split, seq_len=seq_len, batch_size=batch_size,
                   seed=0, shuffle=False, pack=pack, **shard)

  step_fn = trainer.make_train_step(model, tx, schedule, keys, step_cfg,
                                    state_shardings=state_sh,
                                    batch_sharding=batch_sh)
  eval_step = trainer.make_eval_step(
      model, params_shardings=state_sh["params"],
      batch_sharding=batch_sh) if eval_split else None
  writer = MetricsWriter(model_dir, start_step=start, num_steps=num_steps,
                         tensorboard=tensorboard, progress_bar=progress_bar,
                         enabled=chief)
  gin_text = gin.config_str()
  saved = {start} if has_ckpt else set()
  summary = {"start_step": start}
  pending = []
  window = collections.deque(maxlen=21)

  def flush():
    """Fetch the metrics of the last step, stop on a non-finite loss."""
    if not pending:
      return
    s, m = pending.pop()
    m = jax.device_get(m)
    if not trainer.is_finite(m):
      good = max(saved) if saved else None
      where = (f"the latest checkpoint, step {good}, is the last good state"
               if good is not None else "no checkpoint was saved")
      raise NonFiniteLoss(
          f"training stopped at step {s}: the loss is {float(m['loss'])} and "
          f"the gradient norm {float(m.get('grad_norm', float('nan')))} (not "
          f"finite). Nothing from step {s} was saved; {where}. Lower the "
          "learning rate (make_schedule.peak_learning_rate) or enable "
          "clipping (make_optimizer.clip_norm).")
    window.append((time.perf_counter(), float(m["tokens"])))
    if len(window) > 1:   # a window of steps: per-step times are noisy
      dt = window[-1][0] - window[0][0]
      m["tokens_per_s"] = sum(t for _, t in list(window)[1:]) / max(dt, 1e-9)
    writer.write(s, "train", m)
    writer.progress(s, {"loss": m["loss"], "acc": m["accuracy"]})
    summary["last_train"] = {k: float(v) for k, v in m.items()}

  def save(s):
    if s not in saved:
      ckpts.save(s, state, gather_data_states(it.get_state()), gin_text)
      saved.add(s)

  s = start
  preempted = False
  try:
    with ckpt_lib.Preemption() as preemption:
      while s < num_steps and not preemption.requested:
        state, m = step_fn(state, prepare(next(it)))
        s += 1
        flush()
        pending.append((s, m))
        if s == start + 1:
          flush()
          if chief:
            _write_operative_config(model_dir)
        if s % save_every == 0 or s == num_steps:
          flush()
          save(s)
        if eval_split and eval_every and s % eval_every == 0 and s < num_steps:
          flush()
          writer.write(s, "eval", _eval(eval_step, state["params"],
                                        make_eval_it, eval_batches,
                                        prepare_eval))
      flush()
      preempted = preemption.requested and s < num_steps
      signal_name = preemption.signal_name
    summary.update(step=s, preempted=preempted)
    if preempted:
      save(s)
      ckpts.wait()
      writer.message(f"preempted ({signal_name}): saved checkpoint {s} in "
                     f"{ckpts.directory}; run the same command again to "
                     "resume.")
      return summary
    if eval_split:
      ev = _eval(eval_step, state["params"], make_eval_it, eval_batches,
                 prepare_eval)
      writer.write(s, "eval", ev)
      summary["eval"] = ev
      writer.message(f"eval at step {s}: loss {ev.get('loss', float('nan')):.4f}"
                     f", accuracy {ev.get('accuracy', float('nan')):.4f}")
    if export:
      summary["export"] = export_model(os.path.join(model_dir, "export"), cfg,
                                       state["params"], load_params_from)
      writer.message(f"exported the final model to {summary['export']}")
    summary["params"] = state["params"]
    return summary
  finally:
    pending.clear()
    try:
      ckpts.close()
    finally:
      writer.close()
      _close(it)


def _build(cfg, seed):
  from famjax.model import Transformer
  return Transformer(cfg, rngs=nnx.Rngs(seed))
