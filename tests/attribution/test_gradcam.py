"""Grad-CAM against Captum's LayerGradCam; Grad-CAM++ and HiResCAM against their definitions
evaluated on PyTorch autograd's layer gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam

from lib.attribution.gradcam import grad_cam, grad_cam_plus_plus, hires_cam

TOL = 1e-4


def _captum_grad_cam(mirror, tap, score, relu, upsample) -> np.ndarray:
  cam = LayerGradCam(mirror.torch_forward(score), mirror.torch_layer(tap)).attribute(
      mirror.to_torch(mirror.x), target=mirror.torch_target, relu_attributions=relu)
  if upsample:
    cam = LayerAttribution.interpolate(cam, mirror.x.shape[1:3], interpolate_mode='bilinear')
  return cam[:, 0].detach().numpy()


@pytest.mark.parametrize('tap, score, relu, upsample', [
    ('conv3', 'logit', True, True),
    ('conv3', 'probability', False, True),
    ('conv3', 'logit_difference', True, False),
    ('conv2', 'log_probability', False, True),
])
def test_grad_cam_matches_captum(mirror, rel_err, tap, score, relu, upsample):
  ours = grad_cam(mirror.model.apply, mirror.variables, mirror.x, mirror.target, tap=tap,
                  score=score, relu=relu, upsample=upsample)
  ref = _captum_grad_cam(mirror, tap, score, relu, upsample)
  assert ours.shape == ref.shape
  assert rel_err(ours, ref) < TOL


def _torch_layer_grad_and_act(mirror, tap, score):
  """∂score/∂A and A at `tap`, from PyTorch autograd, as NHWC float64 numpy arrays."""
  acts = []
  hook = mirror.torch_layer(tap).register_forward_hook(lambda m, i, out: acts.append(out))
  try:
    out = mirror.torch_forward(score)(mirror.to_torch(mirror.x))
  finally:
    hook.remove()
  chosen = out[torch.arange(len(out)), torch.as_tensor(mirror.target)].sum()
  (grad,) = torch.autograd.grad(chosen, acts[0])
  return mirror.from_torch(grad), mirror.from_torch(acts[0])


def _grad_cam_plus_plus_numpy(g, a, relu=True):
  """Chattopadhay et al. 2018 closed form, written out per position and channel."""
  b, h, w, c = g.shape
  cam = np.zeros((b, h, w))
  for n in range(b):
    for k in range(c):
      act_sum = a[n, :, :, k].sum()
      weight = 0.0
      for i in range(h):
        for j in range(w):
          g1 = g[n, i, j, k]
          denom = 2 * g1 ** 2 + act_sum * g1 ** 3
          alpha = g1 ** 2 / denom if denom != 0 else 0.0
          weight += alpha * max(g1, 0.0)
      cam[n] += weight * a[n, :, :, k]
  return np.maximum(cam, 0) if relu else cam


@pytest.mark.parametrize('score, relu', [('logit', True), ('probability', False)])
def test_grad_cam_plus_plus_matches_closed_form(mirror, rel_err, score, relu):
  g, a = _torch_layer_grad_and_act(mirror, 'conv3', score)
  ours = grad_cam_plus_plus(mirror.model.apply, mirror.variables, mirror.x, mirror.target,
                            tap='conv3', score=score, relu=relu, upsample=False)
  assert rel_err(ours, _grad_cam_plus_plus_numpy(g, a, relu)) < TOL


@pytest.mark.parametrize('score, relu', [('logit', True), ('log_probability', False)])
def test_hires_cam_is_gradient_times_activation(mirror, rel_err, score, relu):
  g, a = _torch_layer_grad_and_act(mirror, 'conv2', score)
  ours = hires_cam(mirror.model.apply, mirror.variables, mirror.x, mirror.target, tap='conv2',
                   score=score, relu=relu, upsample=False)
  ref = (g * a).sum(-1)
  assert rel_err(ours, np.maximum(ref, 0) if relu else ref) < TOL


def test_hires_cam_decomposes_the_logit(mirror):
  """Last tap before global average pooling and a linear head: Σ_ij L_ij = z_t - b_t."""
  ours = hires_cam(mirror.model.apply, mirror.variables, mirror.x, mirror.target, tap='conv3',
                   relu=False, upsample=False)
  logits = mirror.model.apply(mirror.variables, mirror.x).logits
  bias = mirror.variables['params']['head']['bias']
  expected = np.take_along_axis(np.asarray(logits - bias), mirror.target[:, None], 1)[:, 0]
  np.testing.assert_allclose(np.asarray(ours).sum((1, 2)), expected, rtol=1e-5, atol=1e-5)


def test_upsampling_is_bilinear_half_pixel(mirror, rel_err):
  small = grad_cam_plus_plus(mirror.model.apply, mirror.variables, mirror.x, mirror.target,
                             tap='conv3', upsample=False)
  big = grad_cam_plus_plus(mirror.model.apply, mirror.variables, mirror.x, mirror.target,
                           tap='conv3')
  ref = LayerAttribution.interpolate(torch.from_numpy(np.asarray(small, np.float64))[:, None],
                                     mirror.x.shape[1:3], interpolate_mode='bilinear')
  assert big.shape == mirror.x.shape[:3]
  assert rel_err(big, ref[:, 0].numpy()) < 1e-6


@pytest.mark.parametrize('method', [grad_cam, grad_cam_plus_plus, hires_cam])
def test_tap_errors(mirror, method):
  args = (mirror.model.apply, mirror.variables, mirror.x, mirror.target)
  with pytest.raises(ValueError, match=r"tap='conv9' is not a tap.*'conv1', 'conv2', 'conv3'"):
    method(*args, tap='conv9')
  with pytest.raises(ValueError, match='spatial tap'):
    method(*args, tap='features')
  logits_only = lambda params, x: mirror.model.apply(params, x).logits
  with pytest.raises(ValueError, match="tap='conv3', but apply returns logits only"):
    method(logits_only, *args[1:], tap='conv3')
  no_perturb = lambda params, x: mirror.model.apply(params, x)
  with pytest.raises(ValueError, match=r"perturb=\.\.\.\) but apply="):
    method(no_perturb, *args[1:], tap='conv3')
  with pytest.raises(ValueError, match='target'):
    method(*args[:3], np.array([0, 1, 7]), tap='conv3')
