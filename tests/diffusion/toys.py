"""Shared denoisers for the diffusion tests.

* `gaussian_eps`: the exact ε-predictor E[ε | x_t] for data x₀ ~ N(μ, s₀² I), where the
  sampled distribution and the probability-flow map are known in closed form.
* `mlp_denoiser` / `linear_classifier`: a tiny random denoiser (two dense layers with a
  sinusoidal time embedding) and a linear classifier, for gradients, memory and trace counts.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lib.diffusion import Schedule

MU, S0 = 0.3, 0.4


def gaussian_eps(schedule: Schedule, *, continuous: bool, mu: float = MU, s0: float = S0):
  """eps_fn(x, labels) = √(1−ᾱ)(x − √ᾱ μ) / (ᾱ s₀² + 1 − ᾱ), exact for N(μ, s₀²) data.

  ᾱ is the discrete ᾱ at the integer label (continuous=False) or the continuous ᾱ(t) at
  t = label / (T − 1), the inverse of the schedule's 'scaled' labels (continuous=True).
  """
  def eps_fn(x, labels):
    if continuous:
      a = schedule.alpha_bar(labels / jnp.float32(schedule.num_train_timesteps - 1))
    else:
      a = schedule.alpha_bar_at(labels.astype(jnp.int32))
    a = a.reshape((-1,) + (1,) * (x.ndim - 1))
    return (1 - a) ** 0.5 * (x - a ** 0.5 * mu) / (a * s0 ** 2 + 1 - a)
  return eps_fn


def gaussian_marginal(a_bar, mu: float = MU, s0: float = S0):
  """(mean, std) of x_t when x_t = √ᾱ x₀ + √(1−ᾱ) ε, x₀ ~ N(μ, s₀²)."""
  return np.sqrt(a_bar) * mu, np.sqrt(a_bar * s0 ** 2 + 1 - a_bar)


IMAGE_SHAPE = (4, 4, 3)
HIDDEN = 32
NUM_CLASSES = 3


def _normal(rng, shape, scale):
  return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)


def init_mlp(seed, image_shape=IMAGE_SHAPE, hidden=HIDDEN):
  """The MLP denoiser's params from a numpy seed (no JAX work at import time)."""
  d, rng = int(np.prod(image_shape)), np.random.default_rng(seed)
  return {'w1': _normal(rng, (d, hidden), d ** -0.5), 'wt': _normal(rng, (8, hidden), 1.0),
          'w2': _normal(rng, (hidden, d), hidden ** -0.5)}


def mlp_denoiser(params, x, labels):
  """ε̂ = tanh(x W1 + emb(t) Wt) W2, x [B, H, W, C], labels [B] float32."""
  freqs = jnp.exp(jnp.linspace(0.0, -4.0, 4, dtype=jnp.float32))
  arg = labels[:, None] / 1000.0 * freqs * 50.0
  emb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params['w1'] + emb @ params['wt'])
  return (h @ params['w2']).reshape(x.shape)


def init_classifier(seed, image_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES):
  d = int(np.prod(image_shape))
  return {'w': _normal(np.random.default_rng(seed), (d, num_classes), 4 * d ** -0.5)}


def uniform_images(seed, shape, low=0.0, high=1.0):
  """float32 images uniform in [low, high] from a numpy seed."""
  return jnp.asarray(np.random.default_rng(seed).uniform(low, high, size=shape), jnp.float32)


def linear_classifier(params, x):
  return (x.reshape(x.shape[0], -1) - 0.5) @ params['w']
