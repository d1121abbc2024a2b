"""A user's mistake ends in one line naming what to fix (exit 2), before
anything is written or deleted; an internal error keeps its traceback."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from famjax import AttentionConfig, ModelConfig, Transformer
from famjax.errors import UserError
from famjax.train import gin_flags
from tests.conftest import JAX_ENV, REPO, main_in_process, run_train


def famjax_lines(err: str):
  """famjax's own stderr lines (other libraries may print their own)."""
  return [l for l in err.splitlines() if l.startswith("famjax")]


def one_error(capfd):
  """The one error line famjax printed (its INFO lines aside)."""
  lines = [l for l in famjax_lines(capfd.readouterr().err) if ": error:" in l]
  assert len(lines) == 1, lines
  return lines[0]


# --------------------------------------------------------- other libraries
def test_tensorflow_start_up_noise_is_silenced():
  """Importing famjax and then the data pipeline (TensorFlow) prints nothing
  of TensorFlow's / CUDA's start-up lines; Python warnings still show."""
  code = ("import famjax, seqio, tensorflow as tf, warnings;"
          "warnings.warn('python-level warning');"
          "print(tf.config.get_visible_devices('GPU'))")
  env = dict(os.environ, PYTHONPATH=REPO, **JAX_ENV)
  p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  for noise in ("cuda drivers", "cuInit", "oneDNN", "absl::InitializeLog",
                "cpu_feature_guard"):
    assert noise not in p.stderr, p.stderr
  assert "python-level warning" in p.stderr
  assert p.stdout.strip() == "[]"               # TF sees no GPU


# ------------------------------------------------------------ bad numbers
@pytest.mark.parametrize("binding,name", [
    ("train.num_steps=2.5", "train.num_steps=2.5"),
    ("train.num_steps=-5", "train.num_steps=-5"),
    ("train.batch_size=0", "train.batch_size=0"),
    ("train.save_every=0", "train.save_every=0"),
    ("StepConfig.fam_growth_penalty=-1.0", "StepConfig.fam_growth_penalty=-1.0"),
    ("StepConfig.fam_size_penalty=-1.0", "StepConfig.fam_size_penalty=-1.0"),
])
def test_bad_number_one_line_nothing_written(binding, name, tiny_gin,
                                             tmp_path, capfd):
  run = tmp_path / "run"
  rc = main_in_process(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={run}",
                       f"--gin.{binding}")
  assert rc == 2
  assert name in one_error(capfd)
  assert not run.exists()


@pytest.mark.parametrize("field", ["fam_growth_penalty", "fam_size_penalty"])
def test_state_penalty_needs_fam(field, tiny_gin, tmp_path, capfd):
  run = tmp_path / "run"
  rc = main_in_process(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={run}",
                       "--gin.AttentionConfig.mode='bswa'",
                       "--gin.AttentionConfig.fam_length=0",
                       f"--gin.StepConfig.{field}=0.5")
  assert rc == 2
  line = one_error(capfd)
  assert f"StepConfig.{field}=0.5" in line and "'bswa'" in line
  assert not run.exists()


def test_batch_not_dividing_the_data_axis(tiny_gin, tmp_path):
  run = tmp_path / "run"
  rc, _, err = run_train(
      f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={run}",
      "--gin.train.batch_size=3",
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert rc == 2, err
  assert "Traceback" not in err
  (line,) = famjax_lines(err)
  assert "train.batch_size=3" in line and "2 data-parallel shards" in line
  assert not run.exists()


# --------------------------------------------------------------- overwrite
def test_overwrite_with_a_bad_config_keeps_the_run(tiny_gin, tmp_path, capfd):
  run = tmp_path / "run"
  ckpt = run / "checkpoints" / "3"
  ckpt.mkdir(parents=True)
  (ckpt / "state").write_text("weights")
  (run / "metrics.jsonl").write_text('{"step": 3}\n')
  rc = main_in_process(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={run}",
                       "--gin.train.overwrite=True",
                       "--gin.ModelConfig.num_heads=3")    # 3 ∤ d_model 32
  assert rc == 2
  assert "ModelConfig.num_heads=3" in one_error(capfd)
  assert (ckpt / "state").read_text() == "weights"
  assert (run / "metrics.jsonl").exists()


# ------------------------------------------------- one way to configure a run
def test_unknown_macro_is_an_error(tiny_gin, tmp_path, capfd):
  rc = main_in_process(f"--gin_file={REPO}/gin/runs/quickstart.gin",
                       f"--gin.MODEL_DIR={tmp_path}/run", "--gin.TAKS=x")
  assert rc == 2
  assert "unknown gin macro 'TAKS'; did you mean 'TASK'?" in one_error(capfd)


def test_pretrain_without_model_and_attention_names_both(tmp_path, capfd):
  rc = main_in_process(f"--gin_file={REPO}/gin/runs/pretrain.gin",
                       f"--gin_file={REPO}/gin/tasks/passkey_byte.gin",
                       f"--gin.MODEL_DIR={tmp_path}/run")
  assert rc == 2
  line = one_error(capfd)
  assert "not set: ATTENTION, MODEL" in line
  assert "gin/models/*.gin" in line and "gin/attention/*.gin" in line
  # A task by name only: the model file reads VOCAB_SIZE, which nothing set.
  rc = main_in_process(f"--gin_file={REPO}/gin/runs/pretrain.gin",
                       f"--gin_file={REPO}/gin/models/tiny.gin",
                       f"--gin_file={REPO}/gin/attention/fam.gin",
                       "--gin.TASK=passkey_byte",
                       f"--gin.MODEL_DIR={tmp_path}/run")
  assert rc == 2
  assert "used but never set: VOCAB_SIZE" in one_error(capfd)
  assert not (tmp_path / "run").exists()


RUN_FILES = {
    "quickstart.gin": [],
    "pretrain.gin": ["gin/models/tiny.gin", "gin/attention/bswa.gin",
                     "gin/tasks/pylib_lm_byte.gin"],
    "finetune.gin": ["gin/tasks/passkey_byte.gin"],
}


@pytest.mark.parametrize("run_file", sorted(RUN_FILES))
def test_run_files_require_only_macros_something_reads(run_file):
  import gin
  from famjax.train import loop  # noqa: F401  (registers the configurables)
  gin.clear_config()
  try:
    gin.add_config_file_search_path(REPO)
    gin.parse_config_file(os.path.join(REPO, "gin", "runs", run_file))
    required = gin_flags.unset_required_macros()
    read = gin_flags.macro_references()
    assert required and set(required) <= set(read), (required, read)
    # With the files its header names, only the user's values are missing.
    for f in RUN_FILES[run_file]:
      gin.parse_config_file(os.path.join(REPO, f))
    assert set(gin_flags.unset_required_macros()) <= {
        "MODEL_DIR", "LOAD_PARAMS_FROM"}
    assert set(gin_flags.macro_references()) <= set(gin_flags.macros())
  finally:
    gin.clear_config()


def test_attention_has_one_path(tiny_gin, tmp_path, capfd):
  rc = main_in_process(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={tmp_path}/a",
                       "--gin.train.model_overrides={'attention': None}")
  assert rc == 2
  assert "may not set 'attention'" in one_error(capfd)
  rc = main_in_process(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={tmp_path}/b",
                       "--gin.ModelConfig.attention=@bswa/AttentionConfig()",
                       "--gin.bswa/AttentionConfig.mode='bswa'")
  assert rc == 2
  assert "remove the ModelConfig.attention binding" in one_error(capfd)
  rc = main_in_process(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={tmp_path}/c",
                       "--gin.train.attention=None")
  assert rc == 2
  assert "train.attention is not set" in one_error(capfd)
  assert not any(os.listdir(tmp_path))


# ------------------------------------------------------------ other errors
def test_required_parameter_left_unbound(tmp_path, capfd):
  from tests.conftest import TINY_RUN
  f = tmp_path / "no_steps.gin"
  f.write_text(TINY_RUN.replace("train.num_steps = 6\n", ""))
  rc = main_in_process(f"--gin_file={f}", f"--gin.MODEL_DIR={tmp_path}/run")
  assert rc == 2
  line = one_error(capfd)
  assert "Required bindings for `train`" in line and "num_steps" in line
  assert not (tmp_path / "run").exists()


def test_internal_error_keeps_its_traceback(tiny_gin, tmp_path, monkeypatch):
  from famjax.train import build

  def broken(cfg, **kw):
    raise ValueError("a shape bug inside the model")

  monkeypatch.setattr(build, "build_state", broken)
  with pytest.raises(ValueError, match="a shape bug"):
    main_in_process(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={tmp_path}/r")


def test_out_of_memory_names_the_step_size_and_knobs(tiny_gin, tmp_path,
                                                     monkeypatch, capfd):
  from famjax.train import trainer

  def make_train_step(*args, **kw):
    def step(state, batch):
      raise jax.errors.JaxRuntimeError(
          "RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
          "147102629888 bytes.")
    return step

  monkeypatch.setattr(trainer, "make_train_step", make_train_step)
  rc = main_in_process(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={tmp_path}/r",
                       "--gin.StepConfig.microbatches=2")
  assert rc == 2
  line = one_error(capfd)
  cfg = ModelConfig(vocab_size=259, d_model=32, num_layers=2, num_heads=2,
                    ffn_dim=64, attention=AttentionConfig("fam", 16, 1, 4))
  n_params = sum(x.size for x in jax.tree.leaves(
      nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
  for want in ("does not fit in memory", "batch_size 4 x seq_len 64 = 256 tokens",
               "2 microbatch(es) of 2 x 64", "train.batch_size", "train.seq_len",
               "StepConfig.microbatches", "remat_policy", "bfloat16"):
    assert want in line, (want, line)
  assert f"through {n_params:,} parameters ({n_params:,} trainable)" in line


def test_token_ids_outside_the_vocabulary():
  cfg = ModelConfig(vocab_size=16, d_model=32, num_layers=1, num_heads=2,
                    ffn_dim=32, attention=AttentionConfig("fam", 4, 1, 2))
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  good = jnp.arange(8, dtype=jnp.int32)[None] % 16
  for bad in (16, -1):
    tokens = good.at[0, 3].set(bad)
    with pytest.raises(UserError, match=f"id {bad}, outside the model "
                       r"vocabulary \[0, 16\)"):
      model(tokens)
    with pytest.raises(UserError, match=f"id {bad}"):
      model.stream(model.init_stream(1), tokens[:, :4])
  # Inside jit the ids are not known (not checked); the model still runs.
  out = nnx.jit(lambda m, t: m(t))(model, good)
  assert out.shape == (1, 8, 16) and np.isfinite(np.asarray(out)).all()


# -------------------------------------------------------------------- CLIs
def test_help_lists_exactly_the_commands_that_exist(capsys):
  import importlib
  import re
  from famjax import cli
  assert cli.main(["--help"]) == 0
  listed = re.findall(r"^  (\w+) ", capsys.readouterr().out, re.M)
  assert listed == list(cli.COMMANDS)
  for name, (module, _) in cli.COMMANDS.items():
    assert module.startswith("famjax."), name     # installed with famjax
    assert callable(importlib.import_module(module).main), name
  assert cli.main(["bench"]) == 2


def test_attention_flags_mean_the_same_everywhere():
  import argparse
  from famjax import cli_args
  p = argparse.ArgumentParser()
  cli_args.add_attention_flags(p)
  fam = AttentionConfig("fam", 64, 2, 8)

  def att(argv, base=None):
    return cli_args.attention_from_args(p.parse_args(argv), base)

  assert att([]) is None and att([], fam) is None
  assert att(["--attention", "bswa"], fam) == AttentionConfig("bswa", 64, 2, 8)
  assert att(["--attention", "fam", "--block_size", "32"]) == AttentionConfig(
      "fam", 32, AttentionConfig().memory_segments, AttentionConfig().fam_length)
  assert att(["--fam_length", "4"], fam) == AttentionConfig("fam", 64, 2, 4)
  assert att(["--attention", "full"], fam) == AttentionConfig("full", 64, 2, 8)
  # fam_logit_bias (outside the rules): kept in fam, dropped in other modes
  biased = AttentionConfig("fam", 64, 2, 8, fam_logit_bias=-10.0)
  assert att(["--fam_logit_bias=-10"], fam) == biased
  assert att(["--fam_logit_bias", "-10"], fam) == biased
  assert att(["--attention", "fam", "--fam_logit_bias=-inf"]).fam_logit_bias \
      == float("-inf")
  assert att(["--block_size", "32"], biased) == AttentionConfig(
      "fam", 32, 2, 8, fam_logit_bias=-10.0)
  assert att(["--attention", "bswa"], biased) == AttentionConfig(
      "bswa", 64, 2, 8)
  for argv, base in ((["--block_size", "8"], None),
                     (["--block_size", "8"], AttentionConfig("full")),
                     (["--attention", "full", "--block_size", "8"], None),
                     (["--attention", "fam", "--fam_length", "99",
                       "--block_size", "8"], None),
                    (["--fam_logit_bias=-1"], None),
                    (["--fam_logit_bias=0.5"], fam),
                    (["--attention", "bswa", "--fam_logit_bias=-1"], fam),
                    (["--attention", "full", "--fam_logit_bias=-1"], fam)):
    with pytest.raises(UserError):
      att(argv, base)


def test_fam_length_must_match_the_loaded_fam_prompt(tmp_path, capfd):
  from famjax import params_io
  cfg = ModelConfig(vocab_size=259, d_model=32, num_layers=1, num_heads=2,
                    ffn_dim=64, attention=AttentionConfig("fam", 16, 1, 4))
  src = str(tmp_path / "src")
  params_io.save_model_dir(src, cfg, params_io.params_dict(
      Transformer(cfg, rngs=nnx.Rngs(0))))
  rc = main_in_process(f"--gin_file={REPO}/gin/runs/finetune.gin",
                       f"--gin_file={REPO}/gin/tasks/passkey_byte.gin",
                       f"--gin.LOAD_PARAMS_FROM={src}",
                       f"--gin.MODEL_DIR={tmp_path}/run",
                       "--gin.AttentionConfig.block_size=16",
                       "--gin.AttentionConfig.fam_length=8")
  assert rc == 2
  assert "fam_prompt of 4 rows but ATTENTION has fam_length=8" in one_error(
      capfd)
  assert not (tmp_path / "run").exists()
