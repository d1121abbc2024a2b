"""famjax.quiet.cpu_when_no_accelerator: on a host with libtpu installed (the
`test` extra installs it) but no TPU chip, famjax's commands run on the CPU
without the TPU runtime's start-up errors; with a chip, JAX's choice stands."""
import os
import subprocess
import sys

import pytest

from famjax import quiet

PROBE = ("{call}import jax; print('backend', jax.default_backend()); "
         "print('libtpu loaded', 'libtpu' in open('/proc/self/maps').read())")
TPU_NOISE = "TPU_WORKER_HOSTNAMES"


def probe(call: str):
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  out = subprocess.run([sys.executable, "-c", PROBE.format(call=call)],
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  return out.stdout, out.stderr


def test_no_tpu_noise_on_a_cpu_host():
  import importlib.util
  assert importlib.util.find_spec("libtpu") is not None  # the test extra's
  # Without the helper, JAX on this host loads the TPU runtime (which, unless
  # another process holds its lock file, complains on stderr: what a user
  # saw on every command).
  out, _ = probe("")
  assert "libtpu loaded True" in out
  out, err = probe("from famjax import quiet; "
                   "assert quiet.cpu_when_no_accelerator(); ")
  assert "backend cpu" in out and "libtpu loaded False" in out
  assert TPU_NOISE not in err


def test_leaves_a_tpu_host_and_user_choice_alone(monkeypatch):
  from jax._src import hardware_utils
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id",
                      lambda: (4, hardware_utils.TpuVersion.v5e))
  assert not quiet.cpu_when_no_accelerator()
  assert "JAX_PLATFORMS" not in os.environ
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id",
                      lambda: (0, None))
  assert not quiet.cpu_when_no_accelerator()
  assert os.environ["JAX_PLATFORMS"] == "tpu"


@pytest.mark.parametrize("cmd,expect", [("generate", True), ("compile", False)])
def test_cli_applies_it_except_to_compile(cmd, expect, monkeypatch):
  from famjax import cli
  calls = []
  monkeypatch.setattr(quiet, "cpu_when_no_accelerator",
                      lambda: calls.append(1) or False)
  try:
    cli.main([cmd, "--help"])
  except SystemExit:
    pass
  assert bool(calls) == expect
