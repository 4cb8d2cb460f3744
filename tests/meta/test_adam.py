"""Differentiable Adam: PyTorch parity, finite second derivatives at zero gradients, clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from lib.meta.adam import adam_init, adam_step, clip_by_norm


def test_matches_torch_adam():
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=(4, 3)).astype(np.float32)
  grads = rng.normal(size=(5, 4, 3)).astype(np.float32)
  grads[:, 0] = 0.0  # a row that never gets a gradient
  tp = torch.nn.Parameter(torch.tensor(p0))
  opt = torch.optim.Adam([tp], lr=1e-2)
  p, state = jnp.asarray(p0), adam_init(jnp.asarray(p0))
  for g in grads:
    tp.grad = torch.tensor(g)
    opt.step()
    p, state = adam_step(p, jnp.asarray(g), state, 1e-2)
  # rtol: torch computes the bias corrections in float64.
  np.testing.assert_allclose(np.asarray(p), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_second_order_is_finite_where_gradients_are_zero():
  """optax-style sqrt(nu) would give 0 * inf = NaN here; the safe sqrt gives 0."""
  def after_two_steps(w):
    p, state = w, adam_init(w)
    for _ in range(2):
      g = jax.grad(lambda q: jnp.sum(q[1:] ** 2 * w[1:]))(p)   # row 0: zero gradient
      p, state = adam_step(p, g, state, 0.1)
    return jnp.sum(p ** 2)
  grad = jax.grad(after_two_steps)(jnp.ones((3, 2)))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_clip_detaches_the_norm():
  g = {'a': jnp.array([3.0, 4.0])}
  clipped, norm = clip_by_norm(g, 1.0)
  np.testing.assert_allclose(np.asarray(clipped['a']), [0.6, 0.8], rtol=1e-6)
  assert float(norm) == 5.0
  # d(clipped)/dg = I / norm (the norm is a constant), not the projection of a true normalisation.
  jac = jax.jacobian(lambda a: clip_by_norm({'a': a}, 1.0)[0]['a'])(g['a'])
  np.testing.assert_allclose(np.asarray(jac), np.eye(2) / 5.0, rtol=1e-6)
  unclipped, _ = clip_by_norm(g, 10.0)
  np.testing.assert_array_equal(np.asarray(unclipped['a']), np.asarray(g['a']))
