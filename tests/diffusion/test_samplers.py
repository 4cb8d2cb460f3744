"""lib/diffusion/samplers.py: one-step parity with diffusers' DDPM/DDIM schedulers, sampling
Gaussian data with the exact score, the PF-ODE's closed-form map, keys and continuation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from lib import iterate
from lib.diffusion import Schedule, diffrax_solve, samplers
from tests.diffusion.toys import MU, S0, gaussian_eps, gaussian_marginal

SCHEDULE = Schedule()
SHAPE = (2, 4, 4, 3)
RNG = np.random.default_rng(0)
EPS = RNG.normal(size=SHAPE).astype(np.float32)
SAMPLE = (1.5 * RNG.normal(size=SHAPE)).astype(np.float32)  # |x̂₀| > 1 often: clipping acts


def _same_tables(ref):
  """Gives diffusers our ᾱ table (float64, cast once; theirs is a float32 cumprod, 1 ulp off
  in places): near t = 0, 1 − ᾱ_t ≈ 1e-4 turns that ulp into ~3e-4 of the clipped step, in
  their arithmetic as in ours, so the step is compared on equal tables (test_schedules
  compares the tables themselves)."""
  ref.alphas_cumprod = torch.from_numpy(SCHEDULE.alphas_cumprod().astype(np.float32))
  return ref


def _torch_noise(seed):
  return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('variance_type', ['fixed_large', 'fixed_small'])
@pytest.mark.parametrize('clip_sample', [True, False])
@pytest.mark.parametrize('num_inference_steps, t', [(None, 999), (None, 500), (None, 1), (None, 0),
                                                    (10, 500), (10, 0)])
def test_ddpm_step_matches_diffusers(variance_type, clip_sample, num_inference_steps, t):
  ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule='linear', clip_sample=clip_sample,
                      variance_type=variance_type)
  _same_tables(ref)
  if num_inference_steps:
    ref.set_timesteps(num_inference_steps)
  prev_t = int(ref.previous_timestep(t))
  expected = ref.step(torch.from_numpy(EPS), t, torch.from_numpy(SAMPLE),
                      generator=torch.Generator().manual_seed(t)).prev_sample.numpy()
  ours = samplers.ddpm_update(SCHEDULE, jnp.asarray(EPS), jnp.asarray(SAMPLE), jnp.int32(t),
                              jnp.int32(prev_t if prev_t >= 0 else -1),
                              jnp.asarray(_torch_noise(t).numpy()), variance_type=variance_type,
                              clip_sample=clip_sample)
  np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('eta', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('clip_sample', [True, False])
@pytest.mark.parametrize('t', [980, 500, 20, 0])
def test_ddim_step_matches_diffusers(eta, clip_sample, t):
  ref = _same_tables(DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear',
                                   clip_sample=clip_sample))
  ref.set_timesteps(50)
  noise = _torch_noise(t)
  expected = ref.step(torch.from_numpy(EPS), t, torch.from_numpy(SAMPLE), eta=eta,
                      variance_noise=noise).prev_sample.numpy()
  ours = samplers.ddim_update(SCHEDULE, jnp.asarray(EPS), jnp.asarray(SAMPLE), jnp.int32(t),
                              jnp.int32(max(t - 20, -1)), jnp.asarray(noise.numpy()), eta=eta,
                              clip_sample=clip_sample)
  np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_discrete_timesteps():
  np.testing.assert_array_equal(samplers.discrete_timesteps(99, 100), np.arange(99, -1, -1))
  np.testing.assert_array_equal(samplers.discrete_timesteps(99, 10),
                                [99, 88, 77, 66, 55, 44, 33, 22, 11, 0])
  np.testing.assert_array_equal(samplers.discrete_timesteps(5, 1), [5])
  with pytest.raises(ValueError, match='num_steps'):
    samplers.discrete_timesteps(9, 11)
  with pytest.raises(ValueError, match='start_index'):
    samplers.discrete_timesteps(-1, 1)


# Gaussian data N(μ, s₀²): start from the exact marginal at t*, sample back, compare moments.
GAUSS_SHAPE = (512, 2, 2, 2)  # 4096 independent scalars
T_STAR = 0.5


def _start(key, a_bar):
  mean, std = gaussian_marginal(a_bar)
  return mean + std * jax.random.normal(key, GAUSS_SHAPE)


def _sampler(name, num_steps):
  k = SCHEDULE.start_index(T_STAR)
  if name in ('sde', 'ode'):
    times = samplers.continuous_times(T_STAR, num_steps, 1e-3)
    make = samplers.make_reverse_sde if name == 'sde' else samplers.make_probability_flow
    return make(gaussian_eps(SCHEDULE, continuous=True), SCHEDULE, times), float(
        SCHEDULE.alpha_bar(T_STAR))
  eps_fn = gaussian_eps(SCHEDULE, continuous=False)
  steps = samplers.discrete_timesteps(k, num_steps)
  if name == 'ddpm_large':
    sampler = samplers.make_ddpm(eps_fn, SCHEDULE, steps, variance_type='fixed_large')
  elif name == 'ddpm_small':
    sampler = samplers.make_ddpm(eps_fn, SCHEDULE, steps, variance_type='fixed_small')
  else:
    sampler = samplers.make_ddim(eps_fn, SCHEDULE, steps, eta=1.0 if name == 'ddim1' else 0.0)
  return sampler, float(SCHEDULE.alpha_bar_at(k))


GAUSSIAN_RUNS = {'sde': 250, 'ode': 100, 'ddpm_large': 500, 'ddpm_small': 500, 'ddim0': 50,
                 'ddim1': 100}


def test_samplers_recover_gaussian_data_with_the_exact_score():
  runs = {name: _sampler(name, n) + (n,) for name, n in GAUSSIAN_RUNS.items()}

  @jax.jit  # one program for all six (compiles faster than six)
  def sample_all(key):
    return {name: samplers.sample(sampler, _start(jax.random.fold_in(key, i), a_bar), n,
                                  key=jax.random.fold_in(key, 100 + i))
            for i, (name, (sampler, a_bar, n)) in enumerate(runs.items())}

  for name, out in sample_all(jax.random.key(1)).items():
    assert abs(float(out.mean()) - MU) < 0.03, (name, float(out.mean()))
    assert abs(float(out.std()) - S0) < 0.03, (name, float(out.std()))


def test_one_step_score_is_exact_and_sees_a_wrong_label():
  """s(x, t) = −(x − √ᾱ(t) μ) / (ᾱ(t) s₀² + 1 − ᾱ(t)) when ε̂ is exact for the labels fed;
  feeding 'floor' labels to a denoiser trained on 'scaled' ones shows at one step."""
  eps_fn = gaussian_eps(SCHEDULE, continuous=True)
  x = jnp.asarray(SAMPLE)
  for t in (0.1, 0.5, 0.9):
    a = float(SCHEDULE.alpha_bar(t))
    exact = -(x - a ** 0.5 * MU) / (a * S0 ** 2 + 1 - a)
    np.testing.assert_allclose(samplers.score(eps_fn, SCHEDULE, x, jnp.float32(t)), exact,
                               rtol=1e-4, atol=1e-5)
  floor = Schedule(time_labels='floor')
  shifted = samplers.score(eps_fn, floor, x, jnp.float32(0.1))
  right = samplers.score(eps_fn, SCHEDULE, x, jnp.float32(0.1))
  assert float(jnp.abs(shifted / right - 1).max()) > 1e-4


def test_probability_flow_ode_is_the_exact_gaussian_map():
  """x_t ↦ a_s μ + (σ_s/σ_t)(x_t − a_t μ), a = √ᾱ, σ² = ᾱ s₀² + 1 − ᾱ; Euler converges at
  first order to it and diffrax's Tsit5 on the same equation matches it."""
  t0, t1 = T_STAR, 1e-3
  eps_fn = gaussian_eps(SCHEDULE, continuous=True)
  x = _start(jax.random.key(3), float(SCHEDULE.alpha_bar(t0)))[:8]
  (m0, s0), (m1, s1) = (gaussian_marginal(float(SCHEDULE.alpha_bar(t))) for t in (t0, t1))
  exact = m1 + s1 / s0 * (x - m0)

  @jax.jit
  def euler(x):
    return [samplers.sample(samplers.make_probability_flow(
        eps_fn, SCHEDULE, samplers.continuous_times(t0, n, t1)), x, n, key=jax.random.key(0))
            for n in (25, 50)]

  errors = [float(jnp.abs(out - exact).max()) for out in euler(x)]
  assert errors[1] < 0.6 * errors[0] and errors[1] < 0.02, errors
  import diffrax
  tsit = diffrax_solve.solve(eps_fn, SCHEDULE, x, samplers.continuous_times(t0, 20, t1),
                             kind='ode', solver=diffrax.Tsit5())
  np.testing.assert_allclose(tsit, exact, atol=1e-4)


def test_fixed_key_reproduces_and_new_key_differs_and_runs_continue():
  sampler, a_bar = _sampler('sde', 10)
  x = _start(jax.random.key(1), a_bar)[:4]
  five = jax.jit(lambda state, k, start: iterate.run(sampler.step, state, 5, key=k, start=start)[0])
  key = jax.random.key(5)
  full = five(five(sampler.init(x), key, 0), key, 5).x
  again = five(five(sampler.init(x), key, 0), key, 5).x
  other = five(five(sampler.init(x), jax.random.key(6), 0), jax.random.key(6), 5).x
  np.testing.assert_array_equal(full, again)
  assert float(jnp.abs(full - other).max()) > 1e-2
  # Two runs of 5 (the second from start=5) equal one run of 10: fold_in(key, i) per step.
  np.testing.assert_allclose(full, samplers.sample(sampler, x, 10, key=key), atol=1e-6)


def test_ddim_without_eta_and_ode_ignore_the_key():
  for name in ('ddim0', 'ode'):
    sampler, a_bar = _sampler(name, 5)
    x = _start(jax.random.key(1), a_bar)[:2]
    a = samplers.sample(sampler, x, 5, key=jax.random.key(0))
    np.testing.assert_array_equal(a, samplers.sample(sampler, x, 5, key=jax.random.key(1)))


def test_bad_sampler_arguments_are_value_errors():
  eps_fn = gaussian_eps(SCHEDULE, continuous=False)
  with pytest.raises(ValueError, match='variance_type'):
    samplers.make_ddpm(eps_fn, SCHEDULE, np.arange(3)[::-1], variance_type='learned')
  with pytest.raises(ValueError, match='eta'):
    samplers.make_ddim(eps_fn, SCHEDULE, np.arange(3)[::-1], eta=-1.0)
  with pytest.raises(ValueError, match='t_end'):
    samplers.continuous_times(0.1, 10, 0.2)
  with pytest.raises(ValueError, match='num_steps'):
    samplers.continuous_times(0.1, 0)
