"""Shared helpers for the trainer tests.

JAX's persistent compilation cache is switched on (for this process and the
`python -m famjax.train` subprocesses): the same train step compiled in
several runs is built once. It changes no result, only the wall time.
"""
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("FAMJAX_TEST_JAX_CACHE", "/tmp/famjax_test_jax_cache")
JAX_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "JAX_COMPILATION_CACHE_DIR": CACHE,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
os.environ.update(JAX_ENV)

import jax  # noqa: E402  (after the cache variables)

jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

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
    ModelConfig.attention = @AttentionConfig()
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


@pytest.fixture(scope="session")
def tiny_gin(tmp_path_factory):
  path = tmp_path_factory.mktemp("gin") / "tiny_run.gin"
  path.write_text(TINY_RUN)
  return str(path)


def train_cmd(*args):
  return [sys.executable, "-m", "famjax.train", *args]


def popen_train(*args, **kw):
  env = dict(os.environ, PYTHONPATH=REPO, **JAX_ENV)
  return subprocess.Popen(train_cmd(*args), cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


def run_train(*args, timeout=300):
  p = popen_train(*args)
  out, err = p.communicate(timeout=timeout)
  return p.returncode, out, err


def main_in_process(*args):
  """famjax.train.main.main(args) in this process -> exit code."""
  from famjax.train.main import main
  return main(list(args))
