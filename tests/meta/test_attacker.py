"""The fine-tuning attacker: an easy task is learnt, random labels are not, the vmapped grid
equals runs one by one (whatever the padding of n and of the run count), every n with its
search and re-runs compiles one program, and bad input is refused by name."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lib.meta import attacker
from lib.meta.attacker import attack_search, finetune_curves
from tests.meta.toys import mlp_apply, mlp_init

D_IN = 4


ENCODER = mlp_init(jax.random.key(0), D_IN, 16, 8)


def _task(n: int, *, seed: int, separable: bool):
  """Gaussian inputs; labels linearly separable in the encoder's features (a linear rule on
  them), or independent of the inputs."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, D_IN)).astype(np.float32)
  score = np.asarray(mlp_apply(ENCODER, x).features) @ np.linspace(-1.0, 1.0, 8)
  y = score > np.median(score) if separable else rng.integers(0, 2, n)
  return x, y.astype(np.int32)
GRID = dict(learning_rates=(1e-2, 1e-1), batch_sizes=(12,), steps=(50, 100), eval_every=50,
            num_reruns=3)


def _search(separable: bool, modes: tuple[str, ...], n_train: int = 100):
  train_x, train_y = _task(200, seed=1, separable=separable)
  val_x, val_y = _task(400, seed=2, separable=separable)
  return attack_search(mlp_apply, ENCODER, train_x, train_y, val_x, val_y, num_classes=2,
                       n_train=n_train, key=jax.random.key(0), modes=modes, **GRID)


@pytest.mark.parametrize('modes', [('probe',),
                                   pytest.param(('probe', 'full'), marks=pytest.mark.slow)])
def test_easy_task_is_learnt_and_random_labels_are_not(modes):
  easy, random = _search(True, modes), _search(False, modes)
  print('easy:', easy.best, easy.rerun_accuracy, '| random:', random.best, random.rerun_accuracy)
  assert easy.accuracy.shape == (len(modes), 1, 2, 2, 1) and set(easy.best) == set(easy.grid)
  assert easy.rerun_accuracy.shape == (3,)
  assert easy.rerun_accuracy.mean() > (0.9 if modes == ('probe',) else 0.85)  # full: noisier
  # Oracle early stopping picks the best of several noisy evaluations: a little above 0.5.
  assert random.rerun_accuracy.mean() < 0.62


def test_vmapped_grid_equals_sequential_runs():
  train_x, train_y = _task(100, seed=1, separable=True)
  val_x, val_y = _task(50, seed=2, separable=True)
  keys = jax.random.split(jax.random.key(0), 2)
  rates = (1e-3, 3e-2)
  common = dict(num_classes=2, n_train=20, batch_size=8, mode='full', max_steps=100,
                eval_every=50)
  grid = finetune_curves(mlp_apply, ENCODER, train_x, train_y, val_x, val_y,
                         learning_rates=rates, keys=keys, **common)
  assert grid.shape == (2, 2, 2)
  for i, rate in enumerate(rates):
    for j in range(2):
      one = finetune_curves(mlp_apply, ENCODER, train_x, train_y, val_x, val_y,
                            learning_rates=[rate], keys=keys[j:j + 1], **common)
      np.testing.assert_array_equal(one[0, 0], grid[i, j])


def test_padding_n_and_runs_changes_no_run():
  """A run depends on (learning rate, key, n) alone: padded to max_n rows and to more runs,
  it gives the same curve as compiled for its own n and run count (the program of the test
  above, so one new compile)."""
  train_x, train_y = _task(100, seed=1, separable=True)
  val_x, val_y = _task(50, seed=2, separable=True)
  keys = jax.random.split(jax.random.key(0), 2)
  common = dict(num_classes=2, n_train=20, batch_size=8, mode='full', max_steps=100,
                eval_every=50, learning_rates=(1e-3, 3e-2))
  own = finetune_curves(mlp_apply, ENCODER, train_x, train_y, val_x, val_y, keys=keys, **common)
  padded = finetune_curves(mlp_apply, ENCODER, train_x, train_y, val_x, val_y, keys=keys,
                           max_n=60, num_runs=5, **common)
  np.testing.assert_array_equal(own, padded)


def test_every_n_search_and_reruns_share_one_program_per_mode():
  train_x, train_y = _task(100, seed=1, separable=True)
  val_x, val_y = _task(50, seed=2, separable=True)
  grid = dict(learning_rates=(1e-2, 1e-1), batch_sizes=(8,), steps=(10, 20), eval_every=10,
              num_reruns=3, modes=('probe',))
  for i, n in enumerate((10, 30, 60)):
    result = attack_search(mlp_apply, ENCODER, train_x, train_y, val_x, val_y, num_classes=2,
                           n_train=n, key=jax.random.key(i), max_n=60, **grid)
    assert result.rerun_accuracy.shape == (3,)
  program = attacker._program(mlp_apply, num_classes=2, max_n=60, batch_size=8, max_steps=20,
                              eval_every=10, mode='probe')
  assert program._cache_size() == 1


def test_bad_inputs_name_the_argument():
  x, y = _task(30, seed=0, separable=True)
  args = (mlp_apply, ENCODER, x, y, x, y)
  kw = dict(num_classes=2, n_train=20, key=jax.random.key(0))
  with pytest.raises(ValueError, match='learning_rates'):
    attack_search(*args, **kw, learning_rates=())
  with pytest.raises(ValueError, match='batch_sizes'):
    attack_search(*args, **kw, batch_sizes=[])
  with pytest.raises(ValueError, match='train_y'):
    attack_search(mlp_apply, ENCODER, x, y + 2, x, y, **kw)
  with pytest.raises(ValueError, match='n_train'):
    attack_search(*args, **dict(kw, n_train=31))
  with pytest.raises(ValueError, match='max_n'):
    attack_search(*args, **kw, max_n=10)
  with pytest.raises(ValueError, match='max_n'):
    attack_search(*args, **kw, max_n=31)
  with pytest.raises(ValueError, match='steps'):
    attack_search(*args, **kw, steps=(75,))
  with pytest.raises(ValueError, match='modes'):
    attack_search(*args, **kw, modes=('frozen',))
