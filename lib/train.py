"""Generic supervised training: pure step functions and a resumable loop.

The pieces:
  * `make_optimizer`: SGD-momentum or AdamW with warmup + cosine decay; the peak learning
    rate is an injected hyperparameter (it lives in the optimizer state), so a seed sweep
    can give every seed its own learning rate under `vmap`.
  * `init_state` / `train_step`: a pure `init`/`step` pair over `TrainState`. The step's
    PRNG key is `fold_in(base_key, state.step)`, so a resumed run needs no saved key.
  * `run_loop`: the host loop shared by single runs and sweeps: restore the newest readable
    orbax checkpoint in the workdir, step, log JSON lines + TensorBoard, checkpoint, stop
    with `NonFiniteLossError` on a NaN/Inf loss. Batches are a function of the step alone
    (`lib.data.batch_at`), so a run killed at any moment and relaunched ends with the same
    parameters and metrics, bit for bit, as an uninterrupted one.
  * `fit`: one seed, end to end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm import tqdm

from lib import data as data_lib
from lib import validate
from lib.checkpoint import Checkpointer
from lib.models import PureModel, Variables
from lib.report.writer import MetricWriter

Array = jax.Array
Batch = Mapping[str, Any]


class TrainState(NamedTuple):
  """Everything a training run carries from step to step.

  Attributes:
    step: int32 scalar, number of steps taken.
    variables: model variables {'params', 'batch_stats'}.
    opt_state: optax state of the optimizer (holds the injected learning rate).
  """
  step: Array
  variables: Variables
  opt_state: optax.OptState


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss becomes NaN or Inf."""


def make_optimizer(*, name: str = 'sgd', learning_rate: float = 0.1, num_steps: int,
                   warmup_steps: int = 0, momentum: float = 0.9, weight_decay: float = 0.0,
                   schedule: str = 'cosine') -> optax.GradientTransformation:
  """Optimizer with warmup and decay; `learning_rate` is the (injected) peak rate.

  Args:
    name: 'sgd' (Nesterov momentum, decoupled-free L2 via `add_decayed_weights`) or 'adamw'.
    learning_rate: peak learning rate.
    num_steps: total steps (for the decay schedule).
    warmup_steps: linear warmup from 0.
    momentum: SGD momentum.
    weight_decay: L2 (sgd) or decoupled (adamw) weight decay.
    schedule: 'cosine' or 'constant' after warmup.
  """
  validate.check_choice(name, ('sgd', 'adamw'), 'optimizer name')
  validate.check_choice(schedule, ('cosine', 'constant'), 'schedule')
  validate.check_positive(num_steps, 'num_steps')
  validate.check_positive(learning_rate, 'learning_rate')
  if not 0 <= warmup_steps < num_steps:
    raise ValueError(f'warmup_steps must be in [0, num_steps={num_steps}); got {warmup_steps}.')

  def shape(count: Array) -> Array:
    warm = jnp.minimum(1.0, (count + 1) / max(warmup_steps, 1)) if warmup_steps else 1.0
    if schedule == 'constant':
      return warm
    frac = jnp.clip((count - warmup_steps) / max(num_steps - warmup_steps, 1), 0.0, 1.0)
    return warm * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

  def make(learning_rate: Array) -> optax.GradientTransformation:
    if name == 'sgd':
      core = optax.chain(optax.add_decayed_weights(weight_decay),
                         optax.trace(decay=momentum, nesterov=True))
    else:
      core = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(weight_decay))
    return optax.chain(core, optax.scale_by_schedule(lambda c: -learning_rate * shape(c)))

  return optax.inject_hyperparams(make)(learning_rate=learning_rate)


def set_learning_rate(opt_state: optax.OptState, learning_rate: Array) -> optax.OptState:
  """Replaces the injected peak learning rate (e.g. per seed in a sweep)."""
  hyper = dict(opt_state.hyperparams, learning_rate=jnp.asarray(learning_rate, jnp.float32))
  return opt_state._replace(hyperparams=hyper)


def init_state(model: PureModel, optimizer: optax.GradientTransformation,
               key: Array) -> TrainState:
  """Fresh `TrainState` from a typed key."""
  variables = model.init(key)
  return TrainState(jnp.zeros((), jnp.int32), variables, optimizer.init(variables['params']))


def augment(images: Array, key: Array, *, flip: bool, pad: int) -> Array:
  """Random horizontal flips and pad-and-crop translations (CIFAR-style), per image.

  Args:
    images: [B, H, W, C].
    key: typed PRNG key.
    flip: flip each image left-right with probability 1/2.
    pad: maximum translation in pixels (reflect padding); 0 disables.
  """
  b, h, w, _ = images.shape
  kf, ks = jax.random.split(key)
  if flip:
    mask = jax.random.bernoulli(kf, 0.5, (b, 1, 1, 1))
    images = jnp.where(mask, images[:, :, ::-1], images)
  if pad:
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
    shifts = jax.random.randint(ks, (b, 2), 0, 2 * pad + 1)
    crop = lambda im, s: jax.lax.dynamic_slice(im, (s[0], s[1], 0), (h, w, im.shape[-1]))
    images = jax.vmap(crop)(padded, shifts)
  return images


def train_step(model: PureModel, optimizer: optax.GradientTransformation, state: TrainState,
               batch: Batch, base_key: Array, *, label_smoothing: float = 0.0,
               flip: bool = False, pad: int = 0) -> tuple[TrainState, dict[str, Array]]:
  """One step of softmax cross-entropy training (pure; jit/vmap it at the call site).

  Args:
    model: the model.
    optimizer: from `make_optimizer`.
    state: current state.
    batch: {'image': [B, H, W, C] in [0, 1], 'label': [B] int}.
    base_key: the run's key; this step uses `fold_in(base_key, state.step)`.
    label_smoothing: in [0, 1).
    flip, pad: augmentation (see `augment`).

  Returns:
    The new state and metrics {'loss', 'accuracy', 'grad_norm', 'learning_rate'}.
  """
  key = jax.random.fold_in(base_key, state.step)
  images = augment(batch['image'], key, flip=flip, pad=pad)
  labels = batch['label']
  targets = optax.smooth_labels(jax.nn.one_hot(labels, model.num_classes), label_smoothing)

  def loss_fn(params):
    out, variables = model.apply_train({**state.variables, 'params': params}, images)
    loss = optax.softmax_cross_entropy(out.logits, targets).mean()
    return loss, (out.logits, variables)

  (loss, (logits, variables)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.variables['params'])
  updates, opt_state = optimizer.update(grads, state.opt_state, variables['params'])
  variables = {**variables, 'params': optax.apply_updates(variables['params'], updates)}
  metrics = {
      'loss': loss,
      'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels),
      'grad_norm': optax.global_norm(grads),
      'learning_rate': opt_state.hyperparams['learning_rate'],
  }
  return TrainState(state.step + 1, variables, opt_state), metrics


_jitted_train_step = jax.jit(train_step, static_argnums=(0, 1), donate_argnums=2,
                             static_argnames=('label_smoothing', 'flip', 'pad'))
_jitted_init_state = jax.jit(init_state, static_argnums=(0, 1))


def evaluate(model: PureModel, variables: Variables, dataset: Any, *,
             batch_size: int = 256) -> dict[str, float]:
  """Accuracy and mean cross-entropy of `variables` over a whole split (one compilation)."""

  @jax.jit
  def sums(variables, images, labels, valid):
    logp = jax.nn.log_softmax(model.apply(variables, images).logits)
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
    return jnp.sum(nll * valid), jnp.sum((jnp.argmax(logp, -1) == labels) * valid)

  loss, correct, total = 0.0, 0, 0
  for batch in data_lib.eval_batches(dataset, batch_size):
    valid = batch['valid'].astype(np.float32)
    nll, right = sums(variables, jnp.asarray(batch['image']), jnp.asarray(batch['label']),
                      jnp.asarray(valid))
    loss, correct, total = loss + float(nll), correct + int(right), total + int(valid.sum())
  return {'eval_accuracy': correct / total, 'eval_loss': loss / total}


def to_host(tree: Any) -> Any:
  """Numpy copy of a pytree of (possibly multi-process sharded) arrays."""
  if jax.process_count() > 1:
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)


def run_loop(*, init: Callable[[], Any], step_fn: Callable[[Any, Batch], tuple[Any, dict]],
             batch_fn: Callable[[int], Batch], num_steps: int, workdir: str,
             checkpoint_every: int, log_every: int,
             eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
             eval_every: int | None = None, progress: bool = True) -> Any:
  """Runs `step_fn` from the newest checkpoint in `workdir` to `num_steps`.

  Args:
    init: builds the initial state (also the restore target).
    step_fn: `(state, batch) -> (state, metrics)`, typically jitted; `metrics['loss']` is
      checked for NaN/Inf every step.
    batch_fn: `step -> batch`; must depend on the step alone for exact resumption.
    num_steps: total number of steps.
    workdir: checkpoints in `workdir/checkpoints`, metrics in `workdir/metrics.jsonl`.
    checkpoint_every, log_every, eval_every: intervals in steps (the last step always logs,
      evaluates and checkpoints).
    eval_fn: `state -> metrics`, run every `eval_every` steps.
    progress: show a progress bar (process 0 only).

  Returns:
    The final state.

  Raises:
    NonFiniteLossError: the loss became NaN or Inf; the last checkpoint is kept.
  """
  for name, value in (('num_steps', num_steps), ('checkpoint_every', checkpoint_every),
                      ('log_every', log_every)):
    validate.check_positive(value, name)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  state = init()
  restored = ckpt.restore_latest(state)
  start = 0
  if restored is not None:
    start, state = restored
  writer = MetricWriter(workdir, resume_step=start if restored is not None else None)
  bar = tqdm(total=num_steps, initial=start, desc=os.path.basename(workdir.rstrip('/')),
             disable=not progress or jax.process_index() > 0, dynamic_ncols=True)
  try:
    for step in range(start, num_steps):
      state, metrics = step_fn(state, batch_fn(step))
      metrics = to_host(metrics)
      if not np.all(np.isfinite(metrics['loss'])):
        last = ckpt.steps()[-1] if ckpt.steps() else None
        raise NonFiniteLossError(
            f'training loss became {metrics["loss"]} at step {step + 1}; stopping. The last '
            f'good checkpoint is step {last} in {ckpt.directory}. Lower the learning rate or '
            f'check the data.')
      done = step + 1
      last_step = done == num_steps
      if done % log_every == 0 or last_step:
        writer.write(done, metrics)
        bar.set_postfix(loss=float(np.mean(metrics['loss'])))
      if eval_fn is not None and ((eval_every and done % eval_every == 0) or last_step):
        writer.write(done, eval_fn(state))
      if done % checkpoint_every == 0 or last_step:
        ckpt.save(done, state)
      bar.update(1)
  finally:
    bar.close()
    writer.close()
    ckpt.close()
  return state


def fit(*, model: PureModel, optimizer: optax.GradientTransformation, train_data: Any,
        num_steps: int, batch_size: int, seed: int, workdir: str, eval_data: Any = None,
        checkpoint_every: int = 100, log_every: int = 10, eval_every: int | None = None,
        step_options: Mapping[str, Any] | None = None, learning_rate: float | None = None,
        progress: bool = True) -> TrainState:
  """Trains one seed of `model` on `train_data`, resuming from `workdir` if possible.

  The compiled step is shared by every `fit` of the same model, optimizer and options in
  a process (the seed's key is an argument), so running seeds one after another compiles
  once.

  Args:
    model, optimizer: what to train and how.
    train_data: a `lib.data` dataset.
    num_steps, batch_size: the schedule.
    seed: initialisation, data order and augmentation all derive from it.
    workdir: run directory (checkpoints, metrics).
    eval_data: optional dataset evaluated every `eval_every` steps and at the end.
    checkpoint_every, log_every: intervals in steps.
    step_options: keyword options of `train_step` (label_smoothing, flip, pad).
    learning_rate: overrides the optimizer's injected peak learning rate.
    progress: show a progress bar.
  """
  validate.check_positive(batch_size, 'batch_size')
  init_key, base_key = jax.random.split(jax.random.key(seed))
  options = dict(step_options or {})
  step = lambda s, b: _jitted_train_step(model, optimizer, s, b, base_key, **options)
  batch_fn = lambda i: jax.tree.map(jnp.asarray, _image_label(
      data_lib.batch_at(train_data, i, batch_size=batch_size, seed=seed)))
  eval_fn = None
  if eval_data is not None:
    eval_fn = lambda s: evaluate(model, s.variables, eval_data)
  def init():
    state = _jitted_init_state(model, optimizer, init_key)
    if learning_rate is None:
      return state
    return state._replace(opt_state=set_learning_rate(state.opt_state, learning_rate))

  return run_loop(init=init,
                  step_fn=step, batch_fn=batch_fn, num_steps=num_steps, workdir=workdir,
                  checkpoint_every=checkpoint_every, log_every=log_every, eval_fn=eval_fn,
                  eval_every=eval_every, progress=progress)


def _image_label(batch: Batch) -> dict[str, np.ndarray]:
  return {'image': batch['image'], 'label': batch['label']}
