"""`famjax eval --gin_file=gin/runs/eval.gin --gin.MODEL_DIR=DIR --gin.MIXTURE_OR_TASK_NAME=NAME`.

Evaluates a model directory (a run's checkpoints, a run's export/, or the
output of `famjax convert`) on a seqio task or mixture and writes, under
eval.output_dir (default DIR/evals/NAME, -nN with max_examples=N):
  results.json            {"steps": {step: {task: {metric: value}}}, ...}:
                          steps already there are skipped on a rerun
  json/                   metrics per task (one line per step), examples
  tensorboard/            TensorBoard events
  heatmap_*_step<N>.png   accuracy by context length x needle depth
  ruler_step<N>.md        RULER-style table: task families x lengths

Exit codes: 0 done, 2 a mistake to fix (unknown task, not a model
directory, a context longer than a `full` model's position limit, ...).
Set FAMJAX_TRACEBACK=1 to see tracebacks of handled errors.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Optional, Sequence, Union

import gin

from famjax.config import AttentionConfig
from famjax.errors import UserError

log = logging.getLogger("famjax.eval")

USAGE = """usage: famjax eval --gin_file=gin/runs/eval.gin --gin.MODEL_DIR=DIR
                   --gin.MIXTURE_OR_TASK_NAME=NAME [--gin.NAME=VALUE ...]

  e.g. famjax eval --gin_file=gin/runs/eval.gin \\
         --gin.MODEL_DIR=/tmp/famjax_quickstart --gin.MIXTURE_OR_TASK_NAME=passkey_byte
  --gin.eval.checkpoint_steps=[100,200] | 'all' | 'latest'  (a run's checkpoints)
  --gin.eval.max_examples=N  --gin.eval.batch_size=N  --gin.eval.output_dir=DIR
  --gin.eval.attention=@AttentionConfig() --gin.AttentionConfig.mode=fam ...
"""


def _tag(name: str, split: str, att: Optional[AttentionConfig],
         max_examples: Optional[int]) -> str:
  """The output directory's name: what was evaluated, and how."""
  tag = name if split == "validation" else f"{name}-{split}"
  if max_examples:
    tag += f"-n{max_examples}"
  if att is not None:
    tag += f"-{att.mode}"
    if att.mode != "full":
      tag += f"-b{att.block_size}-m{att.memory_segments}"
    if att.mode == "fam":
      tag += f"-f{att.fam_length}"
  return tag


def check_position_limit(cfg, source, evs, limit: Optional[int]):
  """UserError if a `full` model would see a context longer than it was
  made for (bswa / fam have no limit)."""
  from famjax.evals import evaluator, models
  if cfg.attention.mode != "full":
    return
  limit = limit or models.position_limit(source)
  if not limit:
    return
  lengths = evaluator.task_lengths(evs)
  long = {t: n for t, n in lengths.items() if n > limit}
  if long:
    task, n = max(long.items(), key=lambda kv: kv[1])
    raise UserError(
        f"task {task} has contexts of {n} tokens, longer than this full-"
        f"attention model's position limit of {limit}; evaluate shorter "
        "tasks, or with block attention: --gin.eval.attention=@AttentionConfig()"
        " --gin.AttentionConfig.mode=fam (or bswa).")


def check_vocabulary(source, cfg, evs):
  """The tasks must use the model's tokenizer: the one call site of
  famjax.data.vocab.check_task_vocabulary (a model directory decides by its
  tokenizer, a run by its vocab_size). Token ids outside the model's
  vocabulary are refused by famjax.evals.infer in any case."""
  try:
    from famjax.data.vocab import check_task_vocabulary
  except ImportError:
    return
  for ev in evs:
    for task in ev.eval_tasks:
      check_task_vocabulary(task, source.path if source.kind == "model"
                            else cfg)


def model_vocabulary(source):
  """The model directory, if it has its own tokenizer (tasks named for it
  are registered on demand), else None."""
  from famjax.data.vocab import has_hf_tokenizer
  return source.path if (source.kind == "model" and
                         has_hf_tokenizer(source.path)) else None


@gin.configurable("eval")
def evaluate(*, model_dir: str = gin.REQUIRED,
             mixture_or_task_name: str = gin.REQUIRED,
             checkpoint_steps: Union[None, str, int, Sequence[int]] = None,
             output_dir: Optional[str] = None, split: str = "validation",
             batch_size: int = 8, max_examples: Optional[int] = None,
             sequence_length: Optional[dict] = None,
             attention: Optional[AttentionConfig] = None,
             position_limit: Optional[int] = None,
             multi_host: bool = False) -> dict:
  """Evaluate the checkpoints of model_dir; returns a summary dict.

  checkpoint_steps: None / 'latest' (the newest checkpoint of a run), 'all',
    or a list of steps. A model directory (convert, export/) is step 0.
  max_examples: evaluate the first N examples of each task.
  sequence_length: seqio feature lengths, e.g. {'inputs': 4000,
    'targets': 16}; None: each task's own (measured).
  attention: run the weights with another AttentionConfig.
  position_limit: longest context of a `full` model (default: the model's
    max_position_embeddings, else the training seq_len).
  multi_host: jax.distributed.initialize first; every host runs the command
    and decodes its share of the examples; process 0 writes the results.
  """
  import jax
  from famjax.evals import evaluator, infer, models
  if multi_host:
    from famjax.train.sharding import init_distributed
    init_distributed()
  if not isinstance(batch_size, int) or batch_size < 1:
    raise UserError(f"eval.batch_size={batch_size!r} must be an integer >= 1.")
  source = models.resolve(model_dir)
  ev_task = evaluator.get_task(mixture_or_task_name, model_vocabulary(source))
  steps = models.select_steps(source, checkpoint_steps)
  try:
    cfg = models.model_config(source)
    if attention is not None:
      cfg = dataclasses.replace(cfg, attention=attention).validate()
  except ValueError as e:
    raise UserError(str(e)) from e
  out_dir = os.path.abspath(output_dir or os.path.join(
      source.path, "evals", _tag(ev_task.name, split, attention, max_examples)))
  evs = evaluator.make_evaluators(
      mixture_or_task_name, split=split, max_examples=max_examples,
      sequence_length=sequence_length, log_dir=out_dir,
      vocabulary=model_vocabulary(source))
  check_position_limit(cfg, source, evs, position_limit)
  check_vocabulary(source, cfg, evs)
  done = set(infer.allgather(sorted(evaluator.read_results(out_dir)["steps"]))
             [0])
  todo = [s for s in steps if str(s) not in done]
  skipped = [s for s in steps if str(s) in done]
  chief = jax.process_index() == 0
  if skipped and chief:
    print(f"famjax eval: steps {skipped} already evaluated in {out_dir}/"
          f"{evaluator.RESULTS}; skipping them.", flush=True)
  info = evaluator.summary_info(evs) if todo else {}
  results = {}
  for step in todo:
    _, model = models.load(source, step, cfg=cfg)
    metrics = evaluator.run_step(evs, model, step=step, batch_size=batch_size)
    if chief:
      files = evaluator.record_step(
          out_dir, step, metrics, info, model_dir=source.path,
          mixture_or_task_name=mixture_or_task_name, split=split,
          max_examples=max_examples,
          attention=dataclasses.asdict(cfg.attention))
      print(f"famjax eval: step {step} done; wrote {', '.join(files)}",
            flush=True)
    results[step] = metrics
  return {"output_dir": out_dir, "evaluated": todo, "skipped": skipped,
          "metrics": results}


def _fail(msg: str) -> int:
  lines = [l for l in str(msg).splitlines()   # gin adds "In call to ..."
           if l.strip() and not l.strip().startswith("In call to configurable")]
  msg = " ".join(l.strip() for l in lines) if lines else msg
  print(f"famjax eval: error: {msg}", file=sys.stderr, flush=True)
  return 2


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(__doc__.split("\n\n")[0] + "\n\n" + USAGE)
    return 0 if argv else 2
  from famjax.train import gin_flags
  import famjax.config  # noqa: F401  registers AttentionConfig with gin
  debug = os.environ.get("FAMJAX_TRACEBACK") == "1"
  logging.getLogger("absl").setLevel(logging.WARNING)
  gin.clear_config()
  try:
    files, bindings, paths = gin_flags.parse_args(argv)
    if not files:
      raise UserError("no --gin_file given; use --gin_file=gin/runs/eval.gin "
                      "(see famjax eval --help).")
    gin_flags.parse(files, bindings, paths)
    evaluate()
  except (UserError, gin_flags.GinFlagError) as e:
    if debug:
      raise
    return _fail(str(e))
  except (ValueError, TypeError) as e:
    if debug or ("Required bindings" not in str(e) and
                 "No values supplied by Gin" not in str(e)):
      raise
    return _fail(str(e).splitlines()[0] + " (bind it in the gin file or with "
                 "--gin.NAME=VALUE)")
  finally:
    gin.clear_config()
  return 0


if __name__ == "__main__":
  sys.exit(main())
