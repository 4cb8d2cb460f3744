"""Seed sweeps: vmapped + sharded seeds equal sequential runs; two real processes equal one."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import data as data_lib
from lib import models, sweep, train
from lib.report.writer import read_metrics
from tests.checkpoints import final_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def setup():
  ds = data_lib.get_dataset('digits', 'train', image_size=8)
  model = models.get_model('cnn', input_shape=ds.image_shape, num_classes=ds.num_classes,
                           widths=(4, 8), batch_norm=True)
  return ds, model, train.make_optimizer(learning_rate=0.05, num_steps=6)


def test_eight_seeds_on_eight_devices_equal_their_sequential_runs(setup, tmp_path):
  assert jax.device_count() == 8, 'tests/conftest.py sets 8 fake CPU devices'
  ds, model, opt = setup
  seeds = list(range(8))
  kw = dict(model=model, optimizer=opt, train_data=ds, num_steps=6, batch_size=16,
            checkpoint_every=3, log_every=3, progress=False, step_options={'flip': True})
  swept = {strategy: sweep.fit_seeds(seeds=seeds, workdir=str(tmp_path / strategy),
                                     strategy=strategy, **kw)
           for strategy in ('vmap', 'sequential')}
  for state in swept.values():
    leaf = jax.tree.leaves(state.variables['params'])[0]
    assert leaf.sharding.spec[0] == sweep.AXIS and len(leaf.sharding.device_set) == 8
  for i in seeds:
    single = train.fit(seed=i, workdir=str(tmp_path / f'seed{i}'), **kw)
    for a, b, c in zip(jax.tree.leaves(swept['vmap'].variables),
                       jax.tree.leaves(swept['sequential'].variables),
                       jax.tree.leaves(single.variables)):
      np.testing.assert_allclose(np.asarray(a)[i], np.asarray(c), rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(np.asarray(b)[i], np.asarray(c))


def test_per_seed_learning_rates(setup, tmp_path):
  ds, model, opt = setup
  for strategy in ('vmap', 'sequential'):
    state = sweep.fit_seeds(model=model, optimizer=opt, train_data=ds, seeds=range(8),
                            num_steps=2, batch_size=8, workdir=str(tmp_path / strategy),
                            learning_rates=[0.01 * (i + 1) for i in range(8)],
                            strategy=strategy, progress=False)
    np.testing.assert_allclose(np.asarray(state.opt_state.hyperparams['learning_rate']),
                               [0.01 * (i + 1) for i in range(8)], rtol=1e-6)


def test_bad_sweep_arguments(setup, tmp_path):
  ds, model, opt = setup
  kw = dict(model=model, optimizer=opt, train_data=ds, num_steps=2, batch_size=8,
            workdir=str(tmp_path), progress=False)
  with pytest.raises(ValueError, match='multiple of the 8 devices'):
    sweep.fit_seeds(seeds=[0, 1, 2], **kw)
  with pytest.raises(ValueError, match='learning_rates'):
    sweep.fit_seeds(seeds=range(8), learning_rates=[0.1], **kw)
  with pytest.raises(ValueError, match='strategy'):
    sweep.fit_seeds(seeds=range(8), strategy='pmap', **kw)


def test_map_seeds_vmap_and_sequential_equal_a_loop(setup):
  ds, model, _ = setup
  inits = [model.init(jax.random.key(i)) for i in range(3)]
  stacked = jax.tree.map(lambda *v: np.stack(v), *inits)
  x = ds.get(np.arange(5))['image']
  fn = lambda v, x, scale: scale * model.apply(v, x).logits
  expected = np.stack([np.asarray(fn(v, x, 2.0)) for v in inits])
  for strategy in ('vmap', 'sequential', 'auto'):
    out = sweep.map_seeds(fn, stacked, x, 2.0, strategy=strategy)
    assert isinstance(out, np.ndarray) and out.shape == (3, 5, ds.num_classes)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='leading seed axis'):
    sweep.map_seeds(fn, (stacked, np.ones(4)), x, 2.0)
  with pytest.raises(ValueError, match='strategy'):
    sweep.map_seeds(fn, stacked, x, 2.0, strategy='pmap')


@pytest.mark.parametrize('strategy', ['vmap', 'sequential'])
def test_map_seeds_traces_once_across_calls(strategy):
  traces = []

  def fn(v, x):
    traces.append(1)
    return (v * x).sum()

  stacked = np.ones((3, 4), np.float32)
  for scale in (1.0, 2.0):
    out = sweep.map_seeds(fn, scale * stacked, np.ones(4, np.float32), strategy=strategy)
    np.testing.assert_allclose(out, np.full(3, 4 * scale))
  assert len(traces) == 1


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _sweep_cmd(workdir, *extra):
  return [sys.executable, '-m', 'launch.run',
          '--config=experiments/seed_sweep.py:runlocal,digits', f'--workdir={workdir}',
          '--config.num_seeds=2', '--config.num_steps=8', '--config.checkpoint_every=4',
          '--config.batch_size=16', '--config.image_size=8', '--config.strategy=vmap',
          '--config.warmup_steps=2', *extra]


@pytest.mark.slow  # two subprocesses joining one jax.distributed run: ~30-40 s
def test_two_processes_on_localhost_equal_one_process(tmp_path):
  """jax.distributed over gloo: each process feeds only its own seed's data."""
  port = _free_port()
  multi, single = str(tmp_path / 'multi'), str(tmp_path / 'single')
  env1 = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  procs = [subprocess.Popen(
      _sweep_cmd(multi, '--distributed', f'--coordinator_address=127.0.0.1:{port}',
                 '--num_processes=2', f'--process_id={i}', '--cpu_collectives=gloo'),
      cwd=ROOT, env=env1, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errs = [p.communicate(timeout=600)[1] for p in procs]
  assert all(p.returncode == 0 for p in procs), errs
  assert 'in 2 process(es)' in open(os.path.join(multi, 'report.md')).read()
  env2 = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run(_sweep_cmd(single), cwd=ROOT, env=env2, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr
  (step_a, multi_leaves) = final_checkpoint(multi)
  (step_b, single_leaves) = final_checkpoint(single)
  assert step_a == step_b == 8
  for a, b in zip(multi_leaves, single_leaves):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('first, second', [('sequential', 'vmap'), ('vmap', 'sequential')])
def test_a_sweep_resumed_with_the_other_strategy_continues(setup, tmp_path, first, second):
  ds, model, opt = setup  # opt's schedule is for 6 steps; the first launch stops at 4
  kw = dict(model=model, optimizer=opt, train_data=ds, seeds=range(8), batch_size=8,
            checkpoint_every=2, log_every=2, progress=False)
  straight = str(tmp_path / 'straight')
  reference = sweep.fit_seeds(workdir=straight, num_steps=6, strategy=second, **kw)
  workdir = str(tmp_path / 'switched')
  sweep.fit_seeds(workdir=workdir, num_steps=4, strategy=first, **kw)
  stopped = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  resumed = sweep.fit_seeds(workdir=workdir, num_steps=6, strategy=second, **kw)
  records = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['step'] for r in records] == [2, 4, 6] and records[:2] == stopped
  assert len(records[0]['loss']) == 8
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  expected = read_metrics(os.path.join(straight, 'metrics.jsonl'))
  np.testing.assert_allclose([r['loss'] for r in records], [r['loss'] for r in expected],
                             rtol=1e-5)


_TRACES = []


def _counted_loss(logits, batch):
  _TRACES.append(1)
  return train.SoftmaxCrossEntropy()(logits, batch)


@pytest.mark.parametrize('strategy', ['vmap', 'sequential'])
def test_fit_seeds_compiles_its_step_once_across_calls(setup, tmp_path, strategy):
  ds, model, opt = setup
  _TRACES.clear()
  for run in range(2):
    sweep.fit_seeds(model=model, optimizer=opt, train_data=ds, seeds=range(8), num_steps=1,
                    batch_size=8, workdir=str(tmp_path / str(run)), strategy=strategy,
                    step_options={'loss_fn': _counted_loss}, progress=False)
  assert len(_TRACES) == 1


def _quadratic_init(key, scale):
  return {'x': scale * jax.random.normal(key, (3,)), 'step': jnp.zeros((), jnp.int32)}


def _quadratic_step(state, batch, key):
  noise = 0.01 * jax.random.normal(jax.random.fold_in(key, state['step']), (3,))
  x = state['x'] - 0.5 * (state['x'] - batch['target']) + noise
  return {'x': x, 'step': state['step'] + 1}, {'loss': jnp.sum((x - batch['target']) ** 2)}


def test_run_seeds_sweeps_any_init_step_pair(tmp_path):
  """A non-classification pair; both strategies equal a hand-written loop per seed."""
  seeds, hyper = list(range(8)), np.arange(1, 9, dtype=np.float32)
  batch_fn = lambda t, seed: {'target': np.full(3, seed + t, np.float32)}
  outs = {strategy: sweep.run_seeds(init=_quadratic_init, step=_quadratic_step,
                                    batch_fn=batch_fn, seeds=seeds, num_steps=3, hyper=hyper,
                                    workdir=str(tmp_path / strategy), strategy=strategy,
                                    checkpoint_every=2, log_every=1, progress=False)
          for strategy in ('vmap', 'sequential')}
  for i, seed in enumerate(seeds):
    init_key, key = jax.random.split(jax.random.key(seed))
    state = _quadratic_init(init_key, hyper[i])
    for t in range(3):
      state, _ = _quadratic_step(state, jax.tree.map(jnp.asarray, batch_fn(t, seed)), key)
    for out in outs.values():
      np.testing.assert_allclose(np.asarray(out['x'])[i], state['x'], rtol=1e-6)
  assert len(read_metrics(str(tmp_path / 'vmap' / 'metrics.jsonl'))) == 3
  with pytest.raises(ValueError, match='hyper must hold one value per seed'):
    sweep.run_seeds(init=_quadratic_init, step=_quadratic_step, batch_fn=batch_fn, seeds=seeds,
                    num_steps=1, hyper=hyper[:4], workdir=str(tmp_path / 'bad'))


@pytest.mark.parametrize('kwargs, match', [
    ({'seeds': [0, 1, 2, 3, 4, 5, 6, 7.5]}, r'seeds\[7\]'),
    ({'seeds': ['3'] * 8}, r'seeds\[0\]'),
    ({'seeds': [-1] + list(range(7))}, r'seeds\[0\]'),
    ({'seeds': []}, 'seeds'),
    ({'batch_size': 8.0}, 'batch_size'),
    ({'learning_rates': [-0.1] * 8}, r'learning_rates\[0\]'),
    ({'learning_rates': [0.0] * 8}, r'learning_rates\[0\]'),
    ({'step_options': {'flip': 'no'}}, 'flip'),
    ({'num_steps': 2.5}, 'num_steps'),
])
def test_sweep_rejects_bad_inputs(setup, tmp_path, kwargs, match):
  ds, model, opt = setup
  kw = dict(model=model, optimizer=opt, train_data=ds, seeds=range(8), num_steps=2,
            batch_size=8, workdir=str(tmp_path), progress=False)
  with pytest.raises(ValueError, match=match):
    sweep.fit_seeds(**{**kw, **kwargs})
