"""Metric logging: JSON lines plus TensorBoard event files, written by process 0 only.

`clu.metric_writers` needs TensorFlow for its TensorBoard writer; this project runs without
TensorFlow, so events are written with tensorboardX (same file format, `tensorboard
--logdir WORKDIR` reads them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def _plain(value: Any) -> Any:
  a = np.asarray(value)
  return a.item() if a.ndim == 0 else a.tolist()


class MetricWriter:
  """Appends `{'step': s, **metrics}` lines to `workdir/metrics.jsonl` and TensorBoard.

  Args:
    workdir: run directory.
    resume_step: when resuming from a checkpoint at this step, drop logged lines with a
      larger step (they were written after the checkpoint by the killed run and will be
      written again), so the log of a resumed run equals an uninterrupted one.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.path):
      keep = read_metrics(self.path)
      keep = [] if resume_step is None else [r for r in keep if r['step'] <= resume_step]
      with open(self.path, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in keep)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Logs scalar or array metrics; arrays (e.g. per-seed values) log their mean to TB."""
    if not self.active:
      return
    record = {'step': int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for k, v in metrics.items():
      a = np.asarray(v)
      if np.issubdtype(a.dtype, np.number):
        self._tb.add_scalar(k, float(a.mean()), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
  """All records of a metrics.jsonl file (a partially written last line is skipped)."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return records
