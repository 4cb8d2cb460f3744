"""Many seeds of the classifier config as one vmapped program sharded over all devices.

The config argument is the classifier's (see experiments/classifier.py) plus the sweep's
own fields: `num_seeds` (a multiple of the device count) and optional per-seed
`learning_rates` (comma-separated; empty = the classifier's learning rate for all).

Launch:
  python -m launch.run --config=experiments/seed_sweep.py:runlocal --workdir=/tmp/sweep
  # multi-host (every process, e.g. a TPU pod slice or one process per GPU node):
  python -m launch.run --config=experiments/seed_sweep.py:cifar10 --workdir=gs://... --distributed
"""

from __future__ import annotations


import jax
import ml_collections
import numpy as np

from experiments import classifier
from lib import sweep, train
from lib import validate
from lib.report import markdown


# Both strategies checkpoint the same stacked layout (lib/sweep.py), so a relaunch may switch
# strategy (start sequentially on CPU, finish vmapped on GPU); see lib/run_config.py.
RESUMABLE_KEYS = ('strategy',)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The classifier's config for `arg` plus the sweep's fields (see the module docstring)."""
  c = classifier.get_config(arg)
  c.num_seeds = 8
  c.learning_rates = ''
  c.strategy = 'auto'  # 'vmap' | 'sequential' | 'auto' (sequential on CPU), see lib/sweep.py
  if 'runlocal' in arg.split(','):
    c.num_steps, c.checkpoint_every = 300, 100
  return c


def learning_rates(c: ml_collections.ConfigDict) -> list[float] | None:
  """The per-seed peak learning rates of `c.learning_rates`, or None when it is empty."""
  if not isinstance(c.learning_rates, str):
    raise ValueError('config.learning_rates must be a string of comma-separated numbers; got '
                     f'{c.learning_rates!r}.')
  if not c.learning_rates:
    return None
  try:
    lrs = [float(v) for v in c.learning_rates.split(',')]
  except ValueError:
    raise ValueError('config.learning_rates must be comma-separated numbers such as '
                     f"'0.1,0.05'; got {c.learning_rates!r}.") from None
  if len(lrs) != c.num_seeds:
    raise ValueError(f'config.learning_rates must hold one value per seed '
                     f'(config.num_seeds={c.num_seeds}); got {len(lrs)}.')
  for i, lr in enumerate(lrs):
    validate.check_number(lr, f'config.learning_rates[{i}]', low=0.0)
    validate.check_positive(lr, f'config.learning_rates[{i}]')
  return lrs


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks the classifier fields and the sweep's own before anything is trained."""
  classifier.validate_config(c)
  validate.check_int(c.num_seeds, 'config.num_seeds', minimum=1)
  validate.check_choice(c.strategy, sweep.STRATEGIES, 'config.strategy')
  learning_rates(c)


def run(c: ml_collections.ConfigDict, workdir: str) -> markdown.Section:
  """Trains `c.num_seeds` seeds c.seed, c.seed+1, ...; reports test accuracy per seed."""
  validate_config(c)
  train_data, test_data, model, optimizer = classifier.build(c)
  seeds = list(range(c.seed, c.seed + c.num_seeds))
  lrs = learning_rates(c)
  state = sweep.fit_seeds(model=model, optimizer=optimizer, train_data=train_data, seeds=seeds,
                          num_steps=c.num_steps, batch_size=c.batch_size, workdir=workdir,
                          learning_rates=lrs, checkpoint_every=c.checkpoint_every,
                          log_every=c.log_every, strategy=c.strategy,
                          step_options=classifier.step_options(c))
  variables = train.to_host(state.variables)
  accs = [train.evaluate(model, jax.tree.map(lambda v: v[i], variables), test_data)['eval_accuracy']
          for i in range(len(seeds))]
  rows = [[s, lr, a] for s, lr, a in zip(seeds, lrs or [c.learning_rate] * len(seeds), accs)]
  summary = f'{np.mean(accs):.4f} ± {np.std(accs):.4f}'
  return markdown.Section(
      'Seed sweep',
      body=f'{len(seeds)} seeds of {c.model} on `{c.dataset}`, {c.num_steps} steps each, sweep '
      f'strategy {c.strategy!r}, over {jax.device_count()} device(s) in {jax.process_count()} '
      f'process(es). Test accuracy {summary} (mean ± std).',
      blocks=[markdown.Table('', ['seed', 'peak learning rate', 'test accuracy'], rows)],
      headline={f'test accuracy over {len(seeds)} seeds (mean ± std)': summary})
