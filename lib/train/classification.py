"""The supervised classification step: augmentation, an injected loss, one optax update.

`train_step(model, optimizer, state, batch, base_key, *, loss_fn=..., flip=, pad=)` is pure:
jit it (with `model`, `optimizer` and the options static) or vmap it over seeds at the call
site. Its randomness is `fold_in(base_key, state.step)`, so a resumed run needs no saved key.
`loss_fn(logits, batch) -> per-example loss [B]` is injected (default softmax cross-entropy
with label smoothing); it sees every field of the batch (masks, token ids, ...), so another
objective reuses the step. It is a static argument of the jitted step: use a value-hashable
object such as `SoftmaxCrossEntropy(0.1)` (or one function object kept for the whole run),
not a fresh lambda per call, or every call compiles again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lib import validate
from lib.train.state import TrainState

Array = jax.Array
Batch = Mapping[str, Any]
LossFn = Callable[[Array, Batch], Array]


@dataclasses.dataclass(frozen=True)
class SoftmaxCrossEntropy:
  """`loss(logits [B, K], batch) -> [B]`: cross-entropy against smoothed one-hot labels.

  Attributes:
    label_smoothing: in [0, 1); the target puts `1 - label_smoothing` on the label and
      spreads `label_smoothing` uniformly over the K classes.
  """
  label_smoothing: float = 0.0

  def __post_init__(self):
    validate.check_number(self.label_smoothing, 'label_smoothing', low=0.0, high=1.0,
                          high_inclusive=False)

  def __call__(self, logits: Array, batch: Batch) -> Array:
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], logits.shape[-1]),
                                  self.label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def check_step_options(options: Mapping[str, Any]) -> None:
  """Raises ValueError unless `options` are valid keyword options of `train_step`."""
  unknown = set(options) - {'loss_fn', 'flip', 'pad'}
  if unknown:
    raise ValueError(f'step_options has unknown keys {sorted(unknown)}; expected any of '
                     "['flip', 'loss_fn', 'pad'] (label smoothing: "
                     "loss_fn=SoftmaxCrossEntropy(label_smoothing)).")
  if 'loss_fn' in options and not callable(options['loss_fn']):
    raise ValueError(f'step_options["loss_fn"] must be callable as loss_fn(logits, batch); '
                     f'got {options["loss_fn"]!r}.')
  validate.check_bool(options.get('flip', False), 'flip')
  validate.check_int(options.get('pad', 0), 'pad', minimum=0)


def augment(images: Array, key: Array, *, flip: bool, pad: int) -> Array:
  """Random horizontal flips and pad-and-crop translations (CIFAR-style), per image.

  Args:
    images: [B, H, W, C].
    key: typed PRNG key.
    flip: flip each image left-right with probability 1/2.
    pad: maximum translation in pixels (reflect padding), an int >= 0; 0 disables.
  """
  validate.check_bool(flip, 'flip')
  validate.check_int(pad, 'pad', minimum=0)
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


def train_step(model: Any, optimizer: optax.GradientTransformation, state: TrainState,
               batch: Batch, base_key: Array, *, loss_fn: LossFn = SoftmaxCrossEntropy(),
               flip: bool = False, pad: int = 0) -> tuple[TrainState, dict[str, Array]]:
  """One step of supervised training (pure; jit/vmap it at the call site).

  Args:
    model: a `PureModel` (or anything with `apply_train(variables, x, *, key)`).
    optimizer: from `make_optimizer` (its state must hold an injected learning rate).
    state: current state.
    batch: {'image': [B, H, W, C] in [0, 1], 'label': [B] int, ...any other fields}.
    base_key: the run's key; this step uses `fold_in(base_key, state.step)` for the
      augmentation and a key derived from it for dropout.
    loss_fn: `loss_fn(logits, batch) -> [B]` per-example loss (see the module docstring).
    flip, pad: augmentation (see `augment`).

  Returns:
    The new state and metrics {'loss', 'accuracy', 'grad_norm', 'learning_rate'}.
  """
  key = jax.random.fold_in(base_key, state.step)
  images = augment(batch['image'], key, flip=flip, pad=pad)
  batch = {**batch, 'image': images}
  dropout_key = jax.random.fold_in(key, 1)

  def objective(params):
    out, variables = model.apply_train({**state.variables, 'params': params}, images,
                                       key=dropout_key)
    return loss_fn(out.logits, batch).mean(), (out.logits, variables)

  (loss, (logits, variables)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.variables['params'])
  updates, opt_state = optimizer.update(grads, state.opt_state, variables['params'])
  variables = {**variables, 'params': optax.apply_updates(variables['params'], updates)}
  metrics = {
      'loss': loss,
      'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
      'grad_norm': optax.global_norm(grads),
      'learning_rate': opt_state.hyperparams['learning_rate'],
  }
  return TrainState(state.step + 1, variables, opt_state), metrics


def evaluation_sums(model: Any, variables: Any, batch: Batch) -> tuple[Array, Array]:
  """(summed cross-entropy, number correct) over the rows of `batch` with 'valid' set."""
  logp = jax.nn.log_softmax(model.apply(variables, batch['image']).logits)
  labels, valid = batch['label'], batch['valid']
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
  correct = valid & (jnp.argmax(logp, -1) == labels)
  return jnp.sum(jnp.where(valid, nll, 0.0)), jnp.sum(correct, dtype=jnp.int32)
