"""Rank-based agreement between attribution maps: the top-k and whole-ranking metrics.

Maps are arrays `[B, ...features]` (pixel maps `[B, H, W, C]`, heatmaps `[B, H, W]`, token
maps `[B, T]`); every metric flattens each example to `F` features and returns one value per
example, `[B]`. All functions are pure and jit (top-k sizes `k` are static).

**Ranking convention** (Krishna et al. 2022, "The Disagreement Problem", arXiv 2202.01602,
§3): features are ranked by |attribution|, largest first. Ties are broken by flat feature
index (the lower index ranks first), so "the top-k" is always exactly k features. The
helpers `descending_order`, `descending_positions`, `top_features` and `average_ranks`
implement this once for every metric here and in the localisation and faithfulness metrics.

Metrics (E1, E2 two maps of one input, T1, T2 their top-k feature sets):

  * `feature_agreement`  |T1 ∩ T2| / k
  * `rank_agreement`  #{i < k : the i-th ranked feature is the same in E1 and E2} / k
  * `sign_agreement`  #{f ∈ T1 ∩ T2 : sign E1_f = sign E2_f} / k
  * `signed_rank_agreement`  same feature at the same rank and with the same sign / k
  * `rank_correlation`  Spearman's ρ of |E1| and |E2| (average ranks for ties)
  * `pairwise_rank_agreement`  fraction of feature pairs whose relative order agrees
  * `topk_intersection`  Ghorbani et al. 2019: |T1 ∩ T2| / k, ranking by |E| or by E

The eager checks shared by every map metric (`check_maps`, `check_k`) live here too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate

Array = jax.Array
# metric(maps1, maps2) -> [B]
Metric = Callable[[Array, Array], Array]


# ----------------------------------------------------------------------------------------
# Validation shared by every map metric (similarity, localisation, faithfulness, sanity).


def check_maps(maps: Any, name: str, *, ndim: int | None = None) -> None:
  """Raises ValueError unless `maps` is a finite floating array `[B, ...]`.

  Args:
    maps: the array to check.
    name: the argument's name, for the message.
    ndim: required rank, or None for any rank >= 2 (a batch axis and at least one feature).
  """
  if not hasattr(maps, 'shape') or not hasattr(maps, 'dtype'):
    raise ValueError(
        f'{name} must be an array of shape [B, ...features]; got {type(maps).__name__}.')
  if ndim is not None and maps.ndim != ndim:
    raise ValueError(f'{name} must have rank {ndim}; got shape {tuple(maps.shape)}.')
  if maps.ndim < 2 or maps.shape[0] < 1 or min(maps.shape[1:]) < 1:
    raise ValueError(
        f'{name} must have shape [B, ...features] with B >= 1 and at least one feature; '
        f'got shape {tuple(maps.shape)}.')
  if not np.issubdtype(maps.dtype, np.floating):
    raise ValueError(f'{name} must be a floating-point array; got dtype {maps.dtype}.')
  validate.check_finite(maps, name)


def _check_pair(maps1: Any, maps2: Any, names: tuple[str, str] = ('maps1', 'maps2'), *,
                ndim: int | None = None) -> None:
  check_maps(maps1, names[0], ndim=ndim)
  check_maps(maps2, names[1], ndim=ndim)
  if maps1.shape != maps2.shape:
    raise ValueError(f'{names[0]} and {names[1]} must have the same shape; got '
                     f'{tuple(maps1.shape)} and {tuple(maps2.shape)}.')


def check_k(k: Any, num_features: int, name: str = 'k') -> None:
  """Raises ValueError unless `k` is a Python int in [1, num_features]."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(f'{name} must be a Python int (it is static under jit); got {k!r}.')
  if not 1 <= k <= num_features:
    raise ValueError(f'{name} must be in [1, {num_features}] (the number of features per '
                     f'example); got {k}.')


def _check_features(features: Any, batch: int, num_features: int) -> None:
  if not hasattr(features, 'shape') or not np.issubdtype(features.dtype, np.integer):
    raise ValueError('features must be an integer array of flat feature indices, [S] or [B, S].')
  if features.ndim not in (1, 2) or (features.ndim == 2 and features.shape[0] != batch):
    raise ValueError(
        f'features must have shape [S] or [B={batch}, S]; got {tuple(features.shape)}.')
  if features.shape[-1] < 2:
    raise ValueError(f'features must select at least 2 features; got {features.shape[-1]}.')
  if validate.is_concrete(features):
    f = np.asarray(features)
    if f.min() < 0 or f.max() >= num_features:
      raise ValueError(f'features must hold indices in [0, {num_features}); got values in '
                       f'[{f.min()}, {f.max()}].')
    s = np.sort(f.reshape(-1, f.shape[-1]), axis=-1)
    if np.any(s[:, 1:] == s[:, :-1]):
      raise ValueError('features must not repeat an index within an example.')


# ----------------------------------------------------------------------------------------
# Ranking helpers (no validation: callers validate). Scores are [B, F].


def flatten(maps: Array) -> Array:
  """[B, ...features] -> [B, F]."""
  return maps.reshape(maps.shape[0], -1)


def descending_order(scores: Array) -> Array:
  """Feature indices sorted by score, largest first, ties by lower index: [B, F] int32."""
  return jnp.argsort(scores, axis=-1, descending=True, stable=True)


def descending_positions(scores: Array) -> Array:
  """Position of every feature in `descending_order` (0 = largest score): [B, F] int32.

  The top-k features of a row are exactly those with position < k.
  """
  order = descending_order(scores)
  rows = jnp.arange(scores.shape[0])[:, None]
  ranks = jnp.broadcast_to(jnp.arange(scores.shape[1], dtype=order.dtype), order.shape)
  return jnp.zeros_like(order).at[rows, order].set(ranks)


def top_features(scores: Array, k: int) -> Array:
  """The first k entries of `descending_order` (same tie rule), [B, k] int32."""
  return jax.lax.top_k(scores, k)[1]


def average_ranks(scores: Array) -> Array:
  """0-based ranks in ascending order, tied scores sharing their average rank: [B, F] float.

  Equals `scipy.stats.rankdata(scores, 'average', axis=-1) - 1`.
  """
  ordered = jnp.sort(scores, axis=-1)
  search = jax.vmap(jnp.searchsorted, in_axes=(0, 0, None))
  first = search(ordered, scores, 'left')
  last = search(ordered, scores, 'right') - 1
  return (first + last).astype(jnp.float32) / 2


def _topk_mask(scores: Array, k: int) -> Array:
  """[B, F] bool, True on each row's top-k features."""
  rows = jnp.arange(scores.shape[0])[:, None]
  return jnp.zeros(scores.shape, bool).at[rows, top_features(scores, k)].set(True)


def _select(maps: Array, features: Array | None) -> Array:
  """Flattens and keeps `features` ([S] or [B, S] flat indices) if given: [B, S]."""
  flat = flatten(maps)
  if features is None:
    return flat
  return jnp.take_along_axis(flat, jnp.broadcast_to(features, (flat.shape[0], features.shape[-1])),
                             axis=-1)


# ----------------------------------------------------------------------------------------
# Top-k agreement (Krishna et al. 2022, §3; Ghorbani et al. 2019).


@functools.partial(jax.jit, static_argnames=('k', 'signed', 'absolute'))
def _set_agreement(maps1: Array, maps2: Array, *, k: int, signed: bool, absolute: bool) -> Array:
  a, b = flatten(maps1), flatten(maps2)
  rank = jnp.abs if absolute else (lambda v: v)
  common = _topk_mask(rank(a), k) & _topk_mask(rank(b), k)
  if signed:
    common &= jnp.sign(a) == jnp.sign(b)
  return common.sum(axis=-1) / k


@functools.partial(jax.jit, static_argnames=('k', 'signed'))
def _position_agreement(maps1: Array, maps2: Array, *, k: int, signed: bool) -> Array:
  a, b = flatten(maps1), flatten(maps2)
  top_a, top_b = top_features(jnp.abs(a), k), top_features(jnp.abs(b), k)
  same = top_a == top_b
  if signed:
    same &= (jnp.sign(jnp.take_along_axis(a, top_a, axis=-1))
             == jnp.sign(jnp.take_along_axis(b, top_b, axis=-1)))
  return same.sum(axis=-1) / k


def _check_topk(maps1: Array, maps2: Array, k: int) -> None:
  _check_pair(maps1, maps2)
  check_k(k, int(np.prod(maps1.shape[1:])))


def feature_agreement(maps1: Array, maps2: Array, k: int) -> Array:
  """Feature agreement |topk(E1) ∩ topk(E2)| / k (Krishna et al. 2022, §3).

  Args:
    maps1: [B, ...features] attributions of one method.
    maps2: [B, ...features] attributions of another method, same shape.
    k: number of top features (by |attribution|) compared; 1 <= k <= F. Static.

  Returns:
    [B] fraction in [0, 1]; 1 when both maps have the same top-k set.

  Example:
    >>> feature_agreement(jnp.array([[3., -2., 1.]]), jnp.array([[1., 5., -4.]]), 2)
    Array([0.5], dtype=float32)
  """
  _check_topk(maps1, maps2, k)
  return _set_agreement(maps1, maps2, k=k, signed=False, absolute=True)


def sign_agreement(maps1: Array, maps2: Array, k: int) -> Array:
  """Sign agreement: features in both top-k sets whose signs agree, / k (Krishna et al. 2022, §3).

  Args:
    maps1: [B, ...features] attributions of one method.
    maps2: [B, ...features] attributions of another method, same shape.
    k: number of top features (by |attribution|); 1 <= k <= F. Static.

  Returns:
    [B] fraction in [0, 1], at most `feature_agreement(maps1, maps2, k)`.

  Example:
    >>> sign_agreement(jnp.array([[3., -2., 1.]]), jnp.array([[-4., -5., 1.]]), 2)
    Array([0.5], dtype=float32)
  """
  _check_topk(maps1, maps2, k)
  return _set_agreement(maps1, maps2, k=k, signed=True, absolute=True)


def rank_agreement(maps1: Array, maps2: Array, k: int) -> Array:
  """Rank agreement: top-k positions holding the same feature in both rankings, / k.

  Krishna et al. 2022, §3: feature f counts when it has the same rank i < k in both maps.

  Args:
    maps1: [B, ...features] attributions of one method.
    maps2: [B, ...features] attributions of another method, same shape.
    k: number of top ranks compared; 1 <= k <= F. Static.

  Returns:
    [B] fraction in [0, 1], at most `feature_agreement(maps1, maps2, k)`.

  Example:
    >>> rank_agreement(jnp.array([[3., 2., 1.]]), jnp.array([[3., 1., 2.]]), 3)
    Array([0.33333334], dtype=float32)
  """
  _check_topk(maps1, maps2, k)
  return _position_agreement(maps1, maps2, k=k, signed=False)


def signed_rank_agreement(maps1: Array, maps2: Array, k: int) -> Array:
  """Signed rank agreement: same feature at the same top-k rank with the same sign, / k.

  Krishna et al. 2022, §3.

  Args:
    maps1: [B, ...features] attributions of one method.
    maps2: [B, ...features] attributions of another method, same shape.
    k: number of top ranks compared; 1 <= k <= F. Static.

  Returns:
    [B] fraction in [0, 1], at most `rank_agreement` and `sign_agreement`.

  Example:
    >>> signed_rank_agreement(jnp.array([[3., 2., 1.]]), jnp.array([[-3., 2., 1.]]), 2)
    Array([0.5], dtype=float32)
  """
  _check_topk(maps1, maps2, k)
  return _position_agreement(maps1, maps2, k=k, signed=True)


def topk_intersection(maps1: Array, maps2: Array, k: int, *, absolute: bool = True) -> Array:
  """Top-k intersection of Ghorbani et al. 2019 ("Interpretation of Neural Networks is Fragile").

  The fraction of the k most salient features of `maps1` that are among the k most salient
  of `maps2`. With `absolute=True` saliency is |attribution| and this equals
  `feature_agreement`; with `absolute=False` features are ranked by their signed value
  (the most positive evidence first).

  Args:
    maps1: [B, ...features] original maps (e.g. of the clean input).
    maps2: [B, ...features] maps to compare (e.g. of the perturbed input), same shape.
    k: number of top features; 1 <= k <= F. Static.
    absolute: rank by |value| (True) or by value (False).

  Returns:
    [B] fraction in [0, 1].

  Example:
    >>> a, b = jnp.array([[3., -5., 1.]]), jnp.array([[2., 1., -6.]])
    >>> topk_intersection(a, b, 1), topk_intersection(a, b, 1, absolute=False)
    (Array([0.], dtype=float32), Array([1.], dtype=float32))
  """
  _check_topk(maps1, maps2, k)
  return _set_agreement(maps1, maps2, k=k, signed=False, absolute=bool(absolute))


# ----------------------------------------------------------------------------------------
# Whole-ranking agreement.


@jax.jit
def _spearman(maps1: Array, maps2: Array, features: Array | None) -> Array:
  ra = average_ranks(jnp.abs(_select(maps1, features)))
  rb = average_ranks(jnp.abs(_select(maps2, features)))
  ra = ra - ra.mean(axis=-1, keepdims=True)
  rb = rb - rb.mean(axis=-1, keepdims=True)
  return (ra * rb).sum(-1) / jnp.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))


def rank_correlation(maps1: Array, maps2: Array, *, features: Array | None = None) -> Array:
  """Spearman's rank correlation of |maps1| and |maps2| (Krishna et al. 2022, §3).

  The Pearson correlation of the two maps' ranks, tied values sharing their average rank:
  exactly `scipy.stats.spearmanr(abs(e1), abs(e2)).statistic` per example, which is what
  Krishna et al. compute (they rank |attribution| with dense ranks first; Spearman of those
  equals Spearman of |attribution|). Ranks are taken over all features, or only over
  `features` when given.

  Args:
    maps1: [B, ...features] attributions of one method.
    maps2: [B, ...features] attributions of another method, same shape.
    features: optional flat feature indices, [S] (the same S for every example) or [B, S],
      no repeats, S >= 2: the feature set of interest.

  Returns:
    [B] correlation in [-1, 1]; NaN where one map is constant over the features (as scipy).

  Example:
    >>> rank_correlation(jnp.array([[1., -2., 3.]]), jnp.array([[10., 20., 30.]]))
    Array([1.], dtype=float32)
  """
  _check_pair(maps1, maps2)
  num_features = int(np.prod(maps1.shape[1:]))
  if features is not None:
    _check_features(features, maps1.shape[0], num_features)
  elif num_features < 2:
    raise ValueError(f'maps1 must have at least 2 features for a rank correlation; got shape '
                     f'{tuple(maps1.shape)}.')
  return _spearman(maps1, maps2, features)


@functools.partial(jax.jit, static_argnames='batch_size')
def _pairwise(maps1: Array, maps2: Array, features: Array | None, batch_size: int | None) -> Array:
  a, b = jnp.abs(_select(maps1, features)), jnp.abs(_select(maps2, features))
  num = a.shape[-1]

  def agreeing_pairs_with(i: Array) -> Array:  # [B]: features j whose order against i agrees
    return (jnp.sign(a[:, i, None] - a) == jnp.sign(b[:, i, None] - b)).sum(-1)

  agree = jax.lax.map(agreeing_pairs_with, jnp.arange(num), batch_size=batch_size or num).sum(0)
  # Ordered pairs (i, j) count each unordered pair twice; the diagonal always agrees.
  return (agree - num) / (num * (num - 1))


def pairwise_rank_agreement(maps1: Array, maps2: Array, *, features: Array | None = None,
                            batch_size: int | None = None) -> Array:
  """Pairwise rank agreement: pairs ordered alike by |E1| and |E2| (Krishna et al. 2022, §3).

  A pair (i, j), i != j, agrees when sign(|E1_i| - |E1_j|) = sign(|E2_i| - |E2_j|): both
  maps put the same feature first, or both tie them. (OpenXAI's reference code compares
  `rank_i < rank_j`, which also counts a tie in one map against a strict order in the other
  as agreement when j is first; for maps without ties the two coincide.)

  Cost: O(S^2) time over S features; memory O(B * S * batch_size) with `batch_size` rows of
  the pair matrix evaluated at a time (`None`: all S at once, O(B * S^2)). For image-sized
  maps pass `features`, a subset such as the union of the top features, or a `batch_size`.

  Args:
    maps1: [B, ...features] attributions of one method.
    maps2: [B, ...features] attributions of another method, same shape.
    features: optional flat feature indices [S] or [B, S], no repeats, S >= 2.
    batch_size: rows of the S x S comparison evaluated together (static), or None.

  Returns:
    [B] fraction of the S (S - 1) / 2 pairs that agree, in [0, 1].

  Example:
    >>> pairwise_rank_agreement(jnp.array([[3., 2., 1.]]), jnp.array([[3., 1., 2.]]))
    Array([0.6666667], dtype=float32)
  """
  _check_pair(maps1, maps2)
  num_features = int(np.prod(maps1.shape[1:]))
  if features is not None:
    _check_features(features, maps1.shape[0], num_features)
    num_features = features.shape[-1]
  elif num_features < 2:
    raise ValueError(f'maps1 must have at least 2 features to form pairs; got shape '
                     f'{tuple(maps1.shape)}.')
  if batch_size is not None:
    check_k(batch_size, num_features, 'batch_size')
  return _pairwise(maps1, maps2, features, batch_size)
