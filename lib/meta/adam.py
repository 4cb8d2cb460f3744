"""Adam and gradient clipping as pure, twice-differentiable functions (PyTorch semantics).

The simulated fine-tuning attack of MLAC (Henderson et al. 2023, "Self-Destructing Models",
§4; the authors' `adapt.py` runs `torch.optim.Adam` through `higher`) is differentiated
through: the meta-gradient needs d(update)/d(gradient), d(update)/d(Adam state) and
d(update)/d(learning rate). This module writes that Adam as a function of arrays:

    m_t = b1 m + (1 - b1) g            v_t = b2 v + (1 - b2) g²
    p_t = p - lr / (1 - b1^t) · m_t / (sqrt(v_t) / sqrt(1 - b2^t) + eps)

(`torch.optim.Adam`, eps outside the square root). Why not `optax.scale_by_adam`: its
update is pure and differentiable, but `sqrt(nu)` has an infinite derivative at nu = 0, and
a parameter whose gradient is exactly zero (an embedding row no token of the batch uses, a
masked head column) keeps nu = 0, so second-order gradients come out `0 · inf = NaN`.
`_safe_sqrt` returns the same value with a zero derivative there. (Optax's `eps_root`
avoids the NaN by changing the update; PyTorch has no such term.) The state counts steps in
float32, which also avoids optax's `decay ** count` (int32) under strict dtype promotion.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class AdamState(NamedTuple):
  """Adam's moments, shaped like the parameters, and the number of steps taken (float32)."""
  count: Array
  mu: Any
  nu: Any


def adam_init(params: Any) -> AdamState:
  """Zero moments and count 0 for a pytree of float arrays."""
  zeros = jax.tree.map(jnp.zeros_like, params)
  return AdamState(jnp.zeros((), jnp.float32), zeros, zeros)


def _safe_sqrt(x: Array) -> Array:
  """sqrt(x) for x >= 0 whose derivative at 0 is 0 instead of inf (the value is unchanged)."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, jnp.ones_like(x))),
                   jnp.zeros_like(x))


def adam_step(params: Any, grads: Any, state: AdamState, learning_rate: Array | float, *,
              b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> tuple[Any, AdamState]:
  """One Adam step `params - lr · m̂ / (sqrt(v̂) + eps)`, differentiable in every input.

  Args:
    params: pytree of float arrays.
    grads: pytree like `params`.
    state: `adam_init(params)` or the state of the previous step.
    learning_rate: scalar (a traced, meta-learned value is fine).
    b1, b2, eps: PyTorch's defaults.

  Returns:
    `(new params, new state)`.
  """
  count = state.count + 1
  mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
  nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
  learning_rate = jnp.asarray(learning_rate)

  def update(p: Array, m: Array, v: Array) -> Array:
    t = count.astype(p.dtype)  # the scalar algebra in the parameters' precision
    step = learning_rate.astype(p.dtype) / (1 - b1 ** t)
    return p - step * m / (_safe_sqrt(v) / jnp.sqrt(1 - b2 ** t) + eps)

  return jax.tree.map(update, params, mu, nu), AdamState(count, mu, nu)


def global_norm(tree: Any, *, offset: float = 0.0) -> Array:
  """sqrt(offset + Σ x²) over every leaf of `tree` (differentiable for offset > 0 at 0)."""
  return jnp.sqrt(offset + sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def clip_by_norm(grads: Any, max_norm: float, *, offset: float = 0.0) -> tuple[Any, Array]:
  """Rescales `grads` to global norm `max_norm` if above it; the norm is not differentiated.

  The clip of the authors' inner loop (`adapt.get_clip_grads_fn`): norm = sqrt(offset +
  Σ g²) (offset 1e-8 there), and above `max_norm`, `g / stop_gradient(norm) · max_norm`, so
  the clipped gradient is differentiated as a fixed rescaling of `g`. `offset=0` is
  `torch.nn.utils.clip_grad_norm_` up to its 1e-6.

  Returns:
    `(clipped grads, norm before clipping)`.
  """
  norm = global_norm(grads, offset=offset)
  scale = jnp.where(norm > max_norm, max_norm / jax.lax.stop_gradient(norm), 1.0)
  return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads), norm
