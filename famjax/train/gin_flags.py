"""t5x-style gin flags: --gin_file (repeatable), --gin.NAME=VALUE, --gin_search_paths.

Mistakes a user can make (a file that does not exist, a binding of an unknown
configurable, parameter or macro, a required macro left unset, a macro used
but never set) become one `GinFlagError` naming the thing to fix and the
closest registered names.

The run files follow one convention (t5x-style): gin/models/*.gin set MODEL,
gin/attention/*.gin set ATTENTION, gin/tasks/*.gin set TASK (and the
vocabulary), and gin/runs/*.gin consume them by macro, declaring the ones a
user must give as `%gin.REQUIRED`.
"""
from __future__ import annotations

import ast
import difflib
import inspect
import os
import re
from typing import List, Sequence, Tuple

import gin

from famjax.errors import UserError

_REQUIRED = "%gin.REQUIRED"
_MACRO_DEF = re.compile(r"^\s*([A-Za-z_]\w*)\s*=")

# The gin files that set the conventional macros, for the "not set" message.
MACRO_HINTS = {
    "MODEL": "a gin/models/*.gin file",
    "ATTENTION": "a gin/attention/*.gin file",
    "TASK": "a gin/tasks/*.gin file",
    "VOCAB_SIZE": "a gin/tasks/*.gin file",
}


class GinFlagError(UserError):
  """A gin file, binding or macro mistake; the message names what to fix."""


def parse_args(argv: Sequence[str]) -> Tuple[List[str], List[str], List[str]]:
  """(gin files, bindings, search paths) of a command line."""
  files, bindings, paths = [], [], []
  args = list(argv)
  i = 0
  while i < len(args):
    a = args[i]
    name, eq, value = a.partition("=")
    if not eq and name in ("--gin_file", "--gin_search_paths") and i + 1 < len(args):
      value, eq = args[i + 1], "="
      i += 1
    if name == "--gin_file" and eq:
      files.append(value)
    elif name == "--gin_search_paths" and eq:
      paths += [p for p in value.split(",") if p]
    elif name == "--gin_bindings" and eq:
      bindings.append(value)
    elif name.startswith("--gin.") and eq:
      bindings.append(f"{name[len('--gin.'):]} = {gin_value(value)}")
    else:
      raise GinFlagError(
          f"unknown argument {a!r}; use --gin_file=FILE, --gin.NAME=VALUE or "
          "--gin_search_paths=DIR[,DIR].")
    i += 1
  return files, bindings, paths


def gin_value(text: str) -> str:
  """A command-line value as gin source: literals, @refs and %macros as they
  are; anything else (a path, a task name) as a quoted string."""
  t = text.strip()
  if t[:1] in ("@", "%") or t in ("True", "False", "None"):
    return t
  try:
    ast.literal_eval(t)
    return t
  except (ValueError, SyntaxError):
    return repr(text)


def find_file(name: str, search_paths: Sequence[str]) -> str:
  candidates = [name] + [os.path.join(p, name) for p in search_paths]
  for c in candidates:
    if os.path.isfile(c):
      return c
  near = []
  for d in {os.path.dirname(c) or "." for c in candidates}:
    if os.path.isdir(d):
      near += [os.path.join(d, f) for f in os.listdir(d) if f.endswith(".gin")]
  hint = difflib.get_close_matches(candidates[-1 if search_paths else 0],
                                   near, n=3, cutoff=0.5)
  msg = f"gin file {name!r} not found"
  if search_paths:
    msg += f" (searched ., {', '.join(search_paths)})"
  if hint:
    msg += "; did you mean " + " or ".join(repr(h) for h in hint) + "?"
  return _raise(msg)


def _raise(msg):
  raise GinFlagError(msg)


# ------------------------------------------------------------- registry
def registered() -> dict:
  """{configurable name: [parameter names]} of everything gin knows."""
  out = {}
  for _, c in gin.config._REGISTRY.items():  # pylint: disable=protected-access
    if c.module.startswith("gin"):
      continue
    fn = c.wrapped
    try:
      sig = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)
      params = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
      params = []
    out[c.name] = params
    out[f"{c.module}.{c.name}"] = params
  return out


def _suggest(word: str, names) -> str:
  close = difflib.get_close_matches(word, list(names), n=3, cutoff=0.5)
  return ("; did you mean " + " or ".join(repr(c) for c in close) + "?"
          ) if close else ""


def explain(err: Exception, source: str = "") -> str:
  """One clear message for a gin parse error."""
  text = str(err).splitlines()[0] if str(err) else type(err).__name__
  reg = registered()
  m = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'",
                text)
  if m:
    conf, param = m.groups()
    params = reg.get(conf, [])
    all_params = [f"{c}.{p}" for c, ps in reg.items() if "." not in c for p in ps]
    hint = _suggest(param, params) or _suggest(f"{conf}.{param}", all_params)
    return f"unknown gin parameter {conf}.{param}{hint}{source}"
  m = re.search(r"No configurable matching (?:reference )?'@?([^'(]+)", text)
  if m:
    name = m.group(1)
    pool = list(reg) + [f"{c}.{p}" for c, ps in reg.items() if "." not in c
                        for p in ps]
    return f"unknown gin configurable {name!r}{_suggest(name, pool)}{source}"
  return f"gin config error: {text}{source}"


def default_search_paths() -> List[str]:
  """The repository root (holding gin/), so `include 'gin/...'` works from
  any working directory."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  return [root] if os.path.isdir(os.path.join(root, "gin")) else []


def parse(files: Sequence[str], bindings: Sequence[str],
          search_paths: Sequence[str] = ()):
  """Parse files then bindings (later wins); raise GinFlagError on mistakes."""
  search_paths = list(search_paths) + default_search_paths()
  for p in search_paths:
    gin.add_config_file_search_path(p)
  for f in files:
    path = find_file(f, search_paths)
    try:
      gin.parse_config_file(path)
    except (ValueError, SyntaxError, ImportError, IOError) as e:
      raise GinFlagError(explain(e, f" (in {path})")) from None
  known = set(macros()) | set(macro_references())
  for b in bindings:
    m = _MACRO_DEF.match(b)
    if m and m.group(1) not in known:
      raise GinFlagError(
          f"unknown gin macro {m.group(1)!r}{_suggest(m.group(1), known)} "
          f"(in --gin binding {b.strip()!r}); the gin files use "
          f"{', '.join(sorted(known)) or 'no macros'}.")
    try:
      gin.parse_config(b)
    except (ValueError, SyntaxError, ImportError) as e:
      raise GinFlagError(explain(e, f" (in --gin binding {b.strip()!r})")) from None
  missing = unset_required_macros()
  if missing:
    raise GinFlagError("required gin macro(s) not set: " + _how_to_set(missing)
                       + "; see the header of the run file.")
  undefined = sorted(set(macro_references()) - set(macros()))
  if undefined:
    raise GinFlagError("gin macro(s) used but never set: "
                       + _how_to_set(undefined) + ".")


def _how_to_set(names) -> str:
  hints = [f"{n}: {MACRO_HINTS[n]}" for n in names if n in MACRO_HINTS]
  return (", ".join(names) + "; set them with "
          + " ".join(f"--gin.{m}=..." for m in names)
          + (f" or a gin file ({'; '.join(hints)})" if hints else ""))


def macros() -> dict:
  """{macro name: value} of the macros the parsed config sets."""
  return {scope: values.get("value")
          for (scope, selector), values in gin.config._CONFIG.items()  # pylint: disable=protected-access
          if selector == "gin.macro"}


def macro_references() -> dict:
  """{macro name: [bindings that read it]} of the parsed config."""
  out = {}
  for (scope, selector), values in gin.config._CONFIG.items():  # pylint: disable=protected-access
    where = f"{scope}/{selector}" if scope else selector
    if selector == "gin.macro":
      where = scope
    for param, value in values.items():
      for name in _macro_names(value):
        out.setdefault(name, []).append(
            where if selector == "gin.macro" else f"{where}.{param}")
  return out


def _macro_names(value):
  """Names of the %MACRO references inside a bound value."""
  if isinstance(value, gin.config.ConfigurableReference):
    sel = getattr(value, "_scoped_selector", "")
    if sel.endswith("/gin.macro"):
      yield sel[:-len("/gin.macro")]
  elif isinstance(value, dict):
    for v in value.values():
      yield from _macro_names(v)
  elif isinstance(value, (list, tuple, set)):
    for v in value:
      yield from _macro_names(v)


def unset_required_macros() -> List[str]:
  return sorted(n for n, v in macros().items() if repr(v) == _REQUIRED)


def unread_macros() -> List[str]:
  """Macros the config sets that no binding reads (a gin file mistake)."""
  return sorted(set(macros()) - set(macro_references()))
