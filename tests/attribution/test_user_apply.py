"""A user's own pure function as the model: the `lib.contract` boundary of every method.

A two-layer network written by hand (no `lib.models`): its `apply` returns a `(logits, taps)`
tuple, routes its linear ops through `contract.apply_linear` (so LRP rules reach them), and
variants of it lack taps or keywords, to check the ValueErrors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import contract
from lib.attribution import gradcam, gradients, lrp, manipulate, occlusion
from lib.attribution import scores as scores_lib

H, C, K = 4, 2, 3


def conv1x1(x, kernel, bias):
  """A linear op as rules call it: `bias` may be None (rules evaluate parts without it)."""
  y = jnp.einsum('bhwc,cd->bhwd', x, kernel)
  return y if bias is None else y + bias


def tuple_apply(params, x, *, perturb=None, rules=None):
  """(logits, taps): a 1x1 conv, a ReLU, global average pooling and a dense head."""
  a = jax.nn.relu(contract.apply_linear(rules, 'conv', conv1x1, x, params['k1'], params['b1']))
  if perturb and 'conv' in perturb:
    a = a + perturb['conv']
  logits = contract.apply_linear(rules, 'head', contract.dense, a.mean(axis=(1, 2)),
                                 params['k2'], params['b2'])
  return logits, {'conv': a}


def logits_only(params, x):
  return tuple_apply(params, x)[0]


def without_keywords(params, x):
  return tuple_apply(params, x)


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(0)
  params = {'k1': rng.normal(size=(C, 5)).astype(np.float32), 'b1': np.zeros(5, np.float32),
            'k2': rng.normal(size=(5, K)).astype(np.float32), 'b2': np.zeros(K, np.float32)}
  x = rng.uniform(size=(2, H, H, C)).astype(np.float32)
  return params, x, np.array([0, 2])


def test_tuple_apply_works_with_every_family(setup):
  params, x, target = setup
  sal = gradients.saliency(tuple_apply, params, x, target)
  np.testing.assert_allclose(sal, gradients.saliency(logits_only, params, x, target))
  cam = gradcam.grad_cam(tuple_apply, params, x, target, tap='conv', upsample=False)
  assert cam.shape == (2, H, H)
  relevance = lrp.lrp(tuple_apply, params, x, target, rules={'*': lrp.epsilon()})
  assert relevance.shape == x.shape
  assert occlusion.occlusion(tuple_apply, params, x, target, window=2, stride=2).shape == x.shape


def test_logits_only_apply_is_refused_by_cam_methods_naming_the_tap(setup):
  params, x, target = setup
  for method in (gradcam.grad_cam, gradcam.grad_cam_plus_plus, gradcam.hires_cam):
    with pytest.raises(ValueError, match="reads the model tap tap='conv', but apply returns "
                                         'logits only'):
      method(logits_only, params, x, target, tap='conv')


def test_missing_keywords_are_value_errors(setup):
  params, x, target = setup
  with pytest.raises(ValueError, match=r'lrp calls apply\(params, x, rules=\.\.\.\)'):
    lrp.lrp(without_keywords, params, x, target, rules={'*': lrp.epsilon()})
  with pytest.raises(ValueError, match=r'grad_cam calls apply\(params, x, perturb=\.\.\.\)'):
    gradcam.grad_cam(without_keywords, params, x, target, tap='conv')
  with pytest.raises(ValueError, match='lrp_layer calls apply'):
    lrp.lrp_layer(without_keywords, params, x, target, tap='conv', rules={'*': lrp.epsilon()})


def test_manipulated_user_apply_returns_outputs(setup):
  params, x, _ = setup
  mask = np.zeros((H, H))
  mask[0, 0] = 1
  lying = manipulate.manipulate(tuple_apply, construction='channel', strength=10.0, mask=mask,
                                tap='conv')
  out = lying(params, x)
  assert isinstance(out, contract.Outputs) and out.taps['conv'].shape == (2, H, H, 6)
  np.testing.assert_allclose(jax.nn.softmax(out.logits),
                             jax.nn.softmax(logits_only(params, x)), atol=1e-6)
  with pytest.raises(ValueError, match='reads the model tap'):
    manipulate.manipulate(logits_only, construction='paper', strength=1.0, tap='conv')(params, x)


def test_an_encoder_without_logits_is_refused(setup):
  params, x, target = setup
  encoder = lambda params, x: contract.Outputs(
      features=tuple_apply(params, x)[1]['conv'].mean((1, 2)))
  with pytest.raises(ValueError, match=r'must return logits \[B, K\]'):
    scores_lib.check_inputs(encoder, params, x, target, 'logit')
