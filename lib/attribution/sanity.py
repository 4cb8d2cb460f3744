"""Sanity checks of attribution methods: model randomisation and class sensitivity.

  * `model_randomisation` (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"):
    re-draw the weights layer by layer, top first, and measure how similar the maps stay.
  * `class_sensitivity`: how similar the maps explaining two different classes are (an
    explanation that barely changes with the explained class is the signature of the
    softmax-invariant manipulation of Lerma & Lucas, arXiv 2307.03305);
    `contrast_targets` picks the classes to compare.

The attribution method is a function (static under jit: pass the same object to reuse the
compiled program).
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
  al. 2018; Sixt et al. 2020, "When Explanations Lie"). When a model's logits are
  z + t(x) * 1, every class's logit gradient carries the same
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
  return top, draw + (draw >= top).astype(jnp.int32)
