"""`famjax train --gin_file=RUN.gin --gin.NAME=VALUE ...` (also `python -m famjax.train`).

Exit codes: 0 done (or saved after SIGTERM), 1 training failed (e.g. a
non-finite loss, unreadable checkpoints), 2 a mistake the user can fix
(`famjax.errors.UserError`: a gin, config, task, number or out-of-memory
problem), printed as one line. Any other exception is a bug and keeps its
traceback. Set FAMJAX_TRACEBACK=1 to see tracebacks of handled errors too.
"""
from __future__ import annotations

import logging
import os
import sys

USAGE = """usage: famjax train --gin_file=FILE [--gin_file=FILE ...] [--gin.NAME=VALUE ...]
                    [--gin_search_paths=DIR[,DIR]]

  --gin_file           a gin file (repeatable; later files override earlier)
  --gin.NAME=VALUE     one binding, e.g. --gin.MODEL_DIR=/tmp/run
                       --gin.train.num_steps=1000 (strings need no quotes)
  --gin_search_paths   directories to look for gin files and includes in

Run files (gin/runs/*.gin) say in their header what must be set, e.g.
  famjax train --gin_file=gin/runs/quickstart.gin --gin.MODEL_DIR=/tmp/famjax_quickstart
Running the same command again resumes from the newest checkpoint.
"""


def _setup_logging():
  logger = logging.getLogger("famjax")
  for h in list(logger.handlers):      # main() may run again in one process
    if getattr(h, "_famjax", False):
      logger.removeHandler(h)
  handler = logging.StreamHandler(sys.stderr)
  handler._famjax = True
  handler.setFormatter(logging.Formatter("famjax: %(levelname)s: %(message)s"))
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)  # seqio's advice lines
  except ImportError:
    pass


def _ignore_closed_event_loop_noise():
  """A failed orbax restore can leave tensorstore callbacks that fire after
  their asyncio loop closed; Python would print their harmless
  'Event loop is closed' traceback at exit. Hide exactly that one."""
  previous = sys.unraisablehook
  if getattr(previous, "_famjax", False):
    return

  def hook(u):
    if isinstance(u.exc_value, RuntimeError) and (
        "Event loop is closed" in str(u.exc_value)):
      return
    previous(u)

  hook._famjax = True
  sys.unraisablehook = hook


def _clean(err: BaseException) -> str:
  lines = [l for l in str(err).splitlines()
           if not l.strip().startswith("In call to configurable")]
  return "\n".join(lines).strip() or type(err).__name__


def _is_gin_binding_error(msg: str) -> bool:
  """gin's own message for a required parameter nobody bound."""
  return "Required bindings" in msg or "No values supplied by Gin" in msg


def _fail(msg: str, code: int) -> int:
  print(f"famjax train: error: {msg}", file=sys.stderr, flush=True)
  return code


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if argv else 2
  _setup_logging()
  _ignore_closed_event_loop_noise()
  import gin
  from famjax.train import gin_flags, loop  # registers the configurables
  try:
    import famjax.data.tasks  # noqa: F401  registers tasks (and their gin)
  except ImportError:
    pass
  gin.clear_config()
  try:
    return _run(argv)
  finally:
    gin.clear_config()     # main() may be called again in this process


def _run(argv) -> int:
  from famjax.errors import UserError
  from famjax.train import gin_flags, loop
  debug = os.environ.get("FAMJAX_TRACEBACK") == "1"
  try:
    files, bindings, paths = gin_flags.parse_args(argv)
    if not files and not bindings:
      raise gin_flags.GinFlagError("no --gin_file given.\n\n" + USAGE)
    gin_flags.parse(files, bindings, paths)
  except gin_flags.GinFlagError as e:
    if debug:
      raise
    return _fail(str(e), 2)

  try:
    summary = loop.train()
  except loop.TrainError as e:
    if debug:
      raise
    return _fail(_clean(e), e.exit_code)
  except UserError as e:
    if debug:
      raise
    return _fail(_clean(e), 2)
  except (ValueError, TypeError, RuntimeError) as e:
    msg = _clean(e)
    if debug or not _is_gin_binding_error(msg):
      raise                      # a bug: keep the traceback
    return _fail(msg + " (bind it in a gin file or with --gin.NAME=VALUE)", 2)
  if summary.get("preempted"):
    logging.getLogger("famjax.train").info(
        "stopped by a signal at step %d (checkpoint saved)", summary["step"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
