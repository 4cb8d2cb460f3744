"""Train an image classifier and report its curves, accuracy and sample predictions.

The base experiment of the project (the studies train their models through the same
code). Variants, picked by the config argument (comma-separated):

  runlocal     small CNN on the embedded `shapes` scenes, 2 CPU cores, about a minute
  digits       the embedded scikit-learn digits instead of shapes
  cifar10      ResNet-18 on CIFAR-10 from TFDS (needs the prepared data set on disk)
  wrn          WideResNet-28-10 instead of ResNet-18 (with cifar10)

Launch:
  python -m launch.run --config=experiments/classifier.py:runlocal --workdir=/tmp/clf
  python -m launch.run --config=experiments/classifier.py:cifar10 --workdir=/tmp/c10 \
      --config.data_dir=~/tensorflow_datasets
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lib import data as data_lib
from lib import models
from lib import run_config, train
from lib import validate
from lib.report import figures, markdown
from lib.report.writer import read_metrics


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Config for `arg`, a comma-separated list of variants (see module docstring)."""
  variants = run_config.variants(arg, ('runlocal', 'digits', 'cifar10', 'wrn'))
  c = ml_collections.ConfigDict()
  c.dataset = 'shapes'
  c.image_size = 32
  c.data_dir = ''
  c.model = 'cnn'
  c.model_kwargs = ml_collections.ConfigDict({'batch_norm': True})
  c.optimizer = 'sgd'
  c.learning_rate = 0.05
  c.weight_decay = 5e-4
  c.momentum = 0.9  # sgd only
  c.label_smoothing = 0.0
  c.warmup_steps = 50
  c.batch_size = 128
  c.num_steps = 3000
  c.seed = 0  # initialisation, data order, augmentation
  c.data_seed = 0  # generator seed of procedural data (`shapes`)
  c.flip = False
  c.pad = 0
  c.checkpoint_every = 200
  c.log_every = 20
  c.eval_every = 500
  c.num_train = 20000  # `shapes` only: examples generated for the train split
  if 'digits' in variants:
    c.dataset, c.num_train = 'digits', 0
  if 'cifar10' in variants:
    c.dataset, c.model, c.model_kwargs = 'cifar10', 'resnet18', ml_collections.ConfigDict()
    c.learning_rate, c.num_steps, c.warmup_steps = 0.1, 40000, 1000
    c.flip, c.pad, c.eval_every, c.checkpoint_every = True, 4, 2000, 1000
  if 'wrn' in variants:
    c.model = 'wrn28_10'
  if 'runlocal' in variants:
    c.num_steps, c.batch_size, c.warmup_steps = 600, 64, 30
    c.checkpoint_every, c.eval_every, c.log_every = 100, 200, 10
    c.num_train = 4000
  return c


def load_data(c: ml_collections.ConfigDict, split: str):
  """The configured data set split (train size from `num_train` for `shapes`)."""
  kwargs = {}
  if c.dataset == 'shapes' and c.num_train and split == 'train':
    kwargs['num_examples'] = c.num_train
  if c.data_dir:
    kwargs['data_dir'] = os.path.expanduser(c.data_dir)
  return data_lib.get_dataset(c.dataset, split, image_size=c.image_size, seed=c.data_seed,
                              **kwargs)


_INTS = {'image_size': 1, 'batch_size': 1, 'num_steps': 1, 'warmup_steps': 0, 'seed': 0,
         'data_seed': 0, 'pad': 0, 'checkpoint_every': 1, 'log_every': 1, 'eval_every': 1,
         'num_train': 0}  # field -> smallest allowed value


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks every classifier field of `c` (extra fields of a derived config are ignored).

  Runs before anything is built or trained, so a bad value fails in a second, not after
  the first training steps. Names the field and what was expected in a `ValueError`.
  """
  for name in ('dataset', 'model', 'data_dir'):
    if not isinstance(c[name], str):
      raise ValueError(f'config.{name} must be a string; got {c[name]!r}.')
  validate.check_choice(c.optimizer, ('sgd', 'adamw'), 'config.optimizer')
  for name, minimum in _INTS.items():
    validate.check_int(c[name], f'config.{name}', minimum=minimum)
  if c.warmup_steps >= c.num_steps:
    raise ValueError(f'config.warmup_steps must be below config.num_steps={c.num_steps}; '
                     f'got {c.warmup_steps}.')
  validate.check_number(c.learning_rate, 'config.learning_rate', low=0.0)
  validate.check_positive(c.learning_rate, 'config.learning_rate')
  validate.check_number(c.weight_decay, 'config.weight_decay', low=0.0)
  validate.check_number(c.momentum, 'config.momentum', low=0.0, high=1.0, high_inclusive=False)
  validate.check_number(c.label_smoothing, 'config.label_smoothing', low=0.0, high=1.0,
                        high_inclusive=False)
  validate.check_bool(c.flip, 'config.flip')
  if not isinstance(c.model_kwargs, ml_collections.ConfigDict):
    raise ValueError(f'config.model_kwargs must be a ConfigDict of model options; got '
                     f'{c.model_kwargs!r}.')


def step_options(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword options of `lib.train.train_step` for config `c`."""
  return {'flip': c.flip, 'pad': c.pad, 'loss_fn': train.SoftmaxCrossEntropy(c.label_smoothing)}


def build(c: ml_collections.ConfigDict):
  """(train data, test data, model, optimizer) for config `c` (validated first)."""
  validate_config(c)
  train_data, test_data = load_data(c, 'train'), load_data(c, 'test')
  model = models.get_model(c.model, input_shape=train_data.image_shape,
                           num_classes=train_data.num_classes, **c.model_kwargs.to_dict())
  optimizer = train.make_optimizer(name=c.optimizer, learning_rate=c.learning_rate,
                                   num_steps=c.num_steps, warmup_steps=c.warmup_steps,
                                   momentum=c.momentum, weight_decay=c.weight_decay)
  return train_data, test_data, model, optimizer


def fit(c: ml_collections.ConfigDict, built: tuple, workdir: str) -> train.TrainState:
  """Trains the classifier of `built = build(c)` in `workdir`, resuming from its checkpoints.

  Every study that attacks "the classifier" trains it through here, so two studies under the
  same classifier keys train the same model and can share one folder (experiments/main.py).
  """
  train_data, test_data, model, optimizer = built
  return train.fit(model=model, optimizer=optimizer, train_data=train_data,
                   eval_data=test_data, num_steps=c.num_steps, batch_size=c.batch_size,
                   seed=c.seed, workdir=workdir, checkpoint_every=c.checkpoint_every,
                   log_every=c.log_every, eval_every=c.eval_every, step_options=step_options(c))


def run(c: ml_collections.ConfigDict, workdir: str) -> markdown.Section:
  """Trains (resuming from `workdir`), evaluates, writes figures; returns the report section."""
  validate_config(c)
  built = build(c)
  train_data, test_data, model, _ = built
  state = fit(c, built, workdir)
  records = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  final = [r for r in records if 'eval_accuracy' in r][-1]
  curves = figures.training_curves(records, os.path.join(workdir, 'training_curves.png'))
  batch = test_data.get(np.arange(16))
  logits = jax.jit(model.apply)(state.variables, jnp.asarray(batch['image'])).logits
  pred = np.asarray(jnp.argmax(logits, -1))
  names = test_data.class_names
  samples = figures.image_grid(
      batch['image'], [f'{names[p]} ({names[y]})' for p, y in zip(pred, batch['label'])],
      os.path.join(workdir, 'samples.png'),
      colors=['green' if p == y else 'red' for p, y in zip(pred, batch['label'])])
  n_params = sum(x.size for x in jax.tree.leaves(state.variables['params']))
  rel = lambda p: os.path.relpath(p, workdir)
  final_loss = [r for r in records if 'loss' in r][-1]['loss']
  return markdown.Section(
      'Classifier',
      body=f'{c.model} ({n_params:,} parameters) trained on `{c.dataset}` '
      f'({len(train_data)} train / {len(test_data)} test images of shape '
      f'{train_data.image_shape}) for {c.num_steps} steps of batch {c.batch_size}, '
      f'{c.optimizer} with peak learning rate {c.learning_rate}, seed {c.seed}.',
      blocks=[
          markdown.Table('', ['metric', 'value'], [
              ['test accuracy', final['eval_accuracy']], ['test loss', final['eval_loss']],
              ['final train loss', final_loss]]),
          markdown.Figure('', rel(curves)),
          markdown.Figure('Test images, predicted (true) class; red = wrong:', rel(samples))],
      headline={'test accuracy': f"{final['eval_accuracy']:.4f}",
                'chance accuracy': f'{1 / test_data.num_classes:.4f}'})
