"""Auditing a model's explanations for the softmax-invariant manipulation.

A model whose logits are z(x) + t(x)·1 (Lerma & Lucas 2023, arXiv 2307.03305;
`lib.attribution.manipulate`) has unchanged probabilities but logit explanations that follow
∇t. Three symptoms give it away. Each is measured per input on heatmaps H (|maps| summed
over channels; CAMs as they are), for the predicted class ŷ = argmax z, by the top-k
feature agreement FA_k(H1, H2) = |topk(H1) ∩ topk(H2)|/k (Krishna et al. 2022, "The
Disagreement Problem", arXiv 2202.01602):

1. **Class collapse.** t is the same for every class, so as it dominates, the logit maps of
   ŷ and of a contrasting class o (the least likely one, `sanity.contrast_targets`) both
   become ∇t: collapse_m = FA_k(H_m(ŷ), H_m(o)). An honest, class-discriminative method
   explains different classes differently (Adebayo et al. 2018; Selvaraju et al. 2017).
2. **Pre/post-softmax disagreement.** A shift-invariant score (the logit difference
   z_ŷ − mean_{j≠ŷ} z_j by default, or log_softmax) cancels t exactly, so its map is the
   honest one: pre_post_m = 1 − FA_k(H_m^logit(ŷ), H_m^immune(ŷ)). On an honest model the
   two maps differ only by the other classes' gradients.
3. **Cross-method disagreement.** The defence the paper's readers are told to use:
   cross-check methods. Each logit-based method m is compared with each reference method r
   that reads a post-softmax score (occlusion of the probability by default: no gradient,
   immune to t): disagreement_mr = 1 − FA_k(H_m^logit(ŷ), H_r(ŷ)).

Why top-k agreement rather than a rank correlation over all pixels: a steered region M
is small, and Spearman's ρ over the whole map is dominated by the unsteered rest. Measured
on a random-init SmallCNN (16 × 16 inputs, |M| = 16 pixels, saliency, the 'input'
construction at K = 100 nested in 'channel' at K = 1000; mean of 8 inputs), honest →
manipulated: collapse ρ 0.28 → 0.41 and pre/post 1 − ρ 0.13 → 0.18, but FA_16 0.15 → 1.00
and 1 − FA_16 0.31 → 0.80. Choose k near the size of the region an attacker would steer
(default H·W/10).

Each component is averaged over methods (pairs) and lies in [0, 1], higher = more
suspicious. Per input, suspicion = mean of the three; an input is flagged on a component
when it exceeds its threshold (`Thresholds`; calibrate on honest models, e.g. their 95th
percentile). The model-level score is the mean suspicion over the inputs: one number per
model, higher for manipulated ones, whose ranking over honest and manipulated models gives
a detection ROC AUC (`detection_auc`). A model is flagged on a component when more than
`Thresholds.fraction` of its inputs are. (Cross-method disagreement is high on honest
random-init models too, 0.8-1.0 with the default methods: the disagreement problem itself;
collapse and pre/post carry most of the signal.)

The audit of one model is one jitted program (methods, scores and k are static); vmap it
over a stack of parameters to audit many seeds at once:

    methods = default_methods(tap='conv3')                   # build once, reuse
    refs = default_references()
    one = lambda p: audit(model.apply, p, x, methods=methods, references=refs)
    reports = jax.vmap(one)(stacked_params)                  # every field [S, ...]
    auc = detection_auc(honest.model_score, lying.model_score)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate
from lib.attribution import agreement, registry, sanity
from lib.attribution import scores as scores_lib

Array = jax.Array
# method(apply, params, x, target, *, score, key) -> maps [B, H, W, C] or [B, H, W]
Method = Callable[..., Array]

COMPONENTS: tuple[str, ...] = ('collapse', 'pre_post', 'disagreement')


class Thresholds(NamedTuple):
  """Per-input flag thresholds (each component in [0, 1]) and the model-level fraction.

  The defaults are starting points, set between the per-input scores of eight honest and
  eight manipulated random-init SmallCNNs (saliency and Grad-CAM, k = |M| = 16: honest
  collapse ≤ 0.59 and pre/post ≤ 0.78, manipulated collapse 1.0 and pre/post ≥ 0.69);
  calibrate them on honest models of the study.

  Attributes:
    collapse: flag when the class-collapse score exceeds this.
    pre_post: flag when the pre/post-softmax disagreement exceeds this.
    disagreement: flag when the cross-method disagreement exceeds this.
    fraction: flag the model on a component when more than this fraction of inputs are.
  """
  collapse: float = 0.7
  pre_post: float = 0.7
  disagreement: float = 0.95
  fraction: float = 0.5


class Audit(NamedTuple):
  """What `audit` finds; with vmap over params, every field gains a leading seed axis.

  Attributes:
    collapse: [N] class-collapse score per input.
    pre_post: [N] pre/post-softmax disagreement per input.
    disagreement: [N] cross-method disagreement per input.
    suspicion: [N] mean of the three.
    flags: [N, 3] bool, components (`COMPONENTS` order) above their thresholds.
    model_score: [] mean suspicion over the inputs (the detection statistic).
    model_flags: [3] bool, components flagged on more than `Thresholds.fraction` of inputs.
    collapse_by_method: [N, M] per method (the `methods` order).
    pre_post_by_method: [N, M] per method.
    disagreement_by_pair: [N, M, R] per (method, reference) pair.
  """
  collapse: Array
  pre_post: Array
  disagreement: Array
  suspicion: Array
  flags: Array
  model_score: Array
  model_flags: Array
  collapse_by_method: Array
  pre_post_by_method: Array
  disagreement_by_pair: Array


def default_methods(tap: str, *, n_steps: int = 16) -> dict[str, Method]:
  """Logit-based methods to audit: saliency, gradient × input, IG (zero baseline), Grad-CAM.

  Grad-CAM is taken without its final ReLU: a class whose map is all negative would
  otherwise give an all-zero map, whose top-k is decided by the tie rule (the first k
  pixels), so two such maps would spuriously agree. The methods are `registry.Method`s,
  equal by value, so rebuilding the mapping reuses the compiled audit.

  Args:
    tap: the spatial tap Grad-CAM reads (e.g. 'conv3').
    n_steps: integrated-gradients quadrature nodes.
  """
  return {
      'saliency': registry.get('saliency'),
      'gradient_x_input': registry.get('gradient_x_input'),
      'integrated_gradients': registry.get('integrated_gradients').bind(n_steps=n_steps),
      'grad_cam': registry.get('grad_cam').bind(tap=tap, relu=False),
  }


def default_references(*, window: int = 4, stride: int = 2) -> dict[str, Method]:
  """Reference methods run on the post-softmax score: occlusion (Zeiler & Fergus 2014)."""
  return {'occlusion': registry.get('occlusion').bind(window=window, stride=stride)}


def _heatmap(maps: Array) -> Array:
  """|maps| as [B, H, W]: channels of pixel maps summed."""
  return jnp.abs(maps).sum(axis=-1) if maps.ndim == 4 else jnp.abs(maps)


@functools.partial(jax.jit, static_argnames=('apply', 'methods', 'references', 'k',
                                             'immune_score', 'reference_score'))
def _audit(apply, params, x, key, thresholds, *, methods, references, k, immune_score,
           reference_score):
  top, other = sanity.contrast_targets(scores_lib.logits_of(apply(params, x)))

  def heat(method, target, score):
    return _heatmap(method(apply, params, x, target, score=score, key=key))

  logit_maps = [heat(m, top, 'logit') for _, m in methods]
  collapse = jnp.stack([agreement.feature_agreement(h, heat(m, other, 'logit'), k)
                        for h, (_, m) in zip(logit_maps, methods)], axis=-1)
  pre_post = jnp.stack([1 - agreement.feature_agreement(h, heat(m, top, immune_score), k)
                        for h, (_, m) in zip(logit_maps, methods)], axis=-1)
  reference_maps = [heat(r, top, reference_score) for _, r in references]
  disagreement = jnp.stack([
      jnp.stack([1 - agreement.feature_agreement(h, ref, k) for ref in reference_maps], -1)
      for h in logit_maps], axis=-2)
  components = jnp.stack([collapse.mean(-1), pre_post.mean(-1),
                          disagreement.mean(axis=(-2, -1))], axis=-1)
  flags = components > thresholds[:3]
  suspicion = components.mean(-1)
  return Audit(components[:, 0], components[:, 1], components[:, 2], suspicion, flags,
               suspicion.mean(), flags.mean(0) > thresholds[3], collapse, pre_post,
               disagreement)


def _check_methods(methods: Any, name: str) -> tuple[tuple[str, Method], ...]:
  if not isinstance(methods, Mapping) or not methods:
    raise ValueError(f'{name} must be a non-empty mapping of name -> method(apply, params, x, '
                     f'target, *, score, key); got {methods!r}.')
  for method_name, method in methods.items():
    if not callable(method):
      raise ValueError(f'{name}[{method_name!r}] must be a callable method; got {method!r}.')
  return tuple(methods.items())


def audit(apply: scores_lib.Apply, params: Any, x: Array, *, methods: Mapping[str, Method],
          references: Mapping[str, Method], key: Array | None = None, k: int | None = None,
          immune_score: str = 'logit_difference', reference_score: str = 'probability',
          thresholds: Thresholds = Thresholds()) -> Audit:
  """Per-input and model-level suspicion of a softmax-invariant manipulation.

  The three components and the aggregate are defined in the module docstring. Every
  method runs on the whole batch; a method that needs randomness (SmoothGrad) gets `key`,
  the same for every target and score it is run with (common random numbers, so the
  comparisons see no noise difference).

  Args:
    apply: the model (`lib.contract`), `apply(params, x, **kwargs)` -> `Outputs`, a
      `(logits, taps)` tuple or logits [B, K] (taps for CAM methods). Static under jit.
    params: its parameters (vmap over a stack of them to audit many seeds).
    x: [N, H, W, C] inputs.
    methods: name -> logit-based method `method(apply, params, x, target, *, score, key)`
      (e.g. `default_methods(tap)`; `registry.get('lrp_epsilon')` for LRP, which needs
      immune_score='logit_difference'). Entries are static under jit: use `registry.Method`s
      (equal by value) or reuse the same objects, or every call compiles anew.
    references: name -> method run on `reference_score` for the cross-method check (e.g.
      `default_references()`).
    key: typed PRNG key for stochastic methods, or None if none is.
    k: top-k size of the feature agreement, 1 <= k <= H·W; default H·W // 10.
    immune_score: shift-invariant score of the pre/post check: 'logit_difference',
      'log_probability' or 'probability'.
    reference_score: score of the reference methods, shift-invariant as above.
    thresholds: per-input flag thresholds and the model-level fraction.

  Returns:
    An `Audit`.

  Raises:
    ValueError: bad inputs, methods, scores, k or thresholds.

  Example:
    >>> report = audit(model.apply, variables, x, methods=default_methods('conv3'),
    ...                references=default_references(), k=25)
    >>> report.model_score, report.flags.any(-1).mean()
  """
  validate.check_images(x, 'x', value_range=None)
  method_pairs = _check_methods(methods, 'methods')
  reference_pairs = _check_methods(references, 'references')
  immune = tuple(s for s in scores_lib.SCORES if s != 'logit')
  validate.check_choice(immune_score, immune, 'immune_score')
  validate.check_choice(reference_score, immune, 'reference_score')
  num_pixels = x.shape[1] * x.shape[2]
  k = max(1, num_pixels // 10) if k is None else k
  agreement.check_k(k, num_pixels)
  if not isinstance(thresholds, Thresholds) or not all(
      np.isscalar(v) and 0 <= v <= 1 for v in thresholds):
    raise ValueError(f'thresholds must be a Thresholds of numbers in [0, 1]; got {thresholds!r}.')
  shape = getattr(scores_lib.logits_of(scores_lib.abstract_outputs(apply, params, x)), 'shape',
                  None)
  if shape is None or len(shape) != 2 or shape[0] != x.shape[0] or shape[1] < 2:
    raise ValueError('apply(params, x) must return logits [N, K] with K >= 2 (or an object with '
                     f'such .logits); got shape {shape}.')
  return _audit(apply, params, x, key, jnp.asarray(thresholds, jnp.float32),
                methods=method_pairs, references=reference_pairs, k=k,
                immune_score=immune_score, reference_score=reference_score)


def detection_auc(honest: Any, manipulated: Any) -> float:
  """ROC AUC of a score separating manipulated from honest models (Mann-Whitney U / n1·n2).

  The probability that a random manipulated model scores higher than a random honest one,
  ties counting half: 1 = perfect detection, 0.5 = chance.

  Args:
    honest: [n1] scores (e.g. `Audit.model_score` of honest seeds), finite.
    manipulated: [n2] scores of manipulated seeds, finite.

  Example:
    >>> detection_auc(np.array([0.1, 0.3]), np.array([0.2, 0.4]))
    0.75
  """
  h = np.asarray(honest, np.float64).reshape(-1)
  m = np.asarray(manipulated, np.float64).reshape(-1)
  if not (h.size and m.size):
    raise ValueError('honest and manipulated must each hold at least one score.')
  validate.check_finite(h, 'honest')
  validate.check_finite(m, 'manipulated')
  diff = m[:, None] - h[None, :]
  return float(((diff > 0) + 0.5 * (diff == 0)).mean())
