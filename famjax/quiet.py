"""Keep other libraries' start-up noise off famjax's stderr.

TensorFlow (used only for the seqio data pipeline) prints, while its shared
libraries load, lines such as "Could not find cuda drivers", "failed call to
cuInit" and the oneDNN round-off notice, before its own logging is set up, so
TF_CPP_MIN_LOG_LEVEL alone cannot hide them. `quiet_tensorflow()` (called by
`famjax/__init__.py`, before anything imports tensorflow):
  * defaults TF_CPP_MIN_LOG_LEVEL=3 and TF_ENABLE_ONEDNN_OPTS=0 (a user's own
    settings win);
  * sends the C-level stderr (file descriptor 2) to /dev/null while
    `import tensorflow` runs; Python-level messages (warnings, errors) still
    reach the real stderr;
  * hides GPUs from TensorFlow, so the data pipeline never takes accelerator
    memory that JAX needs.
Set FAMJAX_TF_NOISE=1 to see everything.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys

_TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}


@contextlib.contextmanager
def c_stderr_to_devnull():
  """File descriptor 2 -> /dev/null; sys.stderr keeps writing to the real one."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):
    yield                       # no usable fd 2 (embedded interpreter)
    return
  py_stderr = sys.stderr
  real = os.fdopen(os.dup(saved), "w", buffering=1,
                   encoding=getattr(py_stderr, "encoding", None) or "utf-8",
                   errors="backslashreplace")
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    sys.stderr = real
    yield
  finally:
    real.flush()
    sys.stderr = py_stderr
    os.dup2(saved, 2)
    for fd in (devnull, saved):
      os.close(fd)
    real.close()


class _QuietLoader(importlib.abc.Loader):
  """Runs the real loader of `tensorflow` with C-level stderr silenced."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    module.__loader__ = self._loader
    if module.__spec__ is not None:
      module.__spec__.loader = self._loader
    with c_stderr_to_devnull():
      self._loader.exec_module(module)
      _hide_gpus(module)


def _hide_gpus(tf):
  try:
    tf.config.set_visible_devices([], "GPU")
  except Exception:  # pylint: disable=broad-except  (runtime already started)
    pass


class _QuietFinder(importlib.abc.MetaPathFinder):
  """One-shot finder: wraps the loader of the first `import tensorflow`."""

  def find_spec(self, name, path=None, target=None):
    if name != "tensorflow":
      return None
    _remove_finder()
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


def _remove_finder():
  sys.meta_path[:] = [f for f in sys.meta_path
                      if not isinstance(f, _QuietFinder)]


def quiet_tensorflow():
  if os.environ.get("FAMJAX_TF_NOISE") == "1":
    return
  for k, v in _TF_ENV.items():
    os.environ.setdefault(k, v)
  if "tensorflow" in sys.modules:
    return
  if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietFinder())


_GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin",
                "jax_rocm_plugin")


def cpu_when_no_accelerator() -> bool:
  """JAX_PLATFORMS=cpu when libtpu is installed but this host has no TPU chip
  and no GPU plugin is installed: the TPU runtime would otherwise print its
  "could not determine TPU accelerator type / worker hostnames" errors on
  every command (libtpu comes with famjax's `test` and `tpu` extras). The CPU
  is the only backend such a host has anyway. A user's JAX_PLATFORMS wins;
  `famjax compile` does not call this (it needs the TPU compiler without a
  chip). Returns whether it set the variable."""
  import importlib.util
  if os.environ.get("JAX_PLATFORMS"):
    return False
  if importlib.util.find_spec("libtpu") is None:
    return False
  if any(importlib.util.find_spec(m) is not None for m in _GPU_PLUGINS):
    return False
  try:
    from jax._src import hardware_utils   # the TPU chip scan JAX itself uses
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except Exception:  # pylint: disable=broad-except
    return False                          # unsure: leave JAX's choice alone
  if chips:
    return False
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax                              # read JAX_PLATFORMS at its import
  jax.config.update("jax_platforms", "cpu")
  return True
