"""Reverse-diffusion samplers as `(init, step)` pairs (lib.iterate's convention).

Every sampler takes the denoiser as `eps_fn(x, labels) -> ε̂`, x [B, H, W, C] in the
diffusion's [−1, 1] scale and labels [B] float32 (integral for the discrete samplers; see
`schedules` for continuous time), and starts from any intermediate point (purification
starts at t*, not at T). `init(x) -> State(x, i=0)`; `step(state, key) -> (state, None)`
draws its noise from `key`, which `lib.iterate.run` derives as `fold_in(run_key, i)`: the
same run key reproduces a run bit for bit ("fixed randomness"), a new key gives a new draw.

Discrete (labels `timesteps`, strictly decreasing to 0; the step after the last is −1, ᾱ = 1):

  DDPM ancestral  Ho et al. 2020, eq. 6–7 and Algorithm 2, with the arithmetic of diffusers'
                  `DDPMScheduler.step` (prediction_type 'epsilon'): x̂₀ = (x − √(1−ᾱ_t) ε̂)/√ᾱ_t,
                  optionally clipped to ±clip_sample_range, posterior mean of q(x_prev | x_t,
                  x̂₀), variance β̃ ('fixed_small') or β_t = 1 − ᾱ_t/ᾱ_prev ('fixed_large'),
                  no noise at t = 0.
  DDIM            Song, Meng & Ermon 2021, eq. 12 and 16, as diffusers' `DDIMScheduler.step`:
                  σ_t = η √((1−ᾱ_prev)/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_prev)); η = 0 is deterministic.

Continuous (times t_0 = t* > … > t_n = t_min on a uniform grid; h_i = t_i − t_{i+1} > 0;
score s(x, t) = −ε̂(x, label(t)) / √(1 − ᾱ(t)), Song et al. 2021 §3.3 / DiffPure):

  reverse VP-SDE  Euler–Maruyama on dx = [−½β x − β s] dt + √β dw̄ backwards in time (Song et
                  al. 2021, eq. 6), i.e. x ← x + h (½β x + β s) + √β Δw, Δw ~ N(0, h I): what
                  DiffPure's `torchsde.sdeint(..., method='euler')` computes in s = 1 − t.
  PF-ODE          Euler on the probability-flow ODE dx/dt = −½β (x + s) (Song et al. 2021,
                  eq. 13): x ← x + h ½β (x + s). Deterministic: the key is unused.

`euler_maruyama(..., dws)` runs the SDE sampler on given Brownian increments (the same
`reverse_sde_update`), so it can be checked against diffrax on one Brownian path
(`lib.diffusion.diffrax_solve`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lib import iterate, validate
from lib.diffusion.schedules import Schedule

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]
VARIANCE_TYPES = ('fixed_large', 'fixed_small')
# diffusers clamps the DDPM posterior variance before its log/sqrt.
_MIN_VARIANCE = 1e-20


class State(NamedTuple):
  """A sampler's state.

  Attributes:
    x: [B, H, W, C] the current sample, diffusion scale ([−1, 1] for data).
    i: int32 scalar, the number of steps taken (indexes the time grid).
  """
  x: Array
  i: Array


def _init(x: Array) -> State:
  return State(x, jnp.zeros((), jnp.int32))


def _labels(x: Array, value: Array) -> Array:
  """[B] float32 copies of a scalar label."""
  return jnp.broadcast_to(jnp.asarray(value, jnp.float32), (x.shape[0],))


# ---------------------------------------------------------------- discrete (DDPM, DDIM)

def discrete_timesteps(start_index: int, num_steps: int) -> np.ndarray:
  """[num_steps] int32 labels from `start_index` down to 0, evenly spaced, rounded half up.

  `discrete_timesteps(99, 100)` is 99, 98, …, 0 (DiffPure's DDPM chain from t* = 0.1);
  `discrete_timesteps(99, 10)` is 99, 88, …, 11, 0.

  Raises:
    ValueError: start_index < 0, or num_steps not in [1, start_index + 1].
  """
  validate.check_int(start_index, 'start_index', minimum=0)
  validate.check_int(num_steps, 'num_steps', minimum=1)
  if num_steps > start_index + 1:
    raise ValueError(f'num_steps must be at most {start_index + 1} (one per discrete timestep '
                     f'from {start_index} down to 0); got {num_steps}.')
  return np.floor(np.linspace(start_index, 0, num_steps) + 0.5).astype(np.int32)


def _previous(timesteps: np.ndarray) -> np.ndarray:
  return np.append(timesteps[1:], -1).astype(np.int32)


def predict_x0(schedule: Schedule, eps: Array, x: Array, t: Array, *, clip_sample: bool,
               clip_sample_range: float = 1.0) -> Array:
  """x̂₀ = (x − √(1 − ᾱ_t) ε̂) / √ᾱ_t (Ho et al. 2020, eq. 15), clipped if asked.

  Args:
    schedule: the schedule.
    eps: [B, H, W, C] predicted noise.
    x: [B, H, W, C] sample at discrete step t.
    t: int32 scalar step index in [0, T).
    clip_sample: clip x̂₀ to [−clip_sample_range, clip_sample_range] (diffusers' option).
    clip_sample_range: the clipping bound.
  """
  a_t = schedule.alpha_bar_at(t)
  x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
  return jnp.clip(x0, -clip_sample_range, clip_sample_range) if clip_sample else x0


def ddpm_update(schedule: Schedule, eps: Array, x: Array, t: Array, prev_t: Array, noise: Array,
                *, variance_type: str = 'fixed_large', clip_sample: bool = False,
                clip_sample_range: float = 1.0) -> Array:
  """One DDPM ancestral step x_t → x_prev, as diffusers' `DDPMScheduler.step`.

  Args:
    schedule: the schedule.
    eps: [B, H, W, C] the denoiser's ε̂(x_t, t).
    x: [B, H, W, C] x_t.
    t: int32 scalar current step; prev_t: the next step (t − 1, or the next label of a
      respaced chain; −1 after the last).
    noise: [B, H, W, C] standard normal draw (unused at t = 0).
    variance_type: 'fixed_large' (β_t; ddpm-cifar10-32) or 'fixed_small' (β̃_t).
    clip_sample, clip_sample_range: clip x̂₀ (ddpm-cifar10-32 uses clip_sample=True).

  Returns:
    [B, H, W, C] x_prev.
  """
  a_t, a_prev = schedule.alpha_bar_at(t), schedule.alpha_bar_at(prev_t)
  b_t, b_prev = 1 - a_t, 1 - a_prev
  current_alpha = a_t / a_prev
  current_beta = 1 - current_alpha
  x0 = predict_x0(schedule, eps, x, t, clip_sample=clip_sample,
                  clip_sample_range=clip_sample_range)
  mean = (a_prev ** 0.5 * current_beta / b_t) * x0 + (current_alpha ** 0.5 * b_prev / b_t) * x
  if variance_type == 'fixed_small':
    variance = jnp.maximum(b_prev / b_t * current_beta, _MIN_VARIANCE)
  else:
    variance = current_beta
  std = jnp.where(t > 0, variance ** 0.5, jnp.zeros_like(variance))
  return mean + std * noise


def ddim_update(schedule: Schedule, eps: Array, x: Array, t: Array, prev_t: Array, noise: Array,
                *, eta: float = 0.0, clip_sample: bool = False,
                clip_sample_range: float = 1.0) -> Array:
  """One DDIM step x_t → x_prev (Song et al. 2021, eq. 12), as diffusers' `DDIMScheduler.step`.

  With diffusers' defaults `set_alpha_to_one=True` (ᾱ after the last step is 1) and
  `use_clipped_model_output=False` (the direction term uses ε̂, not the clipped x̂₀'s ε).

  Args:
    schedule, eps, x, t, prev_t, noise, clip_sample, clip_sample_range: as `ddpm_update`.
    eta: η ≥ 0 (0: deterministic DDIM; 1: DDPM-like variance).

  Returns:
    [B, H, W, C] x_prev.
  """
  a_t, a_prev = schedule.alpha_bar_at(t), schedule.alpha_bar_at(prev_t)
  x0 = predict_x0(schedule, eps, x, t, clip_sample=clip_sample,
                  clip_sample_range=clip_sample_range)
  variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
  std = eta * variance ** 0.5
  direction = (1 - a_prev - std ** 2) ** 0.5 * eps
  return a_prev ** 0.5 * x0 + direction + std * noise


def make_ddpm(eps_fn: EpsFn, schedule: Schedule, timesteps: np.ndarray, *,
              variance_type: str = 'fixed_large', clip_sample: bool = False,
              clip_sample_range: float = 1.0) -> iterate.Iterative:
  """DDPM ancestral sampling along `timesteps` (see `discrete_timesteps`) as `(init, step)`.

  Args:
    eps_fn: `eps_fn(x, labels) -> ε̂`.
    schedule: the schedule.
    timesteps: [n] int labels, strictly decreasing (run n steps).
    variance_type, clip_sample, clip_sample_range: see `ddpm_update`.
  """
  validate.check_choice(variance_type, VARIANCE_TYPES, 'variance_type')
  steps, prevs = jnp.asarray(timesteps, jnp.int32), jnp.asarray(_previous(timesteps))

  def step(state: State, key: Array) -> tuple[State, None]:
    t, prev_t = steps[state.i], prevs[state.i]
    eps = eps_fn(state.x, _labels(state.x, t))
    noise = jax.random.normal(key, state.x.shape, state.x.dtype)
    x = ddpm_update(schedule, eps, state.x, t, prev_t, noise, variance_type=variance_type,
                    clip_sample=clip_sample, clip_sample_range=clip_sample_range)
    return State(x, state.i + 1), None

  return iterate.Iterative(_init, step)


def make_ddim(eps_fn: EpsFn, schedule: Schedule, timesteps: np.ndarray, *, eta: float = 0.0,
              clip_sample: bool = False, clip_sample_range: float = 1.0) -> iterate.Iterative:
  """DDIM sampling along `timesteps` as `(init, step)`; arguments as `make_ddpm`, `eta` as
  `ddim_update` (the key is used only when η > 0)."""
  validate.check_number(eta, 'eta', low=0.0)
  steps, prevs = jnp.asarray(timesteps, jnp.int32), jnp.asarray(_previous(timesteps))

  def step(state: State, key: Array) -> tuple[State, None]:
    t, prev_t = steps[state.i], prevs[state.i]
    eps = eps_fn(state.x, _labels(state.x, t))
    noise = (jax.random.normal(key, state.x.shape, state.x.dtype) if eta > 0
             else jnp.zeros_like(state.x))
    x = ddim_update(schedule, eps, state.x, t, prev_t, noise, eta=eta, clip_sample=clip_sample,
                    clip_sample_range=clip_sample_range)
    return State(x, state.i + 1), None

  return iterate.Iterative(_init, step)


# ---------------------------------------------------------------- continuous (VP-SDE, PF-ODE)

def continuous_times(t_start: float, num_steps: int, t_end: float = 1e-5) -> np.ndarray:
  """[num_steps + 1] float64 uniform grid from `t_start` down to `t_end`.

  DiffPure integrates from t* to 1e-5 with torchsde's fixed dt = 1e-3 in s = 1 − t: t*·1000
  steps (100 at t* = 0.1) of 1e-3 but the last, 1e-3 − 1e-5, evaluated at float32 t = 1 − s.
  This grid spreads the same span evenly over `num_steps` steps (t* = 0.1, 100 steps: dt =
  0.9999e-3), computed in float64.

  Raises:
    ValueError: not 0 <= t_end < t_start <= 1, or num_steps < 1.
  """
  validate.check_int(num_steps, 'num_steps', minimum=1)
  validate.check_number(t_start, 't_start', low=0.0, high=1.0)
  validate.check_number(t_end, 't_end', low=0.0)
  if not t_end < t_start:
    raise ValueError(f't_end must be smaller than t_start; got t_end={t_end!r}, '
                     f't_start={t_start!r}.')
  return np.linspace(t_start, t_end, num_steps + 1)


def score(eps_fn: EpsFn, schedule: Schedule, x: Array, t: Array) -> Array:
  """∇ₓ log p_t(x) ≈ −ε̂(x, label(t)) / √(1 − ᾱ(t)) (Song et al. 2021, §3.3; DiffPure).

  Args:
    eps_fn: the denoiser.
    schedule: the schedule (continuous ᾱ, labels).
    x: [B, H, W, C].
    t: float32 scalar continuous time in (0, 1].
  """
  eps = eps_fn(x, _labels(x, schedule.label(t)))
  return -eps / schedule.marginal_std(t)


def reverse_sde_update(eps_fn: EpsFn, schedule: Schedule, x: Array, t: Array, h: Array,
                       dw: Array) -> Array:
  """One Euler–Maruyama step of the reverse VP-SDE from t to t − h.

  x ← x + h (½β(t) x + β(t) s(x, t)) + √β(t) Δw.

  Args:
    eps_fn, schedule: the denoiser and schedule.
    x: [B, H, W, C] sample at t.
    t: float32 scalar time; h: float32 scalar step > 0.
    dw: [B, H, W, C] Brownian increment, N(0, h I).
  """
  beta = schedule.beta(t)
  drift = 0.5 * beta * x + beta * score(eps_fn, schedule, x, t)
  return x + h * drift + beta ** 0.5 * dw


def probability_flow_update(eps_fn: EpsFn, schedule: Schedule, x: Array, t: Array,
                            h: Array) -> Array:
  """One Euler step of the probability-flow ODE from t to t − h: x ← x + h ½β(t)(x + s(x, t))."""
  beta = schedule.beta(t)
  return x + h * 0.5 * beta * (x + score(eps_fn, schedule, x, t))


def _grid(times: np.ndarray | Array) -> tuple[Array, Array]:
  """float32 (t_i [n], h_i [n]): from numpy times h in float64 before the cast (no
  cancellation); from a jax array (a grid traced from an argument t*) in float32."""
  if isinstance(times, jax.Array):
    times = times.astype(jnp.float32)
    return times[:-1], times[:-1] - times[1:]
  times = np.asarray(times, np.float64)
  return jnp.asarray(times[:-1], jnp.float32), jnp.asarray(times[:-1] - times[1:], jnp.float32)


def make_reverse_sde(eps_fn: EpsFn, schedule: Schedule,
                     times: np.ndarray | Array) -> iterate.Iterative:
  """The reverse VP-SDE (Euler–Maruyama) on the grid `times` (see `continuous_times`).

  Args:
    eps_fn: the denoiser.
    schedule: the schedule.
    times: [n + 1] decreasing times (run n steps): numpy (`continuous_times`), or a jax
      array, which may be traced (a grid from an argument t*: one program for every t*).
  """
  ts, hs = _grid(times)

  def step(state: State, key: Array) -> tuple[State, None]:
    t, h = ts[state.i], hs[state.i]
    dw = h ** 0.5 * jax.random.normal(key, state.x.shape, state.x.dtype)
    return State(reverse_sde_update(eps_fn, schedule, state.x, t, h, dw), state.i + 1), None

  return iterate.Iterative(_init, step)


def make_probability_flow(eps_fn: EpsFn, schedule: Schedule,
                          times: np.ndarray | Array) -> iterate.Iterative:
  """The probability-flow ODE (Euler) on the grid `times` (numpy or a jax array, as
  `make_reverse_sde`); the step's key is unused."""
  ts, hs = _grid(times)

  def step(state: State, key: Array) -> tuple[State, None]:
    del key
    x = probability_flow_update(eps_fn, schedule, state.x, ts[state.i], hs[state.i])
    return State(x, state.i + 1), None

  return iterate.Iterative(_init, step)


def euler_maruyama(eps_fn: EpsFn, schedule: Schedule, x: Array, times: np.ndarray,
                   dws: Array) -> Array:
  """The reverse-SDE sampler driven by given Brownian increments (for cross-checks).

  Args:
    eps_fn, schedule: the denoiser and schedule.
    x: [B, H, W, C] sample at times[0].
    times: [n + 1] decreasing times.
    dws: [n, B, H, W, C] increments; dws[i] ~ N(0, (times[i] − times[i+1]) I).

  Returns:
    [B, H, W, C] the sample at times[-1].
  """
  ts, hs = _grid(times)

  def body(x, inputs):
    t, h, dw = inputs
    return reverse_sde_update(eps_fn, schedule, x, t, h, dw), None

  return jax.lax.scan(body, x, (ts, hs, dws))[0]


def sample(sampler: iterate.Iterative, x: Array, num_steps: int, *, key: Array,
           remat: bool = False) -> Array:
  """Runs `num_steps` steps of `sampler` from `x`; returns the final sample [B, H, W, C].

  Args:
    sampler: a `make_*` pair.
    x: [B, H, W, C] the starting sample.
    num_steps: the length of the sampler's grid.
    key: typed PRNG key; step i draws from `fold_in(key, i)`.
    remat: wrap each step in `jax.checkpoint`, so reverse-mode differentiation stores only
      the per-step sample and recomputes the denoiser's activations (memory flat in the
      number of steps but for one [B, H, W, C] carry per step).
  """
  step = jax.checkpoint(sampler.step) if remat else sampler.step
  return iterate.run(step, sampler.init(x), num_steps, key=key)[0].x
