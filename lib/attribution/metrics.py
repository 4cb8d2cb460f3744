"""Evaluation of attribution maps: localisation, faithfulness, and the two sanity checks.

  * Localisation against ground-truth masks `[B, H, W]` in {0, 1}, from heatmaps
    `[B, H, W]` (reduce pixel maps with `to_heatmap` first): `pointing_game` (Zhang et al.
    2018), `relevance_mass_accuracy` and `relevance_rank_accuracy` (Arras et al. 2022).
  * Faithfulness: `deletion_curve` and `insertion_curve` (Petsiuk et al. 2018, RISE).
  * Sanity checks: `model_randomisation` (Adebayo et al. 2018) and `class_sensitivity`
    (an explanation that barely changes with the explained class is the signature of the
    softmax-invariant manipulation of Lerma & Lucas, arXiv 2307.03305).

Every function is pure, batched over B and jitted; those that take a model or an attribution
method take it as a function (static under jit: pass the same object, e.g. `model.apply`, to
reuse the compiled program). Rankings follow `lib.attribution.agreement`: largest first, ties
broken by the lower flat (row-major) pixel index.

Example:

    heat = to_heatmap(saliency_maps)                                   # [B, H, W]
    hit = pointing_game(heat, masks, tolerance=15).mean()
    curve = deletion_curve(model.apply, variables, x, heat, labels, n_steps=32)
    curve.auc                                                          # [B], lower is better
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate
from lib.attribution import agreement

Array = jax.Array
# apply(params, x [B, H, W, C]) -> logits [B, K], or an object with a `.logits` field.
ApplyFn = Callable[[Any, Array], Any]
# score_fn(logits [B, K], target [B]) -> [B]
ScoreFn = Callable[[Array, Array], Array]

_HEATMAP_REDUCTIONS: dict[str, Callable[[Array], Array]] = {
    'abs_sum': lambda m: jnp.abs(m).sum(axis=-1),
    'sum': lambda m: m.sum(axis=-1),
    'max_abs': lambda m: jnp.abs(m).max(axis=-1),
}
# RISE's blurred substrate: Gaussian with sigma 5 in an 11 x 11 window.
_BLUR_SIGMA, _BLUR_RADIUS = 5.0, 5


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


# ----------------------------------------------------------------------------------------
# Localisation.


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
  return ((masks > 0) & (dist2 <= tolerance**2)).any(axis=(1, 2)).astype(jnp.float32)


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
  inside = (positive * (masks > 0)).sum(axis=(1, 2))
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
  inside = agreement.flatten(masks) > 0
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


# ----------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion (Petsiuk et al. 2018).


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
  return outputs.logits if hasattr(outputs, 'logits') else outputs


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


# ----------------------------------------------------------------------------------------
# Sanity checks.


class Randomisation(NamedTuple):
  """Similarity of each randomisation stage's maps to the original model's maps.

  Attributes:
    spearman: [B, n_stages] Spearman rank correlation of |maps| (`agreement.rank_correlation`).
    ssim: [B, n_stages] SSIM of the |maps| heatmaps (`agreement.ssim`).
  """
  spearman: Array
  ssim: Array


class ClassSensitivity(NamedTuple):
  """Similarity of the maps explaining two different classes; high = insensitive to class.

  Attributes:
    spearman: [B] Spearman rank correlation of |maps| (`agreement.rank_correlation`).
    feature_agreement: [B] top-k feature agreement (`agreement.feature_agreement`).
  """
  spearman: Array
  feature_agreement: Array


def _check_key(key: Any) -> None:
  if not (hasattr(key, 'dtype') and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
          and key.shape == ()):
    raise ValueError(f'key must be a typed PRNG key from jax.random.key(seed); got '
                     f'{getattr(key, "dtype", type(key).__name__)}.')


def _path_name(path: tuple[Any, ...]) -> str:
  parts = (getattr(p, 'key', getattr(p, 'idx', getattr(p, 'name', p))) for p in path)
  return '/'.join(str(p) for p in parts)


def _layer_groups(params: Any, layers: Sequence[str | Sequence[str]]) -> tuple[int, ...]:
  """For every leaf of `params`, the index of the layer group it belongs to, or -1."""
  if isinstance(layers, str) or not layers:
    raise ValueError('layers must be a non-empty sequence of layer groups (path prefixes).')
  paths = [(_path_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
  group_of = [-1] * len(paths)
  for g, group in enumerate(layers):
    prefixes = (group,) if isinstance(group, str) else tuple(group)
    for prefix in prefixes:
      hits = [i for i, (path, _) in enumerate(paths)
              if path == prefix or path.startswith(prefix + '/')]
      if not hits:
        raise ValueError(f'layers[{g}] prefix {prefix!r} matches no parameter; parameter paths: '
                         f'{[path for path, _ in paths]}.')
      for i in hits:
        if group_of[i] not in (-1, g):
          raise ValueError(f'layers[{g}] and layers[{group_of[i]}] both contain {paths[i][0]!r}; '
                           'layer groups must not overlap.')
        if not np.issubdtype(paths[i][1].dtype, np.floating):
          raise ValueError(f'layers[{g}] selects {paths[i][0]!r}, which is not floating point.')
        group_of[i] = g
  return tuple(group_of)


def _image_heatmap(maps: Array) -> Array:
  """|maps| as [B, H, W]: channels of pixel maps summed."""
  return jnp.abs(maps).sum(axis=-1) if maps.ndim == 4 else jnp.abs(maps)


def _redraw(leaf: Array, z: Array) -> Array:
  """mean(leaf) + std(leaf) * z, in the leaf's shape and dtype."""
  return (leaf.mean() + leaf.std() * z.reshape(leaf.shape)).astype(leaf.dtype)


@functools.partial(jax.jit, static_argnames=('attribute', 'group_of', 'batch_size'))
def _randomisation(attribute: Callable[[Any], Array], params: Any, stages: Array, key: Array, *,
                   group_of: tuple[int, ...], batch_size: int | None) -> Randomisation:
  leaves, treedef = jax.tree_util.tree_flatten(params)
  # Group g's tensors, in leaf order, take consecutive slices of one standard-normal vector
  # drawn with fold_in(key, g + 1) (one vmapped draw: far cheaper to compile than one per leaf).
  offsets, group_sizes = [], [0] * (max(group_of) + 1)
  for leaf, g in zip(leaves, group_of):
    offsets.append(group_sizes[g] if g >= 0 else None)
    if g >= 0:
      group_sizes[g] += leaf.size
  stage_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      key, jnp.arange(1, len(group_sizes) + 1))
  noise = jax.vmap(lambda k: jax.random.normal(k, (max(group_sizes),)))(stage_keys)
  drawn = [None if g < 0 else _redraw(leaf, noise[g, start:start + leaf.size])
           for leaf, g, start in zip(leaves, group_of, offsets)]
  reference = attribute(params)

  def similarity_at(randomised: Array) -> tuple[Array, Array]:  # randomised: [G] bool
    new = [leaf if g < 0 else jnp.where(randomised[g], r, leaf)
           for leaf, r, g in zip(leaves, drawn, group_of)]
    maps = attribute(jax.tree_util.tree_unflatten(treedef, new))
    return (agreement.rank_correlation(reference, maps),
            agreement.ssim(_image_heatmap(reference), _image_heatmap(maps)))

  spearman, ssim = jax.lax.map(similarity_at, stages, batch_size=batch_size or stages.shape[0])
  return Randomisation(spearman.T, ssim.T)


def model_randomisation(attribute: Callable[[Any], Array], params: Any,
                        layers: Sequence[str | Sequence[str]], *, key: Array,
                        mode: str = 'cascading', batch_size: int | None = None) -> Randomisation:
  """Model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

  Explanations that depend on what the model learned must change when its weights are
  re-initialised. Stage 0 keeps `params` (similarity 1); stage s >= 1 randomises, in
  'cascading' mode, layer groups 0..s-1 (from the top of the network down), in
  'independent' mode group s-1 alone. Each stage's maps are compared with the maps of the
  original model by Spearman rank correlation of |maps| and by SSIM of the |maps| heatmaps
  (channels summed, min-max normalised; see `agreement.ssim`). Adebayo et al.'s HOG
  similarity is not computed.

  Re-initialisation: every tensor in group g is replaced by draws from a normal with the
  tensor's own mean and standard deviation (over its entries): mean + std * z, the z of
  group g's tensors being consecutive slices (in leaf order) of one standard-normal vector
  drawn with `fold_in(key, g + 1)`. Group g is thus drawn with the key of the stage that
  first randomises it, and a cascade stage adds one group to the previous stage's
  randomised model. Keeping each tensor's scale keeps activations in range without knowing
  the layer's initialiser; a constant tensor (e.g. a zero-initialised bias) stays constant.

  Args:
    attribute: `attribute(params) -> maps` [B, H, W, C] or [B, H, W], H, W >= 11: the
      explanation of a fixed batch (inputs and targets closed over) under `params`. Static.
    params: the model's parameters, a pytree of nested dicts / sequences.
    layers: ordered layer groups, top (output) first; each a path prefix or a sequence of
      prefixes, paths joined by '/' (e.g. 'params/head', ('params/convs/2/kernel',
      'params/convs/2/bias')). A prefix selects the leaf with that path and every leaf below
      it; groups must not overlap. Leave batch-norm statistics out (a drawn variance can be
      negative).
    key: typed PRNG key (`jax.random.key`).
    mode: 'cascading' or 'independent'.
    batch_size: stages evaluated together (vmapped, static), in [1, len(layers) + 1], or
      None for all at once.

  Returns:
    `Randomisation(spearman, ssim)`, each [B, len(layers) + 1]; column s is stage s.

  Example:
    def attribute(p):   # plain gradients of the labelled logits, [B, H, W, C]
      score = lambda x: jnp.take_along_axis(model.apply(p, x).logits, labels[:, None], 1).sum()
      return jax.grad(score)(x)

    sim = model_randomisation(attribute, variables, ['params/head', 'params/convs/2'],
                              key=jax.random.key(0))
    sim.spearman.mean(0)   # [3]: 1 at stage 0, then falling for a sound method
  """
  if not callable(attribute):
    raise ValueError('attribute must be a callable attribute(params) -> maps.')
  _check_key(key)
  validate.check_choice(mode, ('cascading', 'independent'), 'mode')
  group_of = _layer_groups(params, layers)
  maps = jax.eval_shape(attribute, params)
  if getattr(maps, 'ndim', None) not in (3, 4) or min(maps.shape[1:3]) < 11:
    raise ValueError('attribute(params) must return maps [B, H, W] or [B, H, W, C] with H, W >= 11 '
                     f'(the SSIM window); got {getattr(maps, "shape", type(maps).__name__)}.')
  num_groups = len(layers)
  if batch_size is not None:
    agreement.check_k(batch_size, num_groups + 1, 'batch_size')
  steps = np.arange(num_groups + 1)[:, None]
  groups = np.arange(num_groups)[None, :]
  stages = groups < steps if mode == 'cascading' else groups == steps - 1
  return _randomisation(attribute, params, jnp.asarray(stages), key, group_of=group_of,
                        batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=('attribute', 'k'))
def _class_sensitivity(attribute: Callable[[Array], Array], targets: Array, other_targets: Array,
                       k: int) -> ClassSensitivity:
  maps, other_maps = attribute(targets), attribute(other_targets)
  return ClassSensitivity(agreement.rank_correlation(maps, other_maps),
                          agreement.feature_agreement(maps, other_maps, k))


def class_sensitivity(attribute: Callable[[Array], Array], targets: Array, other_targets: Array,
                      *, k: int) -> ClassSensitivity:
  """Similarity of the explanations of two different classes for the same inputs.

  A class-discriminative method explains different classes differently (Selvaraju et al.
  2017); guided backpropagation and several modified-backpropagation rules do not (Nie et
  al. 2018; Sixt et al. 2020, "When Explanations Lie"). When a model's logits are z + t(x) * 1, every class's logit gradient carries the same
  ∇t; as t dominates, the maps of all classes collapse onto it and this similarity goes to
  1 (Lerma & Lucas 2023, arXiv 2307.03305). Compare e.g. the top-1 class with the least
  likely one or a random other (`contrast_targets`).

  Args:
    attribute: `attribute(targets [B] int) -> maps [B, ...features]` for a fixed batch of
      inputs closed over. Static.
    targets: [B] int classes explained first.
    other_targets: [B] int classes explained second, different from `targets` everywhere.
    k: top-k size of the feature agreement, 1 <= k <= F. Static.

  Returns:
    `ClassSensitivity(spearman [B], feature_agreement [B])`: high = insensitive to class.

  Example:
    def attribute(t):   # plain gradients of the logits of classes t, [B, H, W, C]
      score = lambda x: jnp.take_along_axis(model.apply(variables, x).logits, t[:, None], 1).sum()
      return jax.grad(score)(x)

    top, other = contrast_targets(model.apply(variables, x).logits)
    class_sensitivity(attribute, top, other, k=50).spearman   # [B]
  """
  if not callable(attribute):
    raise ValueError('attribute must be a callable attribute(targets) -> maps.')
  for name, t in (('targets', targets), ('other_targets', other_targets)):
    if not hasattr(t, 'shape') or t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
      raise ValueError(
          f'{name} must be an integer array of shape [B]; got {getattr(t, "shape", t)}.')
  if other_targets.shape != targets.shape:
    raise ValueError(f'other_targets must have the shape of targets, {tuple(targets.shape)}; '
                     f'got {tuple(other_targets.shape)}.')
  if validate.is_concrete(targets) and validate.is_concrete(other_targets) and np.any(
      np.asarray(targets) == np.asarray(other_targets)):
    raise ValueError('other_targets must differ from targets in every example.')
  maps = jax.eval_shape(attribute, targets)
  if getattr(maps, 'ndim', 0) < 2 or maps.shape[0] != targets.shape[0]:
    raise ValueError(f'attribute(targets) must return maps [B={targets.shape[0]}, ...features]; '
                     f'got {getattr(maps, "shape", type(maps).__name__)}.')
  agreement.check_k(k, int(np.prod(maps.shape[1:])))
  return _class_sensitivity(attribute, targets, other_targets, k)


def contrast_targets(logits: Array, *, key: Array | None = None) -> tuple[Array, Array]:
  """The top-1 class and a contrasting class per example, for `class_sensitivity`.

  Args:
    logits: [B, K] scores, K >= 2.
    key: None for the least likely class (the lowest logit other than the top-1), or a
      typed PRNG key for a uniformly random class other than the top-1.

  Returns:
    (top1 [B] int32, other [B] int32), different in every example.

  Example:
    >>> contrast_targets(jnp.array([[0.1, 2.0, -1.0]]))
    (Array([1], dtype=int32), Array([2], dtype=int32))
  """
  agreement.check_maps(logits, 'logits', ndim=2)
  if logits.shape[1] < 2:
    raise ValueError(f'logits must have at least 2 classes; got shape {tuple(logits.shape)}.')
  top = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if key is None:
    others = jnp.where(jax.nn.one_hot(top, logits.shape[1], dtype=bool), jnp.inf, logits)
    return top, jnp.argmin(others, axis=-1).astype(jnp.int32)
  _check_key(key)
  # A uniform draw from the K - 1 other classes: shift past the top-1 class.
  draw = jax.random.randint(key, top.shape, 0, logits.shape[1] - 1, dtype=jnp.int32)
  return top, draw + (draw >= top)
