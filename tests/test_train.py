"""Training loop: exact resumption after SIGKILL, checkpoint fall-back, NaN stop, logging."""

import logging
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import data as data_lib
from lib import models, train
from lib.report.writer import read_metrics
from tests.checkpoints import final_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(workdir, *overrides):
  cmd = [sys.executable, '-m', 'launch.run', '--config=experiments/classifier.py:runlocal,digits',
         f'--workdir={workdir}', '--config.num_steps=300', '--config.checkpoint_every=40',
         '--config.eval_every=150', '--config.log_every=10', '--config.batch_size=32',
         '--config.image_size=16', *overrides]
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='')
  # A file, not a pipe: nobody reads a pipe while the run goes on, and a full one blocks it.
  log = open(f'{workdir}.log', 'a')
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _log(workdir):
  with open(f'{workdir}.log') as f:
    return f.read()[-5000:]


def test_sigkill_then_relaunch_equals_uninterrupted_run(tmp_path):
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  proc = _launch(straight)
  assert proc.wait(timeout=600) == 0, _log(straight)

  proc = _launch(killed)
  ckpt_dir = os.path.join(killed, 'checkpoints')
  deadline = time.time() + 300
  while not (os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir))):
    assert proc.poll() is None, 'run ended before its first checkpoint'
    assert time.time() < deadline
    time.sleep(0.02)
  time.sleep(0.3)  # land somewhere between checkpoints
  assert proc.poll() is None, 'run finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  logged = read_metrics(os.path.join(killed, 'metrics.jsonl'))
  assert logged[-1]['step'] < 300
  proc = _launch(killed)
  assert proc.wait(timeout=600) == 0, _log(killed)

  step_a, leaves_a = final_checkpoint(straight)
  step_b, leaves_b = final_checkpoint(killed)
  assert step_a == step_b == 300
  assert len(leaves_a) == len(leaves_b)
  for a, b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(a, b)
  assert read_metrics(os.path.join(straight, 'metrics.jsonl')) == \
      read_metrics(os.path.join(killed, 'metrics.jsonl'))
  assert os.path.exists(os.path.join(killed, 'report.md'))


@pytest.fixture(scope='module')
def tiny():
  ds = data_lib.get_dataset('digits', 'train', image_size=8)
  model = models.get_model('cnn', input_shape=ds.image_shape, num_classes=ds.num_classes,
                           widths=(4, 8))
  return ds, model


def _fit(tiny, workdir, *, num_steps=12, learning_rate=0.05, **kw):
  ds, model = tiny
  opt = train.make_optimizer(learning_rate=learning_rate, num_steps=num_steps)
  return train.fit(model=model, optimizer=opt, train_data=ds, num_steps=num_steps,
                   batch_size=16, seed=0, workdir=workdir, checkpoint_every=4, log_every=2,
                   progress=False, **kw)


def test_damaged_newest_checkpoint_falls_back_with_warning(tiny, tmp_path, caplog):
  workdir = str(tmp_path)
  reference = _fit(tiny, workdir, num_steps=12)
  newest = os.path.join(workdir, 'checkpoints', '12')
  for root, _, files in os.walk(newest):  # truncate every data file of the newest checkpoint
    for name in files:
      if name not in ('_CHECKPOINT_METADATA',):
        open(os.path.join(root, name), 'wb').close()
  with caplog.at_level('WARNING'):
    resumed = _fit(tiny, workdir, num_steps=12)
  assert any('cannot be read' in r.message and 'falling back' in r.message for r in caplog.records)
  for a, b in zip(jax.tree.leaves(reference.variables), jax.tree.leaves(resumed.variables)):
    np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_with_clear_error(tiny, tmp_path):
  with pytest.raises(train.NonFiniteLossError, match='loss became'):
    _fit(tiny, str(tmp_path), num_steps=30, learning_rate=1e30)


def test_metrics_and_tensorboard_written(tiny, tmp_path):
  _fit(tiny, str(tmp_path), num_steps=6)
  records = read_metrics(os.path.join(tmp_path, 'metrics.jsonl'))
  assert [r['step'] for r in records] == [2, 4, 6]
  assert {'loss', 'accuracy', 'grad_norm', 'learning_rate'} <= set(records[0])
  assert os.listdir(os.path.join(tmp_path, 'tensorboard'))


def test_train_step_is_pure_and_uses_fold_in_keys(tiny):
  ds, model = tiny
  opt = train.make_optimizer(learning_rate=0.1, num_steps=10)
  state = train.init_state(model, opt, jax.random.key(0))
  batch = jax.tree.map(jnp.asarray, {k: v for k, v in data_lib.batch_at(
      ds, 0, batch_size=8, seed=0).items() if k in ('image', 'label')})
  step = jax.jit(lambda s, b, k: train.train_step(model, opt, s, b, k, flip=True, pad=1))
  a, _ = step(state, batch, jax.random.key(1))
  b, _ = step(state, batch, jax.random.key(1))
  c, _ = step(state, batch, jax.random.key(2))
  leaves = lambda s: jax.tree.leaves(s.variables['params'])
  assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
  assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))
  assert int(a.step) == 1


@pytest.mark.parametrize('kwargs, match', [
    ({'name': 'rmsprop'}, 'optimizer name'),
    ({'schedule': 'linear'}, 'schedule'),
    ({'learning_rate': -1.0}, 'learning_rate'),
    ({'warmup_steps': 20}, 'warmup_steps'),
])
def test_make_optimizer_rejects_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    train.make_optimizer(num_steps=10, **kwargs)


def test_bad_overrides_are_refused(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='')
  out = subprocess.run(
      [sys.executable, '-m', 'launch.run', '--config=experiments/classifier.py:runlocal',
       f'--workdir={tmp_path}', '--config.not_a_field=3'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and 'not_a_field' in out.stderr
  out = subprocess.run(
      [sys.executable, '-m', 'launch.run', '--config=experiments/classifier.py:nonsense',
       f'--workdir={tmp_path}'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0 and 'unknown config variants' in out.stderr


def test_launcher_hides_library_info_logs_only():
  from launch import run as launcher  # pylint: disable=g-import-not-at-top
  keep = launcher._LibraryInfoFilter().filter
  record = lambda path, level: logging.LogRecord('absl', level, path, 1, 'message', None, None)
  orbax = os.path.join(os.sep, 'site-packages', 'orbax', 'checkpoint', 'manager.py')
  jax_src = os.path.join(os.sep, 'site-packages', 'jax', '_src', 'xla_bridge.py')
  ours = os.path.join(ROOT, 'experiments', 'attribution_integrity.py')
  assert not keep(record(orbax, logging.INFO)) and not keep(record(jax_src, logging.INFO))
  assert keep(record(orbax, logging.WARNING)) and keep(record(jax_src, logging.ERROR))
  assert keep(record(ours, logging.INFO))
