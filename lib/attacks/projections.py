"""Per-example norms, steepest-ascent directions and projections of ℓ∞ / ℓ2 attacks.

The geometry every gradient attack shares (Madry et al. 2018, "Towards deep learning
models resistant to adversarial attacks", Eq. 2 and §2.1): a step along the steepest-ascent
direction of the norm (`normalize`), a projection of the perturbation onto the ε-ball
(`project`) and a clip of the image to the pixel box [0, 1] (`clip_to_box`). Arrays are
batches [B, ...]; every norm is taken per example over all axes but the first. The
arithmetic follows torchattacks' `PGD` / `PGDL2` operation by operation, so that composing
these functions reproduces its adversarial examples in float32:

    x' = x + α · normalize(∇, norm)
    x' = clip_to_box(x0, project(x' − x0, ε, norm))

ε may be a Python number or a (traced) scalar array, so attacks vmap over ε.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lib.attacks import _args

Array = jax.Array

# torchattacks.PGDL2's `eps_for_division`: ∇ / (‖∇‖₂ + 1e-10) is 0 where ∇ = 0.
DIVISION_EPS = 1e-10


def _per_example(values: Array, like: Array) -> Array:
  """[B] values reshaped to [B, 1, ..., 1] to broadcast against `like` [B, ...]."""
  return values.reshape((like.shape[0],) + (1,) * (like.ndim - 1))


def per_example_norm(v: Array, norm: str) -> Array:
  """‖v_b‖ for each example.

  Args:
    v: [B, ...] array.
    norm: 'linf' (max |v|) or 'l2' (Euclidean norm of the flattened example).

  Returns:
    [B] norms, in v's dtype.
  """
  _args.check_norm(norm)
  flat = v.reshape(v.shape[0], -1)
  if norm == 'linf':
    return jnp.max(jnp.abs(flat), axis=1)
  return jnp.sqrt(jnp.sum(flat * flat, axis=1))


def normalize(grad: Array, norm: str) -> Array:
  """The steepest-ascent direction of unit norm for a gradient, per example.

  ℓ∞: sign(∇) (0 where ∇ = 0). ℓ2: ∇ / (‖∇‖₂ + 1e-10) (0 where ∇ = 0), as torchattacks.

  Args:
    grad: [B, ...] input gradient.
    norm: 'linf' or 'l2'.

  Returns:
    [B, ...] direction, grad's dtype.
  """
  if _args.check_norm(norm) == 'linf':
    return jnp.sign(grad)
  scale = per_example_norm(grad, 'l2') + jnp.asarray(DIVISION_EPS, grad.dtype)
  return grad / _per_example(scale, grad)


def project(delta: Array, eps: float | Array, norm: str) -> Array:
  """Projects each example's perturbation onto the ε-ball of `norm`.

  ℓ∞: clip(δ, −ε, ε). ℓ2: δ · min(1, ε / ‖δ‖₂) (torchattacks' `PGDL2`), 0 where δ = 0.

  Args:
    delta: [B, ...] perturbation.
    eps: radius ≥ 0 (pixel units on [0, 1] images), a number or a scalar array.
    norm: 'linf' or 'l2'.

  Returns:
    [B, ...] projected perturbation, delta's dtype.
  """
  eps = jnp.asarray(eps, delta.dtype)
  if _args.check_norm(norm) == 'linf':
    return jnp.clip(delta, -eps, eps)
  n = per_example_norm(delta, 'l2')
  tiny = jnp.asarray(jnp.finfo(delta.dtype).tiny, delta.dtype)
  factor = jnp.minimum(jnp.ones_like(n), eps / jnp.maximum(n, tiny))
  return delta * _per_example(factor, delta)


def clip_to_box(x0: Array, delta: Array) -> Array:
  """clip(x0 + δ, 0, 1): the perturbed image inside the pixel box.

  Args:
    x0: [B, ...] clean images in [0, 1].
    delta: [B, ...] perturbation (usually `project`ed).

  Returns:
    [B, ...] images in [0, 1].
  """
  return jnp.clip(x0 + delta, 0.0, 1.0)


def project_to_threat(x0: Array, x: Array, eps: float | Array, norm: str) -> Array:
  """`clip_to_box(x0, project(x − x0, ε, norm))`: x pulled back into the threat model."""
  return clip_to_box(x0, project(x - x0, eps, norm))
