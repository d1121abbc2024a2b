"""Sharded, multi-host training equals single-device training.

Two `python -m famjax.train` processes (one CPU device each, joined by
jax.distributed) train with FSDP-sharded parameters and batch, each host
reading its own data shard; they checkpoint at step N, and a second launch
resumes each host's data iterator from the checkpoint. The reference is one
process on one device reading both shards' rows."""
import json
import os

from famjax.train.metrics import read_metrics
from tests.conftest import N, assert_same_run, popen_train, run_train
from tests.helpers import free_port


def _two_hosts(tiny_gin, d, *extra):
  port = free_port()
  procs = [popen_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={d}",
                       "--gin.train.multi_host=True",
                       "--gin.train.mesh_shape=(1, 2, 1)", *extra,
                       env={"JAX_PLATFORMS": "cpu",
                            "FAMJAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                            "FAMJAX_NUM_PROCESSES": "2",
                            "FAMJAX_PROCESS_ID": str(i)})
           for i in range(2)]
  errs = []
  try:
    for p in procs:
      errs.append(p.communicate(timeout=300)[1])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]
  return errs


def test_two_hosts_fsdp_checkpoint_resume_matches_one_device(tiny_gin,
                                                             tmp_path):
  ref = str(tmp_path / "ref")
  rc, _, err = run_train(f"--gin_file={tiny_gin}", f"--gin.MODEL_DIR={ref}",
                         "--gin.train.data_fn=@all_shards_iterator")
  assert rc == 0, err

  d = str(tmp_path / "run")
  errs = _two_hosts(tiny_gin, d, f"--gin.train.num_steps={N}")
  assert ("mesh {'data': 1, 'fsdp': 2, 'tensor': 1} over 2 devices "
          "(2 processes)") in errs[0]
  # Host 0 wrote the checkpoint, holding both hosts' data iterator states.
  with open(os.path.join(d, "checkpoints", str(N), "data", "metadata")) as fh:
    data = json.load(fh)
  assert data["process_count"] == 2
  assert [s["shard_index"] for s in data["iterators"]] == [0, 1]
  assert sorted(read_metrics(d)) == list(range(1, N + 1))

  errs = _two_hosts(tiny_gin, d)                      # resume to 2N
  assert all(f"resuming from checkpoint {N}" in e for e in errs)
  # Other reduction orders: losses to 1e-5; parameters to 1e-4 (Adam
  # divides by sqrt(v), which magnifies round-off of tiny gradients).
  assert_same_run(d, ref, atol=1e-5, param_atol=1e-4)
