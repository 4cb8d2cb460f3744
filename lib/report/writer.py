"""Metric logging: JSON lines plus TensorBoard event files, written by process 0 only.

`metrics.jsonl` is the record of a run. The `tensorboard/` event files are a view of it:
when a writer opens, it rewrites them from the JSONL lines it keeps (those up to the
resumed step), so a killed-and-resumed run shows the same curves, without holes or the
killed run's extra points, as an uninterrupted one. Both files are handed to the operating
system when `write` returns (a kill loses nothing; a power cut may).

`clu.metric_writers` needs TensorFlow for its TensorBoard writer; this project runs without
TensorFlow, so events are written with tensorboardX's event-file writer (same file format,
`tensorboard --logdir WORKDIR` reads them). Not its `SummaryWriter`: that queues events to
a thread, and its `flush` does not drain the queue.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from lib.report.process import is_writer

_EVENTS_PREFIX = 'events.out.tfevents.'


def _plain(value: Any) -> Any:
  a = np.asarray(value)
  return a.item() if a.ndim == 0 else a.tolist()


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
  """TensorBoard's view of a record: the mean of each numeric metric (arrays: per seed)."""
  out = {}
  for key, value in record.items():
    a = np.asarray(value)
    if key != 'step' and a.size and np.issubdtype(a.dtype, np.number):
      out[key] = float(a.mean())
  return out


class MetricWriter:
  """Appends `{'step': s, **metrics}` lines to `workdir/metrics.jsonl` and TensorBoard.

  Args:
    workdir: run directory.
    resume_step: when resuming from a checkpoint at this step, drop logged lines with a
      larger step (they were written after the checkpoint by the killed run and will be
      written again), so the log of a resumed run equals an uninterrupted one. None (a
      fresh start) drops every line. TensorBoard's event files are rewritten from the
      lines kept.
  """

  def __init__(self, workdir: str, *, resume_step: int | None = None):
    self.active = is_writer()
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._events = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    keep = []
    if resume_step is not None and os.path.exists(self.path):
      keep = [r for r in read_metrics(self.path) if r['step'] <= resume_step]
    with open(self.path + '.tmp', 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in keep)
    os.replace(self.path + '.tmp', self.path)
    self._events = _rebuilt_events(os.path.join(workdir, 'tensorboard'), keep)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Logs scalar or array metrics; arrays (e.g. per-seed values) log their mean to TB."""
    if not self.active:
      return
    record = {'step': int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    self._events.add(record)
    self._events.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()


class _EventFile:
  """A TensorBoard event file in `logdir`, written synchronously."""

  def __init__(self, logdir: str):
    # tensorboardX imports torch when it is installed (seconds): only when a writer opens.
    from tensorboardX import event_file_writer, summary  # pylint: disable=g-import-not-at-top
    from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._scalar, self._event = summary.scalar, event_pb2.Event
    self._writer = event_file_writer.EventsWriter(os.path.join(logdir, 'events'))

  def add(self, record: Mapping[str, Any]) -> None:
    """Appends the record's scalars (buffered until `flush`)."""
    for key, value in _scalars(record).items():
      self._writer.write_event(self._event(wall_time=time.time(), step=record['step'],
                                           summary=self._scalar(key, value)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _rebuilt_events(logdir: str, records: list[dict[str, Any]]) -> _EventFile:
  """A new event file in `logdir` holding exactly `records`, on disk; older ones removed."""
  os.makedirs(logdir, exist_ok=True)
  for name in os.listdir(logdir):
    if name.startswith(_EVENTS_PREFIX):
      os.remove(os.path.join(logdir, name))  # a view of metrics.jsonl, rebuilt below
  events = _EventFile(logdir)
  for record in records:
    events.add(record)
  events.flush()
  return events


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
