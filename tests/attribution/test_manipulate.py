"""The softmax-invariant manipulation: invariance, what it does to each method, the API.

One random-init SmallCNN (16 x 16 inputs, tap 'conv3' of 4 x 4 cells) and a mask covering
tap cell (2, 1) exactly. `LYING` nests the 'channel' construction (for Grad-CAM) around the
'input' one (for the input-gradient family and LRP), so one model lies to every family.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import models
from lib.attribution import gradcam, gradients, integrated_gradients, lrp, metrics
from lib.attribution import occlusion, smoothgrad
from lib.attribution.invariance import softmax_gap, softmax_gaps
from lib.attribution.manipulate import CONSTRUCTIONS, STEER_LAYER, manipulate, mask_at_tap

TAP = 'conv3'
MODEL = models.get_model('cnn', input_shape=(16, 16, 3), num_classes=5, widths=(4, 8, 8))
MASK = np.zeros((16, 16))
MASK[8:12, 4:8] = 1
K_INPUT, K_CHANNEL = 100.0, 1000.0
HONEST = MODEL.apply
LYING = manipulate(manipulate(HONEST, construction='input', strength=K_INPUT, mask=MASK),
                   construction='channel', strength=K_CHANNEL, mask=MASK, tap=TAP)
EPSILON_RULES = {'*': lrp.epsilon()}


@pytest.fixture(scope='module')
def setup():
  variables = MODEL.init(jax.random.key(0, impl='rbg'))
  x = np.random.default_rng(0).uniform(0.05, 1.0, size=(4, 16, 16, 3)).astype(np.float32)
  target = np.asarray(jnp.argmax(HONEST(variables, x).logits, -1), np.int32)
  return variables, x, target


def masks_for(x):
  return jnp.broadcast_to(jnp.asarray(MASK, jnp.float32), x.shape[:3])


def pearson(a, b):
  a, b = (np.asarray(v, np.float64).reshape(len(v), -1) for v in (a, b))
  a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
  return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def make(construction, strength, **kwargs):
  options = {'paper': dict(tap=TAP), 'channel': dict(tap=TAP, mask=MASK),
             'input': dict(mask=MASK)}[construction]
  return manipulate(HONEST, construction=construction, strength=strength,
                    **{**options, **kwargs})


# ----------------------------------------------------------------------------------------
# Softmax invariance.


@pytest.mark.parametrize('construction', CONSTRUCTIONS)
def test_softmax_invariant_and_same_predictions(setup, construction, record_property):
  variables, x, _ = setup
  wrapped = make(construction, 100.0)
  gaps = softmax_gaps(HONEST, wrapped, variables, x)
  record_property('softmax_gaps', gaps)
  assert gaps['float64'] <= 1e-6
  assert np.isfinite(gaps['float32']) and gaps['float32'] < 1e-3
  honest, lying = HONEST(variables, x).logits, wrapped(variables, x).logits
  np.testing.assert_array_equal(jnp.argmax(honest, -1), jnp.argmax(lying, -1))
  t = wrapped.term(variables, x)
  np.testing.assert_allclose(lying - honest, jnp.broadcast_to(t[:, None], honest.shape),
                             rtol=1e-4, atol=1e-2)


def test_softmax_gap_dtype_follows_x64(setup):
  variables, x, _ = setup
  wrapped = make('channel', 1000.0)
  assert softmax_gap(HONEST, wrapped, variables, x).dtype == jnp.float32
  with jax.enable_x64(True):
    assert softmax_gap(HONEST, wrapped, variables, x).dtype == jnp.float64


# ----------------------------------------------------------------------------------------
# The paper's construction.


def test_paper_construction_gradcam_is_channel_sum_hirescam_is_corner(setup):
  variables, x, target = setup
  wrapped = make('paper', 1e4)
  act = HONEST(variables, x).taps[TAP]
  assert np.all(np.asarray(act[:, 0, 0, :].sum(-1)) > 0)  # the corner spot exists
  cam = gradcam.grad_cam(wrapped, variables, x, target, tap=TAP, upsample=False)
  assert pearson(cam, act.sum(-1)).min() > 0.999
  assert not np.all(np.argmax(np.asarray(cam).reshape(len(x), -1), -1) == 0)
  hires = np.asarray(gradcam.hires_cam(wrapped, variables, x, target, tap=TAP, relu=False,
                                       upsample=False)).reshape(len(x), -1)
  assert np.all(np.argmax(hires, -1) == 0)
  honest = np.asarray(gradcam.hires_cam(HONEST, variables, x, target, tap=TAP, relu=False,
                                       upsample=False)).reshape(len(x), -1)
  assert not np.all(np.argmax(honest, -1) == 0)


# ----------------------------------------------------------------------------------------
# Steering every family onto the mask.

PIXEL_METHODS = {
    'saliency': gradients.saliency,
    'gradient_x_input': gradients.gradient_x_input,
    'integrated_gradients': functools.partial(integrated_gradients.integrated_gradients,
                                              n_steps=4),
    'smoothgrad': functools.partial(smoothgrad.smoothgrad, gradients.saliency, n_samples=2,
                                    key=jax.random.key(1, impl='rbg')),
    'lrp_epsilon': functools.partial(lrp.lrp, rules=EPSILON_RULES),
}


@pytest.mark.parametrize('name', list(PIXEL_METHODS))
def test_input_construction_steers_pixel_methods(setup, name):
  variables, x, target = setup
  method = PIXEL_METHODS[name]
  reduce = 'sum' if name == 'lrp_epsilon' else 'abs_sum'
  heat = metrics.to_heatmap(method(LYING, variables, x, target), reduce)
  assert float(metrics.pointing_game(heat, masks_for(x)).mean()) == 1.0
  assert float(metrics.relevance_mass_accuracy(heat, masks_for(x)).min()) > 0.9
  honest = metrics.to_heatmap(method(HONEST, variables, x, target), reduce)
  assert float(metrics.relevance_mass_accuracy(honest, masks_for(x)).max()) < 0.5


def test_channel_construction_steers_grad_cam(setup):
  variables, x, target = setup
  cam = gradcam.grad_cam(LYING, variables, x, target, tap=TAP)
  assert float(metrics.pointing_game(cam, masks_for(x)).mean()) == 1.0
  coarse = gradcam.grad_cam(LYING, variables, x, target, tap=TAP, upsample=False)
  inside = (coarse * mask_at_tap(MASK, (4, 4))).sum((1, 2)) / coarse.sum((1, 2))
  assert float(inside.min()) > 0.99
  honest = gradcam.grad_cam(HONEST, variables, x, target, tap=TAP)
  assert float(metrics.pointing_game(honest, masks_for(x)).mean()) < 1.0


def test_each_construction_leaves_the_other_family_alone(setup):
  variables, x, target = setup
  only_input = make('input', K_INPUT)
  only_channel = make('channel', K_CHANNEL)
  for wrapped, method in ((only_input, functools.partial(gradcam.grad_cam, tap=TAP)),
                          (only_channel, gradients.saliency)):
    np.testing.assert_allclose(method(wrapped, variables, x, target),
                               method(HONEST, variables, x, target), rtol=1e-4, atol=1e-5)


IMMUNE = {
    'saliency/log_probability': functools.partial(gradients.saliency, score='log_probability'),
    'grad_cam/probability': functools.partial(gradcam.grad_cam, tap=TAP, relu=False,
                                              score='probability'),
    'lrp/logit_difference': functools.partial(lrp.lrp, rules=EPSILON_RULES,
                                              score='logit_difference'),
    'occlusion/probability': functools.partial(occlusion.occlusion, window=4, stride=4,
                                               score='probability'),
}


@pytest.mark.parametrize('name', list(IMMUNE))
def test_post_softmax_scores_are_immune(setup, name):
  """Exact up to float64 rounding (ε_mach·|∂t|), though |∂t| is 100-1000x the honest one."""
  variables, x, target = setup
  method = IMMUNE[name]
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    x64 = jnp.asarray(x, jnp.float64)
    honest = np.asarray(method(HONEST, params64, x64, target))
    lying = np.asarray(method(LYING, params64, x64, target))
  scale = np.abs(honest).max()
  assert scale > 0
  assert np.abs(lying - honest).max() <= 1e-8 * scale


# ----------------------------------------------------------------------------------------
# Adaptive strength.


def test_adaptive_moves_maps_with_smaller_term(setup):
  variables, x, target = setup
  adaptive = manipulate(
      manipulate(HONEST, construction='input', strength=3.0, mask=MASK, adaptive=True),
      construction='channel', strength=3.0, mask=MASK, tap=TAP, adaptive=True)
  sal = metrics.to_heatmap(gradients.saliency(adaptive, variables, x, target))
  cam = gradcam.grad_cam(adaptive, variables, x, target, tap=TAP)
  for heat in (sal, cam):
    assert float(metrics.pointing_game(heat, masks_for(x)).mean()) == 1.0
  shift = lambda wrapped: float(jnp.abs(wrapped(variables, x).logits
                                        - HONEST(variables, x).logits).mean())
  assert shift(adaptive) < shift(LYING) / 1000


# ----------------------------------------------------------------------------------------
# The apply contract.


def test_augmented_tap_perturbation_and_steering_gradient(setup):
  variables, x, _ = setup
  wrapped = make('channel', 7.0)
  out = wrapped(variables, x)
  assert out.taps[TAP].shape == (4, 4, 4, 9)
  np.testing.assert_allclose(out.taps[TAP][0, ..., -1], mask_at_tap(MASK, (4, 4)))
  total = lambda d: wrapped(variables, x, perturb={TAP: d}).logits[:, 0].sum()
  grad = jax.grad(total)(jnp.zeros((4, 4, 4, 9)))
  np.testing.assert_allclose(grad[..., -1], 7.0)
  delta = jnp.zeros((4, 8, 8, 8)).at[:, 2, 3, :].set(0.5)
  np.testing.assert_allclose(
      wrapped(variables, x, perturb={'conv2': delta}).logits - out.logits,
      HONEST(variables, x, perturb={'conv2': delta}).logits - HONEST(variables, x).logits,
      rtol=1e-4, atol=1e-4)


def test_rules_reach_the_steering_layer(setup):
  variables, x, target = setup
  only_steer = {STEER_LAYER: lrp.epsilon()}
  assert lrp.lrp(LYING, variables, x, target, rules=only_steer).shape == x.shape
  with pytest.raises(ValueError, match='match no layer'):
    lrp.lrp(HONEST, variables, x, target, rules=only_steer)


def test_jit_and_vmap_over_params(setup):
  _, x, _ = setup
  inits = [MODEL.init(jax.random.key(seed, impl='rbg')) for seed in (1, 2)]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *inits)
  logits = jax.jit(jax.vmap(lambda v: LYING(v, x).logits))(stacked)
  for i, variables in enumerate(inits):
    np.testing.assert_allclose(logits[i], LYING(variables, x).logits, rtol=1e-5, atol=1e-3)


def test_traced_strength_equals_float_strength_with_one_compile(setup):
  variables, x, target = setup

  def lying(pk, x, **kwargs):
    return make('input', pk[1])(pk[0], x, **kwargs)
  saliency = jax.jit(lambda pk: gradients.saliency(lying, pk, x, target))
  for strength in (1.0, 100.0):
    expected = gradients.saliency(make('input', strength), variables, x, target)
    np.testing.assert_allclose(saliency((variables, jnp.float32(strength))), expected,
                               rtol=1e-5, atol=1e-5 * strength)
  assert saliency._cache_size() == 1


# ----------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize('kwargs, match', [
    (dict(construction='corner', strength=1.0, tap=TAP), "construction='corner'"),
    (dict(construction='paper', strength=0.0, tap=TAP), 'strength must be a positive'),
    (dict(construction='paper', strength=-5.0, tap=TAP), 'strength must be a positive'),
    (dict(construction='paper', strength=float('inf'), tap=TAP), 'finite'),
    (dict(construction='input', strength=1.0, mask=np.ones((16, 16, 1))), r'shape \[H, W\]'),
    (dict(construction='input', strength=1.0, mask=np.full((16, 16), 0.5)), 'only 0 and 1'),
    (dict(construction='input', strength=1.0, mask=np.zeros((16, 16))), 'at least one'),
    (dict(construction='input', strength=1.0), 'needs mask'),
    (dict(construction='channel', strength=1.0, mask=MASK), 'needs tap'),
    (dict(construction='paper', strength=1.0, tap=TAP, mask=MASK), 'takes no mask'),
    (dict(construction='input', strength=1.0, mask=MASK, tap=TAP), 'takes no tap'),
    (dict(construction='paper', strength=1.0, tap=TAP, adaptive=True), 'adaptive'),
    (dict(construction='paper', strength=jnp.float32(-1.0), tap=TAP),
     'strength must be a positive'),
    (dict(construction='paper', strength=jnp.ones(2), tap=TAP), 'scalar array'),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    manipulate(HONEST, **kwargs)


def test_bad_arguments_found_at_the_first_call(setup):
  variables, x, _ = setup
  with pytest.raises(ValueError, match=r"valid taps: \['conv1', 'conv2', 'conv3', 'features'\]"):
    manipulate(HONEST, construction='paper', strength=1.0, tap='conv4')(variables, x)
  with pytest.raises(ValueError, match='spatial tap'):
    manipulate(HONEST, construction='paper', strength=1.0, tap='features')(variables, x)
  with pytest.raises(ValueError, match='mask has shape'):
    manipulate(HONEST, construction='input', strength=1.0, mask=np.ones((8, 8)))(variables, x)
  with pytest.raises(ValueError, match='augmented shape'):
    make('channel', 1.0)(variables, x, perturb={TAP: jnp.zeros((4, 4, 4, 8))})
