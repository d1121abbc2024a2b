"""Damaged checkpoints and a non-finite loss: no data lost, clear messages."""
import glob
import json
import os

import pytest

from famjax.train.metrics import read_events, read_metrics
from tests.conftest import main_in_process


def ckpt_steps(d):
  return sorted(int(s) for s in os.listdir(os.path.join(d, "checkpoints")))


def truncate_data_files(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "d", "*"))
  assert files
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)


def delete_manifest(step_dir):
  os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))


@pytest.mark.parametrize("damage", [truncate_data_files, delete_manifest])
def test_corrupt_newest_checkpoint_resumes_from_previous(damage, tiny_gin,
                                                         tmp_path, capfd):
  d = str(tmp_path / "run")
  args = [f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}",
          "--gin.train.save_every=2"]
  assert main_in_process(*args) == 0
  assert ckpt_steps(d) == [2, 4, 6]
  first = read_metrics(d)
  capfd.readouterr()

  damage(os.path.join(d, "checkpoints", "6"))
  assert main_in_process(*args, "--gin.train.num_steps=8") == 0
  err = capfd.readouterr().err
  assert "WARNING: checkpoint 6" in err and "cannot be restored" in err
  assert "resuming from checkpoint 4" in err
  # The damaged step is kept aside, not deleted; steps 5, 6 were redone
  # exactly, and the run went on to step 8.
  assert os.listdir(os.path.join(d, "corrupt_checkpoints")) == ["6"]
  assert ckpt_steps(d) == [4, 6, 8]
  again = read_metrics(d)
  assert sorted(again) == list(range(1, 9))
  for s in (5, 6):
    assert again[s]["loss"] == first[s]["loss"]
  # Steps 5, 6 were logged by the first run after its last good checkpoint
  # and again by the resumed run: every log has each step once.
  with open(os.path.join(d, "metrics.jsonl")) as fh:
    lines = [json.loads(l) for l in fh]
  assert [r["step"] for r in lines if r["split"] == "train"] == list(range(1, 9))
  losses = [(s, v) for s, tag, v in read_events(os.path.join(d, "train"))
            if tag == "loss"]
  assert [s for s, _ in losses] == list(range(1, 9))
  for s, v in losses:
    assert v == pytest.approx(again[s]["loss"], rel=1e-6)


def test_no_readable_checkpoint_refuses_to_start_over(tiny_gin, tmp_path,
                                                      capfd):
  d = str(tmp_path / "run")
  args = [f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}",
          "--gin.train.num_steps=2", "--gin.train.save_every=1"]
  assert main_in_process(*args) == 0
  for s in ckpt_steps(d):
    delete_manifest(os.path.join(d, "checkpoints", str(s)))
  capfd.readouterr()
  assert main_in_process(*args, "--gin.train.num_steps=3") == 1
  err = capfd.readouterr().err
  assert "none can be restored" in err and "train.overwrite=True" in err
  assert "Traceback" not in err
  assert ckpt_steps(d) == [1, 2]                      # nothing touched
  assert not os.path.exists(os.path.join(d, "corrupt_checkpoints"))
  # The explicit flag starts over.
  assert main_in_process(*args, "--gin.train.overwrite=True") == 0
  assert ckpt_steps(d) == [1, 2]
  assert sorted(read_metrics(d)) == [1, 2]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_gin,
                                                               tmp_path, capfd):
  d = str(tmp_path / "run")
  # Batch index 4 (step 5) carries a NaN loss weight.
  rc = main_in_process(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}",
                       "--gin.train.save_every=2",
                       "--gin.train.data_fn=@nan_iterator",
                       "--gin.nan_iterator.nan_at_batch=4")
  err = capfd.readouterr().err
  assert rc == 1
  assert "training stopped at step 5: the loss is nan" in err
  assert "the latest checkpoint, step 4, is the last good state" in err
  assert "Traceback" not in err
  assert ckpt_steps(d) == [2, 4]
  assert max(read_metrics(d)) == 4
