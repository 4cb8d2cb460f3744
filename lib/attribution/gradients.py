"""Plain-gradient attributions: saliency and gradient × input.

Both are one backward pass of the chosen score (`lib.attribution.scores`) for the whole
batch, jitted once per (model, score, options).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lib.attribution import scores as scores_lib

Array = jax.Array


@functools.partial(jax.jit, static_argnames=('apply', 'score', 'absolute', 'times_input'))
def _gradient_map(apply, params, x, target, *, score, absolute, times_input):
  grad, _ = scores_lib.score_grad(lambda z: apply(params, z), x, target, score)
  attr = grad * x if times_input else grad
  return jnp.abs(attr) if absolute else attr


def saliency(apply: scores_lib.Apply, params: Any, x: Array, target: Array, *,
             score: str = 'logit', key: Array | None = None, absolute: bool = False) -> Array:
  """Gradient of the target score with respect to the input.

  Simonyan, Vedaldi & Zisserman 2014, "Deep Inside Convolutional Networks", §3.1:
  M = ∂S_t/∂x (their saliency map is |M| maxed over channels; `absolute=True` gives |M|
  per channel, as Captum's `Saliency(abs=True)`).

  Args:
    apply: `apply(params, x)` -> logits [B, K] or an object with `.logits`.
    params: the model's parameters (any pytree).
    x: [B, H, W, C] float inputs.
    target: [B] int classes to explain.
    score: what is differentiated, one of `scores.SCORES`.
    key: unused (deterministic method); accepted so all methods share one signature.
    absolute: return |∂S_t/∂x| instead of the signed gradient.

  Returns:
    [B, H, W, C] attributions, same dtype as `x`.

  Example:
    >>> model = models.get_model('cnn', input_shape=(32, 32, 3), num_classes=10)
    >>> variables = model.init(jax.random.key(0))
    >>> maps = saliency(model.apply, variables, x, labels, score='probability')
  """
  del key
  scores_lib.check_inputs(apply, params, x, target, score)
  return _gradient_map(apply, params, x, target, score=score, absolute=absolute,
                       times_input=False)


def gradient_x_input(apply: scores_lib.Apply, params: Any, x: Array, target: Array, *,
                     score: str = 'logit', key: Array | None = None) -> Array:
  """Gradient times input: x ⊙ ∂S_t/∂x.

  Shrikumar et al. 2016, "Not Just a Black Box" (Captum's `InputXGradient`). For a linear
  score with zero bias it sums to the score: Σ_i x_i ∂S/∂x_i = S.

  Args:
    apply: `apply(params, x)` -> logits [B, K] or an object with `.logits`.
    params: the model's parameters.
    x: [B, H, W, C] float inputs.
    target: [B] int classes to explain.
    score: what is differentiated, one of `scores.SCORES`.
    key: unused (deterministic method); accepted so all methods share one signature.

  Returns:
    [B, H, W, C] attributions.

  Example:
    >>> maps = gradient_x_input(model.apply, variables, x, labels)
  """
  del key
  scores_lib.check_inputs(apply, params, x, target, score)
  return _gradient_map(apply, params, x, target, score=score, absolute=False, times_input=True)
