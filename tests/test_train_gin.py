"""Gin flags: overrides, required macros, and one clear error for mistakes."""
import os

from famjax.train import gin_flags
from tests.conftest import REPO, main_in_process, run_train


def test_unknown_binding_subprocess_clear_error(tiny_gin, tmp_path):
  rc, out, err = run_train(f"--gin_file={tiny_gin}",
                           f"--gin.MODEL_DIR={tmp_path}",
                           "--gin.train.num_step=3")
  assert rc == 2
  assert "Traceback" not in err
  lines = [l for l in err.splitlines() if l.startswith("famjax")]
  assert lines == ["famjax train: error: unknown gin parameter train.num_step; "
                   "did you mean 'num_steps'? (in --gin binding "
                   "'train.num_step = 3')"]
  assert not os.listdir(tmp_path)                    # nothing was started


def test_unknown_configurable(tiny_gin, tmp_path, capfd):
  rc = main_in_process(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={tmp_path}",
                       "--gin.StepConfg.p_rsp=0.5")
  err = capfd.readouterr().err
  assert rc == 2
  assert "unknown gin configurable 'StepConfg'; did you mean 'StepConfig'" in err


def test_unknown_parameter_in_file(tmp_path, capfd):
  f = tmp_path / "bad.gin"
  f.write_text("make_schedule.warmup_step = 10\n")
  rc = main_in_process(f"--gin_file={f}")
  err = capfd.readouterr().err
  assert rc == 2
  assert ("unknown gin parameter make_schedule.warmup_step; did you mean "
          "'warmup_steps'") in err and str(f) in err


def test_unknown_file_suggests_close_match(capfd):
  rc = main_in_process("--gin_file=gin/runs/quickstrat.gin")
  err = capfd.readouterr().err
  assert rc == 2
  assert "gin file 'gin/runs/quickstrat.gin' not found" in err
  assert "quickstart.gin" in err


def test_required_macro_named(capfd):
  rc = main_in_process(f"--gin_file={REPO}/gin/runs/quickstart.gin")
  err = capfd.readouterr().err
  assert rc == 2
  assert "required gin macro(s) not set: MODEL_DIR" in err
  assert "--gin.MODEL_DIR=" in err


def test_values_need_no_quotes():
  files, bindings, _ = gin_flags.parse_args(
      ["--gin_file", "a.gin", "--gin.MODEL_DIR=/tmp/x y",
       "--gin.train.num_steps=10", "--gin.make_schedule.peak_learning_rate=1e-3",
       "--gin.train.data_fn=@slow_iterator", "--gin.train.export=True",
       "--gin.TASK='passkey_byte'", "--gin.train.eval_split=None"])
  assert files == ["a.gin"]
  assert bindings == ["MODEL_DIR = '/tmp/x y'", "train.num_steps = 10",
                      "make_schedule.peak_learning_rate = 1e-3",
                      "train.data_fn = @slow_iterator", "train.export = True",
                      "TASK = 'passkey_byte'", "train.eval_split = None"]


def test_later_file_and_flags_win(tiny_gin, tmp_path):
  import gin
  over = tmp_path / "over.gin"
  over.write_text("train.batch_size = 2\ntrain.seq_len = 32\n")
  gin.clear_config()
  files, bindings, paths = gin_flags.parse_args(
      [f"--gin_file={tiny_gin}", f"--gin_file={over}", "--gin.MODEL_DIR=/x",
       "--gin.train.seq_len=16"])
  gin_flags.parse(files, bindings, paths)
  assert gin.query_parameter("train.batch_size") == 2
  assert gin.query_parameter("train.seq_len") == 16
  gin.clear_config()


def test_famjax_cli_dispatches_to_trainer(tiny_gin, tmp_path, capfd):
  from famjax import cli
  assert cli.main(["train", "--help"]) == 0
  assert "--gin_file" in capfd.readouterr().out
  rc = cli.main(["train", f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={tmp_path}",
                 "--gin.train.bach_size=3"])
  assert rc == 2
  assert "did you mean 'batch_size'" in capfd.readouterr().err
