"""Integrated gradients: Captum parity for every quadrature, completeness, chunking, errors."""

from __future__ import annotations

import numpy as np
import pytest
from captum.attr import IntegratedGradients

from lib.attribution.integrated_gradients import METHODS, integrated_gradients, quadrature

TOL = 1e-4


def _baseline(mirror) -> np.ndarray:
  """A non-zero per-example baseline: a blurred, dimmed copy of each image."""
  return (0.4 * mirror.x.mean(axis=(1, 2), keepdims=True) + 0.1 * mirror.x).astype(np.float32)


@pytest.mark.parametrize('method, n_steps, score', [
    ('riemann_trapezoid', 12, 'logit'),
    ('riemann_left', 9, 'logit'),
    ('riemann_right', 10, 'logit_difference'),
    ('riemann_middle', 16, 'log_probability'),
    ('gausslegendre', 20, 'probability'),
])
def test_matches_captum(mirror, rel_err, method, n_steps, score):
  baseline = _baseline(mirror)
  attr, delta = integrated_gradients(mirror.model.apply, mirror.variables, mirror.x,
                                     mirror.target, score=score, baseline=baseline,
                                     n_steps=n_steps, method=method, return_delta=True)
  ref, ref_delta = IntegratedGradients(mirror.torch_forward(score)).attribute(
      mirror.to_torch(mirror.x), baselines=mirror.to_torch(baseline), target=mirror.torch_target,
      n_steps=n_steps, method=method, return_convergence_delta=True)
  assert attr.shape == mirror.x.shape
  assert rel_err(attr, mirror.from_torch(ref)) < TOL
  # delta is a small difference of larger sums: compare it on the scale of those sums.
  scale = np.abs(attr).reshape(len(attr), -1).sum(1)
  np.testing.assert_array_less(np.abs(delta - ref_delta.numpy()), TOL * scale)


def test_quadrature_matches_captum_builders():
  from captum.attr._utils.approximation_methods import approximation_parameters
  for method in METHODS:
    step_sizes, alphas = approximation_parameters(method)
    ours_alphas, ours_weights = quadrature(method, 7)
    np.testing.assert_allclose(ours_alphas, alphas(7), atol=1e-7)
    np.testing.assert_allclose(ours_weights, step_sizes(7), atol=1e-12)


def test_completeness(mirror):
  """Σ IG = S(x) - S(0) (Sundararajan et al. 2017, Prop. 1) once the integral converges."""
  attr, delta = integrated_gradients(mirror.model.apply, mirror.variables, mirror.x,
                                     mirror.target, n_steps=256, method='gausslegendre',
                                     return_delta=True)
  total = attr.reshape(len(attr), -1).sum(1)
  assert np.all(np.abs(delta) < 2e-3 * np.abs(total - delta)), (delta, total)


# The unchunked and per-example-baseline programs below are those of test_matches_captum's
# first cases (same static options and shapes), so they come from jit's cache.
def test_chunking_does_not_change_the_result(mirror):
  kwargs = dict(baseline=_baseline(mirror), n_steps=16, method='riemann_middle',
                score='log_probability', return_delta=True)
  args = (mirror.model.apply, mirror.variables, mirror.x, mirror.target)
  full, full_delta = integrated_gradients(*args, **kwargs)
  # 16 steps, 3 examples, at most 9 rows per pass: 5 chunks of 3 steps, then 1 step.
  chunked, chunked_delta = integrated_gradients(*args, internal_batch_size=9, **kwargs)
  np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(chunked_delta, full_delta, rtol=1e-4, atol=1e-6)


def test_shared_baseline_equals_per_example_baseline(mirror):
  kwargs = dict(n_steps=12, method='riemann_trapezoid', return_delta=True)
  args = (mirror.model.apply, mirror.variables, mirror.x, mirror.target)
  shared = np.full(mirror.x.shape[1:], 0.3, np.float32)
  a, _ = integrated_gradients(*args, baseline=shared, **kwargs)
  b, _ = integrated_gradients(*args, baseline=np.broadcast_to(shared, mirror.x.shape), **kwargs)
  np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize('kwargs, message', [
    (dict(baseline=np.zeros((16, 16, 1), np.float32)), 'baseline must be a scalar or have shape'),
    (dict(baseline=np.zeros((2, 16, 16, 3), np.float32)), 'baseline'),
    (dict(n_steps=0, method='riemann_left'), 'n_steps must be an integer >= 1'),
    (dict(n_steps=1), 'n_steps must be an integer >= 2'),
    (dict(n_steps=2.5, method='gausslegendre'), 'n_steps'),
    (dict(method='simpson'), 'method'),
    (dict(internal_batch_size=0), 'internal_batch_size'),
    (dict(score='probabilities'), 'score'),
    (dict(target=np.array([0, 0, 9])), 'target'),
])
def test_bad_inputs(mirror, kwargs, message):
  target = kwargs.pop('target', mirror.target)
  with pytest.raises(ValueError, match=message):
    integrated_gradients(mirror.model.apply, mirror.variables, mirror.x, target, **kwargs)
