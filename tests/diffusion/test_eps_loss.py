"""lib/diffusion/losses.py: Ho et al.'s simple loss — its value for known denoisers, its
gradient, training a tiny denoiser, and bad inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.diffusion import Schedule, losses
from tests.diffusion.toys import MU, S0, gaussian_eps, init_mlp, mlp_denoiser

SCHEDULE = Schedule()
X0 = jnp.asarray(np.clip(MU + S0 * np.random.default_rng(0).normal(size=(256, 2, 2, 2)), -1, 1),
                 jnp.float32)


def test_loss_of_known_denoisers():
  zero = lambda params, x, t: jnp.zeros_like(x)
  key = jax.random.key(1)
  # ε̂ = 0: the loss is the mean of ε², about 1.
  assert abs(float(losses.eps_loss(zero, None, X0, key=key, schedule=SCHEDULE)) - 1) < 0.05
  # The exact Gaussian-data predictor (clipping aside) leaves only Var(ε | x_k) < 1.
  exact = lambda params, x, t: gaussian_eps(SCHEDULE, continuous=False)(x, t)
  assert float(losses.eps_loss(exact, None, X0, key=key, schedule=SCHEDULE)) < 0.5
  # Same key, same loss.
  assert (float(losses.eps_loss(zero, None, X0, key=key))
          == float(losses.eps_loss(zero, None, X0, key=key)))


def test_a_few_gradient_steps_lower_the_loss():
  params = init_mlp(2, image_shape=(2, 2, 2))

  @jax.jit
  def train(params):
    def step(params, i):
      loss, grads = jax.value_and_grad(
          lambda p: losses.eps_loss(mlp_denoiser, p, X0, key=jax.random.fold_in(
              jax.random.key(3), i), schedule=SCHEDULE))(params)
      return jax.tree.map(lambda p, g: p - 0.2 * g, params, grads), loss
    return jax.lax.scan(step, params, jnp.arange(100))[1]

  values = train(params)
  values = np.asarray(values)
  assert np.all(np.isfinite(values)) and values[-10:].mean() < 0.8 * values[:10].mean()


def test_max_timestep_draws_exactly_the_steps_up_to_it():
  # ε̂ is exact (0 loss) but for labels above 5, where it is off by 30: any such draw shows.
  def flagging(params, x, t):
    del params
    return jnp.broadcast_to(jnp.where(t > 5, 30.0, 0.0).astype(x.dtype)[:, None, None, None],
                            x.shape)

  def loss(max_timestep):
    key = jax.random.key(4)
    eps = jax.random.normal(jax.random.split(key)[1], X0.shape)
    return float(losses.eps_loss(lambda p, x, t: eps + flagging(p, x, t), None, X0, key=key,
                                 max_timestep=max_timestep))

  assert loss(5) < 1e-10            # k ~ U{0..5}: never above 5
  assert loss(6) > 10.0             # k = 6 is drawn (256 examples: P(never) = (6/7)^256)
  assert loss(None) > 800.0         # the full chain: almost every k is above 5


def test_bad_inputs_are_value_errors():
  zero = lambda params, x, t: jnp.zeros_like(x)
  with pytest.raises(ValueError, match='x0 must have pixels in'):
    losses.eps_loss(zero, None, X0 * 3, key=jax.random.key(0))
  with pytest.raises(ValueError, match='key'):
    losses.eps_loss(zero, None, X0, key=1)
  for bad in (1000, -1, 2.0):
    with pytest.raises(ValueError, match='max_timestep'):
      losses.eps_loss(zero, None, X0, key=jax.random.key(0), max_timestep=bad)
