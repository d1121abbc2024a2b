"""`famjax compile`: a run's train step compiled ahead of time for a TPU slice.

    famjax compile --gin_file=RUN.gin [--gin.X=Y ...] --topology=v5e:4x4 \\
      [--num_slices=N] [--require_fit] [--json=PATH] [--save_executable=PATH]

Builds, without materialising one weight, the train step `famjax train`
would run for the same gin files: the model, optimizer, train state and
batch as ShapeDtypeStructs, the mesh (`train.mesh_shape`) over the devices
of a TPU topology described by libtpu (`pip install 'famjax[tpu]'`), the
same NamedShardings (famjax.train.sharding) and the same jitted, state-
donating step (famjax.train.trainer.make_train_step). Then it lowers and
compiles that step for the TPU on this (CPU-only) machine, and prints:

  * memory per chip from `compiled.memory_analysis()`: arguments, outputs,
    temporaries, code and their peak, against the chip's HBM, and a fits /
    does-not-fit verdict (the TPU compiler also refuses, with a
    RESOURCE_EXHAUSTED error, programs that cannot fit; that is reported
    as "does not fit");
  * FLOPs per step: the program's matrix-multiply FLOPs counted from its
    jaxpr (famjax.flops; scans times their length), per chip, an estimated
    step time at the chip's peak bf16 rate, and XLA's own cost analysis
    (which counts each loop body once, so is lower for scanned layers).

GPU clusters: `--topology=gpu:SxHxD` (S slices of H hosts of D GPUs) uses
JAX's mocked GPU topology (`jax_mock_gpu_topology`), which needs the CUDA
plugin and a local GPU of the target kind; without one it stops with a
message.

Exit codes: 0 report printed (1 with --require_fit when it does not fit),
2 a mistake in the command or the run file.
"""
from __future__ import annotations

import json
import os
import sys
import time

from famjax import aot
from famjax.errors import UserError

USAGE = """usage: famjax compile --gin_file=RUN.gin [--gin.NAME=VALUE ...] --topology=TOPOLOGY
                      [--num_slices=N] [--require_fit] [--json=PATH]
                      [--save_executable=PATH]

  --gin_file, --gin.NAME=VALUE, --gin_search_paths   as for famjax train
                       (MODEL_DIR and TASK need not be set: nothing is read
                       or written)
  --topology           a TPU slice, CHIP:AxB[xC] with CHIP v4, v5e, v5p or
                       v6e (e.g. v5e:4x4, v5p:4x4x4), or gpu:SxHxD (mocked
                       GPU cluster; needs a local GPU)
  --num_slices         number of such slices (multislice), default 1
  --require_fit        exit 1 when the step does not fit in HBM
  --json               also write the report as JSON to PATH
  --save_executable    write the serialised executable to PATH and the
                       versions it needs to PATH.json

e.g. famjax compile --gin_file=gin/runs/llama3_8b_fam.gin --topology=v5p:4x4x4
"""


# --------------------------------------------------------------- the run
def read_run(argv):
  """(gin files, bindings, search paths, own options) of a command line."""
  own = {"topology": None, "num_slices": "1", "json": None,
         "save_executable": None, "require_fit": None}
  rest, args, i = [], list(argv), 0
  while i < len(args):
    name, eq, value = args[i].partition("=")
    key = name[2:] if name.startswith("--") else None
    if key in own:
      if key == "require_fit" and not eq:
        value = "True"
      elif not eq:
        if i + 1 >= len(args):
          raise UserError(f"{name} needs a value.")
        i, value = i + 1, args[i + 1]
      own[key] = value
    else:
      rest.append(args[i])
    i += 1
  from famjax.train import gin_flags
  try:
    files, bindings, paths = gin_flags.parse_args(rest)
  except gin_flags.GinFlagError as e:
    raise UserError(str(e)) from None
  if not files:
    raise UserError("no --gin_file given (famjax compile --help shows how).")
  if not own["topology"]:
    raise UserError("--topology is required, e.g. --topology=v5e:4x4.")
  try:
    own["num_slices"] = int(own["num_slices"])
  except ValueError:
    raise UserError(f"--num_slices={own['num_slices']!r} must be an "
                    "integer.") from None
  return files, bindings, paths, own


# Macros a run file may require that only matter when data is read or
# files are written; compiling needs neither.
_UNUSED_MACROS = ("MODEL_DIR", "TASK")


def train_arguments(files, bindings, paths) -> dict:
  """`train`'s arguments as the gin files bind them (defaults elsewhere)."""
  import inspect
  import gin
  from famjax.train import gin_flags, loop
  try:
    import famjax.data.tasks  # noqa: F401  registers tasks (and their gin)
  except ImportError:
    pass
  gin.clear_config()
  try:
    gin_flags.parse(files, bindings, paths)
  except gin_flags.GinFlagError as e:
    missing = gin_flags.unset_required_macros()
    if not missing or set(missing) - set(_UNUSED_MACROS):
      raise UserError(str(e)) from None
    for name in missing:
      gin.parse_config(f"{name} = 'unused by famjax compile'")
  args = {n: p.default for n, p in inspect.signature(loop.train).parameters.items()}
  try:
    args.update(gin.get_bindings("train"))
  except (ValueError, TypeError) as e:
    raise UserError(f"gin: {str(e).splitlines()[0]}") from None
  return args




# ----------------------------------------------------------------- report
def _bytes(n) -> str:
  for unit, size in (("GiB", aot.GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
    if abs(n) >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n} B"


def _flops(n) -> str:
  for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9),
                     ("MFLOP", 1e6)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n:.0f} FLOP"


def format_report(r: dict) -> str:
  """The human-readable report of `famjax compile`."""
  m, mesh = r["model"], r["mesh"]
  impl = f", attention_impl={m['attention_impl']}" if m["attention_impl"] else ""
  lines = [
      f"famjax compile: {r['topology']} ({r['chips']} chips of "
      f"{r['device_kind']}, {r['num_slices']} slice(s))",
      f"  model   {m['mode']} attention{impl}, {m['layers']} layers, d_model "
      f"{m['d_model']}, {m['params']:,} parameters ({m['trainable']:,} "
      f"trainable), remat {m['remat_policy']}",
      f"  step    batch {r['batch_size']} x {r['seq_len']} tokens, "
      f"{r['microbatches']} microbatch(es), mesh " +
      " ".join(f"{k}={v}" for k, v in mesh.items()),
      "  time    trace {trace:.1f} s, lower {lower:.1f} s, compile "
      "{compile:.1f} s".format(**r["seconds"])]
  hbm = r["hbm_bytes"]
  hbm_text = _bytes(hbm) if hbm else "unknown"
  if r["memory"]:
    mem = r["memory"]
    lines.append(f"memory per chip (HBM {hbm_text}):")
    for key in ("arguments", "outputs", "aliased", "temporaries", "code"):
      lines.append(f"  {key:<12} {_bytes(mem[key]):>12}")
    share = f" = {100 * mem['peak'] / hbm:.1f}% of HBM" if hbm else ""
    lines.append(f"  {'peak':<12} {_bytes(mem['peak']):>12}   (arguments + "
                 f"outputs - aliased + temporaries + code{share})")
  if r["fits"]:
    lines.append(f"verdict: FITS (peak {_bytes(r['memory']['peak'])} <= HBM "
                 f"{hbm_text})")
  elif r["memory"]:
    lines.append(f"verdict: DOES NOT FIT (peak {_bytes(r['memory']['peak'])}"
                 f" > HBM {hbm_text})")
  else:
    lines.append(f"verdict: DOES NOT FIT (the compiler ran out of HBM: "
                 f"{r['compiler_error']})")
  f = r["flops"]
  bound = " (a lower bound: loops of unknown length count once)" if (
      f["unbounded_loops"]) else ""
  lines += [
      "FLOPs per step (matrix multiplies of the step's program, scans times "
      f"their length){bound}:",
      f"  all chips    {_flops(f['program_per_step'])}",
      f"  per chip     {_flops(f['program_per_chip'])}"]
  if "xla_per_chip" in f:
    lines.append(f"  XLA cost analysis per chip: {_flops(f['xla_per_chip'])}"
                 " (counts each loop body once)")
  if r.get("step_time_s") is not None:
    lines.append(f"estimated step time at peak ({r['peak_flops'] / 1e12:.0f} "
                 f"TFLOP/s bf16 per chip): {r['step_time_s'] * 1e3:.2f} ms "
                 "(a lower bound: 100% of peak)")
  return "\n".join(lines)


def run(argv) -> dict:
  """Parse, build, compile; the report as a dict (see format_report)."""
  files, bindings, paths, own = read_run(argv)
  gpu = own["topology"].startswith("gpu:")
  if gpu:
    devices = aot.gpu_devices(own["topology"])
    chips, kind = len(devices), devices[0].device_kind
    stats = devices[0].memory_stats() or {}
    hbm = stats.get("bytes_limit")
    peak = next((v for k, v in aot.GPU_PEAKS.items() if k in kind), None)
    slices = int(own["topology"][4:].split("x")[0])
  else:
    topo = aot.parse_topology(own["topology"], own["num_slices"])
    devices = aot.topology_devices(topo)
    chips, kind = len(devices), devices[0].device_kind
    hbm, peak, slices = topo.chip.hbm_bytes, topo.chip.peak_bf16_flops, topo.num_slices
  args = train_arguments(files, bindings, paths)
  step, abstract_args, info = aot.build_step(args, devices,
                                             "gpu" if gpu else "tpu")
  result = aot.compile_step(step, abstract_args, hbm)
  compiled = result.pop("compiled")
  report = dict(info, topology=own["topology"], chips=chips,
                device_kind=kind, num_slices=slices, hbm_bytes=hbm,
                peak_flops=peak, **result)
  per_chip = report["flops"]["program_per_step"] / chips
  report["flops"]["program_per_chip"] = per_chip
  report["step_time_s"] = per_chip / peak if peak else None
  report["versions"] = aot.versions(own["topology"], slices)
  if own["save_executable"] and compiled is not None:
    aot.save_executable(compiled, own["save_executable"], dict(
        report["versions"], mesh=report["mesh"], gin_files=files,
        gin_bindings=bindings))
    report["executable"] = os.path.abspath(own["save_executable"])
  report["require_fit"] = bool(own["require_fit"])
  report["json"] = own["json"]
  return report


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE)
    return 0 if argv else 2
  started = time.perf_counter()
  try:
    report = run(argv)
  except UserError as e:
    print(f"famjax compile: error: {e}", file=sys.stderr, flush=True)
    return 2
  finally:
    import gin
    gin.clear_config()
  report["seconds"]["total"] = time.perf_counter() - started
  print(format_report(report), flush=True)
  if report.get("executable"):
    print(f"saved the executable to {report['executable']} (+ .json with the "
          "versions it needs)")
  if report["json"]:
    with open(report["json"], "w") as fh:
      json.dump(report, fh, indent=2)
  return 1 if report["require_fit"] and not report["fits"] else 0


if __name__ == "__main__":
  sys.exit(main())
