"""The denoiser's training loss: ε-prediction (Ho et al. 2020, "Denoising diffusion
probabilistic models", eq. 14, L_simple).

    L(θ) = E_{k ~ U{0..T−1}, x₀, ε ~ N(0, I)} ‖ε − ε_θ(√ᾱ_k x₀ + √(1 − ᾱ_k) ε, k)‖²

with the discrete ᾱ of `Schedule` (diffusers' `DDPMScheduler.add_noise`), k the 0-based
step index diffusers' UNet2DModel is trained with, averaged over pixels and the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lib import validate
from lib.diffusion.schedules import Schedule

Array = jax.Array


def eps_loss(denoiser: Callable[[Any, Array, Array], Array], params: Any, x0: Array, *,
             key: Array, schedule: Schedule = Schedule()) -> Array:
  """The simple ε-prediction loss of one batch (a scalar; differentiable in `params`).

  Args:
    denoiser: `denoiser(params, x, labels) -> ε̂`, x [B, H, W, C], labels [B] float32
      step indices in [0, T).
    params: its parameters.
    x0: [B, H, W, C] clean data in the diffusion scale [−1, 1] (images: 2·x − 1).
    key: typed PRNG key (draws k and ε per example).
    schedule: the noise schedule.

  Returns:
    float32 scalar, mean over the batch and pixels of (ε − ε̂)².

  Raises:
    ValueError: x0 not a float [B, H, W, C] batch in [−1, 1], or a bad key.

  Example:
    >>> loss, grads = jax.value_and_grad(eps_loss, argnums=1)(denoiser, params, 2 * x - 1,
    ...                                                       key=k, schedule=Schedule())
  """
  validate.check_images(x0, 'x0', value_range=(-1.0, 1.0))
  validate.check_key(key)
  step_key, noise_key = jax.random.split(key)
  k = jax.random.randint(step_key, (x0.shape[0],), 0, schedule.num_train_timesteps)
  eps = jax.random.normal(noise_key, x0.shape, x0.dtype)
  a = schedule.alpha_bar_at(k).reshape((-1,) + (1,) * (x0.ndim - 1))
  x_k = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
  return jnp.mean((eps - denoiser(params, x_k, k.astype(jnp.float32))) ** 2)
