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


def test_adamw_runs_under_strict_dtype_promotion():
  """The suite runs with strict promotion (tests/conftest.py), which optax's Adam alone
  trips (`decay ** count`): make_optimizer traces it under standard promotion."""
  assert jax.config.jax_numpy_dtype_promotion == 'strict'
  opt = train.make_optimizer(name='adamw', learning_rate=0.1, num_steps=4)
  params = {'w': jnp.ones((3,))}
  updates, _ = jax.jit(opt.update)(params, opt.init(params), params)
  assert np.all(np.asarray(updates['w']) < 0)


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


def test_resume_logs_its_step_and_refuses_a_shorter_run(tiny, tmp_path, caplog):
  workdir = str(tmp_path)
  _fit(tiny, workdir, num_steps=4)
  with caplog.at_level('INFO'):
    _fit(tiny, workdir, num_steps=4)
  assert any(f'resumed from step 4 of 4 in {workdir}' in r.getMessage() for r in caplog.records)
  with pytest.raises(ValueError, match=r'num_steps=2 is below the step of the newest checkpoint'):
    _fit(tiny, workdir, num_steps=2)


def test_non_finite_loss_names_the_steps_and_last_checkpoint(tiny, tmp_path):
  with pytest.raises(train.NonFiniteLossError,
                     match=r'loss became NaN or Inf between steps \d+ and \d+.*last good'):
    _fit(tiny, str(tmp_path), num_steps=30, learning_rate=1e30)


def test_loop_reads_the_device_only_at_log_and_checkpoint_steps(tmp_path, monkeypatch):
  """A generic state (not a TrainState); to_host runs at the 2 log steps, not every step."""
  from lib.train import loop  # pylint: disable=g-import-not-at-top
  calls = []
  real = loop.to_host
  monkeypatch.setattr(loop, 'to_host', lambda tree: calls.append(1) or real(tree))
  step = jax.jit(lambda s, b: ({'x': s['x'] + b}, {'loss': s['x']}))
  final = train.run_loop(init=lambda: {'x': jnp.zeros((), jnp.float32)}, step_fn=step,
                         batch_fn=lambda i: jnp.float32(i), num_steps=6, workdir=str(tmp_path),
                         checkpoint_every=3, log_every=3, progress=False)
  assert float(final['x']) == 15.0
  assert len(calls) == 4  # metrics + finiteness flag, at steps 3 and 6


def test_resume_restores_into_an_abstract_target(tmp_path):
  traced = []

  def init():
    x = jnp.zeros((2,), jnp.float32)
    traced.append(isinstance(x, jax.core.Tracer))
    return {'x': x}

  step = jax.jit(lambda s, b: ({'x': s['x'] + b}, {'loss': jnp.sum(s['x'])}))
  kw = dict(init=init, step_fn=step, batch_fn=lambda i: jnp.float32(1), workdir=str(tmp_path),
            checkpoint_every=2, log_every=2, progress=False)
  train.run_loop(num_steps=2, **kw)
  assert traced == [False, True]  # the fresh state, then eval_shape (where to place it)
  traced.clear()
  final = train.run_loop(num_steps=4, **kw)
  assert all(traced)  # init never ran concretely (eval_shape traced it, or its cache hit)
  np.testing.assert_array_equal(final['x'], [4.0, 4.0])


def test_a_resumed_run_reuses_the_compiled_step(tmp_path):
  """The fresh state is committed like a restored one, so resuming does not recompile."""
  step = jax.jit(lambda s, b: ({'x': s['x'] + b}, {'loss': jnp.sum(s['x'])}))
  kw = dict(init=lambda: {'x': jnp.zeros((2,), jnp.float32)}, step_fn=step,
            batch_fn=lambda i: jnp.float32(1), workdir=str(tmp_path), checkpoint_every=2,
            log_every=2, progress=False)
  train.run_loop(num_steps=2, **kw)
  final = train.run_loop(num_steps=4, **kw)
  np.testing.assert_array_equal(final['x'], [4.0, 4.0])
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_progress_is_log_lines_when_stderr_is_not_a_terminal(caplog, capsys):
  from lib.train.progress import Progress  # pylint: disable=g-import-not-at-top
  with caplog.at_level('INFO'):
    bar = Progress(total=4, initial=0, name='run', every_s=0.0)
    for step in range(1, 5):
      bar.update(step, 0.5 if step % 2 == 0 else None)
    bar.close()
  lines = [r.getMessage() for r in caplog.records if 'step' in r.getMessage()]
  assert lines[0].startswith('run: step 2/4 loss 0.5,') and lines[0].endswith('s/step')
  assert len(lines) == 2 and '\r' not in capsys.readouterr().err


def _param_leaves(state):
  return {'/'.join(str(k.key) for k in path): np.asarray(v) for path, v in
          jax.tree_util.tree_flatten_with_path(state.variables['params'])[0]}


def test_frozen_parameter_groups_do_not_move(tiny, tmp_path):
  ds, model = tiny
  first = sorted(_param_leaves(train.TrainState(0, model.init(jax.random.key(0)), None)))[0]
  group = first.split('/')[0]
  opt = train.make_optimizer(learning_rate=0.1, num_steps=4, weight_decay=0.1,
                             frozen=(f'{group}/*',))
  before = _param_leaves(jax.jit(train.init_state, static_argnums=(0, 1))(
      model, opt, jax.random.split(jax.random.key(0))[0]))
  after = _param_leaves(train.fit(model=model, optimizer=opt, train_data=ds, num_steps=4,
                                  batch_size=16, seed=0, workdir=str(tmp_path), progress=False))
  moved = {name for name in before if not np.array_equal(before[name], after[name])}
  frozen = {name for name in before if name.startswith(f'{group}/')}
  assert frozen and not moved & frozen
  assert moved == set(before) - frozen


def test_frozen_pattern_that_matches_nothing_is_refused(tiny):
  _, model = tiny
  opt = train.make_optimizer(learning_rate=0.1, num_steps=4, frozen=('encoder/*',))
  with pytest.raises(ValueError, match="frozen pattern 'encoder/\\*' matches no parameter"):
    opt.init(model.init(jax.random.key(0))['params'])
  with pytest.raises(ValueError, match='frozen must be a sequence'):
    train.make_optimizer(num_steps=4, frozen='encoder/*')


@pytest.mark.parametrize('kwargs, match', [
    ({'weight_decay': -1e-4}, 'weight_decay'),
    ({'momentum': -0.1}, 'momentum'),
    ({'momentum': 1.0}, 'momentum'),
    ({'learning_rate': float('nan')}, 'learning_rate'),
    ({'learning_rate': float('inf')}, 'learning_rate'),
    ({'learning_rate': '0.1'}, 'learning_rate'),
    ({'num_steps': 10.5}, 'num_steps'),
    ({'warmup_steps': 2.0}, 'warmup_steps'),
])
def test_make_optimizer_rejects_bad_numbers(kwargs, match):
  with pytest.raises(ValueError, match=match):
    train.make_optimizer(**{'num_steps': 10, **kwargs})


@pytest.mark.parametrize('label_smoothing', [1.0, 1.5, -0.1, float('nan')])
def test_label_smoothing_outside_unit_interval_is_refused(label_smoothing):
  with pytest.raises(ValueError, match='label_smoothing'):
    train.SoftmaxCrossEntropy(label_smoothing)


@pytest.mark.parametrize('kwargs, match', [
    ({'seed': 1.5}, 'seed'),
    ({'seed': '3'}, 'seed'),
    ({'seed': -1}, 'seed'),
    ({'batch_size': 16.0}, 'batch_size'),
    ({'step_options': {'flip': 'no'}}, 'flip'),
    ({'step_options': {'pad': -1}}, 'pad'),
    ({'step_options': {'pad': 1.5}}, 'pad'),
    ({'step_options': {'label_smoothing': 0.1}}, 'unknown keys'),
    ({'learning_rate': -0.1}, 'learning_rate'),
])
def test_fit_rejects_bad_arguments_before_training(tiny, tmp_path, kwargs, match):
  ds, model = tiny
  kw = dict(model=model, optimizer=train.make_optimizer(num_steps=2), train_data=ds,
            num_steps=2, batch_size=16, seed=0, workdir=str(tmp_path), progress=False)
  with pytest.raises(ValueError, match=match):
    train.fit(**{**kw, **kwargs})
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


class _WithExtraFields:
  """The digits split plus a per-example 'weight' (numeric) and 'caption' (text)."""

  def __init__(self, ds):
    self._ds = ds

  def __len__(self):
    return len(self._ds)

  def __getattr__(self, name):
    return getattr(self._ds, name)

  def get(self, indices):
    batch = self._ds.get(indices)
    return {**batch, 'weight': np.ones(len(indices), np.float32),
            'caption': np.array(['a digit'] * len(indices))}


_SEEN_FIELDS = set()
_TRACES = []


def _weighted_loss(logits, batch):
  """Weighted cross-entropy; records the fields it sees and counts its traces."""
  _SEEN_FIELDS.update(batch)
  _TRACES.append(1)
  return train.SoftmaxCrossEntropy()(logits, batch) * batch['weight']


def test_fit_passes_every_numeric_field_and_compiles_once_across_seeds(tiny, tmp_path):
  ds, model = tiny
  opt = train.make_optimizer(learning_rate=0.05, num_steps=2)
  _SEEN_FIELDS.clear()
  _TRACES.clear()
  for seed in (0, 1):
    train.fit(model=model, optimizer=opt, train_data=_WithExtraFields(ds), num_steps=2,
              batch_size=16, seed=seed, workdir=str(tmp_path / str(seed)), progress=False,
              step_options={'loss_fn': _weighted_loss})
  assert {'image', 'label', 'weight'} <= _SEEN_FIELDS and 'caption' not in _SEEN_FIELDS
  assert len(_TRACES) == 1


class _CountingModel:
  """Delegates to a model and counts how often `apply` is traced."""

  def __init__(self, model):
    self.model, self.traces = model, 0

  def apply(self, variables, x, **kw):
    self.traces += 1
    return self.model.apply(variables, x, **kw)


def test_evaluate_compiles_once_across_calls(tiny):
  ds, model = tiny
  counting = _CountingModel(model)
  results = [train.evaluate(counting, model.init(jax.random.key(i)), ds, batch_size=512)
             for i in range(3)]
  assert counting.traces == 1
  assert len({r['eval_loss'] for r in results}) == 3
