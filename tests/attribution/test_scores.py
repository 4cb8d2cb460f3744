"""Score kinds, the shared gradient/chunking helpers and the shared input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.attribution import scores

LOGITS = np.array([[1.0, 2.0, 3.0, -1.0], [0.5, -0.5, 0.0, 2.0]], np.float32)
TARGET = np.array([2, 0])


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize('kind, expected', [
    ('logit', [3.0, 0.5]),
    ('probability', _softmax(LOGITS)[[0, 1], TARGET]),
    ('log_probability', np.log(_softmax(LOGITS)[[0, 1], TARGET])),
    ('logit_difference', [3.0 - (1 + 2 - 1) / 3, 0.5 - (-0.5 + 0 + 2) / 3]),
])
def test_target_scores(kind, expected):
  np.testing.assert_allclose(scores.target_scores(LOGITS, TARGET, kind), expected, rtol=1e-6)


@pytest.mark.parametrize('kind', scores.SCORES)
def test_shift_of_all_logits(kind):
  """Adding the same c to every logit moves only the raw logit (Lerma & Lucas 2023)."""
  shifted = scores.target_scores(LOGITS + 7.0, TARGET, kind)
  moved = not np.allclose(shifted, scores.target_scores(LOGITS, TARGET, kind), atol=1e-5)
  assert moved == (kind == 'logit')


def test_logits_of_accepts_arrays_and_outputs(mirror):
  out = mirror.model.apply(mirror.variables, mirror.x)
  assert scores.logits_of(out) is out.logits
  assert scores.logits_of(out.logits) is out.logits


def test_mirror_matches_torch(mirror, rel_err):
  ours = mirror.model.apply(mirror.variables, mirror.x).logits
  ref = mirror.net(mirror.to_torch(mirror.x)).detach().numpy()
  assert rel_err(ours, ref) < 1e-6


def _tanh_layer(x):
  return jnp.tanh(x @ (jnp.arange(12.0).reshape(3, 4) / 10))


def test_score_grad_is_per_example_gradient():
  x = jnp.array([[0.1, -0.2, 0.3], [0.5, 0.4, -0.1]])
  grad, out = jax.jit(scores.score_grad, static_argnums=(0, 3))(
      _tanh_layer, x, jnp.array(TARGET), 'probability')
  one = lambda xb, t: jax.nn.softmax(_tanh_layer(xb[None]))[0, t]
  np.testing.assert_allclose(grad, jax.jit(jax.vmap(jax.grad(one)))(x, TARGET), rtol=1e-5)
  np.testing.assert_allclose(out.logits, _tanh_layer(x))  # as contract.Outputs


@pytest.mark.parametrize('chunk', [None, 1, 3, 7])
def test_chunked_sum(chunk):
  xs = (jnp.arange(10.0), jnp.ones((10, 2)))
  fn = lambda item: (item[0] ** 2, item[1] * item[0])
  total = jax.jit(lambda xs: scores.chunked_sum(fn, xs, chunk))(xs)
  np.testing.assert_allclose(total[0], (np.arange(10.0) ** 2).sum())
  np.testing.assert_allclose(total[1], np.full(2, 45.0))


@pytest.mark.parametrize('change, message', [
    (dict(score='softmax'), 'score'),
    (dict(target=np.array([1, 5, 0])), 'target'),
    (dict(target=np.array([-1, 0, 0])), 'target'),
    (dict(target=np.array([1, 2])), 'target'),
    (dict(target=np.array([1.0, 2.0, 0.0])), 'target'),
    (dict(x=np.full((3, 16, 16, 3), np.nan, np.float32)), 'x'),
    (dict(x=np.zeros((16, 16, 3), np.float32)), 'x'),
    (dict(x=np.zeros((3, 16, 16, 3), np.int32)), 'x'),
])
def test_check_inputs_errors(mirror, change, message):
  args = dict(x=mirror.x, target=mirror.target, score='logit') | change
  with pytest.raises(ValueError, match=message):
    scores.check_inputs(mirror.model.apply, mirror.variables, args['x'], args['target'],
                        args['score'])


def test_check_baseline(mirror):
  for ok in (0.0, np.zeros(mirror.x.shape[1:]), np.zeros(mirror.x.shape)):
    scores.check_baseline(ok, mirror.x)
  with pytest.raises(ValueError, match='baseline'):
    scores.check_baseline(np.zeros((16, 16)), mirror.x)
  with pytest.raises(ValueError, match='baseline'):
    scores.check_baseline(np.full(mirror.x.shape, np.inf), mirror.x)
