"""Faithfulness of attribution maps: deletion and insertion curves (Petsiuk et al. 2018, RISE).

Pixels are removed from the input (deletion) or inserted into a baseline (insertion) in the
order of a heatmap `[B, H, W]`, most important first, and the model's score of the target
class is read after each step; a faithful map makes the deletion curve fall fast (low AUC)
and the insertion curve rise fast (high AUC). The model is a function (`lib.contract`),
static under jit: pass the same object, e.g. `model.apply`, to reuse the compiled program.

Example:

    curve = deletion_curve(model.apply, variables, x, heat, labels, n_steps=32)
    curve.auc                                                          # [B], lower is better
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lib import contract, validate
from lib.attribution import agreement

Array = jax.Array
# apply(params, x [B, H, W, C]) -> anything `lib.contract.as_outputs` reads.
ApplyFn = Callable[[Any, Array], Any]
# score_fn(logits [B, K], target [B]) -> [B]
ScoreFn = Callable[[Array, Array], Array]
# RISE's blurred substrate: Gaussian with sigma 5 in an 11 x 11 window.
_BLUR_SIGMA, _BLUR_RADIUS = 5.0, 5

class Curve(NamedTuple):
  """A deletion or insertion curve.

  Attributes:
    scores: [B, n_steps + 1] score after each step; step 0 is the start (x for deletion,
      the baseline for insertion), step n_steps the end.
    fractions: [n_steps + 1] fraction of pixels removed or inserted at each step, 0 to 1.
    auc: [B] area under the curve over `fractions` (trapezoid rule).
  """
  scores: Array
  fractions: Array
  auc: Array


def probability(logits: Array, target: Array) -> Array:
  """Softmax probability of the target class: [B, K], [B] -> [B] (RISE's score)."""
  return jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), target[:, None], axis=-1)[:, 0]


def _logits(outputs: Any) -> Array:
  return contract.as_outputs(outputs).logits


@functools.partial(jax.jit, static_argnames='kind')
def _substrate(x: Array, kind: str) -> Array:
  """The named baseline for images x [B, H, W, C]: 'zeros', 'mean' or 'blur'."""
  if kind == 'zeros':
    return jnp.zeros_like(x)
  if kind == 'mean':
    return jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)
  channels_first = jnp.moveaxis(x, -1, 1).reshape(-1, *x.shape[1:3])
  blurred = agreement.gaussian_filter(channels_first, sigma=_BLUR_SIGMA, radius=_BLUR_RADIUS,
                                      padding='edge')
  return jnp.moveaxis(blurred.reshape(x.shape[0], x.shape[3], *x.shape[1:3]), 1, -1)


@functools.partial(jax.jit,
                   static_argnames=('apply', 'n_steps', 'insert', 'score_fn', 'batch_size'))
def _curve(apply: ApplyFn, params: Any, x: Array, heatmaps: Array, target: Array,
           substrate: Array, *, n_steps: int, insert: bool, score_fn: ScoreFn,
           batch_size: int | None) -> Curve:
  num_pixels = heatmaps.shape[1] * heatmaps.shape[2]
  counts = np.round(np.arange(n_steps + 1) * num_pixels / n_steps).astype(np.int32)
  positions = agreement.descending_positions(agreement.flatten(heatmaps)).reshape(heatmaps.shape)

  def score_at(count: Array) -> Array:  # [B]: score with the first `count` pixels changed
    changed = (positions < count)[..., None]
    image = jnp.where(changed, x, substrate) if insert else jnp.where(changed, substrate, x)
    return score_fn(_logits(apply(params, image)), target)

  scores = jax.lax.map(score_at, jnp.asarray(counts), batch_size=batch_size or n_steps + 1).T
  fractions = jnp.asarray(counts / num_pixels, jnp.float32)
  return Curve(scores, fractions, jnp.trapezoid(scores, x=fractions, axis=-1))


def _perturbation_curve(apply: ApplyFn, params: Any, x: Array, heatmaps: Array, target: Array,
                        *, n_steps: int, baseline: str | Array, score_fn: ScoreFn,
                        batch_size: int | None, insert: bool) -> Curve:
  if not callable(apply) or not callable(score_fn):
    raise ValueError('apply and score_fn must be callables.')
  validate.check_images(x, 'x')
  agreement.check_maps(heatmaps, 'heatmaps', ndim=3)
  if tuple(heatmaps.shape) != tuple(x.shape[:3]):
    raise ValueError(f'heatmaps must have shape [B, H, W] = {tuple(x.shape[:3])} to match x; got '
                     f'{tuple(heatmaps.shape)}.')
  logits = _logits(jax.eval_shape(apply, params, x))
  validate.check_labels(target, logits.shape[-1], 'target', batch=x.shape[0])
  agreement.check_k(n_steps, x.shape[1] * x.shape[2], 'n_steps')
  if batch_size is not None:
    agreement.check_k(batch_size, n_steps + 1, 'batch_size')
  if isinstance(baseline, str):
    validate.check_choice(baseline, ('zeros', 'mean', 'blur'), 'baseline')
  else:
    validate.check_images(baseline, 'baseline', shape=x.shape[1:])
    if baseline.shape != x.shape:
      raise ValueError(f'baseline must have the shape of x, {tuple(x.shape)}; got '
                       f'{tuple(baseline.shape)}.')
  score = jax.eval_shape(score_fn, logits, target)
  if getattr(score, 'shape', None) != (x.shape[0],):
    raise ValueError(f'score_fn must return one score per example, shape ({x.shape[0]},); got '
                     f'{getattr(score, "shape", score)}.')
  substrate = _substrate(x, baseline) if isinstance(baseline, str) else baseline
  return _curve(apply, params, x, heatmaps, target, substrate, n_steps=n_steps, insert=insert,
                score_fn=score_fn, batch_size=batch_size)


def deletion_curve(apply: ApplyFn, params: Any, x: Array, heatmaps: Array, target: Array, *,
                   n_steps: int = 32, baseline: str | Array = 'zeros',
                   score_fn: ScoreFn = probability, batch_size: int | None = None) -> Curve:
  """Deletion curve (Petsiuk et al. 2018, RISE): the most important pixels are removed first.

  Starts at x and replaces pixels by the baseline; a faithful heatmap makes the score fall
  fast, so a lower AUC is better. Pixels (all channels of a location) are ordered by the
  heatmap, largest first; step s of n_steps changes the first round(s * H * W / n_steps) of
  them, and the model is scored on every step's image in one jitted program
  (`jax.lax.map` over steps, `batch_size` steps vmapped together; `None`: all n_steps + 1
  at once).

  Args:
    apply: `apply(params, x) -> logits [B, K]` or an object with `.logits` (e.g.
      `PureModel.apply`). Static under jit.
    params: the model's parameters (any pytree).
    x: [B, H, W, C] images in [0, 1].
    heatmaps: [B, H, W] importance of each pixel.
    target: [B] int class whose score is tracked.
    n_steps: number of steps, 1 <= n_steps <= H * W.
    baseline: what removed pixels show: 'zeros', 'mean' (each image's per-channel mean),
      'blur' (Gaussian blur of x, sigma 5, 11 x 11 window, edges repeated, as RISE) or an
      array [B, H, W, C] in [0, 1].
    score_fn: `score_fn(logits, target) -> [B]`; default the softmax probability. Static.
    batch_size: steps evaluated together (static), in [1, n_steps + 1], or None.

  Returns:
    `Curve(scores [B, n_steps + 1], fractions [n_steps + 1], auc [B])`.

  Example:
    curve = deletion_curve(model.apply, variables, x, to_heatmap(maps), labels, n_steps=16)
    curve.auc.mean()   # lower is better
  """
  return _perturbation_curve(apply, params, x, heatmaps, target, n_steps=n_steps,
                             baseline=baseline, score_fn=score_fn, batch_size=batch_size,
                             insert=False)


def insertion_curve(apply: ApplyFn, params: Any, x: Array, heatmaps: Array, target: Array, *,
                    n_steps: int = 32, baseline: str | Array = 'blur',
                    score_fn: ScoreFn = probability, batch_size: int | None = None) -> Curve:
  """Insertion curve (Petsiuk et al. 2018, RISE): the most important pixels are inserted first.

  Starts at the baseline (blurred x by default, as RISE) and restores pixels of x in the
  heatmap's order; a faithful heatmap makes the score rise fast, so a higher AUC is better.
  Arguments and result as `deletion_curve`; `baseline` is what pixels not yet inserted show.

  Example:
    curve = insertion_curve(model.apply, variables, x, to_heatmap(maps), labels, n_steps=16)
    curve.auc.mean()   # higher is better
  """
  return _perturbation_curve(apply, params, x, heatmaps, target, n_steps=n_steps,
                             baseline=baseline, score_fn=score_fn, batch_size=batch_size,
                             insert=True)
