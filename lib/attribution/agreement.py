"""Agreement between attribution maps: do two explanations of one input say the same thing?

This module gathers the metrics of `ranking` (top-k and whole-ranking agreement) and
`similarity` (SSIM) under one name and compares every pair of methods (`agreement_matrix`).

Maps, the ranking convention and each metric are described in `ranking` and `similarity`.

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

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate
from lib.attribution.ranking import (Metric, average_ranks, check_k, check_maps,
                                     descending_order, descending_positions, feature_agreement,
                                     flatten, pairwise_rank_agreement, rank_agreement,
                                     rank_correlation, sign_agreement, signed_rank_agreement,
                                     top_features, topk_intersection)
from lib.attribution.similarity import gaussian_filter, ssim

Array = jax.Array

__all__ = ['Metric', 'agreement_matrix', 'average_ranks', 'check_k', 'check_maps',
           'descending_order', 'descending_positions', 'feature_agreement', 'flatten',
           'gaussian_filter', 'metric_names', 'pairwise_rank_agreement', 'rank_agreement',
           'rank_correlation', 'sign_agreement', 'signed_rank_agreement', 'ssim',
           'top_features', 'topk_intersection']

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
