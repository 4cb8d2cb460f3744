"""Agreement between attribution maps: do two explanations of one input say the same thing?

Maps are arrays `[B, ...features]` (pixel maps `[B, H, W, C]`, heatmaps `[B, H, W]`, token
maps `[B, T]`); every metric flattens each example to `F` features and returns one value per
example, `[B]`. All functions are pure and jit (top-k sizes `k` are static).

**Ranking convention** (Krishna et al. 2022, "The Disagreement Problem", arXiv 2202.01602,
§3): features are ranked by |attribution|, largest first. Ties are broken by flat feature
index (the lower index ranks first), so "the top-k" is always exactly k features. The
helpers `descending_order`, `descending_positions`, `top_features` and `average_ranks`
implement this once for every metric here and in `lib.attribution.metrics`.

Metrics (E1, E2 two maps of one input, T1, T2 their top-k feature sets):

  * `feature_agreement`  |T1 ∩ T2| / k
  * `rank_agreement`  #{i < k : the i-th ranked feature is the same in E1 and E2} / k
  * `sign_agreement`  #{f ∈ T1 ∩ T2 : sign E1_f = sign E2_f} / k
  * `signed_rank_agreement`  same feature at the same rank and with the same sign / k
  * `rank_correlation`  Spearman's ρ of |E1| and |E2| (average ranks for ties)
  * `pairwise_rank_agreement`  fraction of feature pairs whose relative order agrees
  * `topk_intersection`  Ghorbani et al. 2019: |T1 ∩ T2| / k, ranking by |E| or by E
  * `ssim`  structural similarity of heatmaps (Wang et al. 2004), each map min-max
    normalised to [0, 1]
  * `agreement_matrix`  any of the above over every pair of methods, `[B, M, M]`

Example:

    maps = {'saliency': s, 'integrated_gradients': ig, 'gradcam': g}   # each [B, H, W]
    fa = agreement_matrix(maps, 'feature_agreement', k=100)            # [B, 3, 3]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate

Array = jax.Array
# metric(maps1, maps2) -> [B]
Metric = Callable[[Array, Array], Array]

# SSIM constants (Wang et al. 2004): 11 x 11 Gaussian window with sigma 1.5
# (radius 5 = int(3.5 * 1.5 + 0.5), the window scikit-image derives), K1, K2, data range 1.
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


# ----------------------------------------------------------------------------------------
# Validation shared with lib.attribution.metrics.


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


# ----------------------------------------------------------------------------------------
# Structural similarity (Wang et al. 2004).


def gaussian_filter(images: Array, *, sigma: float, radius: int, padding: str = 'valid') -> Array:
  """Separable Gaussian filter over the last two axes (no validation: callers validate).

  The window has 2 * radius + 1 taps exp(-d^2 / (2 sigma^2)), normalised to sum 1, as
  `scipy.ndimage.gaussian_filter(..., truncate=radius / sigma)`.

  Args:
    images: [N, H, W].
    sigma: standard deviation in pixels.
    radius: half-width of the window in pixels (static).
    padding: 'valid' (output [N, H - 2r, W - 2r], no border effects) or 'edge' (output
      [N, H, W], borders extended by repeating the edge pixel).

  Returns:
    The filtered images.
  """
  taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2.0 * sigma**2))
  taps = jnp.asarray(taps / taps.sum(), images.dtype)
  if padding == 'edge':
    images = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius)), mode='edge')
  x = images[..., None]
  for kernel in (taps.reshape(-1, 1, 1, 1), taps.reshape(1, -1, 1, 1)):
    x = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=jax.lax.Precision.HIGHEST)
  return x[..., 0]


def _unit_range(heatmaps: Array) -> Array:
  """Min-max normalises each [H, W] map to [0, 1]; a constant map becomes all zeros."""
  lo = heatmaps.min(axis=(-2, -1), keepdims=True)
  span = heatmaps.max(axis=(-2, -1), keepdims=True) - lo
  return (heatmaps - lo) / jnp.where(span > 0, span, 1)


@jax.jit
def _ssim(heatmaps1: Array, heatmaps2: Array) -> Array:
  x, y = _unit_range(heatmaps1), _unit_range(heatmaps2)
  stats = gaussian_filter(jnp.concatenate([x, y, x * x, y * y, x * y]), sigma=_SSIM_SIGMA,
                          radius=_SSIM_RADIUS)
  mx, my, mxx, myy, mxy = jnp.split(stats, 5)
  vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
  c1, c2 = _SSIM_K1**2, _SSIM_K2**2  # data range 1
  index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  return index.mean(axis=(-2, -1))


def ssim(heatmaps1: Array, heatmaps2: Array) -> Array:
  """Mean structural similarity of two heatmaps (Wang et al. 2004, Eq. 13, Gaussian-weighted).

  Each map is first min-max normalised to [0, 1] on its own ((h - min) / (max - min); a
  constant map becomes zeros), so the data range is 1 and the index ignores the maps'
  scales and offsets. Local statistics use an 11 x 11 Gaussian window with sigma 1.5 and
  population (co)variances; K1 = 0.01, K2 = 0.03; the index is averaged over the window
  positions that lie inside the map (no padding). This matches
  `skimage.metrics.structural_similarity(u1, u2, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)` on the normalised maps u1, u2. Adebayo et al.
  2018 compare |maps| this way; take absolute values (or `metrics.to_heatmap`) first if
  the sign should not matter.

  Args:
    heatmaps1: [B, H, W] maps, H, W >= 11.
    heatmaps2: [B, H, W] maps, same shape.

  Returns:
    [B] similarity in [-1, 1]; 1 for maps equal up to a positive affine change.

  Example:
    >>> h = jax.random.uniform(jax.random.key(0), (2, 16, 16))
    >>> jnp.round(ssim(h, 3 * h + 1), 4)
    Array([1., 1.], dtype=float32)
  """
  _check_pair(heatmaps1, heatmaps2, ('heatmaps1', 'heatmaps2'), ndim=3)
  if min(heatmaps1.shape[1:]) < 2 * _SSIM_RADIUS + 1:
    raise ValueError(f'heatmaps1 must be at least {2 * _SSIM_RADIUS + 1} x {2 * _SSIM_RADIUS + 1} '
                     f'(the SSIM window); got shape {tuple(heatmaps1.shape)}.')
  return _ssim(heatmaps1, heatmaps2)


# ----------------------------------------------------------------------------------------
# All pairs of methods.

_TOPK_METRICS: dict[str, Callable[..., Array]] = {
    'feature_agreement': feature_agreement,
    'rank_agreement': rank_agreement,
    'sign_agreement': sign_agreement,
    'signed_rank_agreement': signed_rank_agreement,
    'topk_intersection': topk_intersection,
}
_RANKING_METRICS: dict[str, Metric] = {
    'rank_correlation': rank_correlation,
    'pairwise_rank_agreement': pairwise_rank_agreement,
    'ssim': ssim,
}


def metric_names() -> tuple[str, ...]:
  """Metric names accepted by `agreement_matrix`."""
  return tuple(sorted({**_TOPK_METRICS, **_RANKING_METRICS}))


def _resolve(metric: str | Metric, k: int | None) -> Metric:
  if not isinstance(metric, str):
    return metric
  if metric in _TOPK_METRICS:
    return functools.partial(_TOPK_METRICS[metric], k=k)
  return _RANKING_METRICS[metric]


@functools.partial(jax.jit, static_argnames=('metric', 'k'))
def _matrix(maps: tuple[Array, ...], metric: str | Metric, k: int | None) -> Array:
  fn = _resolve(metric, k)
  return jnp.stack([jnp.stack([fn(a, b) for b in maps], axis=-1) for a in maps], axis=-2)


def agreement_matrix(maps: Mapping[str, Array], metric: str | Metric, *,
                     k: int | None = None) -> Array:
  """A metric over every ordered pair of attribution methods: entry [b, i, j] = metric(Ei, Ej)[b].

  Args:
    maps: method name -> [B, ...features] maps, all the same shape. The M axes follow the
      mapping's order (`list(maps)`).
    metric: a name from `metric_names()`, or a callable `metric(maps1, maps2) -> [B]`
      (jit-traceable; it is a static argument, so pass the same object to reuse the
      compiled program).
    k: top-k size, required for the top-k metrics ('feature_agreement', 'rank_agreement',
      'sign_agreement', 'signed_rank_agreement', 'topk_intersection') and refused otherwise.

  Returns:
    [B, M, M]; symmetric for every named metric; the diagonal compares a method with itself
    (1, or NaN for a constant map under 'rank_correlation').

  Example:
    >>> maps = {'a': jnp.array([[3., 2., 1.]]), 'b': jnp.array([[1., 2., 3.]])}
    >>> agreement_matrix(maps, 'rank_correlation')[0]
    Array([[ 1., -1.],
           [-1.,  1.]], dtype=float32)
  """
  if not isinstance(maps, Mapping) or not maps:
    raise ValueError('maps must be a non-empty mapping of method name -> [B, ...features] array.')
  names = list(maps)
  for name in names:
    check_maps(maps[name], f'maps[{name!r}]')
    if maps[name].shape != maps[names[0]].shape:
      raise ValueError(f'maps[{name!r}] must have the shape of maps[{names[0]!r}], '
                       f'{tuple(maps[names[0]].shape)}; got {tuple(maps[name].shape)}.')
  first = maps[names[0]]
  if isinstance(metric, str):
    validate.check_choice(metric, metric_names(), 'metric')
    if metric in _TOPK_METRICS:
      if k is None:
        raise ValueError(f'k is required for metric {metric!r}.')
      check_k(k, int(np.prod(first.shape[1:])))
    elif k is not None:
      raise ValueError(f'k applies only to top-k metrics; metric {metric!r} takes no k (got {k}).')
  elif not callable(metric):
    raise ValueError(
        f'metric must be a name from {list(metric_names())} or a callable; got {metric!r}.')
  # Shape checks of the metric itself (e.g. SSIM's window size) run while tracing.
  out = jax.eval_shape(_resolve(metric, k), first, first)
  if getattr(out, 'shape', None) != first.shape[:1]:
    raise ValueError(f'metric must return one value per example, shape {first.shape[:1]}; got '
                     f'{getattr(out, "shape", out)}.')
  return _matrix(tuple(maps[name] for name in names), metric, k)
