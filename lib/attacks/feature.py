"""Feature-level attacks on an encoder alone: PRM and its baselines (issue 11).

PRM, Patch Representation Misalignment (Hu et al. 2024, "As Firm As Their Foundations",
arXiv 2403.12693; as the authors' code `attackers/PRM_DR_NRD_SAN/attack_PRM.py` runs it),
perturbs images so that an open foundation encoder's intermediate features stop pointing
where the clean image's do, with no access to any downstream model:

    L_prm(δ) = Σ_{l ∈ layers} mean_tokens cos(f_l(x + δ), f_l(x))            (minimised)

over the chosen hidden states f_l [B, T, D] (ViT-B/16: the pre-LN output and the 12 blocks',
13 tensors; every token, the class token included; the cosine over the last axis, so a
convolutional stage [B, h, w, C] is compared location by location). Baselines, the same
machinery with another loss (`LOSSES`):

  'embedding'   cos(g(x + δ), g(x)) of the final image embedding g = `Outputs.features`;
  'nrd'         −Σ_l mean (f_l(x + δ) − f_l(x))², i.e. maximise the feature MSE (NRD); its
                gradient at δ = 0 is exactly zero, so from `start='zero'` it never moves
                (as in PyTorch): use `start='random'`;
  'dr'          Σ_l std(f_l(x + δ)), dispersion reduction (Lu et al. 2020, "Enhancing
                cross-task black-box transferability of adversarial examples with dispersion
                reduction"): the std over all of an image's entries of the layer (torch.std,
                unbiased), minimised;
  'dr_authors'  −Σ_l std(f_l(x + δ)): the PRM code's DR (`losses -= std`, then minimised),
                which *increases* dispersion (PAPERS.md §3: a likely sign slip).

Random noise of the same budget is `random_noise`; white-box PGD on a zero-shot classifier
is `lib.attacks.pgd.pgd` applied to the zero-shot `apply`.

The optimiser is PyTorch's `AdamW` (lr 0.5, weight decay 0.01, betas (0.9, 0.999), eps 1e-8;
decoupled decay δ ← δ(1 − lr·wd) before the Adam step of `lib.meta.adam`, operation by
operation `torch.optim.AdamW`'s; optax's `adamw` fails under strict dtype promotion) on
δ in 0–255 pixel units from zero, 250 iterations; the perturbation is bounded inside the
forward pass, not by projecting δ:

    x_adv = clamp(255 x + clamp(δ, −255 ε, 255 ε), 0, 255) / 255

(ℓ∞; in ℓ2 δ is scaled by min(1, 255 ε / ‖δ‖₂) instead of clamped).

Gradient of the clamps: 1 on the closed interval [lo, hi] and 0 outside (PyTorch's of the
authors' era; torch 2.x gives 0 at the bounds and `jnp.clip` 0.5). This matters from δ = 0:
5–10% of 8-bit pixels sit exactly at 0 or 255, and a zero gradient there would freeze them.

"Dynamic scale": at each iteration both x and x + δ are resized by a ratio r ~ U[lo, hi)
(default [0.5, 1)) before the encoder (the clean features at each size are computed once,
before the iterations: the encoder is deterministic). The authors resize to int(r·H) x
int(r·W), up to 112 sizes at 224 px; here each side is rounded down to a multiple of
`patch_size` (what a ViT accepts), P·floor(r·H/P), so r picks one of a static, finite set of
sizes (`scale_sizes`: 7 at 224 px, P = 16, [0.5, 1), each as likely as its share of
[lo, hi)), and `lax.switch` selects the branch of that size: the program compiles once,
with one encoder per size. Under `jax.vmap` over keys the draw is batched and `lax.switch`
becomes a select that evaluates every size (correct, slower). The resize is
`resize(images [B, H, W, C], (h, w))`; the default is `jax.image.resize` cubic without
antialiasing (Keys' a = −0.5); PyTorch's bicubic (a = −0.75, the authors') is
`lib.models.vit.resize_bicubic`, which a caller passes (this package imports no models).

A stochastic encoder (`stochastic=True`: e.g. an encoder behind a randomised input defence)
is called `features(params, images, key=k)` with a fresh key every step (Expectation over
Transformation, Athalye et al. 2018, "Synthesizing robust adversarial examples": new
transformations at each step), split into `eot` draws whose losses are averaged
(`lib.attacks.objective.over_draws`, vmapped, the convention of every EOT gradient here).
The clean features are then recomputed at each step with the same key as x + δ's, so both
images go through the same transformation (at δ = 0 PRM's loss is exactly the number of
layers); with dynamic scale the step's key is split into the scale draw and the encoder's.

A batch is attacked as independent images: the loss differentiated is the sum of the
per-image losses (the authors attack one image at a time; Adam is elementwise, so each
image follows its own trajectory).

Example (CLIP ViT-B/16 from `lib.models.clip`):

    >>> encode = clip_lib.image_encoder(clip)              # taps: 'embed', 'block0'..
    >>> result = feature_attack(encode, variables['image'], x, eps=8 / 255,
    ...                         patch_size=clip.config.patch_size,
    ...                         resize=vit.resize_bicubic, key=jax.random.key(2023))
    >>> result.x_adv, result.loss                          # [B, H, W, C], [steps, B]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lib import contract, iterate, validate
from lib.attacks import _args, objective
from lib.attacks.pgd import random_start
from lib.meta import adam

Array = jax.Array
# features(params, images [B, H, W, C][, key=k]) -> Outputs | dict
Features = Callable[..., Any]
Resize = Callable[[Array, tuple[int, int]], Array]

LOSSES = ('prm', 'embedding', 'nrd', 'dr', 'dr_authors')
STARTS = ('zero', 'random')
PIXEL_SCALE = 255.0          # δ lives in 0–255 pixel units, as in the authors' code
# Cosine similarity's guard against zero norms (torch.nn.functional.cosine_similarity).
COSINE_EPS = 1e-8


class State(NamedTuple):
  """The attack's state.

  Attributes:
    delta: [B, H, W, C] the optimised perturbation in 0–255 pixel units (unbounded; it is
      clamped in the forward pass, see `perturb`).
    opt: Adam's moments and step count (`lib.meta.adam.AdamState`).
  """
  delta: Array
  opt: Any


class Result(NamedTuple):
  """What `feature_attack` returns.

  Attributes:
    x_adv: [B, H, W, C] adversarial images in [0, 1] (`perturb(x, final δ)`).
    loss: [steps, B] each image's loss before each step (at the step's scale).
  """
  x_adv: Array
  loss: Array


def clamp(v: Array, lo: float | Array, hi: float | Array) -> Array:
  """clip(v, lo, hi) whose gradient is 1 on the closed interval [lo, hi] and 0 outside."""
  return jnp.where((v >= lo) & (v <= hi), v, jnp.clip(v, lo, hi))


def perturb(x: Array, delta: Array, eps: float | Array, norm: str) -> Array:
  """The image the encoder sees: x + δ bounded to the ε-ball and clipped to the pixel box.

  Args:
    x: [B, H, W, C] clean images in [0, 1].
    delta: [B, H, W, C] perturbation in 0–255 pixel units.
    eps: radius in [0, 1] pixel units (ℓ∞: per pixel; ℓ2: per image).
    norm: 'linf' (δ clamped to ±255 ε) or 'l2' (δ scaled by min(1, 255 ε / ‖δ‖₂)).

  Returns:
    [B, H, W, C] clamp(255 x + bounded δ, 0, 255) / 255, in [0, 1].
  """
  bound = jnp.asarray(eps, x.dtype) * PIXEL_SCALE
  if _args.check_norm(norm) == 'linf':
    bounded = clamp(delta, -bound, bound)
  else:
    flat = delta.reshape(delta.shape[0], -1)
    # The floor keeps the gradient finite at δ = 0 (where the factor is 1 anyway).
    size = jnp.sqrt(jnp.maximum(jnp.sum(flat * flat, axis=1), jnp.finfo(x.dtype).tiny))
    factor = jnp.minimum(1.0, bound / size)
    bounded = delta * factor.reshape((-1,) + (1,) * (delta.ndim - 1))
  return clamp(x * PIXEL_SCALE + bounded, 0.0, PIXEL_SCALE) / PIXEL_SCALE


def cosine(a: Array, b: Array) -> Array:
  """Cosine similarity over the last axis: [..., D] x [..., D] -> [...].

  a·b / (max(‖a‖, 1e-8) · max(‖b‖, 1e-8)), as `torch.nn.functional.cosine_similarity`.
  """
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1), COSINE_EPS)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), COSINE_EPS)
  return jnp.sum(a * b, axis=-1) / (na * nb)


def _per_image_mean(v: Array) -> Array:
  return v.reshape(v.shape[0], -1).mean(axis=1)


def _per_image_std(v: Array) -> Array:
  return jnp.std(v.reshape(v.shape[0], -1), axis=1, ddof=1)


def feature_loss(loss: str, adv: contract.Outputs, clean: contract.Outputs,
                 layers: Sequence[str]) -> Array:
  """Each image's loss (minimised) between the encoder's outputs on x + δ and on x.

  Args:
    loss: a name in `LOSSES` (module docstring).
    adv: the encoder's `Outputs` on the perturbed images (taps [B, ...], features [B, E]).
    clean: its `Outputs` on the clean images (same shapes; treated as constants).
    layers: the tap names summed over (ignored by 'embedding').

  Returns:
    [B] per-image losses.
  """
  validate.check_choice(loss, LOSSES, 'loss')
  clean = jax.lax.stop_gradient(clean)
  if loss == 'embedding':
    return cosine(adv.features, clean.features)
  terms = []
  for name in layers:
    a, c = adv.taps[name], clean.taps[name]
    if loss == 'prm':
      terms.append(_per_image_mean(cosine(a, c)))
    elif loss == 'nrd':
      terms.append(-_per_image_mean(jnp.square(a - c)))
    else:
      terms.append(_per_image_std(a) * (1.0 if loss == 'dr' else -1.0))
  return sum(terms)


def layer_sets(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
  """Early / middle / late thirds of an encoder's layers, in order, and all of them.

  Args:
    names: the hidden-state names in depth order (CLIP: `clip.image_hidden_states`).

  Returns:
    {'early', 'middle', 'late', 'all'} -> tuples of names (`numpy.array_split` into three:
    at ViT-B/16's 13 states 5 / 4 / 4: 'embed'..'block3', 'block4'..'block7',
    'block8'..'block11').
  """
  names = tuple(names)
  if len(names) < 3:
    raise ValueError(f'names must hold at least 3 layers to split in thirds; got {list(names)}.')
  early, middle, late = (tuple(p) for p in np.array_split(np.asarray(names, object), 3))
  return {'early': early, 'middle': middle, 'late': late, 'all': names}


def scale_sizes(image_hw: tuple[int, int], scale: tuple[float, float], patch_size: int
                ) -> tuple[tuple[tuple[int, int], ...], tuple[float, ...]]:
  """The static sizes of dynamic scale and the ratios where the size changes.

  r ~ U[lo, hi) maps to (P·floor(r·H/P), P·floor(r·W/P)); `cuts` are the ratios in (lo, hi)
  where either side changes, so r lies in interval i = #{cuts ≤ r} and gets `sizes[i]`.
  lo == hi is the fixed ratio lo.

  Args:
    image_hw: (H, W) of the images.
    scale: (lo, hi), 0 < lo ≤ hi ≤ 1.
    patch_size: P.

  Returns:
    `(sizes, cuts)`: len(cuts) + 1 sizes (h, w).

  Raises:
    ValueError: a size below one patch.
  """
  (h, w), (lo, hi) = image_hw, scale
  cuts = sorted({k * patch_size / side for side in (h, w)
                 for k in range(1, side // patch_size + 2)
                 if lo < k * patch_size / side < hi})
  starts = [lo] + cuts
  sizes = tuple((patch_size * int(np.floor(r * h / patch_size + 1e-9)),
                 patch_size * int(np.floor(r * w / patch_size + 1e-9))) for r in starts)
  if min(min(s) for s in sizes) < patch_size:
    raise ValueError(f'scale={tuple(scale)} resizes {h}x{w} images below one {patch_size}x'
                     f'{patch_size} patch (sizes {list(sizes)}); raise the lower bound.')
  return sizes, tuple(float(c) for c in cuts)


def adamw_step(delta: Array, grad: Array, state: adam.AdamState, *, lr: float | Array,
               weight_decay: float | Array, betas: tuple[float, float], eps: float
               ) -> tuple[Array, adam.AdamState]:
  """One step of PyTorch's `torch.optim.AdamW`, in its order of operations.

  δ ← δ(1 − lr·wd) (decoupled weight decay, Loshchilov & Hutter 2019), then the Adam step
  δ ← δ − lr/(1 − b1^t) · m_t / (√v_t / √(1 − b2^t) + eps) (`lib.meta.adam.adam_step`).

  Args:
    delta: parameters (any shape).
    grad: the gradient, like `delta`.
    state: `adam.adam_init(delta)` or the previous step's.
    lr, weight_decay: scalars (may be traced).
    betas, eps: Adam's (b1, b2) and eps.

  Returns:
    `(new delta, new state)`.
  """
  lr = jnp.asarray(lr, delta.dtype)
  decayed = delta * (1 - lr * jnp.asarray(weight_decay, delta.dtype))
  return adam.adam_step(decayed, grad, state, lr, b1=betas[0], b2=betas[1], eps=eps)


def _outputs(result: Any) -> contract.Outputs:
  """An encoder's result as `Outputs` (a plain dict is taps alone)."""
  if isinstance(result, Mapping):
    return contract.Outputs(None, dict(result), None)
  return contract.as_outputs(result)


def _resize_default(images: Array, size: tuple[int, int]) -> Array:
  """`jax.image.resize` cubic (Keys a = −0.5), no antialiasing."""
  return jax.image.resize(images, (images.shape[0], *size, images.shape[-1]), 'cubic',
                          antialias=False)


def make_feature_attack(features: Features, params: Any, x: Array, *, loss: str = 'prm',
                        layers: Sequence[str], eps: float | Array = 8 / 255,
                        norm: str = 'linf', lr: float | Array = 0.5,
                        weight_decay: float | Array = 0.01,
                        betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                        scale: tuple[float, float] | None = None, patch_size: int = 1,
                        resize: Resize | None = None, stochastic: bool = False,
                        eot: int = 1) -> iterate.Iterative:
  """A feature attack as an `(init, step)` pair (lib.iterate's convention); no checks.

  `init(delta=None) -> State` starts from δ = 0 or from `delta` [B, H, W, C] given in [0, 1]
  pixel units (e.g. `random_start(key, x, eps, norm) - x`). `step(state, key) -> (State,
  loss [B])` draws the step's scale from `key` (when `scale` is set) and, for a stochastic
  encoder, its `eot` encoder keys, takes one AdamW step on δ and returns each image's loss
  before it (the mean over the draws). Run with `iterate.run(step, state, steps, key=k)`.
  Arguments as `feature_attack` (`layers` resolved to names).
  """
  resize = _resize_default if resize is None else resize

  def encode(images, key):
    return _outputs(features(params, images) if key is None else
                    features(params, images, key=key))

  sizes, cuts = (None, ()) if scale is None else scale_sizes(x.shape[1:3], scale, patch_size)

  def at_size(size):
    """(δ, encoder key) -> (Σ loss, [B] loss) with both images resized to `size` (None:
    native). A deterministic encoder's clean features at a size are computed once, here,
    outside the iterations; a stochastic one's at every step under the step's keys."""
    fit = (lambda images: images) if size is None else (lambda images: resize(images, size))
    fixed = None if stochastic else encode(fit(x), None)

    def total(delta, key):
      adv = fit(perturb(x, delta, eps, norm))

      def one(k):
        clean = encode(fit(x), k) if stochastic else fixed
        return feature_loss(loss, encode(adv, k), clean, layers)
      per_image = objective.over_draws(one, key, eot).mean(0)
      return per_image.sum(), per_image
    return jax.grad(total, has_aux=True)

  native = tuple(x.shape[1:3])
  branches = [at_size(None if s is None or s == native else s)
              for s in ([None] if sizes is None else sizes)]

  def init(delta: Array | None = None) -> State:
    d = jnp.zeros_like(x) if delta is None else jnp.asarray(delta, x.dtype) * PIXEL_SCALE
    return State(d, adam.adam_init(d))

  def step(state: State, key: Array) -> tuple[State, Array]:
    scale_key, encoder_key = jax.random.split(key) if stochastic else (key, None)
    if len(branches) == 1:
      grad, value = branches[0](state.delta, encoder_key)
    else:
      r = jax.random.uniform(scale_key, (), x.dtype, scale[0], scale[1])
      index = jnp.searchsorted(jnp.asarray(cuts, x.dtype), r, side='right')
      grad, value = jax.lax.switch(index, branches, state.delta, encoder_key)
    delta, opt = adamw_step(state.delta, grad, state.opt, lr=lr, weight_decay=weight_decay,
                            betas=betas, eps=adam_eps)
    return State(delta, opt), value

  return iterate.Iterative(init, step)


@functools.partial(jax.jit, static_argnames=('features', 'loss', 'layers', 'norm', 'steps',
                                             'betas', 'adam_eps', 'scale', 'patch_size',
                                             'resize', 'start', 'stochastic', 'eot'))
def _attack(features, params, x, eps, lr, weight_decay, key, delta0, *, loss, layers, norm,
            steps, betas, adam_eps, scale, patch_size, resize, start, stochastic, eot):
  attack = make_feature_attack(features, params, x, loss=loss, layers=layers, eps=eps,
                               norm=norm, lr=lr, weight_decay=weight_decay, betas=betas,
                               adam_eps=adam_eps, scale=scale, patch_size=patch_size,
                               resize=resize, stochastic=stochastic, eot=eot)
  base = jax.random.key(0) if key is None else key
  start_key, run_key = jax.random.split(base)
  if start == 'random':
    delta0 = random_start(start_key, x, eps, norm) - x
  final, losses = iterate.run(attack.step, attack.init(delta0), steps, key=run_key)
  return Result(perturb(x, final.delta, eps, norm), losses)


def feature_attack(features: Features, params: Any, x: Array, *, loss: str = 'prm',
                   layers: Sequence[str] | None = None, eps: float | Array = 8 / 255,
                   norm: str = 'linf', steps: int = 250, lr: float | Array = 0.5,
                   weight_decay: float | Array = 0.01, betas: tuple[float, float] = (0.9, 0.999),
                   adam_eps: float = 1e-8, scale: tuple[float, float] | None = (0.5, 1.0),
                   patch_size: int | None = None, resize: Resize | None = None,
                   start: str | Array = 'zero', stochastic: bool = False, eot: int = 1,
                   key: Array | None = None) -> Result:
  """PRM (default) or a baseline feature attack on an encoder; see the module docstring.

  Args:
    features: the encoder, `features(params, images [B, h, w, C]) -> Outputs` (taps and,
      for 'embedding', features) or a dict of taps, or with `stochastic`
      `features(params, images, key=k)`; static for jit: pass the same object (e.g.
      `lib.models.clip.image_encoder(clip)`) to reuse the compiled program.
    params: its parameters (CLIP: `variables['image']`).
    x: [B, H, W, C] clean images in [0, 1].
    loss: a name in `LOSSES`.
    layers: tap names the loss sums over (any order, no repeats), default every tap the
      encoder returns (CLIP: all L + 1 hidden states); `layer_sets` gives early / middle /
      late / all.
    eps: radius in [0, 1] pixel units: ℓ∞ in (0, 1]; ℓ2 > 0 (per image). May be traced.
    norm: 'linf' or 'l2'.
    steps: AdamW iterations (≥ 1).
    lr, weight_decay: AdamW's (δ in 0–255 units); may be traced.
    betas, adam_eps: AdamW's betas (each in [0, 1)) and eps (> 0).
    scale: (lo, hi) with 0 < lo ≤ hi ≤ 1 for dynamic scale, or None for the native size.
    patch_size: dynamic scale's size multiple P (CLIP: `clip.config.patch_size`); needed
      when `scale` is set.
    resize: `resize(images, (h, w))` for dynamic scale (default `jax.image.resize` cubic;
      the authors' kernel: `lib.models.vit.resize_bicubic`); static, like `features`.
    start: 'zero' (the paper's), 'random' (uniform in the ε-ball, as PGD's random start;
      needs `key`) or a [B, H, W, C] perturbation in [0, 1] pixel units.
    stochastic: whether `features` takes `key=`: each step then passes it fresh keys, the
      same for x and x + δ (module docstring; needs `key`).
    eot: encoder keys per step whose losses are averaged (≥ 1; > 1 needs `stochastic`).
    key: typed PRNG key for the scale draws, the encoder's keys and a random start.

  Returns:
    `Result(x_adv [B, H, W, C], loss [steps, B])`.

  Raises:
    ValueError: any bad argument, named in the message (an unknown loss or layer, ε outside
      its range, steps ≤ 0, a scale range outside (0, 1], images the encoder does not take
      at their size or at a dynamic-scale size, ...), before anything is traced.
  """
  layers = _check(features, params, x, loss=loss, layers=layers, eps=eps, norm=norm,
                  steps=steps, lr=lr, weight_decay=weight_decay, betas=betas,
                  adam_eps=adam_eps, scale=scale, patch_size=patch_size, resize=resize,
                  start=start, stochastic=stochastic, eot=eot, key=key)
  given = not isinstance(start, str)
  return _attack(features, params, x, eps, lr, weight_decay, key, start if given else None,
                 loss=loss, layers=layers, norm=norm, steps=steps,
                 betas=tuple(float(b) for b in betas), adam_eps=float(adam_eps),
                 scale=None if scale is None else tuple(float(s) for s in scale),
                 patch_size=1 if patch_size is None else patch_size, resize=resize,
                 start='given' if given else start, stochastic=stochastic, eot=int(eot))


def random_noise(x: Array, *, eps: float | Array, norm: str = 'linf', key: Array) -> Array:
  """The random-noise baseline: a random perturbation using the whole budget.

  ℓ∞: x + ε·s with random signs s ∈ {−1, 1} per pixel (‖δ‖∞ = ε); ℓ2: x + ε·g/‖g‖₂ with
  g ~ N(0, I) per image; then clipped to [0, 1].

  Args:
    x: [B, H, W, C] images in [0, 1].
    eps: the budget (as `feature_attack`).
    norm: 'linf' or 'l2'.
    key: typed PRNG key.

  Returns:
    [B, H, W, C] noisy images in [0, 1].
  """
  _args.check_norm(norm)
  _check_eps(eps, norm)
  validate.check_images(x, 'x')
  validate.check_key(key)
  eps = jnp.asarray(eps, x.dtype)
  if norm == 'linf':
    delta = eps * jnp.where(jax.random.bernoulli(key, 0.5, x.shape), 1.0, -1.0).astype(x.dtype)
  else:
    g = jax.random.normal(key, x.shape, x.dtype)
    size = jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, axis=1))
    delta = g * (eps / size).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.clip(x + delta, 0.0, 1.0)


def _check_eps(eps: Any, norm: str) -> None:
  """ℓ∞: ε in (0, 1]; ℓ2: ε > 0 (a traced ε is not checked)."""
  _args.check_eps(eps, norm)
  if not isinstance(eps, jax.core.Tracer) and float(np.asarray(eps)) <= 0:
    raise ValueError(f'eps must be positive (an attack with no budget); got {eps!r}.')


# jit's trace cache makes repeated shape queries free (no re-trace of `features`).
_shape_of = jax.jit(lambda features, params, x, key: _outputs(
    features(params, x) if key is None else features(params, x, key=key)), static_argnums=0)


def _encoder_outputs(features, params, x, name: str, key=None) -> contract.Outputs:
  """The encoder's output shapes on `x`'s shape (called with `key` when given); a failure
  becomes a ValueError on `name`."""
  try:
    return _shape_of.eval_shape(features, params, x, key)
  except (ValueError, TypeError) as e:
    raise ValueError(f'{name}: the encoder does not take images of shape {tuple(x.shape)}: '
                     f'{e}') from e


def _check(features, params, x, *, loss, layers, eps, norm, steps, lr, weight_decay, betas,
           adam_eps, scale, patch_size, resize, start, stochastic, eot, key
           ) -> tuple[str, ...]:
  """Validates `feature_attack`'s arguments; returns the layer names."""
  if not callable(features):
    raise ValueError(f'features must be a callable features(params, images); got '
                     f'{type(features).__name__}.')
  validate.check_choice(loss, LOSSES, 'loss')
  _args.check_norm(norm)
  _check_eps(eps, norm)
  _args.check_count(steps, 'steps')
  for value, name in ((lr, 'lr'), (weight_decay, 'weight_decay')):
    if not isinstance(value, jax.core.Tracer):
      validate.check_number(float(np.asarray(value)), name, low=0.0)
  if isinstance(betas, str) or not isinstance(betas, Sequence) or len(betas) != 2:
    raise ValueError(f'betas must be a pair (b1, b2) in [0, 1); got {betas!r}.')
  for i, b in enumerate(betas):
    validate.check_number(b, f'betas[{i}]', low=0.0, high=1.0, high_inclusive=False)
  validate.check_number(adam_eps, 'adam_eps', low=0.0)
  if resize is not None and not callable(resize):
    raise ValueError(f'resize must be a callable resize(images, (h, w)) or None; got {resize!r}.')
  validate.check_images(x, 'x')
  needs_key = []
  if isinstance(start, str):
    validate.check_choice(start, STARTS, 'start')
    if start == 'random':
      needs_key.append("start='random' draws the starting perturbation")
  elif getattr(start, 'shape', None) != x.shape:
    raise ValueError(f"start must be 'zero', 'random' or a perturbation of x's shape "
                     f'{tuple(x.shape)}; got {getattr(start, "shape", start)!r}.')
  sizes = []
  if scale is not None:
    if isinstance(scale, str) or not isinstance(scale, Sequence) or len(scale) != 2:
      raise ValueError(f'scale must be a pair (lo, hi) with 0 < lo <= hi <= 1, or None; got '
                       f'{scale!r}.')
    for i, s in enumerate(scale):
      validate.check_number(s, f'scale[{i}]', low=0.0, high=1.0)
    if not 0 < scale[0] <= scale[1]:
      raise ValueError(f'scale must be a pair (lo, hi) with 0 < lo <= hi <= 1; got {scale!r}.')
    if patch_size is None:
      raise ValueError('patch_size is needed with scale (sizes are rounded down to its '
                       'multiples; CLIP: clip.config.patch_size); or pass scale=None.')
    validate.check_int(patch_size, 'patch_size', minimum=1)
    sizes = [s for s in scale_sizes(x.shape[1:3], scale, patch_size)[0]
             if s != tuple(x.shape[1:3])]
    if scale[0] < scale[1]:
      needs_key.append('dynamic scale draws a ratio every step')
  if not isinstance(stochastic, bool):
    raise ValueError(f'stochastic must be a bool (whether features takes key=); got '
                     f'{stochastic!r}.')
  validate.check_int(eot, 'eot', minimum=1)
  if eot > 1 and not stochastic:
    raise ValueError(f'eot={eot} averages over the encoder\'s randomness: it needs '
                     'stochastic=True (features(params, images, key=k)).')
  if stochastic:
    contract.require_keywords(features, ('key',), needed_by='feature_attack(stochastic=True)')
    needs_key.append('a stochastic encoder gets fresh keys every step')
  if needs_key:
    _args.check_key_if_given(key, needed=True, why='; '.join(needs_key))
  elif key is not None:
    validate.check_key(key)
  encoder_key = key if stochastic else None
  out = _encoder_outputs(features, params, x, 'x', encoder_key)
  for size in sizes:
    _encoder_outputs(features, params,
                     jax.ShapeDtypeStruct((x.shape[0], *size, x.shape[-1]), x.dtype),
                     f'scale={tuple(scale)} (size {size[0]}x{size[1]})', encoder_key)
  if loss == 'embedding':
    if out.features is None:
      raise ValueError("loss='embedding' needs features(params, images) to return "
                       'Outputs with features (the image embedding); it returned none.')
    return ()
  available = tuple(out.taps)
  if layers is None:
    if not available:
      raise ValueError('features(params, images) returned no taps to attack.')
    return available
  if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
    raise ValueError(f'layers must be a non-empty sequence of tap names from {list(available)}; '
                     f'got {layers!r}.')
  unknown = [name for name in layers if name not in available]
  if unknown or len(set(layers)) != len(layers):
    raise ValueError(f'layers={list(layers)} must be distinct names of the encoder\'s taps '
                     f'{list(available)}; unknown: {unknown}.')
  return tuple(layers)
