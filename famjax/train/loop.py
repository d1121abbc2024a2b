"""`train`: the gin-configurable training loop behind `famjax train`.

`famjax.train.trainer` holds the jitted train / eval step functions and the
train state; `famjax.train.build` builds a run's parts; this module's
`TrainLoop` runs them through named moments:

    every step:  prepare_batch -> step -> maybe_log -> maybe_save -> maybe_eval
    at the end:  finish (preempted: save and stop; else final eval, export)

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
import logging
import os
import time
from typing import Callable, Optional

import gin
import jax
from flax import nnx

from famjax import partitioning
from famjax.config import AttentionConfig, ModelConfig
from famjax.train import build
from famjax.train import checkpoints as ckpt_lib
from famjax.train import run_checks
from famjax.train import sharding
from famjax.train import trainer
from famjax.train.metrics import MetricsWriter

log = logging.getLogger("famjax.train")


class TrainError(RuntimeError):
  """A failure the user must act on; `main` prints it without a traceback."""
  exit_code = 1


class NonFiniteLoss(TrainError):
  pass


def itstime(step: int, every: int, total: Optional[int] = None) -> bool:
  """Whether a periodic moment falls on `step`: every `every` steps (0:
  never), and at the last step `total` when given."""
  return bool(every and every > 0 and step % every == 0) or step == total


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
          eval_mixture: Optional[str] = None,
          eval_max_examples: Optional[int] = 64,
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
  model_config: the model (MODEL, a gin/models/*.gin file), or None to take
    the config of load_params_from.
  attention: the run's attention (ATTENTION, a gin/attention/*.gin file):
    the one way to set it; it replaces the attention of model_config.
  model_overrides: a dict of other ModelConfig fields to change (e.g.
    lora_rank, dtype); not 'attention'.
  load_params_from: famjax model directory to initialise the weights from
    (ignored, with a log line, when model_dir already has checkpoints).
  trainable: 'all', 'lora' (LoRA weights + fam_prompt) or 'regex:PATTERN'.
  step_config: trainer.StepConfig (microbatches, p_rsp, RPO, z-loss).
  eval_every: eval every that many steps (0: only at the end): the loss on
    eval_split (eval_batches batches each time, always the same ones) and,
    when eval_mixture (a seqio task or mixture name) is set, the inference
    evals of `famjax.evals.evaluate_model` (eval_max_examples examples per
    task, written under MODEL_DIR/inference_eval) as "TASK/METRIC" values.
  save_every / keep_checkpoints / async_checkpoints: checkpoint policy; the
    last step and a SIGTERM'd step are saved too.
  export: write MODEL_DIR/export as a model directory at the end.
  overwrite: delete existing checkpoints and logs and start from scratch
    (only once the whole configuration is checked).
  data_fn: iterator factory with famjax.data.pipeline.make_iterator's
    signature (default: that function).
  mesh_shape: ("data", "fsdp", "tensor") sizes or a dict (one may be -1);
    sharding_rules: overrides of famjax.partitioning.DEFAULT_RULES.
  multi_host: call jax.distributed.initialize first
    (famjax.train.sharding.init_distributed); every host runs the same
    command.
  """
  return TrainLoop(RunOptions(**locals())).run()


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """The arguments of `train` (documented there)."""
  model_dir: str
  task: str
  num_steps: int
  batch_size: int
  seq_len: int
  model_config: Optional[ModelConfig]
  attention: Optional[AttentionConfig]
  model_overrides: Optional[dict]
  load_params_from: Optional[str]
  trainable: str
  step_config: Optional[trainer.StepConfig]
  seed: int
  data_seed: Optional[int]
  pack: bool
  train_split: str
  eval_split: Optional[str]
  eval_every: int
  eval_batches: int
  eval_mixture: Optional[str]
  eval_max_examples: Optional[int]
  save_every: int
  keep_checkpoints: int
  async_checkpoints: bool
  export: bool
  overwrite: bool
  data_fn: Optional[Callable]
  mesh_shape: object
  sharding_rules: Optional[dict]
  multi_host: bool
  progress_bar: bool
  tensorboard: bool


def check_batch(batch, *, batch_size, seq_len, vocab_size, what):
  """TrainError unless `batch` has the model features, shape [batch_size,
  seq_len] and token ids below `vocab_size`."""
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


class TrainLoop:
  """One run of `train`: built by __init__, driven by `run`."""

  def __init__(self, opts: RunOptions):
    self.o = o = opts
    if o.multi_host:
      sharding.init_distributed()
    self.chief = jax.process_index() == 0
    plan = run_checks.check_run(    # everything, before any write
        num_steps=o.num_steps, batch_size=o.batch_size, seq_len=o.seq_len,
        eval_every=o.eval_every, eval_batches=o.eval_batches,
        save_every=o.save_every, keep_checkpoints=o.keep_checkpoints,
        model_config_=o.model_config, attention=o.attention,
        model_overrides=o.model_overrides,
        load_params_from=o.load_params_from, step_config=o.step_config,
        task=o.task, train_split=o.train_split, eval_split=o.eval_split,
        default_data=o.data_fn is None, mesh_shape=o.mesh_shape,
        sharding_rules=o.sharding_rules)
    self.cfg, self.step_cfg = plan.cfg, plan.step_cfg
    self.model_dir = os.path.abspath(os.path.expanduser(o.model_dir))
    os.makedirs(self.model_dir, exist_ok=True)
    if o.overwrite:
      log.warning("train.overwrite=True: deleting checkpoints and logs in %s",
                  self.model_dir)
      ckpt_lib.remove_run(self.model_dir)
    self.ckpts = ckpt_lib.Checkpoints(self.model_dir, keep=o.keep_checkpoints,
                                      async_save=o.async_checkpoints)
    self.it = None
    try:
      self._build(bool(self.ckpts.steps()))
    except BaseException:
      self.ckpts.close()
      if self.it is not None:
        build.close_iterator(self.it)
      raise
    self.gin_text = gin.config_str()
    self.step_num = self.start
    self.due = []                      # (step, metrics) not yet written
    self.window = collections.deque(maxlen=21)    # (time, tokens) of steps
    self.summary = {"start_step": self.start}

  # ------------------------------------------------------------ building
  def _build(self, resuming: bool):
    """Train state (restored when resuming), data iterator, step functions,
    metrics writer."""
    o = self.o
    if resuming and o.load_params_from:
      log.info("%s has checkpoints: resuming; train.load_params_from=%s is "
               "ignored.", self.model_dir, o.load_params_from)
    self.built = build.build_state(
        self.cfg, seed=o.seed, trainable=o.trainable, num_steps=o.num_steps,
        mesh_shape=o.mesh_shape, sharding_rules=o.sharding_rules,
        load_params_from=None if resuming else o.load_params_from,
        rsp_rows=self.step_cfg.rsp_rows(o.batch_size))
    self.state, self.built.state = self.built.state, None   # donated later
    self.start, data_state = self._restore() if resuming else (0, None)
    self.saved = {self.start} if resuming else set()
    self._open_data(data_state)
    self._make_steps()
    self.writer = MetricsWriter(
        self.model_dir, start_step=self.start, num_steps=o.num_steps,
        tensorboard=o.tensorboard, progress_bar=o.progress_bar,
        enabled=self.chief)

  def _restore(self):
    """(step, this process's data state) of the newest readable checkpoint;
    the train state is restored into self.state."""
    try:
      step, self.state, data, _ = self.ckpts.restore_latest(
          sharding.abstract(self.state))
      data = ckpt_lib.own_data_state(data)
    except ckpt_lib.NoRestorableCheckpoint as e:
      raise TrainError(str(e)) from None
    log.info("resuming from checkpoint %d in %s", step, self.ckpts.directory)
    return step, data

  def _open_data(self, data_state):
    o = self.o
    self.make_it = build.data_factory(o.data_fn)
    self.shard = dict(shard_index=jax.process_index(),
                      num_shards=jax.process_count())
    seed = o.seed if o.data_seed is None else o.data_seed
    self.it = self.make_it(o.task, o.train_split, seq_len=o.seq_len,
                           batch_size=o.batch_size, seed=seed, shuffle=True,
                           pack=o.pack, **self.shard)
    if data_state is not None:
      self.it.set_state(data_state)

  def _make_steps(self):
    b, o = self.built, self.o
    sizes = dict(cfg=self.cfg, batch_size=o.batch_size, seq_len=o.seq_len,
                 microbatches=self.step_cfg.microbatches,
                 n_params=b.n_params, n_trainable=b.n_trainable)
    self.step_fn = run_checks.explain_oom(trainer.make_train_step(
        b.model, b.tx, b.schedule, b.keys, self.step_cfg,
        state_shardings=b.state_shardings, batch_sharding=b.batch_sharding),
        **sizes)
    self.eval_step = run_checks.explain_oom(trainer.make_eval_step(
        b.model, params_shardings=b.state_shardings["params"],
        batch_sharding=b.batch_sharding), what="eval step",
        **sizes) if o.eval_split else None

  # ------------------------------------------------------------- the run
  def run(self) -> dict:
    """Train to num_steps (or to a SIGTERM); returns the summary."""
    try:
      with ckpt_lib.Preemption() as preemption:
        while self.step_num < self.o.num_steps and not preemption.requested:
          self.step(self.prepare_batch(next(self.it)))
          self.maybe_log()
          self.maybe_save()
          self.maybe_eval()
        self.flush()
        preempted = preemption.requested and self.step_num < self.o.num_steps
        signal_name = preemption.signal_name
      return self.finish(preempted, signal_name)
    finally:
      self.close()

  def prepare_batch(self, batch, what: str = "train batch"):
    """Check this host's rows, then form the global (sharded) batch."""
    check_batch(batch, batch_size=self.o.batch_size // jax.process_count(),
                seq_len=self.o.seq_len, vocab_size=self.cfg.vocab_size,
                what=f"task {self.o.task!r}, {what}")
    return partitioning.host_local_to_global(batch, self.built.mesh,
                                             self.built.rules)

  def step(self, batch):
    """Dispatch one train step; its metrics are fetched later (`flush`)."""
    with jax.set_mesh(self.built.mesh):     # activation constraints see it
      self.state, metrics = self.step_fn(self.state, batch)
    self.step_num += 1
    self.due.append((self.step_num, metrics))

  def maybe_log(self):
    """Write the metrics of the previous step (the newest is still being
    computed: fetching it would wait for the device); after the first step
    write them at once, and the operative gin config."""
    first = self.step_num == self.start + 1
    self.flush(keep=0 if first else 1)
    if first and self.chief:
      build.write_operative_config(self.model_dir, self.cfg)

  def maybe_save(self):
    if itstime(self.step_num, self.o.save_every, self.o.num_steps):
      self.flush()
      self.save()

  def maybe_eval(self):
    """Periodic evals (the last step's is `finish`'s)."""
    if (self.step_num < self.o.num_steps and self.evals_anything()
        and itstime(self.step_num, self.o.eval_every)):
      self.flush()
      self.writer.write(self.step_num, "eval", self.evaluate())

  def finish(self, preempted: bool, signal_name: Optional[str]) -> dict:
    """Preempted: save and stop. Done: final eval and export."""
    s = self.step_num
    self.summary.update(step=s, preempted=preempted)
    if preempted:
      self.save()
      self.ckpts.wait()
      self.writer.message(f"preempted ({signal_name}): saved checkpoint {s} "
                          f"in {self.ckpts.directory}; run the same command "
                          "again to resume.")
      return self.summary
    if self.evals_anything():
      ev = self.evaluate()
      self.writer.write(s, "eval", ev)
      self.summary["eval"] = ev
      self.writer.message(f"eval at step {s}: " + ", ".join(
          f"{k} {v:.4f}" for k, v in ev.items() if k != "tokens"))
    if self.o.export:
      self.summary["export"] = build.export_model(
          os.path.join(self.model_dir, "export"), self.cfg,
          self.state["params"], extra_from=self.o.load_params_from)
      self.writer.message(f"exported the final model to "
                          f"{self.summary['export']}")
    self.summary["params"] = self.state["params"]
    return self.summary

  def close(self):
    self.due.clear()
    try:
      self.ckpts.close()
    finally:
      self.writer.close()
      build.close_iterator(self.it)

  # ----------------------------------------------------------- the parts
  def flush(self, keep: int = 0):
    """Fetch and write the metrics of all due steps but the newest `keep`;
    stop on a non-finite loss."""
    while len(self.due) > keep:
      s, m = self.due.pop(0)
      m = jax.device_get(m)
      if not trainer.is_finite(m):
        raise self._non_finite(s, m)
      self.window.append((time.perf_counter(), float(m["tokens"])))
      if len(self.window) > 1:   # a window of steps: per-step times are noisy
        dt = self.window[-1][0] - self.window[0][0]
        m["tokens_per_s"] = (sum(t for _, t in list(self.window)[1:]) /
                             max(dt, 1e-9))
      self.writer.write(s, "train", m)
      self.writer.progress(s, {"loss": m["loss"], "acc": m["accuracy"]})
      self.summary["last_train"] = {k: float(v) for k, v in m.items()}

  def _non_finite(self, s, m) -> NonFiniteLoss:
    good = max(self.saved) if self.saved else None
    where = (f"the latest checkpoint, step {good}, is the last good state"
             if good is not None else "no checkpoint was saved")
    return NonFiniteLoss(
        f"training stopped at step {s}: the loss is {float(m['loss'])} and "
        f"the gradient norm {float(m.get('grad_norm', float('nan')))} (not "
        f"finite). Nothing from step {s} was saved; {where}. Lower the "
        "learning rate (make_schedule.peak_learning_rate) or enable "
        "clipping (make_optimizer.clip_norm).")

  def save(self):
    s = self.step_num
    if s not in self.saved:
      self.ckpts.save(s, self.state,
                      ckpt_lib.gather_data_states(self.it.get_state()),
                      self.gin_text)
      self.saved.add(s)

  def evals_anything(self) -> bool:
    return bool(self.o.eval_split or self.o.eval_mixture)

  def evaluate(self) -> dict:
    """One eval record: the eval_split loss / accuracy and, with
    eval_mixture, the inference metrics as "TASK/METRIC"."""
    out = {}
    if self.o.eval_split:
      out.update(self._eval_loss())
    if self.o.eval_mixture:
      out.update(self._inference_eval())
    return out

  def _eval_loss(self) -> dict:
    """Mean loss / accuracy over the first eval_batches batches of a fresh
    (unshuffled) eval iterator: the same tokens at every eval."""
    o = self.o
    it = self.make_it(o.task, o.eval_split, seq_len=o.seq_len,
                      batch_size=o.batch_size, seed=0, shuffle=False,
                      pack=o.pack, **self.shard)

    def batches():
      for _ in range(o.eval_batches):
        try:
          b = next(it)
        except StopIteration:
          return
        yield self.prepare_batch(b, "eval batch")

    try:
      with jax.set_mesh(self.built.mesh):
        return trainer.evaluate(self.eval_step, self.state["params"],
                                batches())
    finally:
      build.close_iterator(it)

  def _inference_eval(self) -> dict:
    """famjax.evals.evaluate_model on the model with the current weights."""
    from famjax.evals import evaluate_model   # decoding: only when asked
    graphdef, _, rest = nnx.split(self.built.model, nnx.Param, ...)
    model = nnx.merge(graphdef, self.state["params"], rest)
    results = evaluate_model(
        model, mixture_or_task_name=self.o.eval_mixture, step=self.step_num,
        output_dir=os.path.join(self.model_dir, "inference_eval"),
        batch_size=self.o.batch_size, max_examples=self.o.eval_max_examples)
    return {f"{task}/{name}": float(v)
            for task, metrics in (results or {}).items()
            for name, v in metrics.items()
            if isinstance(v, (int, float)) or getattr(v, "shape", None) == ()}
