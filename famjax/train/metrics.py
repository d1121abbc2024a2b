"""Where metrics go: MODEL_DIR/metrics.jsonl, TensorBoard, a progress bar.

metrics.jsonl has one JSON object per line: {"step": s, "split": "train" |
"eval", ...}. When a run resumes from step s, records after s (written by
the interrupted process after its last checkpoint) are dropped first, so the
file always tells the history of the run that exists. The TensorBoard event
files in MODEL_DIR/train and MODEL_DIR/eval lose their events after s the
same way (rewritten in place), so that every reader sees each step once; the
new writer also marks `purge_step` (what TensorBoard itself honours).
"""
from __future__ import annotations

import glob
import json
import os
import struct
import sys
from typing import Optional

SPLITS = ("train", "eval")


class MetricsWriter:

  def __init__(self, model_dir: str, *, start_step: int, num_steps: int,
               tensorboard: bool = True, progress_bar: bool = True,
               enabled: bool = True):
    """enabled=False (hosts other than 0 of a multi-host run): no output."""
    self.path = os.path.join(model_dir, "metrics.jsonl")
    self._fh, self._tb, self._bar = None, {}, None
    if not enabled:
      return
    self._truncate_after(start_step)
    for split in SPLITS:
      for path in sorted(glob.glob(os.path.join(model_dir, split,
                                                "events.out.tfevents.*"))):
        truncate_events(path, start_step)
    self._fh = open(self.path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter
      for split in SPLITS:
        self._tb[split] = SummaryWriter(os.path.join(model_dir, split),
                                        purge_step=start_step + 1)
    if progress_bar:
      from tqdm import tqdm
      self._bar = tqdm(total=num_steps, initial=start_step, unit="step",
                       dynamic_ncols=True, file=sys.stderr,
                       mininterval=1.0, smoothing=0.1)

  def _truncate_after(self, step: int):
    if not os.path.exists(self.path):
      return
    with open(self.path) as fh:
      lines = fh.readlines()
    keep = []
    for line in lines:
      try:
        rec = json.loads(line)
      except ValueError:
        continue                       # a line cut short by a kill
      if rec.get("step", 0) <= step:
        keep.append(json.dumps(rec) + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w") as fh:
      fh.writelines(keep)
    os.replace(tmp, self.path)

  def write(self, step: int, split: str, values: dict):
    if self._fh is None:
      return
    rec = {"step": int(step), "split": split}
    rec.update({k: float(v) for k, v in values.items()})
    self._fh.write(json.dumps(rec) + "\n")
    self._fh.flush()
    tb = self._tb.get(split)
    if tb is not None:
      for k, v in values.items():
        tb.add_scalar(k, float(v), step)

  def progress(self, step: int, values: Optional[dict] = None):
    if self._bar is None:
      return
    self._bar.n = step
    if values:
      self._bar.set_postfix({k: f"{float(v):.4g}" for k, v in values.items()},
                            refresh=False)
    self._bar.refresh()

  def message(self, text: str):
    if self._fh is None:
      return
    if self._bar is not None:
      self._bar.write(text, file=sys.stderr)
    else:
      print(text, file=sys.stderr, flush=True)

  def close(self):
    if self._bar is not None:
      self._bar.close()
    for tb in self._tb.values():
      tb.flush()
      tb.close()
    if self._fh is not None:
      self._fh.close()
      self._fh = None


def _records(path):
  """(raw record bytes, payload) of a TFRecord file, up to a cut-off tail."""
  with open(path, "rb") as fh:
    data = fh.read()
  pos = 0
  while pos + 12 <= len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    end = pos + 12 + n + 4
    if end > len(data):
      break                              # written by a killed process
    yield data[pos:end], data[pos + 12:pos + 12 + n]
    pos = end


def truncate_events(path: str, step: int):
  """Drop the summaries of steps after `step` from a TensorBoard event file
  (rewritten only when it has some)."""
  from tensorboardX.proto.event_pb2 import Event
  keep, dropped = [], False
  for raw, payload in _records(path):
    event = Event.FromString(payload)
    if event.HasField("summary") and event.step > step:
      dropped = True
    else:
      keep.append(raw)
  if dropped:
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    with open(tmp, "wb") as fh:
      fh.writelines(keep)
    os.replace(tmp, path)


def read_events(log_dir: str) -> list:
  """(step, tag, value) of every scalar in a directory's event files, in
  file order."""
  from tensorboardX.proto.event_pb2 import Event
  out = []
  for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
    for _, payload in _records(path):
      event = Event.FromString(payload)
      for v in event.summary.value:
        out.append((event.step, v.tag, v.simple_value))
  return out


def read_metrics(model_dir: str, split: str = "train") -> dict:
  """{step: record} of one split from MODEL_DIR/metrics.jsonl."""
  out = {}
  with open(os.path.join(model_dir, "metrics.jsonl")) as fh:
    for line in fh:
      try:
        rec = json.loads(line)
      except ValueError:
        continue
      if rec.get("split") == split:
        out[rec["step"]] = rec
  return out
