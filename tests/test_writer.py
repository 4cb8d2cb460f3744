"""MetricWriter: JSONL truncation on resume and TensorBoard without holes after a kill."""

import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
from tensorboardX.proto import event_pb2

from lib.report.writer import MetricWriter, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _events(logdir):
  """{tag: [(step, value), ...]} from every TFRecord event file in `logdir`."""
  out = {}
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), 'rb') as f:
      while header := f.read(12):  # uint64 length, uint32 crc of the length
        (length,) = struct.unpack('<Q', header[:8])
        event = event_pb2.Event.FromString(f.read(length))
        f.read(4)  # crc of the data
        for value in event.summary.value:
          out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return {tag: sorted(points) for tag, points in out.items()}


def _metrics(step):
  return {'loss': np.float32(1.0 / step), 'per_seed': np.array([step, 2.0 * step], np.float32),
          'note': 'text is logged to JSONL only'}


_KILLED_RUN = textwrap.dedent('''
    import os, signal, sys
    import numpy as np
    from lib.report.writer import MetricWriter
    writer = MetricWriter(sys.argv[1])
    for step in range(1, 10):
      writer.write(step, {'loss': np.float32(1.0 / step),
                          'per_seed': np.array([step, 2.0 * step], np.float32),
                          'note': 'text is logged to JSONL only'})
    os.kill(os.getpid(), signal.SIGKILL)
''')


def test_resume_after_kill_gives_tensorboard_without_holes(tmp_path):
  workdir = str(tmp_path)
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  out = subprocess.run([sys.executable, '-c', _KILLED_RUN, workdir], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == -9, out.stderr[-3000:]
  assert [r['step'] for r in read_metrics(os.path.join(workdir, 'metrics.jsonl'))] == \
      list(range(1, 10))
  writer = MetricWriter(workdir, resume_step=6)  # the checkpoint the run resumes from
  for step in range(7, 13):
    writer.write(step, _metrics(step))
  writer.close()
  records = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in records] == list(range(1, 13))
  events = _events(os.path.join(workdir, 'tensorboard'))
  assert set(events) == {'loss', 'per_seed'}
  steps = list(range(1, 13))
  assert events['loss'] == [(s, np.float32(1.0 / s)) for s in steps]
  assert events['per_seed'] == [(s, 1.5 * s) for s in steps]


def test_fresh_start_clears_jsonl_and_tensorboard(tmp_path):
  workdir = str(tmp_path)
  writer = MetricWriter(workdir)
  for step in (1, 2, 3):
    writer.write(step, _metrics(step))
  writer.close()
  writer = MetricWriter(workdir)
  writer.write(5, _metrics(5))
  assert _events(os.path.join(workdir, 'tensorboard'))['loss'] == [(5, np.float32(0.2))]
  writer.close()
  assert [r['step'] for r in read_metrics(os.path.join(workdir, 'metrics.jsonl'))] == [5]
  assert len(os.listdir(os.path.join(workdir, 'tensorboard'))) == 1


def test_events_are_on_disk_when_write_returns(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.write(1, {'loss': 0.5})
  assert _events(os.path.join(tmp_path, 'tensorboard')) == {'loss': [(1, 0.5)]}
  writer.close()
