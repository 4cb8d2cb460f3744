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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lib import data as data_lib
from lib import models
from lib import train
from lib.report import figures, markdown
from lib.report.writer import read_metrics


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Config for `arg`, a comma-separated list of variants (see module docstring)."""
  variants = set(filter(None, arg.split(',')))
  unknown = variants - {'runlocal', 'digits', 'cifar10', 'wrn'}
  if unknown:
    raise ValueError(f'unknown config variants {sorted(unknown)}; expected any of '
                     "['runlocal', 'digits', 'cifar10', 'wrn'].")
  c = ml_collections.ConfigDict()
  c.dataset = 'shapes'
  c.image_size = 32
  c.data_dir = ''
  c.model = 'cnn'
  c.model_kwargs = ml_collections.ConfigDict({'batch_norm': True})
  c.optimizer = 'sgd'
  c.learning_rate = 0.05
  c.weight_decay = 5e-4
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


def build(c: ml_collections.ConfigDict):
  """(train data, test data, model, optimizer) for config `c`."""
  train_data, test_data = load_data(c, 'train'), load_data(c, 'test')
  model = models.get_model(c.model, input_shape=train_data.image_shape,
                           num_classes=train_data.num_classes, **c.model_kwargs.to_dict())
  optimizer = train.make_optimizer(name=c.optimizer, learning_rate=c.learning_rate,
                                   num_steps=c.num_steps, warmup_steps=c.warmup_steps,
                                   weight_decay=c.weight_decay)
  return train_data, test_data, model, optimizer


def run(c: ml_collections.ConfigDict, workdir: str) -> markdown.Section:
  """Trains (resuming from `workdir`), evaluates, writes figures; returns the report section."""
  train_data, test_data, model, optimizer = build(c)
  state = train.fit(model=model, optimizer=optimizer, train_data=train_data,
                    eval_data=test_data, num_steps=c.num_steps, batch_size=c.batch_size,
                    seed=c.seed, workdir=workdir, checkpoint_every=c.checkpoint_every,
                    log_every=c.log_every, eval_every=c.eval_every,
                    step_options={'flip': c.flip, 'pad': c.pad})
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
  body = '\n\n'.join([
      f'{c.model} ({n_params:,} parameters) trained on `{c.dataset}` '
      f'({len(train_data)} train / {len(test_data)} test images of shape '
      f'{train_data.image_shape}) for {c.num_steps} steps of batch {c.batch_size}, '
      f'{c.optimizer} with peak learning rate {c.learning_rate}, seed {c.seed}.',
      markdown.table(['metric', 'value'], [
          ['test accuracy', final['eval_accuracy']], ['test loss', final['eval_loss']],
          ['final train loss', [r for r in records if 'loss' in r][-1]['loss']]]),
      f'![training curves]({rel(curves)})',
      f'Test images, predicted (true) class; red = wrong:\n\n![samples]({rel(samples)})'])
  return markdown.Section('Classifier', body)
