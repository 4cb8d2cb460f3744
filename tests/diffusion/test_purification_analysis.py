"""lib/diffusion/analysis.py on purifiers whose answers are known: the identity, a
contraction towards grey, additive noise; correlations against scipy's definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.diffusion import analysis

_RNG = np.random.default_rng(0)
_X = _RNG.uniform(0.2, 0.8, size=(3, 4, 4, 2))
X = jnp.asarray(_X, jnp.float32)
X_ADV = jnp.asarray(_X + 0.01 * _RNG.choice([-1.0, 1.0], size=_X.shape), jnp.float32)
identity = lambda params, x, *, key: x
contract = lambda params, x, *, key: 0.5 + params * (x - 0.5)  # CR = params everywhere
noisy = lambda params, x, *, key: x + params * jax.random.normal(key, x.shape)
Q = jnp.float32(0.25)  # contract's rate
SIGMA = jnp.float32(0.1)  # noisy's standard deviation


def test_distances():
  d = analysis.purification_distances(identity, None, X, X_ADV, key=jax.random.key(0))
  np.testing.assert_allclose(d.purified_clean, 0.0)
  np.testing.assert_allclose(d.adversarial_clean, 0.01 * np.sqrt(32), rtol=1e-5)
  np.testing.assert_allclose(d.purified_pair, d.adversarial_clean, rtol=1e-6)
  linf = analysis.purification_distances(contract, Q, X, X_ADV, key=jax.random.key(0),
                                         norm='linf')
  np.testing.assert_allclose(linf.purified_pair, 0.0025, rtol=1e-4)
  np.testing.assert_allclose(linf.adversarial_clean, 0.01, rtol=1e-4)


def test_spread_over_draws_of_additive_noise():
  s = analysis.spread_over_draws(noisy, SIGMA, X, key=jax.random.key(2), draws=16)
  # ‖0.1 g‖₂ with g ~ N(0, I_32): mean ≈ 0.1 √32, two draws differ by √2 times that.
  np.testing.assert_allclose(s.mean, 0.1 * np.sqrt(32), rtol=0.1)
  np.testing.assert_allclose(s.between_draws, 0.1 * np.sqrt(64), rtol=0.1)
  np.testing.assert_allclose(s.cv, s.std / s.mean)
  still = analysis.spread_over_draws(identity, None, X, key=jax.random.key(2), draws=2)
  np.testing.assert_allclose(still.between_draws, 0.0)


def test_compression_rate():
  key = jax.random.key(3)
  l2 = analysis.random_perturbations(key, X, radius=0.05, num=2, norm='l2')
  linf = analysis.random_perturbations(key, X, radius=0.05, num=1, norm='linf')
  for deltas, norm in ((l2, 'l2'), (linf, 'linf')):
    sizes = jax.vmap(lambda d: analysis.distance(d, 0 * d, norm))(deltas)
    np.testing.assert_allclose(sizes, 0.05, rtol=1e-5)
  # Random ℓ2 and ℓ∞ directions, an attack direction, and a zero perturbation (NaN).
  deltas = jnp.concatenate([l2, linf, (X_ADV - X)[None], 0 * X[None]])
  rates = analysis.compression_rate(contract, Q, X, deltas, key=key)
  np.testing.assert_allclose(rates[:4], 0.25, rtol=1e-3)
  assert bool(jnp.all(jnp.isnan(rates[4])))
  np.testing.assert_allclose(analysis.compression_rate(identity, None, X, deltas, key=key)[:4],
                             1.0, rtol=1e-3)


def test_correlation():
  cr = [0.9, 0.7, 0.5, 0.4, 0.2]
  acc = [0.1, 0.3, 0.35, 0.6, 0.9]
  c = analysis.correlation(cr, acc)
  expected = np.corrcoef(cr, acc)[0, 1]
  np.testing.assert_allclose(c.pearson, expected, rtol=1e-9)
  assert c.spearman == pytest.approx(-1.0)
  with pytest.raises(ValueError, match='same length'):
    analysis.correlation(cr, acc[:4])
  with pytest.raises(ValueError, match='constant'):
    analysis.correlation([1, 1, 1], [1, 2, 3])
  with pytest.raises(ValueError, match='at least 3'):
    analysis.correlation([1, 2], [1, 2])


def test_bad_inputs_are_value_errors():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='x_adv must have the shape'):
    analysis.purification_distances(identity, None, X, X_ADV[:2], key=key)
  with pytest.raises(ValueError, match='norm'):
    analysis.distance(X, X, 'l1')
  with pytest.raises(ValueError, match='draws'):
    analysis.spread_over_draws(identity, None, X, key=key, draws=1)
  with pytest.raises(ValueError, match='deltas must have shape'):
    analysis.compression_rate(identity, None, X, X, key=key)
  with pytest.raises(ValueError, match='x must have pixels'):
    analysis.compression_rate(identity, None, X + 1, X[None], key=key)
