"""Class activation maps from layer gradients: Grad-CAM, Grad-CAM++ and HiResCAM.

Each reads a spatial tap A [B, h, w, c] of the model and g = ∂S_t/∂A, the gradient of the
target score with respect to that tap (taken at a zero perturbation of the tap, so no
hooks are needed), and returns L = ReLU(Σ_k w_k ⊙ A_k). They differ in the weights w:

* Grad-CAM (Selvaraju et al., ICCV 2017, Eq. 1-2): w_k = 1/(hw) Σ_ij g_ijk.
* Grad-CAM++ (Chattopadhay et al., WACV 2018: their α for the exponential score
  Y = exp(S), under which the second and third derivatives are exp(S)·g² and exp(S)·g³
  and exp(S) cancels):
    α_ijk = g_ijk² / (2 g_ijk² + Σ_ab A_abk · g_ijk³),   w_k = Σ_ij α_ijk ReLU(g_ijk),
  with α = 0 where its denominator vanishes.
* HiResCAM (Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful
  explanations of convolutional neural networks", arXiv 2011.08891): w_ijk = g_ijk, no
  pooling, so L = ReLU(Σ_k g_k ⊙ A_k). For a model that ends in global average pooling and
  a linear head, this is exactly the score's decomposition over cells, and a term added to
  every logit that reads one cell (Lerma & Lucas's t = K·Σ_k A[0,0,k]) puts its mass in
  that cell, where pooled Grad-CAM spreads it over the whole map.

Maps are upsampled to the input's H × W bilinearly with half-pixel centres (PyTorch's
`F.interpolate(mode='bilinear', align_corners=False)`, Captum's
`LayerAttribution.interpolate`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lib import contract
from lib.attribution import scores as scores_lib

Array = jax.Array


def grad_cam_weights(grad: Array, act: Array) -> Array:
  """Grad-CAM channel weights: [B, h, w, c] gradients -> [B, c] spatial means."""
  del act
  return grad.mean(axis=(1, 2))


def hires_cam_weights(grad: Array, act: Array) -> Array:
  """HiResCAM weights: the gradient itself, [B, h, w, c] per cell and channel."""
  del act
  return grad


def grad_cam_plus_plus_weights(grad: Array, act: Array) -> Array:
  """Grad-CAM++ channel weights [B, c] from gradients and activations [B, h, w, c]."""
  g2 = grad * grad
  denom = 2 * g2 + act.sum(axis=(1, 2), keepdims=True) * g2 * grad
  alpha = jnp.where(denom != 0, g2 / jnp.where(denom != 0, denom, 1), 0)
  return (alpha * jax.nn.relu(grad)).sum(axis=(1, 2))


@functools.partial(jax.jit, static_argnames=('apply', 'score', 'tap', 'weights_fn', 'relu',
                                             'upsample'))
def _class_activation_map(apply, params, x, target, *, score, tap, weights_fn, relu, upsample):
  tap_aval = scores_lib.abstract_outputs(apply, params, x).taps[tap]
  grad, outputs = scores_lib.score_grad(
      lambda delta: apply(params, x, perturb={tap: delta}),
      jnp.zeros(tap_aval.shape, tap_aval.dtype), target, score)
  act = outputs.taps[tap]  # `score_grad` returns `contract.Outputs`
  weights = weights_fn(grad, act)  # [B, c] per channel, or [B, h, w, c] per cell
  cam = (act * (weights[:, None, None] if weights.ndim == 2 else weights)).sum(-1)
  if relu:
    cam = jax.nn.relu(cam)
  if upsample:
    cam = jax.image.resize(cam, x.shape[:3], 'bilinear', antialias=False)
  return cam


def _cam_method(weights_fn, needed_by, apply, params, x, target, *, tap, score, relu, upsample):
  outputs = scores_lib.check_inputs(apply, params, x, target, score)
  scores_lib.check_tap(outputs, tap, needed_by=needed_by, spatial=True)
  contract.require_keywords(apply, ('perturb',), needed_by=needed_by)
  return _class_activation_map(apply, params, x, target, score=score, tap=tap,
                               weights_fn=weights_fn, relu=relu, upsample=upsample)


def grad_cam(apply: scores_lib.Apply, params: Any, x: Array, target: Array, *, tap: str,
             score: str = 'logit', key: Array | None = None, relu: bool = True,
             upsample: bool = True) -> Array:
  """Grad-CAM: L = ReLU(Σ_k w_k A_k), w_k the spatial mean of ∂S_t/∂A_k.

  Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", Eq. 1-2.

  Args:
    apply: `apply(params, x, perturb={tap: delta})` -> `Outputs(logits, taps)` or a
      `(logits, taps)` tuple (`lib.contract`; e.g. `lib.models.PureModel.apply`).
    params: the model's parameters.
    x: [B, H, W, C] float inputs.
    target: [B] int classes to explain.
    tap: name of a spatial tap [B, h, w, c] (e.g. 'conv3' of the SmallCNN).
    score: what is differentiated, one of `scores.SCORES`.
    key: unused (deterministic method); accepted so all methods share one signature.
    relu: apply the ReLU of Eq. 2 (False keeps negative evidence, as Captum's default).
    upsample: bilinearly resize to the input's H × W; False returns tap resolution.

  Returns:
    [B, H, W] maps (or [B, h, w] with `upsample=False`).

  Raises:
    ValueError: bad inputs; an `apply` without taps or without a `perturb` keyword; an
      unknown or non-spatial tap (the valid ones are listed).

  Example:
    >>> cams = grad_cam(model.apply, variables, x, labels, tap='conv3')
  """
  del key
  return _cam_method(grad_cam_weights, 'grad_cam', apply, params, x, target, tap=tap,
                     score=score, relu=relu, upsample=upsample)


def grad_cam_plus_plus(apply: scores_lib.Apply, params: Any, x: Array, target: Array, *,
                       tap: str, score: str = 'logit', key: Array | None = None,
                       relu: bool = True, upsample: bool = True) -> Array:
  """Grad-CAM++: pixel-weighted gradients, closed form for an exponential score.

  Chattopadhay et al. 2018, "Grad-CAM++: Improved Visual Explanations for Deep
  Convolutional Networks": w_k = Σ_ij α_ijk ReLU(g_ijk) with, for the exponential class
  score exp(S), α_ijk = g_ijk² / (2 g_ijk² + Σ_ab A_abk g_ijk³) (g = ∂S/∂A); the weights
  use ReLU(g) rather than ReLU(exp(S)·g), as the authors' code does (the two differ by the
  positive per-example factor exp(S)).

  Args:
    apply: `apply(params, x, perturb={tap: delta})` -> `Outputs(logits, taps)` or a
      `(logits, taps)` tuple.
    params: the model's parameters.
    x: [B, H, W, C] float inputs.
    target: [B] int classes to explain.
    tap: name of a spatial tap [B, h, w, c].
    score: the score whose exponential is explained, one of `scores.SCORES`.
    key: unused (deterministic method); accepted so all methods share one signature.
    relu: apply the final ReLU.
    upsample: bilinearly resize to the input's H × W; False returns tap resolution.

  Returns:
    [B, H, W] maps (or [B, h, w] with `upsample=False`).

  Example:
    >>> cams = grad_cam_plus_plus(model.apply, variables, x, labels, tap='conv3')
  """
  del key
  return _cam_method(grad_cam_plus_plus_weights, 'grad_cam_plus_plus', apply, params, x,
                     target, tap=tap, score=score, relu=relu, upsample=upsample)


def hires_cam(apply: scores_lib.Apply, params: Any, x: Array, target: Array, *, tap: str,
              score: str = 'logit', key: Array | None = None, relu: bool = True,
              upsample: bool = True) -> Array:
  """HiResCAM: L = ReLU(Σ_k g_k ⊙ A_k), the un-pooled gradient times the activation.

  Draelos & Carin 2020, arXiv 2011.08891, Eq. 3. The same arguments and shapes as
  `grad_cam`.

  Example:
    >>> cams = hires_cam(model.apply, variables, x, labels, tap='conv3')
  """
  del key
  return _cam_method(hires_cam_weights, 'hires_cam', apply, params, x, target, tap=tap,
                     score=score, relu=relu, upsample=upsample)
