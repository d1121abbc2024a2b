"""`famjax COMMAND [ARGS]`: the commands are those of the COMMANDS table
(`famjax --help` lists them; `famjax COMMAND --help` explains one).

Each command is a module with `main(argv) -> exit code` inside the famjax
package. Exit codes: 0 success, 2 a mistake the user can fix (one line on
stderr), anything else a failure.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("famjax.train.main", "train the model of a gin run file"),
    "convert": ("famjax.convert.cli", "convert Hugging Face / GGUF checkpoints"),
    "eval": ("famjax.evals.main", "run seqio evals on a model directory"),
    "generate": ("famjax.decode", "stream-decode from a prompt"),
    "compile": ("famjax.compile", "compile a run's train step for a TPU topology ahead of time"),
}


def usage() -> str:
  lines = ["usage: famjax COMMAND [ARGS]", "", "commands:"]
  lines += [f"  {name:<9} {doc}" for name, (_, doc) in COMMANDS.items()]
  lines += ["", "famjax COMMAND --help explains one."]
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(usage())
    return 0
  cmd, rest = argv[0], argv[1:]
  if cmd not in COMMANDS:
    print(f"famjax: error: unknown command {cmd!r}\n\n{usage()}",
          file=sys.stderr)
    return 2
  if cmd != "compile":
    from famjax import quiet
    quiet.cpu_when_no_accelerator()
  module = importlib.import_module(COMMANDS[cmd][0])
  return int(module.main(rest) or 0)


if __name__ == "__main__":
  sys.exit(main())
