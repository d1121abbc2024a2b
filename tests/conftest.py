"""Shared test setup, and helpers for the trainer tests.

JAX's persistent compilation cache is switched on (for this process and the
`python -m famjax.train` subprocesses): the same train step compiled in
several runs is built once (programs that take over 1 s to compile). It
changes no result, only the wall time.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("FAMJAX_TEST_JAX_CACHE", "/tmp/famjax_test_jax_cache")
JAX_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "JAX_COMPILATION_CACHE_DIR": CACHE,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
os.environ.update(JAX_ENV)

# Tests run on one CPU device unless a test starts its own subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the cache variables)

jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from famjax.train.metrics import read_metrics  # noqa: E402

# A tiny FAM run on the real pylib_lm_byte task (byte vocabulary). Every
# subprocess / in-process run below uses exactly this program (constant
# schedule: num_steps does not enter the compiled step), so it compiles once.
TINY_RUN = textwrap.dedent("""
    import tests.data_hooks
    MODEL_DIR = %gin.REQUIRED
    ModelConfig.vocab_size = 259
    ModelConfig.d_model = 32
    ModelConfig.num_layers = 2
    ModelConfig.num_heads = 2
    ModelConfig.ffn_dim = 64
    train.attention = @AttentionConfig()
    AttentionConfig.mode = 'fam'
    AttentionConfig.block_size = 16
    AttentionConfig.memory_segments = 1
    AttentionConfig.fam_length = 4
    train.model_dir = %MODEL_DIR
    train.task = 'pylib_lm_byte'
    train.model_config = @ModelConfig()
    train.step_config = @StepConfig()
    train.num_steps = 6
    train.batch_size = 4
    train.seq_len = 64
    train.save_every = 3
    train.eval_split = None
    train.progress_bar = False
    train.seed = 2
    StepConfig.p_rsp = 0.8
    StepConfig.random_position_offset = True
    make_schedule.schedule = 'constant'
    make_schedule.peak_learning_rate = 1e-2
    make_schedule.warmup_steps = 2
    """)


N = 3


def final_params(model_dir, step=2 * N):
  """The train state of a checkpoint as numpy arrays (whatever devices it
  was saved from)."""
  path = os.path.join(model_dir, "checkpoints", str(step), "state")
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path).item_metadata
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta,
      is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
  return jax.tree.map(np.asarray, ckptr.restore(path, target))


def assert_same_run(got_dir, want_dir, atol=1e-6, param_atol=None):
  got, want = read_metrics(got_dir), read_metrics(want_dir)
  assert sorted(got) == list(range(1, 2 * N + 1)) == sorted(want)
  for s in want:
    assert abs(got[s]["loss"] - want[s]["loss"]) <= atol, (s, got[s], want[s])
    assert got[s]["rsp_used"] == want[s]["rsp_used"]
  a, b = final_params(got_dir), final_params(want_dir)
  flat_a = dict(leaves(a))
  flat_b = dict(leaves(b))
  assert flat_a.keys() == flat_b.keys()
  for k in flat_b:
    np.testing.assert_allclose(flat_a[k], flat_b[k], atol=param_atol or atol,
                               rtol=0,
                               err_msg=str(k))


def leaves(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from leaves(v, prefix + (k,))
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      yield from leaves(v, prefix + (i,))
  elif tree is not None:
    yield prefix, np.asarray(tree)



@pytest.fixture(scope="session")
def tiny_gin(tmp_path_factory):
  path = tmp_path_factory.mktemp("gin") / "tiny_run.gin"
  path.write_text(TINY_RUN)
  return str(path)


def train_cmd(*args):
  return [sys.executable, "-m", "famjax.train", *args]


def popen_train(*args, env=None):
  env = dict(os.environ, PYTHONPATH=REPO, **JAX_ENV, **(env or {}))
  return subprocess.Popen(train_cmd(*args), cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def run_train(*args, timeout=300, env=None):
  p = popen_train(*args, env=env)
  out, err = p.communicate(timeout=timeout)
  return p.returncode, out, err


def main_in_process(*args):
  """famjax.train.main.main(args) in this process -> exit code."""
  from famjax.train.main import main
  return main(list(args))


@pytest.fixture(scope="session")
def straight(tiny_gin, tmp_path_factory):
  """An uninterrupted 2N-step run of TINY_RUN (the reference)."""
  d = str(tmp_path_factory.mktemp("straight"))
  rc, out, err = run_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}")
  assert rc == 0, err
  # The steps after N start from the kept FAM state (RSP coin) with zero and
  # non-zero position offsets, so a resume that lost the kept state or the
  # RNG could not match; the kept state is in the checkpoint.
  m = read_metrics(d)
  assert m[N + 1]["rsp_used"] == m[N + 2]["rsp_used"] == 1.0
  assert {m[s]["position_offset"] == 0 for s in range(N + 1, 2 * N + 1)} == {
      True, False}
  assert final_params(d)["rsp"].shape == (2, 4, 32)
  # Operative gin config and TensorBoard events are in the run directory.
  with open(os.path.join(d, "config.gin")) as fh:
    operative = fh.read()
  assert "train.seq_len = 64" in operative and "StepConfig.p_rsp = 0.8" in operative
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(os.path.join(d, "train")))
  return d
