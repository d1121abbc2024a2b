"""PNG figures beside the benchmark JSON files (matplotlib, no display)."""
from __future__ import annotations

import os


def machine() -> dict:
  """What a benchmark JSON records of the machine it ran on."""
  import platform
  import jax
  return {"cpus": os.cpu_count(), "platform": platform.platform(),
          "jax": jax.__version__, "load_average_end": os.getloadavg()}


def _save(fig, path, title):
  import matplotlib.pyplot as plt
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def line_panels(path, panels, title=""):
  """panels: [(ylabel, {label: {x: y}}, log_y)] -> one PNG, panels side by side.

  x values are sequence lengths (log2 axis); None values are skipped.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
  axes = axes if len(panels) > 1 else [axes]
  for ax, (ylabel, series, log_y) in zip(axes, panels):
    for label, pts in sorted(series.items()):
      xs = sorted(int(x) for x, y in pts.items() if y is not None)
      if not xs:
        continue
      ys = [pts[x] if x in pts else pts[str(x)] for x in xs]
      ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    if log_y:
      ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  _save(fig, path, title)


def bar_panels(path, panels, title=""):
  """panels: [(ylabel, {label: value})] -> one PNG of bar charts."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
  axes = axes if len(panels) > 1 else [axes]
  for ax, (ylabel, values) in zip(axes, panels):
    labels = list(values)
    ax.bar(range(len(labels)), [values[k] for k in labels])
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
  _save(fig, path, title)


def save_results(out, config: dict, results: dict, panels, title: str):
  """Write `out` (JSON: config, machine, results) and a line-panel PNG
  beside it; prints both paths."""
  import json
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as fh:
    json.dump({"config": config, "machine": machine(), **results}, fh,
              indent=1)
  png = os.path.splitext(out)[0] + ".png"
  line_panels(png, panels, title=title)
  print(f"wrote {out} and {png}")
