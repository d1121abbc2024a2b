"""Summaries of one evaluated step across the tasks of a mixture.

* heatmap_<family>_step<N>.png: accuracy by context length (columns) x
  needle depth (rows), from the metrics "accuracy@depth=0.25" ... of each
  task of a family.
* ruler_step<N>.md: a RULER-style Markdown table, rows task families,
  columns context lengths, cells the family's main metric, plus the mean.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Mapping

DEPTH_KEY = re.compile(r"^accuracy@depth=([0-9.]+)$")
MAIN_METRICS = ("accuracy", "exact_match", "perplexity", "log_perplexity",
                "target_log_likelihood")


def main_metric(metrics: Mapping[str, float]):
  """(name, value) of the headline metric of a task, or (None, None)."""
  for name in MAIN_METRICS:
    if name in metrics:
      return name, metrics[name]
  for name, value in sorted(metrics.items()):
    if not DEPTH_KEY.match(name):
      return name, value
  return None, None


def grid(metrics: Mapping[str, Mapping[str, float]],
         info: Mapping[str, dict]) -> Dict[str, dict]:
  """{family: {(depth, length): accuracy}} of the tasks with depth metrics."""
  out = {}
  for task, m in metrics.items():
    meta = info.get(task, {})
    for name, value in m.items():
      hit = DEPTH_KEY.match(name)
      if hit and meta.get("length"):
        fam = out.setdefault(meta.get("family", task), {})
        fam[(float(hit.group(1)), int(meta["length"]))] = float(value)
  return out


def write_heatmaps(out_dir: str, step: int, metrics, info) -> list:
  """One PNG per family with depth metrics; returns the paths."""
  cells_by_family = grid(metrics, info)
  if not cells_by_family:
    return []
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  paths = []
  for family, cells in sorted(cells_by_family.items()):
    depths = sorted({d for d, _ in cells})
    lengths = sorted({l for _, l in cells})
    data = [[cells.get((d, l), float("nan")) for l in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 0.9 * len(lengths)),
                                    1.6 + 0.45 * len(depths)))
    im = ax.imshow(data, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [_length(l) for l in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"{family}: accuracy (%), step {step}")
    for i, row in enumerate(data):
      for j, v in enumerate(row):
        if v == v:
          ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path = os.path.join(out_dir, f"heatmap_{family}_step{step}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
  return paths


def _length(n: int) -> str:
  return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def ruler_table(metrics: Mapping[str, Mapping[str, float]],
                info: Mapping[str, dict]) -> str:
  """Markdown: one row per family (metric named), one column per length."""
  rows, lengths = {}, set()
  for task, m in sorted(metrics.items()):
    meta = info.get(task, {})
    name, value = main_metric(m)
    if name is None:
      continue
    length = int(meta.get("length") or 0)
    lengths.add(length)
    rows.setdefault((meta.get("family", task), name), {})[length] = value
  cols = sorted(lengths)
  head = "| task | metric | " + " | ".join(_length(l) if l else "-"
                                           for l in cols) + " | mean |"
  lines = [head, "|" + " --- |" * (len(cols) + 3)]
  for (family, name), cells in sorted(rows.items()):
    vals = [cells[l] for l in cols if l in cells]
    mean = sum(vals) / len(vals) if vals else float("nan")
    lines.append(f"| {family} | {name} | " + " | ".join(
        f"{cells[l]:.2f}" if l in cells else "" for l in cols) +
                 f" | {mean:.2f} |")
  return "\n".join(lines) + "\n"


def write_summary(out_dir: str, step: int, metrics, info) -> list:
  """The heatmaps and the Markdown table of one step; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = write_heatmaps(out_dir, step, metrics, info)
  table = os.path.join(out_dir, f"ruler_step{step}.md")
  with open(table, "w") as fh:
    fh.write(ruler_table(metrics, info))
  return paths + [table]


def merge_results(paths, step: str = "0"):
  """(metrics, info) of one step gathered from several `results.json` files
  of `famjax eval` (e.g. a family's mixture plus tasks asked at further
  lengths); a task evaluated twice keeps its last file's metrics."""
  import json
  from famjax.data.eval_tasks import parse_task_name
  metrics, info = {}, {}
  for path in paths:
    with open(path) as fh:
      steps = json.load(fh).get("steps", {})
    if str(step) not in steps:
      raise ValueError(f"{path} has no step {step} (it has {sorted(steps)}).")
    for task, m in steps[str(step)].items():
      parsed = parse_task_name(task)
      if parsed is None or parsed[2] is None:
        continue                      # not a suite task of one length
      metrics[task] = m
      info[task] = {"family": parsed[0], "length": parsed[2]}
  return metrics, info


def main(argv=None) -> int:
  """`python -m famjax.evals.plots OUT_DIR RESULTS.json...`: one heatmap per
  family and one table over the tasks of several eval runs."""
  import argparse
  ap = argparse.ArgumentParser(prog="python -m famjax.evals.plots",
                               description=main.__doc__)
  ap.add_argument("out_dir")
  ap.add_argument("results", nargs="+", help="results.json of famjax eval runs")
  ap.add_argument("--step", default="0")
  args = ap.parse_args(argv)
  metrics, info = merge_results(args.results, args.step)
  for path in write_summary(args.out_dir, int(args.step), metrics, info):
    print(path)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
