"""Diffusion purification (DiffPure; Nie et al. 2022) as a stochastic model for the attacks.

For images x in [0, 1] [B, H, W, C] and a noise key ω:

  1. u = 2x − 1 (the diffusion's [−1, 1] scale);
  2. diffuse to t*: u_t* = √ᾱ_k u + √(1 − ᾱ_k) e, e ~ N(0, I), with the *discrete* ᾱ at
     k = t*·T − 1, as DiffPure's `image_editing_sample` (`a[t - 1]`) does for every sampler;
  3. run the reverse process from t* to the end:
       'sde'  (default, DiffPure) Euler–Maruyama on the reverse VP-SDE from t* to t_min with
              the *continuous* ᾱ(t) in the score (DiffPure's mismatch, kept: 0.897018 vs
              0.896282 at t* = 0.1); `num_steps` uniform steps (DiffPure: dt = 1e-3, i.e.
              t*·1000 steps, the default);
       'ode'  Euler on the probability-flow ODE on the same grid (DiffPure's `ode` runner);
       'ddpm' ancestral DDPM from label k down to 0 (`num_steps` ≤ k + 1 labels, respaced as
              `samplers.discrete_timesteps`; k + 1 steps by default, DiffPure's DDPM runner);
       'ddim' DDIM with η on the same labels;
  4. map back, (u_0 + 1) / 2, without clipping (as DiffPure), and classify.

t* as an argument: with `PurifierConfig(t_star=None, num_steps=n)` ('sde'/'ode') t* is not a
static setting but a traced scalar carried by the params (`PurifierParams(..., t_star=t)`,
or `purify(..., t_star=t)`): k, ᾱ_k and the time grid are computed from it inside the
program, so a t* grid runs on ONE compiled program per evaluation (the attacks' included)
instead of one per t*. The number of reverse steps stays static (the same n for every t*);
the grid is then computed in float32 (a static t*'s in float64; the purified logits of
both agree to 1e-5, tests/diffusion/test_purify.py).

`purify(denoiser, params, x, *, key, config)` returns the purified images (`Purifier(denoiser,
config)` is the same as a function `(params, x, *, key)`, the form `analysis` takes);
`PurifiedClassifier(denoiser, classifier, config)` is the whole pipeline as a model in the
attack library's sense: `model(params, x, *, key) -> Outputs` with
`params = PurifierParams(denoiser=..., classifier=...)`. Its randomness (ω: the forward
noise and every reverse step's noise, `fold_in(key, i)`) is its `key`, so
`lib.attacks.pgd(model, params, x, y, key=k, eot=20, randomness='fixed' | 'fresh')` attacks
it with EOT and fixed or fresh randomness, and `evaluate.robust_accuracy(..., draws=n)`
evaluates it. It is differentiable end to end (exact gradients through every step, each step
under `jax.checkpoint` when `remat=True`, so memory does not grow with the denoiser's
activations per step); with `bpda=True` the forward pass purifies and the backward pass is
the identity (`lib.attacks.bpda`, Athalye et al. 2018).

Measured (XLA:CPU, `memory_analysis().temp_size_in_bytes` of the input gradient; an MLP
denoiser with a 1024-wide hidden layer, batch 16 of 4×4×3; tests/diffusion/test_purify.py):
4 → 16 steps takes 213 → 250 kB with remat (+3 kB per step: the one [16, 48] sample carried
between steps) and 725 kB → 2.30 MB without (+131 kB per step: the denoiser's two [16, 1024]
activations), alike for 'sde' and 'ode'. diffrax's solvers were measured against the scan
too (`diffrax_solve`): the scan with per-step checkpointing is the faster choice.

The denoiser is `denoiser(params, x, labels) -> ε̂` with x [B, H, W, C] in [−1, 1] and
labels [B] float32 (discrete step indices for 'ddpm'/'ddim', `Schedule.label(t)` for
'sde'/'ode'). A model following lib's contract adapts in one line, e.g.
`lambda v, x, t: unet.apply(v, {'x': x, 't': t}).features`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lib import contract, iterate, validate
from lib.attacks import bpda as bpda_lib
from lib.diffusion import samplers
from lib.diffusion.schedules import Schedule

Array = jax.Array
Denoiser = Callable[[Any, Array, Array], Array]
SAMPLERS = ('sde', 'ddpm', 'ddim', 'ode')


@dataclasses.dataclass(frozen=True)
class PurifierConfig:
  """How to purify (frozen, compared by value: a static `jit` argument).

  Attributes:
    t_star: diffusion time t* in (0, 1], a multiple of 1 / T (DiffPure CIFAR-10: 0.1 ℓ∞,
      0.075 ℓ2; ImageNet 0.15); None: t* is an argument (`PurifierParams.t_star`, traced:
      one program for every t*), which needs `num_steps` and sampler 'sde' or 'ode'.
    sampler: 'sde' (DiffPure), 'ode', 'ddpm' or 'ddim'.
    num_steps: reverse steps (≥ 1; for 'ddpm'/'ddim' at most t*·T); None: t*·T (DiffPure's
      dt = 1e-3 at T = 1000, or the full discrete chain).
    schedule: the noise schedule (default DDPM linear 1e-4…0.02, T = 1000 = VP 0.1…20).
    num_train_timesteps: the denoiser's T if known (e.g. from its scheduler config); must
      equal `schedule.num_train_timesteps`. None: not checked.
    t_min: end time of 'sde'/'ode' (DiffPure: 1e-5), in [0, t*) (for every t* given).
    variance_type: 'fixed_large' or 'fixed_small' ('ddpm').
    eta: DDIM's η ≥ 0 ('ddim').
    clip_sample: clip x̂₀ to [−1, 1] in 'ddpm'/'ddim' (diffusers' option; ddpm-cifar10-32
      sets it).
    remat: `jax.checkpoint` each reverse step.
    bpda: identity backward pass through the purifier.
  """
  t_star: float | None = 0.1
  sampler: str = 'sde'
  num_steps: int | None = None
  schedule: Schedule = Schedule()
  num_train_timesteps: int | None = None
  t_min: float = 1e-5
  variance_type: str = 'fixed_large'
  eta: float = 0.0
  clip_sample: bool = False
  remat: bool = True
  bpda: bool = False

  def __post_init__(self):
    validate.check_choice(self.sampler, SAMPLERS, 'sampler')
    if not isinstance(self.schedule, Schedule):
      raise ValueError(f'schedule must be a lib.diffusion.Schedule; got {self.schedule!r}.')
    if (self.num_train_timesteps is not None
        and self.num_train_timesteps != self.schedule.num_train_timesteps):
      raise ValueError(f'num_train_timesteps={self.num_train_timesteps!r} (the denoiser\'s) does '
                       'not match the schedule\'s num_train_timesteps='
                       f'{self.schedule.num_train_timesteps}.')
    if self.num_steps is not None:
      validate.check_int(self.num_steps, 'num_steps', minimum=1)
    validate.check_number(self.t_min, 't_min', low=0.0)
    if self.t_star is None:
      if self.num_steps is None or self.sampler not in ('sde', 'ode'):
        raise ValueError(f't_star=None (t* as an argument) needs num_steps (the same for every '
                         f't*) and sampler \'sde\' or \'ode\'; got num_steps={self.num_steps!r}, '
                         f'sampler={self.sampler!r}.')
    else:
      index = self.schedule.start_index(self.t_star)
      if (self.num_steps is not None and self.sampler in ('ddpm', 'ddim')
          and self.num_steps > index + 1):
        raise ValueError(f'num_steps must be at most t_star * num_train_timesteps = {index + 1} '
                         f'for sampler={self.sampler!r}; got {self.num_steps}.')
      if self.t_min >= self.t_star:
        raise ValueError(f't_min must be smaller than t_star={self.t_star}; got {self.t_min!r}.')
    validate.check_choice(self.variance_type, samplers.VARIANCE_TYPES, 'variance_type')
    validate.check_number(self.eta, 'eta', low=0.0)
    for name in ('clip_sample', 'remat', 'bpda'):
      validate.check_bool(getattr(self, name), name)

  @property
  def start_index(self) -> int:
    """k = t*·T − 1, the discrete index of the forward noising and the first DDPM label."""
    if self.t_star is None:
      raise ValueError('start_index is undefined for t_star=None (t* is an argument).')
    return self.schedule.start_index(self.t_star)

  @property
  def steps(self) -> int:
    """The number of reverse steps actually run."""
    return self.start_index + 1 if self.num_steps is None else self.num_steps

  def check_t_star(self, t_star: Any) -> None:
    """Checks an argument t* against this config (eagerly where it is concrete).

    Raises:
      ValueError: t* given where `self.t_star` is set, missing where it is None, not a
        float scalar, or (concrete) not a multiple of 1/T in (t_min, 1].
    """
    if self.t_star is not None:
      if t_star is not None:
        raise ValueError(f't_star is set twice: config.t_star={self.t_star!r} and the argument '
                         f'{t_star!r}; use PurifierConfig(t_star=None, ...) to pass t* as an '
                         'argument.')
      return
    if t_star is None:
      raise ValueError('t_star must be given (PurifierParams.t_star, or purify(..., t_star=)) '
                       'when config.t_star is None.')
    if np.shape(t_star) != () or not jnp.issubdtype(jnp.result_type(t_star), jnp.floating):
      raise ValueError(f't_star must be a float scalar; got {t_star!r}.')
    if isinstance(t_star, jax.core.Tracer):
      return
    value = float(np.asarray(t_star))
    self.schedule.start_index(value)
    if self.t_min >= value:
      raise ValueError(f't_star must be larger than t_min={self.t_min!r}; got {value!r}.')


class PurifierParams(NamedTuple):
  """The parameters of a purified classifier (a pytree).

  Attributes:
    denoiser: the denoiser's parameters.
    classifier: the classifier's parameters (None for a `Purifier` alone).
    t_star: None, or float32 scalar t* for a config with `t_star=None` (traced: a t* grid
      shares one compiled program).
  """
  denoiser: Any
  classifier: Any
  t_star: Any = None


def make_sampler(eps_fn: samplers.EpsFn, config: PurifierConfig,
                 t_star: Array | None = None) -> iterate.Iterative:
  """The reverse process of `config` as an `(init, step)` pair over `config.steps` steps.

  `t_star`: a float32 scalar (may be traced) where `config.t_star` is None.
  """
  schedule, steps = config.schedule, config.steps
  if config.sampler in ('sde', 'ode'):
    times = (samplers.continuous_times(config.t_star, steps, config.t_min) if t_star is None
             else jnp.linspace(jnp.asarray(t_star, jnp.float32), config.t_min, steps + 1))
    make = samplers.make_reverse_sde if config.sampler == 'sde' else samplers.make_probability_flow
    return make(eps_fn, schedule, times)
  timesteps = samplers.discrete_timesteps(config.start_index, steps)
  if config.sampler == 'ddpm':
    return samplers.make_ddpm(eps_fn, schedule, timesteps, variance_type=config.variance_type,
                              clip_sample=config.clip_sample)
  return samplers.make_ddim(eps_fn, schedule, timesteps, eta=config.eta,
                            clip_sample=config.clip_sample)


def _purify_images(x: Array, key: Array, denoiser_params: Any, t_star: Array | None, *,
                   denoiser: Denoiser, config: PurifierConfig) -> Array:
  """Steps 1–4 of the module docstring, traced (no checks); t* from `t_star` if given."""
  noise_key, run_key = jax.random.split(key)
  if t_star is None:
    index = config.start_index
  else:  # k = t*·T − 1, rounded: t* is a float32 multiple of 1/T (checked where concrete)
    t_star = jnp.asarray(t_star, jnp.float32)
    index = jnp.round(t_star * config.schedule.num_train_timesteps).astype(jnp.int32) - 1
  a = config.schedule.alpha_bar_at(index)
  u = 2 * x - 1
  u = a ** 0.5 * u + (1 - a) ** 0.5 * jax.random.normal(noise_key, x.shape, x.dtype)
  eps_fn = lambda v, labels: denoiser(denoiser_params, v, labels)
  sampler = make_sampler(eps_fn, config, t_star)
  u = samplers.sample(sampler, u, config.steps, key=run_key, remat=config.remat)
  return (u + 1) / 2


@functools.lru_cache(maxsize=64)
def _bpda_purifier(denoiser: Denoiser, config: PurifierConfig) -> Callable[..., Array]:
  """The purifier with the identity backward pass (one custom-VJP object per static setup)."""
  return bpda_lib.bpda(functools.partial(_purify_images, denoiser=denoiser, config=config))


def _purify(x: Array, key: Array, denoiser_params: Any, t_star: Array | None, *,
            denoiser: Denoiser, config: PurifierConfig) -> Array:
  if config.bpda:
    return _bpda_purifier(denoiser, config)(x, key, denoiser_params, t_star)
  return _purify_images(x, key, denoiser_params, t_star, denoiser=denoiser, config=config)


_purify_jit = jax.jit(_purify, static_argnames=('denoiser', 'config'))


def _check_call(denoiser: Any, x: Any, key: Any, config: Any, t_star: Any) -> None:
  if not callable(denoiser):
    raise ValueError(f'denoiser must be a function denoiser(params, x, labels); got {denoiser!r}.')
  if not isinstance(config, PurifierConfig):
    raise ValueError(f'config must be a PurifierConfig; got {config!r}.')
  validate.check_images(x, 'x')
  validate.check_key(key)
  config.check_t_star(t_star)


def _params(params: Any, config: PurifierConfig) -> PurifierParams:
  """`params` as `PurifierParams` (a config with t_star=None needs them in that form)."""
  if config.t_star is None and not isinstance(params, PurifierParams):
    raise ValueError(f'params must be PurifierParams(denoiser, classifier, t_star) when '
                     f'config.t_star is None; got {type(params).__name__}.')
  return params


def purify(denoiser: Denoiser, denoiser_params: Any, x: Array, *, key: Array,
           config: PurifierConfig = PurifierConfig(), t_star: Array | None = None) -> Array:
  """Purified images (steps 1–4 of the module docstring), [B, H, W, C], about [0, 1].

  Args:
    denoiser: `denoiser(params, x, labels) -> ε̂` (static for jit: reuse the same object).
    denoiser_params: its parameters.
    x: [B, H, W, C] float images in [0, 1].
    key: typed PRNG key ω (forward noise and every reverse step).
    config: the purifier's settings.
    t_star: float32 scalar t* (may be traced) where `config.t_star` is None, else None.

  Returns:
    [B, H, W, C] purified images (not clipped; values may leave [0, 1] slightly).

  Raises:
    ValueError: x not a float [B, H, W, C] batch in [0, 1], a bad key, denoiser, config or
      t_star (see `PurifierConfig.check_t_star`).

  Example:
    >>> config = PurifierConfig(t_star=0.1, sampler='sde')
    >>> x_pur = purify(denoiser, dparams, x, key=jax.random.key(0), config=config)
  """
  _check_call(denoiser, x, key, config, t_star)
  return _purify_jit(x, key, denoiser_params, t_star, denoiser=denoiser, config=config)


@dataclasses.dataclass(frozen=True)
class Purifier:
  """`purify` as a function `purifier(params, x, *, key) -> x̃` (frozen, compared by value).

  The form `lib.diffusion.analysis` takes; `params` are the denoiser's, or, where
  `config.t_star` is None, `PurifierParams` carrying t* (their classifier is not used).

  Attributes:
    denoiser: `denoiser(params, x, labels) -> ε̂`.
    config: the purifier's settings.
  """
  denoiser: Denoiser
  config: PurifierConfig = PurifierConfig()

  def __call__(self, params: Any, x: Array, *, key: Array) -> Array:
    """`purify(self.denoiser, params, x, key=key, config=self.config)` (t* from the params
    where `config.t_star` is None)."""
    if self.config.t_star is None:
      params = _params(params, self.config)
      return purify(self.denoiser, params.denoiser, x, key=key, config=self.config,
                    t_star=params.t_star)
    return purify(self.denoiser, params, x, key=key, config=self.config)


@dataclasses.dataclass(frozen=True)
class PurifiedClassifier:
  """`classifier(purify(x))` as a stochastic model: `model(params, x, *, key) -> Outputs`.

  Frozen and compared by value (its functions by identity), so the attack library's caches
  compile once per (denoiser, classifier, config).

  Attributes:
    denoiser: `denoiser(params, x, labels) -> ε̂`.
    classifier: `classifier(params, x) -> logits | Outputs` on images in [0, 1].
    config: the purifier's settings.

  Example:
    >>> model = PurifiedClassifier(denoiser, clf.apply, PurifierConfig(t_star=0.1))
    >>> params = PurifierParams(dparams, cparams)
    >>> x_adv = pgd(model, params, x, y, eps=8 / 255, key=k, eot=20, randomness='fixed')
    >>> # t* as an argument: one compiled attack for the whole grid.
    >>> model = PurifiedClassifier(denoiser, clf.apply, PurifierConfig(t_star=None, num_steps=10))
    >>> for t in (0.05, 0.1, 0.2):
    ...   x_adv = pgd(model, PurifierParams(dparams, cparams, jnp.float32(t)), x, y, ...)
  """
  denoiser: Denoiser
  classifier: contract.Apply
  config: PurifierConfig = PurifierConfig()

  def __post_init__(self):
    if not callable(self.denoiser):
      raise ValueError(f'denoiser must be a function denoiser(params, x, labels); got '
                       f'{self.denoiser!r}.')
    if not callable(self.classifier):
      raise ValueError(f'classifier must be a function apply(params, x); got {self.classifier!r}.')
    if not isinstance(self.config, PurifierConfig):
      raise ValueError(f'config must be a PurifierConfig; got {self.config!r}.')

  def __call__(self, params: PurifierParams, x: Array, *, key: Array) -> contract.Outputs:
    """The classifier's `Outputs` on purified `x` [B, H, W, C] in [0, 1] under noise `key`."""
    params = _params(params, self.config)
    _check_call(self.denoiser, x, key, self.config, params.t_star)
    return _classify_jit(params, x, key, model=self)


def _classify(params: PurifierParams, x: Array, key: Array, *,
              model: PurifiedClassifier) -> contract.Outputs:
  purified = _purify(x, key, params.denoiser, params.t_star, denoiser=model.denoiser,
                     config=model.config)
  return contract.as_outputs(model.classifier(params.classifier, purified))


_classify_jit = jax.jit(_classify, static_argnames=('model',))
