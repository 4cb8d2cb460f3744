"""Supervised classification end to end: `fit` one seed (resumable) and `evaluate` a split.

Both compile once per process for a given model, optimizer, options and shapes: the jitted
step and evaluation are module-level functions whose static arguments are the model, the
optimizer and the step options, and the seed's key is an ordinary argument. Running seeds
one after another, or evaluating every few hundred steps, reuses the same programs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib import data as data_lib
from lib import validate
from lib.train.classification import check_step_options, evaluation_sums, train_step
from lib.train.loop import run_loop
from lib.train.optim import set_learning_rate
from lib.train.state import TrainState, init_state

_jitted_train_step = jax.jit(train_step, static_argnums=(0, 1), donate_argnums=2,
                             static_argnames=('loss_fn', 'flip', 'pad'))
_jitted_init_state = jax.jit(init_state, static_argnums=(0, 1))
_jitted_evaluation_sums = jax.jit(evaluation_sums, static_argnums=0)


def numeric_fields(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Every numeric or boolean field of a numpy batch: what a training step receives.

  Text fields (captions, questions) are host strings that no device holds; a study that
  trains on text tokenises it into an integer field (token ids) in its data set.
  """
  return {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in 'biuf'}


def evaluate(model: Any, variables: Any, dataset: Any, *,
             batch_size: int = 256) -> dict[str, float]:
  """Accuracy and mean cross-entropy of `variables` over a whole split.

  Compiled once per model and batch shape, however many times it is called.

  Args:
    model: a `PureModel` (anything with `apply(variables, x) -> Outputs`, hashable).
    variables: the model's variables.
    dataset: a `lib.data` dataset.
    batch_size: evaluation batch size, an int >= 1.

  Returns:
    {'eval_accuracy', 'eval_loss'} as Python floats.
  """
  validate.check_int(batch_size, 'batch_size', minimum=1)
  loss, correct, total = 0.0, 0, 0
  for batch in data_lib.eval_batches(dataset, batch_size):
    fields = {k: jnp.asarray(batch[k]) for k in ('image', 'label', 'valid')}
    nll, right = _jitted_evaluation_sums(model, variables, fields)
    loss, correct = loss + float(nll), correct + int(right)
    total += int(batch['valid'].sum())
  return {'eval_accuracy': correct / total, 'eval_loss': loss / total}


def fit(*, model: Any, optimizer: optax.GradientTransformation, train_data: Any,
        num_steps: int, batch_size: int, seed: int, workdir: str, eval_data: Any = None,
        checkpoint_every: int = 100, log_every: int = 10, eval_every: int | None = None,
        step_options: Mapping[str, Any] | None = None, learning_rate: float | None = None,
        progress: bool = True) -> TrainState:
  """Trains one seed of `model` on `train_data`, resuming from `workdir` if possible.

  Args:
    model, optimizer: what to train and how (`make_optimizer`).
    train_data: a `lib.data` dataset; every numeric field of its batches reaches the step
      (and its `loss_fn`), see `numeric_fields`.
    num_steps, batch_size: the schedule (ints >= 1).
    seed: an int >= 0; initialisation, data order and augmentation all derive from it.
    workdir: run directory (checkpoints, metrics).
    eval_data: optional dataset evaluated every `eval_every` steps and at the end.
    checkpoint_every, log_every: intervals in steps.
    step_options: keyword options of `train_step` ('loss_fn', 'flip', 'pad').
    learning_rate: overrides the optimizer's injected peak learning rate.
    progress: report progress (see `lib.train.progress`).

  Returns:
    The final `TrainState`.
  """
  validate.check_int(seed, 'seed', minimum=0)
  validate.check_int(batch_size, 'batch_size', minimum=1)
  validate.check_bool(progress, 'progress')
  if learning_rate is not None:
    validate.check_number(learning_rate, 'learning_rate', low=0.0)
    validate.check_positive(learning_rate, 'learning_rate')
  options = dict(step_options or {})
  check_step_options(options)
  init_key, base_key = jax.random.split(jax.random.key(seed))
  step = lambda s, b: _jitted_train_step(model, optimizer, s, b, base_key, **options)
  batch_fn = lambda i: jax.tree.map(jnp.asarray, numeric_fields(
      data_lib.batch_at(train_data, i, batch_size=batch_size, seed=seed)))
  eval_fn = None
  if eval_data is not None:
    eval_fn = lambda s: evaluate(model, s.variables, eval_data)

  def init() -> TrainState:
    state = _jitted_init_state(model, optimizer, init_key)
    if learning_rate is None:
      return state
    return state._replace(opt_state=set_learning_rate(state.opt_state, learning_rate))

  return run_loop(init=init, step_fn=step, batch_fn=batch_fn, num_steps=num_steps,
                  workdir=workdir, checkpoint_every=checkpoint_every, log_every=log_every,
                  eval_fn=eval_fn, eval_every=eval_every, progress=progress)
