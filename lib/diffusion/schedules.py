"""The variance-preserving noise schedule, discrete (DDPM) and continuous (VP-SDE), as one object.

Discrete (Ho et al. 2020, "Denoising diffusion probabilistic models", §4 and eq. 4): T steps
with β_k = linspace(β_min / T, β_max / T, T)[k], k = 0..T−1 (the linear schedule
1e-4 … 0.02 for T = 1000), α_k = 1 − β_k, ᾱ_k = Π_{i≤k} α_i, and

    x_k = √ᾱ_k x_0 + √(1 − ᾱ_k) ε.

Continuous (Song et al. 2021, "Score-based generative modeling through SDEs", eq. 11 and
eq. 29 / appendix B): dx = −½ β(t) x dt + √β(t) dw on t ∈ [0, 1] with
β(t) = β_min + t (β_max − β_min), whose marginal is N(√ᾱ(t) x_0, (1 − ᾱ(t)) I) with

    ᾱ(t) = exp(−∫₀ᵗ β) = exp(−½ t² (β_max − β_min) − t β_min).

The discrete schedule is the continuous one on the grid t = (k + 1) / T (β_k ≈ β(t) / T, so
ᾱ_k ≈ ᾱ((k + 1) / T)): at t = 0.1, T = 1000 the discrete ᾱ_99 = 0.897018 and the continuous
ᾱ(0.1) = 0.896282. DiffPure (Nie et al. 2022, NVlabs/DiffPure `runners/diffpure_sde.py`)
uses both: the forward noising to t* with the discrete ᾱ at index t*·T − 1, the reverse SDE
with the continuous ᾱ(t). `discrete_betas` in DiffPure's and score_sde's `VPSDE` is the same
`linspace(β_min / N, β_max / N, N)` as diffusers' `DDPMScheduler(beta_schedule='linear')`.

Timestep labels (what the denoiser's time embedding is fed at continuous time t), as
DiffPure's code does (checked against NVlabs/DiffPure and score_sde `models/utils.py`):

  'scaled'  label = t · (T − 1), a float: score_sde's `get_score_fn(..., continuous=True)`
            ("the maximum value of time embedding is assumed to 999"), which DiffPure uses
            for its CIFAR-10 score model (`--score_type score_sde`); t = 0.1 gives 99.9.
  'floor'   label = ⌊t · T⌋ computed in float32, an integer: DiffPure's `_scale_timesteps`
            for guided-diffusion models (`(t.float() * N).long()`), float32 flooring included
            (0.1 gives 100; some grid points floor one label low, PAPERS.md §5).

Neither is the discrete index k whose ᾱ_k ≈ ᾱ(t) (that would be t·T − 1): a discrete DDPM
denoiser run under the SDE sampler sees labels up to one step off, as in DiffPure.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate

Array = jax.Array
TIME_LABELS = ('scaled', 'floor')


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A VP schedule: discrete DDPM tables and the continuous VP-SDE (see the module docstring).

  Frozen and compared by value, so it is hashable and serves as a static `jit` argument.

  Attributes:
    num_train_timesteps: T ≥ 1, the denoiser's number of training steps.
    beta_min: β(0) = T · β_0 (0.1 for DDPM's β_0 = 1e-4 at T = 1000).
    beta_max: β(1) = T · β_{T−1} (20 for 0.02 at T = 1000).
    time_labels: 'scaled' or 'floor', how continuous t becomes a denoiser label.

  Example:
    >>> s = Schedule()                       # T = 1000, β 0.1 … 20 (DDPM 1e-4 … 0.02)
    >>> float(s.alphas_cumprod()[99]), float(s.alpha_bar(0.1))
    (0.8970181..., 0.8962821...)
  """
  num_train_timesteps: int = 1000
  beta_min: float = 0.1
  beta_max: float = 20.0
  time_labels: str = 'scaled'

  def __post_init__(self):
    validate.check_int(self.num_train_timesteps, 'num_train_timesteps', minimum=1)
    validate.check_number(self.beta_min, 'beta_min')
    validate.check_number(self.beta_max, 'beta_max')
    if not 0 < self.beta_min < self.beta_max:
      raise ValueError(f'beta_min and beta_max must satisfy 0 < beta_min < beta_max; got '
                       f'beta_min={self.beta_min!r}, beta_max={self.beta_max!r}.')
    if self.beta_max >= self.num_train_timesteps:
      raise ValueError(f'beta_max / num_train_timesteps is the last discrete β and must be < 1; '
                       f'got beta_max={self.beta_max!r} with num_train_timesteps='
                       f'{self.num_train_timesteps}.')
    validate.check_choice(self.time_labels, TIME_LABELS, 'time_labels')

  @classmethod
  def from_betas(cls, beta_start: float = 1e-4, beta_end: float = 0.02,
                 num_train_timesteps: int = 1000, time_labels: str = 'scaled') -> Schedule:
    """The schedule of diffusers' `DDPMScheduler(beta_start, beta_end, num_train_timesteps)`.

    Args:
      beta_start, beta_end: first and last discrete β (linear schedule).
      num_train_timesteps: T.
      time_labels: see the module docstring.
    """
    validate.check_int(num_train_timesteps, 'num_train_timesteps', minimum=1)
    return cls(num_train_timesteps, beta_start * num_train_timesteps,
               beta_end * num_train_timesteps, time_labels)

  # Discrete (Ho et al. 2020). Tables in float64 numpy; `*_table` are float32 constants.

  def betas(self) -> np.ndarray:
    """[T] float64 discrete β_k = linspace(β_min / T, β_max / T, T)."""
    t = self.num_train_timesteps
    return np.linspace(self.beta_min / t, self.beta_max / t, t, dtype=np.float64)

  def alphas_cumprod(self) -> np.ndarray:
    """[T] float64 ᾱ_k = Π_{i≤k} (1 − β_i)."""
    return np.cumprod(1.0 - self.betas())

  def alpha_bar_at(self, index: Array) -> Array:
    """float32 ᾱ at integer index (any shape); index −1 gives ᾱ = 1 (before the first step).

    Args:
      index: int array with values in [−1, T).
    """
    table = jnp.asarray(_padded_alphas_cumprod(self), jnp.float32)
    return table[jnp.asarray(index, jnp.int32) + 1]

  # Continuous (Song et al. 2021, VP-SDE). t is a float32 array in [0, 1] (any shape).

  def beta(self, t: Array) -> Array:
    """β(t) = β_min + t (β_max − β_min)."""
    t = jnp.asarray(t, jnp.float32)
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t: Array) -> Array:
    """log √ᾱ(t) = −¼ t² (β_max − β_min) − ½ t β_min (score_sde's `marginal_prob`)."""
    t = jnp.asarray(t, jnp.float32)
    return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def alpha_bar(self, t: Array) -> Array:
    """ᾱ(t) = exp(−∫₀ᵗ β(s) ds)."""
    return jnp.exp(2.0 * self.log_mean_coeff(t))

  def marginal_mean_coeff(self, t: Array) -> Array:
    """√ᾱ(t): E[x_t | x_0] = √ᾱ(t) x_0."""
    return jnp.exp(self.log_mean_coeff(t))

  def marginal_std(self, t: Array) -> Array:
    """√(1 − ᾱ(t)), the marginal standard deviation (via expm1: accurate near t = 0)."""
    return jnp.sqrt(-jnp.expm1(2.0 * self.log_mean_coeff(t)))

  def label(self, t: Array) -> Array:
    """float32 denoiser labels at continuous t (same shape), per `time_labels`."""
    t = jnp.asarray(t, jnp.float32)
    if self.time_labels == 'scaled':
      return t * jnp.float32(self.num_train_timesteps - 1)
    return jnp.floor(t * jnp.float32(self.num_train_timesteps))

  def start_index(self, t_star: float) -> int:
    """The discrete index k = t*·T − 1 whose ᾱ_k DiffPure noises with at t* (`a[t - 1]`).

    Raises:
      ValueError: t* is not in (0, 1] or t*·T is not an integer (DiffPure's t is an int).
    """
    validate.check_number(t_star, 't_star')
    scaled = t_star * self.num_train_timesteps
    if not 0 < t_star <= 1 or abs(scaled - round(scaled)) > 1e-6 * self.num_train_timesteps:
      raise ValueError(f't_star must be in (0, 1] and a multiple of 1/num_train_timesteps '
                       f'(= 1/{self.num_train_timesteps}); got {t_star!r}.')
    return int(round(scaled)) - 1


@functools.lru_cache(maxsize=16)
def _padded_alphas_cumprod(schedule: Schedule) -> np.ndarray:
  """[T + 1] float64: 1 (index −1) followed by ᾱ_0 … ᾱ_{T−1}."""
  return np.concatenate([[1.0], schedule.alphas_cumprod()])
