"""lib/diffusion/schedules.py: values against diffusers and DiffPure, labels, validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from lib.diffusion import Schedule


def test_discrete_tables_match_diffusers_and_diffpure():
  s = Schedule()
  ref = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                      beta_schedule='linear')
  np.testing.assert_allclose(s.betas(), ref.betas.numpy(), rtol=1e-6)
  np.testing.assert_allclose(s.alphas_cumprod(), ref.alphas_cumprod.numpy(), atol=5e-7)
  # DiffPure: torch.linspace(beta_min / N, beta_max / N, N) in float32.
  diffpure = torch.cumprod(1 - torch.linspace(0.1 / 1000, 20 / 1000, 1000), 0).numpy()
  np.testing.assert_allclose(s.alpha_bar_at(jnp.arange(1000)), diffpure, atol=5e-7)
  assert Schedule.from_betas(1e-4, 0.02, 1000) == s


def test_discrete_and_continuous_alpha_bar_at_t_star():
  s = Schedule()
  assert abs(float(s.alpha_bar_at(s.start_index(0.1))) - 0.897018) < 1e-6
  assert abs(float(s.alpha_bar(0.1)) - 0.896282) < 1e-6
  assert float(s.alpha_bar_at(-1)) == 1.0
  t = jnp.asarray([0.0, 0.3, 1.0], jnp.float32)
  np.testing.assert_allclose(s.marginal_mean_coeff(t) ** 2 + s.marginal_std(t) ** 2, 1, rtol=1e-6)
  np.testing.assert_allclose(s.beta(t), [0.1, 0.1 + 0.3 * 19.9, 20.0], rtol=1e-6)
  # ᾱ(t) = exp(−∫β): d/dt log ᾱ = −β.
  grad = jax.grad(lambda t: jnp.log(s.alpha_bar(t)))(jnp.float32(0.3))
  np.testing.assert_allclose(grad, -s.beta(0.3), rtol=1e-5)
  assert s.start_index(1.0) == 999 and s.start_index(0.075) == 74


def test_time_labels_as_diffpure():
  t = jnp.asarray([0.1, 1e-5, 1.0], jnp.float32)
  np.testing.assert_allclose(Schedule().label(t), [99.9, 999e-5, 999.0], rtol=1e-6)
  floor = Schedule(time_labels='floor').label(t)
  np.testing.assert_array_equal(floor, [100.0, 0.0, 1000.0])
  # float32 flooring, as DiffPure's `(t.float() * N).long()`: 0.251f * 1000 = 250.99998.
  assert float(Schedule(time_labels='floor').label(jnp.float32(0.251))) == 250.0


def test_schedules_are_static_jit_arguments():
  traces = []

  def alpha_bar(t, schedule):
    traces.append(1)
    return schedule.alpha_bar(t)

  f = jax.jit(alpha_bar, static_argnums=1)
  f(jnp.float32(0.2), Schedule())
  f(jnp.float32(0.3), Schedule(1000, 0.1, 20.0))
  assert hash(Schedule()) == hash(Schedule(1000, 0.1, 20.0))
  assert len(traces) == 1


@pytest.mark.parametrize('kwargs, name', [
    (dict(num_train_timesteps=0), 'num_train_timesteps'),
    (dict(num_train_timesteps=10.0), 'num_train_timesteps'),
    (dict(beta_min=0.0), 'beta_min'),
    (dict(beta_min=5.0, beta_max=1.0), 'beta_min'),
    (dict(beta_max=float('nan')), 'beta_max'),
    (dict(num_train_timesteps=10, beta_max=20.0), 'beta_max'),
    (dict(time_labels='round'), 'time_labels'),
])
def test_bad_schedules_are_value_errors(kwargs, name):
  with pytest.raises(ValueError, match=name):
    Schedule(**kwargs)


@pytest.mark.parametrize('t_star', [0.0, 1.5, 0.1234, -0.1, float('inf')])
def test_bad_t_star_is_a_value_error(t_star):
  with pytest.raises(ValueError, match='t_star'):
    Schedule().start_index(t_star)
