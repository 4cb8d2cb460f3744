"""lib/attacks/evaluate.py: robust accuracy of deterministic and stochastic models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.attacks.evaluate import robust_accuracy, succeeded
from lib.attacks.pgd import pgd

RNG = np.random.default_rng(0)
W = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
X = RNG.uniform(size=(64, 4)).astype(np.float32)
Y = np.asarray(np.argmax(X @ np.asarray(W), -1), np.int32)


def linear(w, x, key=None):
  """x·W, plus N(0, σ²=0.25) logit noise from `key` when given (a randomised defence)."""
  z = x @ w
  return z if key is None else z + 0.5 * jax.random.normal(key, z.shape, z.dtype)


def test_succeeded_untargeted_and_targeted():
  z = jnp.asarray([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
  np.testing.assert_array_equal(succeeded(z, jnp.asarray([0, 0])), [False, True])
  np.testing.assert_array_equal(succeeded(z, jnp.asarray([0, 0]), jnp.asarray([2, 1])),
                                [False, True])


def test_deterministic_model_mean_equals_worst_equals_accuracy():
  y = Y.copy()
  y[:10] = (y[:10] + 1) % 3
  result = robust_accuracy(linear, W, X, y)
  assert result.correct.shape == (1, 64)
  assert float(result.mean) == float(result.worst) == pytest.approx(54 / 64)


def test_stochastic_model_worst_case_is_below_the_single_draw_mean():
  key = jax.random.key(0)
  result = robust_accuracy(linear, W, X, Y, key=key, draws=16)
  assert result.correct.shape == (16, 64)
  assert float(result.worst) < float(result.mean) < 1.0
  np.testing.assert_allclose(result.mean, np.mean(result.correct), rtol=1e-6)
  np.testing.assert_allclose(result.worst, np.mean(np.all(result.correct, 0)), rtol=1e-6)
  keys = jax.random.split(key, 16)
  one_draw = robust_accuracy(lambda w, x: linear(w, x, key=keys[5]), W, X, Y)
  np.testing.assert_array_equal(result.correct[5], one_draw.correct[0])
  single = robust_accuracy(linear, W, X, Y, key=keys[5])  # draws=1: the key itself
  np.testing.assert_array_equal(single.correct, one_draw.correct)


def test_vmaps_over_eps_with_the_attack():
  eps = jnp.asarray([0.0, 0.1, 0.3], jnp.float32)
  acc = jax.vmap(lambda e: robust_accuracy(
      linear, W, pgd(linear, W, X, Y, eps=e, steps=3), Y).mean)(eps)
  assert float(acc[0]) == 1.0
  assert np.all(np.diff(np.asarray(acc)) <= 0) and float(acc[2]) < 1.0


@pytest.mark.parametrize('kwargs,message', [
    (dict(draws=0), r'draws must be an integer >= 1'),
    (dict(draws=2), r'key must be a typed PRNG key.*draws=2'),
    (dict(apply=lambda w, x: x @ w, key=jax.random.key(0)), r'takes no keyword'),
    (dict(x_adv=X + 1), r'x_adv must lie in \[0, 1\]'),
    (dict(y=Y + 3), r'y must hold class indices in \[0, 3\)'),
])
def test_bad_input_is_a_value_error(kwargs, message):
  args = dict(apply=linear, x_adv=X, y=Y)
  args.update(kwargs)
  apply, x_adv, y = args.pop('apply'), args.pop('x_adv'), args.pop('y')
  with pytest.raises(ValueError, match=message):
    robust_accuracy(apply, W, x_adv, y, **args)


def test_two_calls_compile_once():
  traces = []

  def counted(w, x, key=None):
    traces.append(1)
    return linear(w, x, key=key)

  robust_accuracy(counted, W, X, Y, key=jax.random.key(0), draws=2)
  after_first = len(traces)
  robust_accuracy(counted, W * 2, 1 - X, Y, key=jax.random.key(1), draws=2)
  assert after_first > 0 and len(traces) == after_first
