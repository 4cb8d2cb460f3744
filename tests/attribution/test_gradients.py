"""Saliency and gradient × input: parity with Captum, compile-once, boundary errors."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from captum.attr import InputXGradient, Saliency

from lib.attribution import scores
from lib.attribution.gradients import gradient_x_input, saliency

TOL = 1e-4


@pytest.mark.parametrize('score, absolute', [(kind, False) for kind in scores.SCORES]
                         + [('probability', True)])
def test_saliency_matches_captum(mirror, rel_err, score, absolute):
  ours = saliency(mirror.model.apply, mirror.variables, mirror.x, mirror.target, score=score,
                  absolute=absolute)
  ref = Saliency(mirror.torch_forward(score)).attribute(
      mirror.to_torch(mirror.x), target=mirror.torch_target, abs=absolute)
  assert ours.shape == mirror.x.shape and ours.dtype == np.float32
  assert rel_err(ours, mirror.from_torch(ref)) < TOL


@pytest.mark.parametrize('score', ['logit', 'log_probability'])
def test_gradient_x_input_matches_captum(mirror, rel_err, score):
  ours = gradient_x_input(mirror.model.apply, mirror.variables, mirror.x, mirror.target,
                          score=score)
  ref = InputXGradient(mirror.torch_forward(score)).attribute(
      mirror.to_torch(mirror.x), target=mirror.torch_target)
  assert rel_err(ours, mirror.from_torch(ref)) < TOL


def test_compiles_once_and_takes_plain_logits_functions(mirror):
  traces = 0

  def logits_fn(params, x):
    nonlocal traces
    traces += 1
    return mirror.model.apply(params, x).logits

  first = saliency(logits_fn, mirror.variables, mirror.x, mirror.target)
  after_first = traces
  second = saliency(logits_fn, mirror.variables, 1 - mirror.x, mirror.target[::-1].copy())
  assert after_first <= 2  # one shape check (jax.eval_shape) and one jit trace
  assert traces == after_first
  assert not np.allclose(first, second)
  np.testing.assert_allclose(
      first, saliency(mirror.model.apply, mirror.variables, mirror.x, mirror.target), rtol=1e-6)


def test_jit_and_vmap_of_the_whole_method(mirror):
  fn = functools.partial(saliency, mirror.model.apply, score='probability')
  eager = fn(mirror.variables, mirror.x, mirror.target)
  np.testing.assert_allclose(jax.jit(fn)(mirror.variables, mirror.x, mirror.target), eager,
                             rtol=1e-6)
  stacked = jax.vmap(fn, in_axes=(None, 0, None))(mirror.variables, np.stack([mirror.x] * 2),
                                                  mirror.target)
  np.testing.assert_allclose(stacked[1], eager, rtol=1e-6)


def _images_with_inf() -> np.ndarray:
  x = np.full((3, 16, 16, 3), 0.5, np.float32)
  x[1, 5, 7, 0] = np.inf
  return x


@pytest.mark.parametrize('method', [saliency, gradient_x_input])
@pytest.mark.parametrize('change, message', [
    (dict(target=np.array([0, 1, 5])), r'target must hold class indices in \[0, 5\)'),
    (dict(score='prob'), 'score'),
    (dict(x=_images_with_inf()), 'x contains NaN or Inf'),
])
def test_bad_inputs(mirror, method, change, message):
  args = dict(x=mirror.x, target=mirror.target, score='logit') | change
  with pytest.raises(ValueError, match=message):
    method(mirror.model.apply, mirror.variables, args['x'], args['target'],
           score=args['score'])
