"""Localisation of attribution maps against ground-truth masks, and the heatmap reduction.

Heatmaps are `[B, H, W]` (reduce pixel maps `[B, H, W, C]` with `to_heatmap` first); masks
are `[B, H, W]` in {0, 1}; every metric returns one value per example, `[B]`:

  * `pointing_game` (Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop"):
    1 where the heatmap's maximum lies in the mask (optionally within a tolerance).
  * `relevance_mass_accuracy` and `relevance_rank_accuracy` (Arras et al. 2022, "CLEVR-XAI").

Pure and jitted. Rankings follow `lib.attribution.ranking`: largest first, ties broken by the
lower flat (row-major) pixel index.

Example:

    heat = to_heatmap(saliency_maps)                                   # [B, H, W]
    hit = pointing_game(heat, masks, tolerance=15).mean()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate
from lib.attribution import agreement

Array = jax.Array

_HEATMAP_REDUCTIONS: dict[str, Callable[[Array], Array]] = {
    'abs_sum': lambda m: jnp.abs(m).sum(axis=-1),
    'sum': lambda m: m.sum(axis=-1),
    'max_abs': lambda m: jnp.abs(m).max(axis=-1),
}


def to_heatmap(maps: Array, reduce: str = 'abs_sum') -> Array:
  """Reduces pixel attributions [B, H, W, C] over channels to heatmaps [B, H, W].

  Args:
    maps: [B, H, W, C] attributions.
    reduce: 'abs_sum' (sum of |a| over channels, the usual saliency map), 'sum' (signed
      sum: relevance for LRP / gradient x input), or 'max_abs' (Simonyan et al. 2014).

  Returns:
    [B, H, W] heatmaps.

  Example:
    >>> to_heatmap(jnp.array([[[[1., -2.]]]]), 'sum')
    Array([[[-1.]]], dtype=float32)
  """
  agreement.check_maps(maps, 'maps', ndim=4)
  validate.check_choice(reduce, _HEATMAP_REDUCTIONS, 'reduce')
  return _HEATMAP_REDUCTIONS[reduce](maps)


def _check_localisation(heatmaps: Any, masks: Any) -> None:
  agreement.check_maps(heatmaps, 'heatmaps', ndim=3)
  if not hasattr(masks, 'shape') or tuple(masks.shape) != tuple(heatmaps.shape):
    raise ValueError(f'masks must have the shape of heatmaps, {tuple(heatmaps.shape)} [B, H, W]; '
                     f'got {getattr(masks, "shape", type(masks).__name__)}.')
  if validate.is_concrete(masks):
    m = np.asarray(masks)
    if not np.all((m == 0) | (m == 1)):
      raise ValueError('masks must hold only 0 and 1 (False and True).')
    if not np.all(m.reshape(m.shape[0], -1).any(axis=-1)):
      raise ValueError('masks must mark at least one pixel in every example.')


@jax.jit
def _pointing_game(heatmaps: Array, masks: Array, tolerance: Array) -> Array:
  _, h, w = heatmaps.shape
  row, col = jnp.divmod(jnp.argmax(agreement.flatten(heatmaps), axis=-1), w)
  dist2 = ((jnp.arange(h)[None, :, None] - row[:, None, None]) ** 2
           + (jnp.arange(w)[None, None, :] - col[:, None, None]) ** 2)
  return (masks.astype(bool) & (dist2.astype(tolerance.dtype) <= tolerance**2)).any(
      axis=(1, 2)).astype(jnp.float32)


def pointing_game(heatmaps: Array, masks: Array, *, tolerance: float = 0) -> Array:
  """Pointing game (Zhang et al. 2018, "Top-down Neural Attention by Excitation Backprop").

  A hit when the heatmap's maximum lies in the mask, or within `tolerance` pixels
  (Euclidean) of a mask pixel; Zhang et al. use a 15-pixel tolerance on ImageNet-sized
  images. With several maxima, the first in row-major order is the one that points.

  Args:
    heatmaps: [B, H, W] heatmaps.
    masks: [B, H, W] ground-truth evidence, 0/1 (or bool), at least one pixel per example.
    tolerance: non-negative distance in pixels.

  Returns:
    [B] 1.0 for a hit, 0.0 for a miss; the mean is the pointing accuracy.

  Example:
    >>> heat = jnp.zeros((1, 4, 4)).at[0, 0, 0].set(1.)
    >>> mask = jnp.zeros((1, 4, 4)).at[0, 2, 0].set(1.)
    >>> pointing_game(heat, mask), pointing_game(heat, mask, tolerance=2)
    (Array([0.], dtype=float32), Array([1.], dtype=float32))
  """
  _check_localisation(heatmaps, masks)
  validate.check_positive(tolerance, 'tolerance', allow_zero=True)
  return _pointing_game(heatmaps, masks, jnp.float32(tolerance))


@jax.jit
def _relevance_mass(heatmaps: Array, masks: Array) -> Array:
  positive = jnp.maximum(heatmaps, 0)
  inside = (positive * masks.astype(bool).astype(positive.dtype)).sum(axis=(1, 2))
  total = positive.sum(axis=(1, 2))
  return jnp.where(total > 0, inside / jnp.where(total > 0, total, 1), 0)


def relevance_mass_accuracy(heatmaps: Array, masks: Array) -> Array:
  """Relevance mass accuracy R_within / R_total (Arras et al. 2022, CLEVR-XAI).

  R_total sums the positive relevance of the whole map, R_within the positive relevance of
  the pixels inside the mask; negative relevance is ignored. A map with no positive
  relevance scores 0.

  Args:
    heatmaps: [B, H, W] relevance (e.g. `to_heatmap(maps, 'sum')` for LRP, 'abs_sum' for
      gradients).
    masks: [B, H, W] ground-truth evidence, 0/1, at least one pixel per example.

  Returns:
    [B] fraction in [0, 1].

  Example:
    >>> heat = jnp.array([[[3., 1.], [-5., 0.]]])
    >>> relevance_mass_accuracy(heat, jnp.array([[[1, 0], [1, 0]]]))
    Array([0.75], dtype=float32)
  """
  _check_localisation(heatmaps, masks)
  return _relevance_mass(heatmaps, masks)


@jax.jit
def _relevance_rank(heatmaps: Array, masks: Array) -> Array:
  inside = agreement.flatten(masks).astype(bool)
  size = inside.sum(axis=-1)
  positions = agreement.descending_positions(agreement.flatten(heatmaps))
  return (inside & (positions < size[:, None])).sum(axis=-1) / size


def relevance_rank_accuracy(heatmaps: Array, masks: Array) -> Array:
  """Relevance rank accuracy |P_top-K ∩ GT| / K (Arras et al. 2022, CLEVR-XAI).

  K is the number of mask pixels; P_top-K the K pixels of highest (signed) relevance.

  Args:
    heatmaps: [B, H, W] relevance.
    masks: [B, H, W] ground-truth evidence, 0/1, at least one pixel per example.

  Returns:
    [B] fraction in [0, 1].

  Example:
    >>> heat = jnp.array([[[3., 1.], [-5., 2.]]])
    >>> relevance_rank_accuracy(heat, jnp.array([[[1, 0], [1, 0]]]))
    Array([0.5], dtype=float32)
  """
  _check_localisation(heatmaps, masks)
  return _relevance_rank(heatmaps, masks)
