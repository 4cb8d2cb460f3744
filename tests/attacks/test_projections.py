"""lib/attacks/projections.py: norms, directions and projections, against their definitions
and torchattacks' PGD / PGDL2 arithmetic."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lib.attacks import projections

RNG = np.random.default_rng(0)
V = RNG.normal(size=(4, 3, 2, 2)).astype(np.float32)
V[2] = 0.0  # one all-zero example: every function must be safe there


def test_per_example_norm():
  flat = V.reshape(4, -1)
  np.testing.assert_allclose(projections.per_example_norm(jnp.asarray(V), 'linf'),
                             np.abs(flat).max(1), rtol=1e-6)
  np.testing.assert_allclose(projections.per_example_norm(jnp.asarray(V), 'l2'),
                             np.linalg.norm(flat, axis=1), rtol=1e-6)


def test_normalize_linf_is_sign_and_l2_is_unit_norm_safe_at_zero():
  np.testing.assert_array_equal(projections.normalize(jnp.asarray(V), 'linf'), np.sign(V))
  unit = np.asarray(projections.normalize(jnp.asarray(V), 'l2'))
  assert np.all(np.isfinite(unit))
  np.testing.assert_allclose(np.linalg.norm(unit.reshape(4, -1), axis=1), [1, 1, 0, 1], rtol=1e-6)


def test_normalize_l2_matches_torchattacks_pgdl2():
  g = torch.from_numpy(V)
  ref = g / (torch.norm(g.view(4, -1), p=2, dim=1) + 1e-10).view(4, 1, 1, 1)
  np.testing.assert_allclose(projections.normalize(jnp.asarray(V), 'l2'), ref.numpy(), rtol=1e-6)


@pytest.mark.parametrize('eps', [0.0, 0.5, 100.0])
def test_project_l2_matches_torchattacks_pgdl2_and_lands_in_the_ball(eps):
  delta = jnp.asarray(V)
  ours = np.asarray(projections.project(delta, eps, 'l2'))
  assert np.all(np.isfinite(ours))
  assert np.all(np.linalg.norm(ours.reshape(4, -1), axis=1) <= eps * (1 + 1e-6))
  d = torch.from_numpy(V)
  n = torch.norm(d.view(4, -1), p=2, dim=1)
  factor = torch.min(eps / n, torch.ones_like(n)).view(-1, 1, 1, 1)
  ref = (d * factor).numpy()
  ok = np.linalg.norm(V.reshape(4, -1), axis=1) > 0  # torch gives NaN at 0/0 (eps = 0)
  np.testing.assert_allclose(ours[ok], ref[ok], rtol=1e-6, atol=0)
  np.testing.assert_array_equal(ours[~ok], 0.0)


def test_project_linf_clips_and_leaves_inner_points():
  np.testing.assert_array_equal(projections.project(jnp.asarray(V), 0.3, 'linf'),
                                np.clip(V, -0.3, 0.3))
  small = V * 0.01
  np.testing.assert_array_equal(projections.project(jnp.asarray(small), 1.0, 'l2'), small)


def test_project_to_threat_stays_in_ball_and_box():
  x0 = jnp.asarray(RNG.uniform(size=V.shape).astype(np.float32))
  for norm, eps in (('linf', 0.1), ('l2', 0.5)):
    x = np.asarray(projections.project_to_threat(x0, x0 + jnp.asarray(V), eps, norm))
    assert x.min() >= 0 and x.max() <= 1
    dist = np.asarray(projections.per_example_norm(jnp.asarray(x) - x0, norm))
    assert np.all(dist <= eps * (1 + 1e-6))


def test_traced_eps_under_vmap():
  eps = jnp.asarray([0.1, 0.2], jnp.float32)
  out = jax.vmap(lambda e: projections.project(jnp.asarray(V), e, 'linf'))(eps)
  np.testing.assert_array_equal(out[1], np.clip(V, -0.2, 0.2))


def test_unknown_norm_is_a_value_error():
  with pytest.raises(ValueError, match=r"norm='l1' is not valid"):
    projections.project(jnp.asarray(V), 0.1, 'l1')
  with pytest.raises(ValueError, match=r"norm='l1' is not valid"):
    projections.normalize(jnp.asarray(V), 'l1')
