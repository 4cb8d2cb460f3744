"""The convention for iterative algorithms: an `(init, step)` pair run under `lax.scan`.

Attacks (PGD, APGD, Square), samplers (DDPM, DDIM, reverse SDE) and inner fine-tuning loops
(MLAC) are all the same shape, that of an optax `GradientTransformation`:

    state = init(*inputs, key=key)              # a NamedTuple of arrays
    state, aux = step(state, key_i)             # one iteration; aux: per-step diagnostics

`run(step, state, num_steps, key=key)` scans the step with `key_i = fold_in(key, i)`, so
the randomness of iteration i depends only on (key, i): a run split in two
(`start=0, num_steps=n` then `start=n`) equals one run of 2n steps, "fixed randomness" is
one key reused, and "fresh randomness" is a new key. Everything is pure: `run` jits, and
vmaps over keys, states and any array the step closes over (a batch of ε, say).

Example (gradient descent on a quadratic, with noise):

    >>> class State(NamedTuple):
    ...   x: jax.Array
    >>> def step(state, key):
    ...   x = state.x - 0.1 * 2 * state.x + 0.01 * jax.random.normal(key, state.x.shape)
    ...   return State(x), jnp.sum(x ** 2)
    >>> final, losses = run(step, State(jnp.ones(3)), 100, key=jax.random.key(0))
    >>> losses.shape
    (100,)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp

from lib import validate

State = TypeVar('State')
Array = jax.Array
Step = Callable[[Any, Array], tuple[Any, Any]]


class Iterative(NamedTuple):
  """An iterative algorithm as a pair of pure functions (see the module docstring).

  Attributes:
    init: `init(*inputs, key) -> state`.
    step: `step(state, key) -> (state, aux)`.
  """
  init: Callable[..., Any]
  step: Step


def step_key(key: Array, i: int | Array) -> Array:
  """The key of iteration `i`: `fold_in(key, i)`."""
  return jax.random.fold_in(key, i)


def run(step: Step, state: State, num_steps: int, *, key: Array, start: int | Array = 0,
        unroll: int | bool = 1) -> tuple[State, Any]:
  """Runs `num_steps` iterations of `step` from `state` under `lax.scan`.

  Args:
    step: `step(state, key) -> (state, aux)`; `aux` may be None.
    state: the initial state (any pytree of arrays).
    num_steps: a Python int >= 0 (static: it sets the scan length).
    key: typed PRNG key; iteration i gets `fold_in(key, start + i)`.
    start: index of the first iteration (to continue an earlier run exactly).
    unroll: `lax.scan`'s unroll (True unrolls fully).

  Returns:
    `(final state, aux stacked over iterations)` (aux leaves get a leading [num_steps]).

  Raises:
    ValueError: `num_steps` is not a non-negative int, or `key` is not one typed key.
  """
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(f'num_steps must be a non-negative int; got {num_steps!r}.')
  validate.check_key(key)
  indices = jnp.asarray(start, jnp.int32) + jnp.arange(num_steps, dtype=jnp.int32)
  body = lambda s, i: step(s, step_key(key, i))
  return jax.lax.scan(body, state, indices, unroll=unroll)
