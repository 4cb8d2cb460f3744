"""Distances, randomness spread and compression of a purifier (Liu & Wei 2025, PAPERS.md §2).

Every function takes the purifier as `purify_fn(params, x, *, key) -> x̃` with its params,
x and x̃ [B, H, W, C] in [0, 1] (e.g. `purify.Purifier(denoiser, config)` and the denoiser's
params; `purify_fn` is a static `jit` argument, so keep one object to reuse the compiled
program), so one noise draw ω is one key, and measures per example:

  distances      ‖f_ω(x) − x‖, ‖x_adv − x‖, ‖f_ω(x_adv) − f_ω(x)‖ and ‖f_ω(x_adv) − x‖:
                 does purification move an image towards the clean one or away from it?
  spread         across D noise draws ω_1..ω_D of the same input: the mean and standard
                 deviation of ‖f_ω(x) − x‖, their ratio std/mean, and the mean distance
                 between two draws' outputs ‖f_ω(x) − f_ω'(x)‖ (how much of the output the
                 sampler's randomness decides);
  compression    with one fixed draw ω, the compression rate of a perturbation δ

                     CR_ω(x; δ) = ‖f_ω(x + δ) − f_ω(x)‖₂ / ‖δ‖₂,

                 δ the effective perturbation clip(x + δ, 0, 1) − x; CR < 1: the purifier
                 (for this ω) contracts the input space around x, pulling x + δ towards the
                 purified clean image f_ω(x); the defence's gain should track it. Averaged
                 over perturbations of a given norm, random (`random_perturbations`) or given
                 (attack directions x_adv − x). NaN where the effective δ is 0.
  correlation    Pearson and Spearman correlation of two series, e.g. mean CR against robust
                 accuracy across t* values (does compression predict robustness without
                 running a gradient attack?).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from lib import validate

Array = jax.Array
PurifyFn = Callable[..., Array]  # purify_fn(params, x, *, key) -> x̃
NORMS = ('l2', 'linf')


def distance(a: Array, b: Array, norm: str = 'l2') -> Array:
  """[B] per-example ‖a − b‖ (ℓ2 or ℓ∞ over all non-batch axes) of [B, ...] arrays."""
  validate.check_choice(norm, NORMS, 'norm')
  diff = (a - b).reshape(a.shape[0], -1)
  return jnp.linalg.norm(diff, axis=-1) if norm == 'l2' else jnp.max(jnp.abs(diff), axis=-1)


class Distances(NamedTuple):
  """Per-example distances [B] under one noise draw ω (see the module docstring)."""
  purified_clean: Array
  adversarial_clean: Array
  purified_pair: Array
  purified_adversarial_clean: Array


def purification_distances(purify_fn: PurifyFn, params: Any, x: Array, x_adv: Array, *,
                           key: Array,
                           norm: str = 'l2') -> Distances:
  """Distances between clean, adversarial and purified images, with one draw ω = `key`.

  Args:
    purify_fn, params: the purifier `purify_fn(params, x, *, key) -> x̃` and its params.
    x: [B, H, W, C] clean images in [0, 1].
    x_adv: [B, H, W, C] adversarial images in [0, 1].
    key: typed PRNG key ω, used for both purifications.
    norm: 'l2' or 'linf'.
  """
  _check_pair(x, x_adv)
  validate.check_key(key)
  pure, pure_adv = purify_fn(params, x, key=key), purify_fn(params, x_adv, key=key)
  return Distances(distance(pure, x, norm), distance(x_adv, x, norm),
                   distance(pure_adv, pure, norm), distance(pure_adv, x, norm))


class Spread(NamedTuple):
  """Per-example statistics [B] over noise draws (see the module docstring).

  Attributes:
    mean: mean over draws of ‖f_ω(x) − reference‖.
    std: their standard deviation.
    cv: std / mean.
    between_draws: mean over pairs of draws ω ≠ ω' of ‖f_ω(x) − f_ω'(x)‖.
  """
  mean: Array
  std: Array
  cv: Array
  between_draws: Array


def spread_over_draws(purify_fn: PurifyFn, params: Any, x: Array, *, key: Array, draws: int,
                      reference: Array | None = None, norm: str = 'l2') -> Spread:
  """How much the purified output depends on the noise: `draws` keys split from `key`, vmapped.

  Args:
    purify_fn, params: the purifier `purify_fn(params, x, *, key) -> x̃` and its params.
    x: [B, H, W, C] images in [0, 1].
    key: typed PRNG key, split into `draws` draws.
    draws: number of draws D ≥ 2.
    reference: [B, H, W, C] the image distances are measured to (default `x`).
    norm: 'l2' or 'linf'.
  """
  validate.check_images(x, 'x')
  validate.check_key(key)
  validate.check_int(draws, 'draws', minimum=2)
  reference = x if reference is None else reference
  _check_pair(x, reference, 'reference')
  return _spread(purify_fn, params, x, key, reference, draws=draws, norm=norm)


@functools.partial(jax.jit, static_argnames=('purify_fn', 'draws', 'norm'))
def _spread(purify_fn, params, x, key, reference, *, draws, norm):
  keys = jax.random.split(key, draws)
  outs = jax.vmap(lambda k: purify_fn(params, x, key=k))(keys)                 # [D, B, ...]
  to_ref = jax.vmap(lambda o: distance(o, reference, norm))(outs)                # [D, B]
  i, j = np.triu_indices(draws, k=1)
  pairs = jax.vmap(lambda a, b: distance(a, b, norm))(outs[i], outs[j])          # [P, B]
  mean, std = to_ref.mean(0), to_ref.std(0)
  return Spread(mean, std, std / mean, pairs.mean(0))


def random_perturbations(key: Array, x: Array, *, radius: float, num: int,
                         norm: str = 'l2') -> Array:
  """[num, B, H, W, C] random perturbations of per-example norm `radius`.

  ℓ2: Gaussian directions scaled to ‖δ‖₂ = radius; ℓ∞: radius · random signs (a vertex of
  the ε-cube, ‖δ‖∞ = radius).
  """
  validate.check_key(key)
  validate.check_number(radius, 'radius', low=0.0)
  validate.check_int(num, 'num', minimum=1)
  validate.check_choice(norm, NORMS, 'norm')
  shape = (num, *x.shape)
  if norm == 'linf':
    return radius * jax.random.rademacher(key, shape, x.dtype)
  g = jax.random.normal(key, shape, x.dtype)
  scale = radius / jax.vmap(lambda d: distance(d, jnp.zeros_like(d)))(g)
  return g * scale.reshape(scale.shape + (1,) * (x.ndim - 1))


def compression_rate(purify_fn: PurifyFn, params: Any, x: Array, deltas: Array, *,
                     key: Array) -> Array:
  """[N, B] CR_ω(x; δ_n) = ‖f_ω(x + δ_n) − f_ω(x)‖₂ / ‖δ_n‖₂ with ω = `key` for every call.

  Args:
    purify_fn, params: the purifier `purify_fn(params, x, *, key) -> x̃` and its params.
    x: [B, H, W, C] images in [0, 1].
    deltas: [N, B, H, W, C] perturbations (`random_perturbations`, or attack directions
      `(x_adv - x)[None]`); x + δ is clipped to [0, 1] and δ replaced by the effective one.
    key: typed PRNG key ω (one fixed draw).

  Returns:
    [N, B] rates (NaN where the effective δ is 0); `.mean(0)` per example, `nanmean` overall.
  """
  validate.check_images(x, 'x')
  validate.check_key(key)
  if getattr(deltas, 'ndim', None) != x.ndim + 1 or tuple(deltas.shape[1:]) != tuple(x.shape):
    raise ValueError(f'deltas must have shape [N, *x.shape] = [N, {", ".join(map(str, x.shape))}]; '
                     f'got {getattr(deltas, "shape", None)}.')
  return _compression_rate(purify_fn, params, x, deltas, key)


@functools.partial(jax.jit, static_argnames=('purify_fn',))
def _compression_rate(purify_fn, params, x, deltas, key):
  base = purify_fn(params, x, key=key)

  def one(delta):
    moved = jnp.clip(x + delta, 0.0, 1.0)
    size = distance(moved, x)
    change = distance(purify_fn(params, moved, key=key), base)
    return jnp.where(size > 0, change / jnp.where(size > 0, size, 1.0), jnp.nan)

  return jax.lax.map(one, deltas)


class Correlation(NamedTuple):
  """Pearson (linear) and Spearman (rank) correlation coefficients, floats in [−1, 1]."""
  pearson: float
  spearman: float


def correlation(a: Array, b: Array) -> Correlation:
  """The correlation of two series of equal length ≥ 3 (e.g. CR vs robust accuracy over t*).

  Raises:
    ValueError: not 1-D, lengths differ or < 3, non-finite values, or a constant series.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  for name, v in (('a', a), ('b', b)):
    if v.ndim != 1 or v.size < 3:
      raise ValueError(f'{name} must be a 1-D series of at least 3 values; got shape {v.shape}.')
    validate.check_finite(v, name)
    if np.all(v == v[0]):
      raise ValueError(f'{name} is constant; its correlation is undefined.')
  if a.size != b.size:
    raise ValueError(f'a and b must have the same length; got {a.size} and {b.size}.')
  return Correlation(float(stats.pearsonr(a, b)[0]), float(stats.spearmanr(a, b)[0]))


def _check_pair(x: Array, other: Array, name: str = 'x_adv') -> None:
  validate.check_images(x, 'x')
  validate.check_images(other, name, value_range=None)
  if other.shape != x.shape:
    raise ValueError(f'{name} must have the shape of x {tuple(x.shape)}; got {tuple(other.shape)}.')
