"""The init/step convention: `iterate.run` scans `step` with `fold_in(key, start + i)` keys."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import iterate


class State(NamedTuple):
  x: jax.Array


def _noisy_descent(state, key):
  x = state.x - 0.2 * state.x + 0.1 * jax.random.normal(key, state.x.shape)
  return State(x), jnp.sum(x ** 2)


def test_run_split_in_two_equals_one_run():
  key, state = jax.random.key(0), State(jnp.ones(3))
  whole, losses = iterate.run(_noisy_descent, state, 8, key=key)
  half, first = iterate.run(_noisy_descent, state, 5, key=key)
  rest, second = iterate.run(_noisy_descent, half, 3, key=key, start=5)
  np.testing.assert_array_equal(whole.x, rest.x)
  np.testing.assert_array_equal(losses, np.concatenate([first, second]))
  assert losses.shape == (8,)


def test_run_jits_and_matches_eager():
  key, state = jax.random.key(1), State(jnp.ones(3))
  eager, _ = iterate.run(_noisy_descent, state, 4, key=key)
  jitted, _ = jax.jit(lambda s, k: iterate.run(_noisy_descent, s, 4, key=k))(state, key)
  np.testing.assert_allclose(eager.x, jitted.x, rtol=1e-6)


def test_run_vmaps_over_keys():
  keys = jax.random.split(jax.random.key(2), 3)
  state = State(jnp.ones(3))
  batched, losses = jax.vmap(lambda k: iterate.run(_noisy_descent, state, 4, key=k))(keys)
  assert batched.x.shape == (3, 3) and losses.shape == (3, 4)
  for i in range(3):
    one, _ = iterate.run(_noisy_descent, state, 4, key=keys[i])
    np.testing.assert_allclose(batched.x[i], one.x, rtol=1e-6)
  assert not np.allclose(batched.x[0], batched.x[1])


def test_step_key_is_fold_in():
  key = jax.random.key(3)
  assert jnp.array_equal(jax.random.key_data(iterate.step_key(key, 4)),
                         jax.random.key_data(jax.random.fold_in(key, 4)))


@pytest.mark.parametrize('num_steps', [-1, 1.5, '3', True, None])
def test_run_rejects_bad_num_steps(num_steps):
  with pytest.raises(ValueError, match='num_steps'):
    iterate.run(_noisy_descent, State(jnp.ones(3)), num_steps, key=jax.random.key(0))


@pytest.mark.parametrize('key', [0, np.zeros(2, np.uint32)])
def test_run_rejects_a_key_that_is_not_one_typed_key(key):
  with pytest.raises(ValueError, match='typed PRNG key'):
    iterate.run(_noisy_descent, State(jnp.ones(3)), 2, key=key)


def test_run_under_jit_compiles_once_for_two_calls():
  traces = []

  def step(state, key):
    traces.append(1)  # a Python side effect: runs once per trace, not per call
    return _noisy_descent(state, key)

  run = jax.jit(lambda s, k, start: iterate.run(step, s, 4, key=k, start=start))
  a, _ = run(State(jnp.ones(3)), jax.random.key(0), 0)
  b, _ = run(State(jnp.zeros(3)), jax.random.key(1), 4)
  assert len(traces) == 1 and run._cache_size() == 1
  assert not np.array_equal(a.x, b.x)
