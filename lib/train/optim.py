"""Optimiser builders (optax): warmup + decay, an injected learning rate, frozen groups.

`make_optimizer` returns an `optax.inject_hyperparams` transformation, so the peak learning
rate lives in the optimiser state: a seed sweep can give every seed its own rate under `vmap`
(`set_learning_rate`), and a run's metrics can report it.

Frozen parameter groups go through `optax.multi_transform`: `freeze(transform, patterns)`
sends the parameters whose path matches one of the `fnmatch` patterns (paths join the keys
of the params dict with '/', e.g. 'encoder/conv1/kernel') to `optax.set_to_zero()` and the
rest to `transform`, so a head can train on a frozen encoder:

    >>> opt = make_optimizer(learning_rate=0.1, num_steps=1000, frozen=('encoder/*',))

Batch-norm statistics are not parameters: a frozen part still updates them in training
mode (`apply_train`); evaluate it in evaluation mode to keep them fixed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lib import validate

Array = jax.Array


def _param_path(path: tuple[Any, ...]) -> str:
  """'a/b/kernel' for a pytree key path of a nested params dict."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def _check_patterns(patterns: Sequence[str], name: str) -> tuple[str, ...]:
  if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
    raise ValueError(f"{name} must be a sequence of fnmatch patterns such as ('encoder/*',); "
                     f'got {patterns!r}.')
  return tuple(patterns)


def freeze(transform: optax.GradientTransformation,
           patterns: Sequence[str]) -> optax.GradientTransformation:
  """`transform` on every parameter except those matching `patterns`, which never move.

  Args:
    transform: the optimiser of the trainable parameters.
    patterns: `fnmatch` patterns over parameter paths ('encoder/*', '*/bias').

  Returns:
    An `optax.multi_transform`; its `init` raises ValueError if a pattern matches no
    parameter (a typo would otherwise train everything).
  """
  patterns = _check_patterns(patterns, 'frozen')

  def labels(params: Any) -> Any:
    paths = [_param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for pattern in patterns:
      if not any(fnmatch.fnmatchcase(path, pattern) for path in paths):
        raise ValueError(f'frozen pattern {pattern!r} matches no parameter; parameters: '
                         f'{paths[:8]}{" ..." if len(paths) > 8 else ""}.')
    frozen = lambda p: any(fnmatch.fnmatchcase(_param_path(p), q) for q in patterns)
    return jax.tree_util.tree_map_with_path(
        lambda p, _: 'frozen' if frozen(p) else 'train', params)

  return optax.multi_transform({'train': transform, 'frozen': optax.set_to_zero()}, labels)


def make_optimizer(*, name: str = 'sgd', learning_rate: float = 0.1, num_steps: int,
                   warmup_steps: int = 0, momentum: float = 0.9, weight_decay: float = 0.0,
                   schedule: str = 'cosine',
                   frozen: Sequence[str] = ()) -> optax.GradientTransformation:
  """Optimizer with warmup and decay; `learning_rate` is the (injected) peak rate.

  Args:
    name: 'sgd' (Nesterov momentum, L2 via `add_decayed_weights`) or 'adamw'.
    learning_rate: peak learning rate, finite and > 0.
    num_steps: total steps (for the decay schedule), an int >= 1.
    warmup_steps: linear warmup from 0, an int in [0, num_steps).
    momentum: SGD momentum in [0, 1).
    weight_decay: L2 (sgd) or decoupled (adamw) weight decay, >= 0.
    schedule: 'cosine' or 'constant' after warmup.
    frozen: `fnmatch` patterns of parameter paths that stay fixed (see `freeze`).

  Returns:
    An `optax.inject_hyperparams` transformation (see `set_learning_rate`).

  Raises:
    ValueError: an argument is outside the range above.
  """
  validate.check_choice(name, ('sgd', 'adamw'), 'optimizer name')
  validate.check_choice(schedule, ('cosine', 'constant'), 'schedule')
  validate.check_int(num_steps, 'num_steps', minimum=1)
  validate.check_number(learning_rate, 'learning_rate', low=0.0)
  validate.check_positive(learning_rate, 'learning_rate')
  validate.check_number(momentum, 'momentum', low=0.0, high=1.0, high_inclusive=False)
  validate.check_number(weight_decay, 'weight_decay', low=0.0)
  validate.check_int(warmup_steps, 'warmup_steps', minimum=0)
  if warmup_steps >= num_steps:
    raise ValueError(f'warmup_steps must be in [0, num_steps={num_steps}); got {warmup_steps}.')
  frozen = _check_patterns(frozen, 'frozen')

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
      core = optax.chain(_standard_promotion(optax.scale_by_adam()),
                         optax.add_decayed_weights(weight_decay))
    core = optax.chain(core, optax.scale_by_schedule(lambda c: -learning_rate * shape(c)))
    return freeze(core, frozen) if frozen else core

  return optax.inject_hyperparams(make)(learning_rate=learning_rate)


def _standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` traced under standard dtype promotion: optax's Adam computes `decay ** count`
  (a float to an int32 power), which `jax_numpy_dtype_promotion='strict'` rejects."""
  def init(params):
    with jax.numpy_dtype_promotion('standard'):
      return tx.init(params)

  def update(updates, state, params=None):
    with jax.numpy_dtype_promotion('standard'):
      return tx.update(updates, state, params)

  return optax.GradientTransformation(init, update)


def set_learning_rate(opt_state: optax.OptState, learning_rate: Array) -> optax.OptState:
  """Replaces the injected peak learning rate of `make_optimizer`'s state (e.g. per seed)."""
  hyper = dict(opt_state.hyperparams, learning_rate=jnp.asarray(learning_rate, jnp.float32))
  return opt_state._replace(hyperparams=hyper)
