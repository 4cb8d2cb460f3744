"""`TrainState`: what a gradient-trained model carries from step to step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


class TrainState(NamedTuple):
  """Everything a training run carries from step to step.

  Attributes:
    step: int32 scalar, number of steps taken.
    variables: model variables {'params', 'batch_stats'}.
    opt_state: optax state of the optimizer (holds the injected learning rate).
  """
  step: Array
  variables: Any
  opt_state: optax.OptState


def init_state(model: Any, optimizer: optax.GradientTransformation, key: Array) -> TrainState:
  """Fresh `TrainState` of `model` (anything with `init(key) -> variables`) from a typed key."""
  variables = model.init(key)
  return TrainState(jnp.zeros((), jnp.int32), variables, optimizer.init(variables['params']))
