"""Golden activation shardings of the block and FAM paths on a
("data", "fsdp", "tensor") = (2, 2, 2) mesh of 8 host devices (a
subprocess, see tests/activation_sharding_check.py): batch over data x
fsdp, heads over tensor, blocks / length / FAM rows / features replicated;
and the sharded forward equals the single-device one (also with the splash
kernel, which runs under shard_map)."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

BATCH = '{"data", "fsdp"}'
ROWS = f"[{BATCH}, {{}}, {{}}]"                               # [b, T|F, d]
HEADS4 = f'[{BATCH}, {{}}, {{"tensor"}}, {{}}]'               # [b, T, H, D]
HEADS5 = f'[{BATCH}, {{}}, {{}}, {{"tensor"}}, {{}}]'         # [b, n, B|F, H, D]
# tiny model: batch 4, T = 20, d 32, 4 heads / 2 kv heads of 8, B = 8 (3
# blocks), F = 4. Shape -> sharding of every constrained activation.
GOLDEN = {
    "full": {"4x20x32x": ROWS, "4x20x4x8x": HEADS4, "4x20x2x8x": HEADS4},
    "bswa": {"4x20x32x": ROWS, "4x3x8x4x8x": HEADS5, "4x3x8x2x8x": HEADS5},
    "fam": {"4x20x32x": ROWS, "4x3x8x4x8x": HEADS5, "4x3x8x2x8x": HEADS5,
            "4x4x32x": ROWS, "4x3x4x2x8x": HEADS5},
}


def test_activation_shardings(tmp_path):
  out = tmp_path / "report.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_backend_optimization_level=0")
  p = subprocess.run([sys.executable, os.path.join(HERE,
                                                   "activation_sharding_check.py"),
                      str(out)], env=env, cwd=ROOT, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["num_devices"] == 8
  for mode, want in GOLDEN.items():
    got = report[mode]["constraints"]
    assert dict(got) == want, (mode, got)
    assert len(got) == len(want), (mode, got)        # one sharding per shape
    assert report[mode]["max_diff"] <= 1e-5, mode
  assert report["fam_splash_max_diff"] <= 1e-5
