"""lib/attacks/bpda.py: forward pass of the preprocessing, backward pass of the substitute
(Athalye et al. 2018), on an input quantiser whose true gradient is zero."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.attacks import evaluate
from lib.attacks.bpda import bpda
from lib.attacks.pgd import pgd

W = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)), jnp.float32)
X = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 3)), jnp.float32)


def quantise(x):
  """Rounds pixels to 8 levels {0, 1/7, ..., 1}: piecewise constant, gradient zero."""
  return jnp.round(x * 7) / 7


def test_forward_is_the_preprocessing_and_backward_the_identity():
  quantise_bpda = bpda(quantise)
  np.testing.assert_array_equal(quantise_bpda(X), quantise(X))
  plain = jax.grad(lambda x: jnp.sum(quantise(x) * W))(X)
  np.testing.assert_array_equal(plain, 0.0)
  through = jax.grad(lambda x: jnp.sum(quantise_bpda(x) * W))(X)
  np.testing.assert_array_equal(through, jax.grad(lambda x: jnp.sum(x * W))(X))


def test_custom_substitute_and_extra_arguments_under_jit_and_vmap():
  noisy = bpda(lambda x, key: quantise(x + 0.01 * jax.random.normal(key, x.shape)),
               substitute=lambda x, key: x ** 2)
  grad = jax.jit(jax.grad(lambda x, k: jnp.sum(noisy(x, k) * W)))(X, jax.random.key(0))
  np.testing.assert_allclose(grad, 2 * X * W, rtol=1e-6)
  keys = jax.random.split(jax.random.key(1), 3)
  out = jax.vmap(noisy, in_axes=(None, 0))(X, keys)
  assert out.shape == (3, 2, 3)


def test_pgd_breaks_a_quantised_model_only_with_bpda(twin):
  plain = lambda params, x: twin.apply(params, quantise(x))
  quantise_bpda = bpda(quantise)
  through = lambda params, x: twin.apply(params, quantise_bpda(x))
  kwargs = dict(eps=0.25, steps=5, step_size=0.06)
  stuck = pgd(plain, twin.variables, twin.x, twin.y, **kwargs)
  np.testing.assert_array_equal(stuck, twin.x)  # zero gradient: sign 0, no step
  broken = pgd(through, twin.variables, twin.x, twin.y, **kwargs)
  clean = evaluate.robust_accuracy(plain, twin.variables, jnp.asarray(twin.x), twin.y).mean
  robust = evaluate.robust_accuracy(plain, twin.variables, broken, twin.y).mean
  assert float(robust) < float(clean)
  assert float(robust) == 0.0


def test_bad_arguments_are_value_errors():
  with pytest.raises(ValueError, match='preprocess must be a function'):
    bpda(None)
  with pytest.raises(ValueError, match='substitute must be a function'):
    bpda(quantise, substitute=3)
