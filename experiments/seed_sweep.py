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
from lib.report import markdown


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  c = classifier.get_config(arg)
  c.num_seeds = 8
  c.learning_rates = ''
  c.strategy = 'auto'  # 'vmap' | 'sequential' | 'auto' (sequential on CPU), see lib/sweep.py
  if 'runlocal' in arg.split(','):
    c.num_steps, c.checkpoint_every = 300, 100
  return c


def run(c: ml_collections.ConfigDict, workdir: str) -> markdown.Section:
  """Trains `c.num_seeds` seeds c.seed, c.seed+1, ...; reports test accuracy per seed."""
  train_data, test_data, model, optimizer = classifier.build(c)
  seeds = list(range(c.seed, c.seed + c.num_seeds))
  lrs = [float(v) for v in c.learning_rates.split(',')] if c.learning_rates else None
  state = sweep.fit_seeds(model=model, optimizer=optimizer, train_data=train_data, seeds=seeds,
                          num_steps=c.num_steps, batch_size=c.batch_size, workdir=workdir,
                          learning_rates=lrs, checkpoint_every=c.checkpoint_every,
                          log_every=c.log_every, strategy=c.strategy,
                          step_options={'flip': c.flip, 'pad': c.pad})
  variables = train.to_host(state.variables)
  accs = [train.evaluate(model, jax.tree.map(lambda v: v[i], variables), test_data)['eval_accuracy']
          for i in range(len(seeds))]
  rows = [[s, lr, a] for s, lr, a in zip(seeds, lrs or [c.learning_rate] * len(seeds), accs)]
  body = '\n\n'.join([
      f'{len(seeds)} seeds of {c.model} on `{c.dataset}`, {c.num_steps} steps each, sweep '
      f'strategy {c.strategy!r}, over {jax.device_count()} device(s) in {jax.process_count()} '
      f'process(es). Test accuracy {np.mean(accs):.4f} ± {np.std(accs):.4f} (mean ± std).',
      markdown.table(['seed', 'peak learning rate', 'test accuracy'], rows)])
  return markdown.Section('Seed sweep', body)
