"""launch/ scripts: --dry-run prints the exact commands each would run (and
runs none of them), for a known set of flags and environment."""
from __future__ import annotations

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = "--gin_file=gin/runs/pretrain.gin"
MESH = "--gin.train.mesh_shape=(1, -1, 1)"


def dry_run(script, args, env, tmp_path):
  """stdout lines of `script --dry-run ARGS`, with PATH holding only fake
  gcloud / xpk / srun / famjax / git / python that record being called."""
  bindir = tmp_path / "bin"
  bindir.mkdir()
  called = tmp_path / "called"
  for tool in ("gcloud", "xpk", "srun", "famjax", "git", "python"):
    (bindir / tool).write_text(f"#!/bin/sh\necho {tool} >> {called}\n")
    (bindir / tool).chmod(0o755)
  full_env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path),
              "TMPDIR": "/tmp", **env}
  proc = subprocess.run(["bash", os.path.join("launch", script), *args],
                        cwd=REPO, env=full_env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert not called.exists(), called.read_text()   # nothing was run
  return proc.stdout.splitlines()


def test_tpu_pod(tmp_path):
  env = {"TPU": "my-v5p-64", "ZONE": "us-east5-a", "MODEL_DIR": "gs://b/run1"}
  out = dry_run("tpu_pod.sh", ["--dry-run", "--aot=v5p:4x4x4", RUN, MESH],
                env, tmp_path)
  q = "'\\''"   # a single quote inside the single-quoted remote command
  assert out == [
      "famjax compile --gin_file=gin/runs/pretrain.gin "
      "'--gin.train.mesh_shape=(1, -1, 1)' --topology=v5p:4x4x4 --require_fit",
      "git archive --format=tar.gz -o /tmp/famjax-my-v5p-64.tgz HEAD",
      "gcloud compute tpus tpu-vm scp /tmp/famjax-my-v5p-64.tgz "
      "my-v5p-64:famjax.tgz --worker=all --zone=us-east5-a",
      "gcloud compute tpus tpu-vm ssh my-v5p-64 --worker=all "
      "--zone=us-east5-a --command 'set -e; mkdir -p famjax && tar -xzf "
      "famjax.tgz -C famjax && cd famjax && python3 -m venv .venv && . "
      f".venv/bin/activate && pip install -q -e . {q}jax[tpu]==0.10.2{q} && "
      "famjax train --gin_file=gin/runs/pretrain.gin "
      f"{q}--gin.train.mesh_shape=(1, -1, 1){q} --gin.train.multi_host=True "
      "--gin.MODEL_DIR=gs://b/run1'",
  ]


def test_tpu_pod_project_and_no_aot(tmp_path):
  env = {"TPU": "t", "ZONE": "z", "MODEL_DIR": "gs://b/r", "PROJECT": "p1"}
  out = dry_run("tpu_pod.sh", ["--dry-run", RUN], env, tmp_path)
  assert len(out) == 3 and not any("famjax compile" in l for l in out)
  assert out[1].endswith("--worker=all --zone=z --project=p1")
  assert " --project=p1 --command " in out[2]


def test_gke_xpk(tmp_path):
  env = {"CLUSTER": "c1", "IMAGE": "gcr.io/p/famjax:1", "DEVICE": "v5p-64",
         "NUM_SLICES": "2", "WORKLOAD": "w1", "MODEL_DIR": "gs://b/r"}
  out = dry_run("gke_xpk.sh", ["--dry-run", "--aot=v5p:4x4x4", RUN,
                               "--gin.TASK=pylib_lm_byte"], env, tmp_path)
  assert out == [
      "famjax compile --gin_file=gin/runs/pretrain.gin --gin.TASK=pylib_lm_byte"
      " --topology=v5p:4x4x4 --num_slices=2 --require_fit",
      "xpk workload create --cluster c1 --workload w1 --docker-image "
      "gcr.io/p/famjax:1 --device-type v5p-64 --num-slices 2 --command "
      "'famjax train --gin_file=gin/runs/pretrain.gin --gin.TASK=pylib_lm_byte"
      " --gin.train.multi_host=True --gin.MODEL_DIR=gs://b/r'",
  ]


def test_slurm_gpu(tmp_path):
  env = {"SLURM_SUBMIT_DIR": REPO}
  out = dry_run("slurm_gpu.sbatch", ["--dry-run", "--aot=gpu:1x4x8", RUN,
                                     "--gin.MODEL_DIR=/shared/r"], env, tmp_path)
  assert out == [
      f"cd {REPO}",
      ". .venv/bin/activate",
      "famjax compile --gin_file=gin/runs/pretrain.gin --gin.MODEL_DIR=/shared/r"
      " --topology=gpu:1x4x8 --require_fit",
      "srun --kill-on-bad-exit=1 famjax train --gin_file=gin/runs/pretrain.gin"
      " --gin.MODEL_DIR=/shared/r --gin.train.multi_host=True",
  ]


def test_local_multiprocess(tmp_path):
  out = dry_run("local_multiprocess.sh",
                ["2", "2", "--dry-run", "--gin_file=gin/runs/quickstart.gin",
                 "--gin.MODEL_DIR=/tmp/mh", "--gin.train.mesh_shape=(-1, 2, 1)"],
                {"FAMJAX_PORT": "23456"}, tmp_path)
  worker = ("env JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device"
            "_count=2 FAMJAX_COORDINATOR_ADDRESS=127.0.0.1:23456 "
            "FAMJAX_NUM_PROCESSES=2 FAMJAX_PROCESS_ID={i} python -m "
            "famjax.train --gin_file=gin/runs/quickstart.gin "
            "--gin.MODEL_DIR=/tmp/mh '--gin.train.mesh_shape=(-1, 2, 1)' "
            "--gin.train.multi_host=True &")
  assert out == [worker.format(i=0), worker.format(i=1), "wait"]


@pytest.mark.parametrize("script", ["tpu_pod.sh", "gke_xpk.sh"])
def test_missing_environment_is_one_line(script, tmp_path):
  proc = subprocess.run(["bash", os.path.join("launch", script), "--dry-run",
                         RUN], cwd=REPO, capture_output=True, text=True,
                        env={"PATH": "/usr/bin:/bin"}, timeout=60)
  assert proc.returncode != 0
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
