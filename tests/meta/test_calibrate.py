"""The calibration solve against scipy's L-BFGS-B, and its envelope-theorem gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from lib.meta.calibrate import calibrated_ce, solve_calibration


def _reference(z: np.ndarray, y: np.ndarray) -> float:
  """min over W in [-1, 1]^{CxC} of mean CE(z W, y) by L-BFGS-B (two starts, tight tolerances)."""
  c = z.shape[1]

  def f(flat):
    u = z @ flat.reshape(c, c)
    u = u - u.max(1, keepdims=True)
    lse = np.log(np.exp(u).sum(1))
    p = np.exp(u - lse[:, None])
    p[np.arange(len(y)), y] -= 1
    return (lse - u[np.arange(len(y)), y]).mean(), (z.T @ p / len(y)).ravel()

  options = dict(maxiter=5000, ftol=1e-15, gtol=1e-12)
  return min(scipy.optimize.minimize(f, w0, jac=True, method='L-BFGS-B',
                                     bounds=[(-1, 1)] * c * c, options=options).fun
             for w0 in (np.eye(c).ravel(), np.zeros(c * c)))


def _cases(num_classes: int, batch: int, n: int, seed: int):
  """Random logits at scales 0.3..10, half of them informative about the labels."""
  rng = np.random.default_rng(seed)
  scale = np.array([0.3, 1.0, 3.0, 10.0])[np.arange(n) % 4][:, None, None]
  z = rng.normal(size=(n, batch, num_classes)) * scale
  y = rng.integers(0, num_classes, (n, batch))
  informative = (np.arange(n) % 2 == 0)[:, None]
  z[np.arange(n)[:, None], np.arange(batch), y] += 2 * scale[:, :, 0] * informative
  return z, y


@pytest.mark.parametrize('num_classes,batch', [
    (2, 20), pytest.param(3, 8, marks=pytest.mark.slow),
    pytest.param(5, 48, marks=pytest.mark.slow)])
def test_solve_reaches_reference_optimum(num_classes, batch):
  z, y = _cases(num_classes, batch, n=12, seed=num_classes)
  with jax.enable_x64(True):
    solve = jax.jit(jax.vmap(lambda z, y: (solve_calibration(z, y), calibrated_ce(z, y))))
    w, ours = solve(jnp.asarray(z), jnp.asarray(y))
    w, ours = np.asarray(w), np.asarray(ours)
  gaps = ours - np.array([_reference(zi, yi) for zi, yi in zip(z, y)])
  print(f'C={num_classes} B={batch}: objective gap to L-BFGS-B max {gaps.max():.2e}')
  assert np.all(np.abs(w) <= 1 + 1e-12)
  assert gaps.max() < 1e-9 and gaps.min() > -1e-9   # L-BFGS-B is no better than FISTA
  # float32, the dtype of training: within float32 rounding of the optimum.
  ours32 = jax.jit(jax.vmap(calibrated_ce))(jnp.asarray(z, jnp.float32), jnp.asarray(y))
  assert np.max(np.asarray(ours32) - (ours - gaps)) < 1e-5


def test_gradient_is_that_of_the_value_function():
  """dV/dZ by stop_gradient(W*) equals central differences of V(Z) = min_W f(Z, W)."""
  z, y = _cases(3, 10, n=2, seed=7)
  with jax.enable_x64(True):
    value = jax.jit(lambda z, y: calibrated_ce(z, y, num_iters=1000))
    for zi, yi in zip(jnp.asarray(z), jnp.asarray(y)):
      grad = jax.grad(value)(zi, yi)
      direction = jax.random.normal(jax.random.key(0), zi.shape, jnp.float64)
      h = 1e-5
      fd = (value(zi + h * direction, yi) - value(zi - h * direction, yi)) / (2 * h)
      analytic = jnp.sum(grad * direction)
      print(f'envelope gradient vs finite differences: {float(analytic):.8f} {float(fd):.8f}')
      assert abs(float(analytic - fd)) < 1e-6 * max(1.0, abs(float(fd)))
