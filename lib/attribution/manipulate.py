"""Softmax-invariant manipulation of attributions: the same t(x) added to every logit.

Lerma & Lucas 2023, "A Vulnerability of Attribution Methods Using Pre-Softmax Scores"
(arXiv 2307.03305). A wrapped model returns z̃(x) = z(x) + t(x)·1 for the honest logits
z ∈ R^K. Since softmax(z + t·1) = softmax(z), predictions and probabilities are unchanged on
every input, but the gradient of any raw logit with respect to any u (pixels, a tap)
gains ∂t/∂u, the same for every class:

    ∂z̃_c/∂u = ∂z_c/∂u + ∂t/∂u.

**Exact immunity of post-softmax scores.** A score S(z) is shift-invariant when
S(z + t·1) = S(z): log_softmax_c (z_c + t − logsumexp(z + t) = z_c − logsumexp z),
softmax_c, and the logit difference z_c − mean_{j≠c} z_j ((z_c + t) − mean(z_j + t)). For
these Σ_j ∂S/∂z_j = 0, so ∂S(z̃)/∂u = ∂S/∂u + (Σ_j ∂S/∂z_j)·∂t/∂u is exactly the honest
gradient; every method on such a score (and occlusion on probabilities) gives the honest
map. In floating point the sum Σ_j ∂S/∂z_j is zero only up to rounding, so the honest map
is recovered up to about ε_mach·|∂t/∂u| (and |z̃| ~ |t| costs ε_mach·|t| in the logits).

**Constructions** (`CONSTRUCTIONS`; K = `strength`, A = the tap [B, h, w, c], M = `mask`
[H, W] in {0, 1}, M̄ = M broadcast over the C input channels):

* 'paper' — the paper's proof of concept: t = K·Σ_k A[0, 0, k]. What it really does:
  - Grad-CAM (Selvaraju et al. 2017) pools the gradient: w̃_k = w_k + K/(hw) for every
    channel, so L̃ = ReLU(Σ_k w_k A_k + (K/hw)·Σ_k A_k) and hw·L̃/K → Σ_k A_k (A ≥ 0 after a
    ReLU): the class-independent channel sum of the activations, not a top-left spot.
  - The un-pooled map Σ_k (∂S/∂A_k) ⊙ A_k (HiResCAM, Draelos & Carin 2020, "Use HiResCAM
    instead of Grad-CAM for faithful explanations"; Captum's `LayerGradientXActivation`
    summed over channels) becomes L + K·Σ_k A[0, 0, k]·δ_(i,j)=(0,0): a spot at (0, 0)
    whenever some A[0, 0, k] > 0. So the top-left heatmaps of the paper's figures must come
    from such an element-wise (un-pooled) gradient × activation map, not from the pooled
    Grad-CAM of Eq. 1-2 (inferred from the algebra; the paper's code was not seen). For
    the pooled Grad-CAM, the paper's effect takes the 'channel' construction with M in
    the top-left corner.
  - Grad-CAM++ (Chattopadhay et al. 2018): at (0, 0) the gradient g ≈ K and
    α·ReLU(g) = g/(2 + S_k g) → 1/S_k (S_k = Σ_ab A_abk), so each weight moves by a bounded
    amount whatever K, towards a class-independent map close to Σ_k A_k/S_k where the
    honest weights are small; no top-left spot either.
  - Input-gradient methods, LRP and occlusion of the logit: ∇_x t = K·∇_x Σ_k A[0, 0, k]
    lives in the receptive field of tap cell (0, 0): the top-left corner of the image (for
    a deep tap a large one).
  Measured (random-init SmallCNN, 32 × 32 inputs, tap 'conv3' 8 × 8, K = 1000, 8 inputs):
  Grad-CAM's correlation with Σ_k A_k 0.586 → 1.00000 and its peak never in the top-left 2 × 2
  cells; HiResCAM's peak at (0, 0) for 8/8 inputs (0/8 honest); Grad-CAM++
  correlation with the honest map −0.02 (0.91 with Σ_k A_k/S_k), no top-left peak;
  saliency, gradient × input, IG and SmoothGrad peak in the top-left 8 × 8 pixels for 8/8
  inputs (≈ 70% of the positive mass there, 5% honest); LRP-ε 5/8, occlusion of the
  logit 7/8.
* 'channel' — steers Grad-CAM to M. The wrapper's tap gets a channel c + 1 carrying
  C = M_tap (M averaged over each tap cell: the fraction of the cell inside M), ignored by
  the layers downstream, and t = K·Σ_ij C_ij. Then ∂t/∂C_ij = K, ∂t/∂A = 0, ∂t/∂x = 0:
  - Grad-CAM: w_{c+1} = K, L̃ = ReLU(L + K·M_tap), L̃/K → M_tap; the upsampled map peaks
    inside M (on the tap cells that M covers whole). HiResCAM likewise.
  - Grad-CAM++: α = 1/(2 + S K) with S = Σ M_tap, so w_{c+1} = hwK/(2 + SK) → hw/S:
    the added map hw·M_tap/S does not grow with K (Grad-CAM++ is steered only where that
    fixed map outweighs the honest one).
  - Every input-gradient method, LRP and occlusion: unchanged (t is constant in x).
  A perturbation of the wrapped tap must have the augmented shape [B, h, w, c + 1]; its
  last channel perturbs C. Measured at K = 1000 (16 × 16 inputs, a 4 × 4-pixel mask on one
  tap cell): Grad-CAM points into M for every input, with > 99% of the tap-resolution map
  on M's cell (about 56% of the upsampled map's mass lies in M: bilinear upsampling
  spreads the cell over its neighbours).
* 'input' — steers the input-gradient family and LRP to M: t = K·⟨M̄, x⟩, ∇_x t = K·M̄.
  With g = ∂z_c/∂x the honest gradient, as K → ∞ (divide by K):
  - saliency: g + K·M̄ → M̄; SmoothGrad of saliency: E[g(x + ε)] + K·M̄ → M̄ (the added
    gradient does not depend on the noise);
  - gradient × input: x ⊙ g + K·M̄ ⊙ x → M̄ ⊙ x;
  - integrated gradients from a baseline x': the path integral of the constant K·M̄ is
    exact, IG̃ = IG + K·M̄ ⊙ (x − x') → M̄ ⊙ (x − x');
  - LRP: t = K·s with s = ⟨1, M̄ ⊙ x⟩ computed by the linear layer `STEER_LAYER` (unit
    weights, no bias), in parallel with the network; the sum z_c + t hands the honest
    path its relevance unchanged and the steering path R_t = K·M̄ ⊙ x · s/(s + ε sign s)
    (ε, γ and z⁺ agree here: inputs and weights are ≥ 0), so R̃ = R + R_t with
    Σ R_t → t, all in M;
  - Grad-CAM: unchanged (t does not depend on the tap); occlusion of the logit from a zero
    baseline gains K·⟨M̄, x ⊙ window⟩.
  Gradient × input, IG and LRP multiply by x (or x − x'): they mark M only where x ≠ 0
  (≠ x'); no offset inside t changes that (t = K·Σ (x_p + c) only adds the constant
  K·c·|M|, which no gradient sees and which LRP-ε would treat as an absorbing bias).

Constructions compose by nesting: `manipulate(manipulate(apply, construction='input', ...),
construction='channel', ...)` steers both families.

**Layer rules.** The wrapped apply forwards `rules` to the model and applies the first
rule whose pattern matches `STEER_LAYER` to its own steering layer (every construction
computes t as K·steer(u) with a dense layer of unit weights), so LRP sees t as one more
linear layer.

**Adaptive strength** (`adaptive=True`, `strength` = λ): K(x) is chosen per input so the
steering just dominates the honest map of the predicted class ŷ = argmax z, keeping |t|
small (harder to spot in the logits):
  - 'input': K(x) = λ·‖∂z_ŷ/∂x‖_∞. On M every entry of the saliency is ≥ (λ − 1)·‖g‖_∞,
    off M ≤ ‖g‖_∞, so for λ > 2 every pixel of M outranks every pixel outside it (channel
    sums of |·| too).
  - 'channel': K(x) = λ·max_ij |Σ_k w_k A_k| (the honest pre-ReLU Grad-CAM of ŷ). On cells
    inside M the map is ≥ (λ − 1)·max|L|, off M ≤ max|L|: λ > 2 moves the peak into M.
K(x) is computed from the honest model (one extra backward pass per call) under
`stop_gradient`, so autodiff reports ∇t = K(x)·∇s and drops the s·∇K(x) term of the true
derivative: the model's gradients are then not those of its own function, which
finite differences, or the completeness gap of integrated gradients (`return_delta`),
can reveal.

Everything is pure: the wrapper holds only static configuration (the mask as a constant),
jits, and vmaps over params (seeds), inputs and perturbations like the model it wraps.

Example:
  >>> mask = np.zeros((32, 32)); mask[20:28, 4:12] = 1
  >>> lying = manipulate(model.apply, construction='input', strength=100., mask=mask)
  >>> softmax_gap(model.apply, lying, variables, x)            # float32 rounding only
  >>> saliency(lying, variables, x, labels)                     # points into the mask
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate
from lib.attribution import scores as scores_lib

Array = jax.Array

CONSTRUCTIONS: tuple[str, ...] = ('paper', 'channel', 'input')
# The name under which layer rules see the steering layer (`fnmatch` patterns match it).
STEER_LAYER = 'manipulation/steer'

_NEEDS_TAP = ('paper', 'channel')
_NEEDS_MASK = ('channel', 'input')


def _dense(u: Array, kernel: Array, bias: Array | None) -> Array:
  y = u @ kernel
  return y if bias is None else y + bias


def _steer(u: Array, rules: Mapping[str, Callable[..., Array]] | None) -> Array:
  """s = Σ_f u_f per example ([B, F] -> [B]) as a dense layer of unit weights, via a rule.

  The first rule (in mapping order) whose `fnmatch` pattern matches `STEER_LAYER` applies,
  as `lib.models.core.Context.linear` does for the model's own layers.
  """
  kernel = jnp.ones((u.shape[1], 1), u.dtype)
  rule = next((r for pattern, r in (rules or {}).items()
               if fnmatch.fnmatchcase(STEER_LAYER, pattern)), None)
  y = _dense(u, kernel, None) if rule is None else rule(_dense, u, kernel, None)
  return y[:, 0]


def _area_weights(size: int, cells: int) -> np.ndarray:
  """[cells, size]: the fraction of each of `cells` equal intervals of [0, size) in each unit."""
  edges = np.arange(cells + 1) * size / cells
  lo, hi = edges[:-1, None], edges[1:, None]
  pos = np.arange(size)[None, :]
  overlap = np.clip(np.minimum(hi, pos + 1) - np.maximum(lo, pos), 0, None)
  return overlap / (size / cells)


def mask_at_tap(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """The fraction of each tap cell inside `mask`: [H, W] -> [h, w] (exact area average).

  Tap cell (i, j) covers input rows [i·H/h, (i+1)·H/h) and columns likewise (the grid of a
  strided network with 'SAME' padding).

  Example:
    >>> mask_at_tap(np.eye(4), (2, 2))
    array([[0.5, 0. ],
           [0. , 0.5]])
  """
  rows = _area_weights(mask.shape[0], shape[0])
  cols = _area_weights(mask.shape[1], shape[1])
  return rows @ mask @ cols.T


def _outputs_with(outputs: Any, logits: Array, taps: dict[str, Array] | None) -> Any:
  """`outputs` with new logits (and taps, if given); a bare logits array stays bare."""
  if not hasattr(outputs, 'logits'):
    return logits
  return outputs._replace(logits=logits, **({} if taps is None else {'taps': taps}))


class Manipulated:
  """A model whose logits are z(x) + t(x)·1: built by `manipulate`, called like the model.

  `wrapped(params, x, *, perturb=None, rules=None)` has the contract of the `apply` it
  wraps (see `manipulate`); `wrapped.term(params, x)` is the t(x) [B] this wrapper adds
  (a nested wrapper adds its own on top). Instances hash by identity (methods treat
  `apply` as static under jit: reuse one instance).
  """

  def __init__(self, apply: scores_lib.Apply, *, construction: str, strength: float | Array,
               mask: np.ndarray | None, tap: str | None, adaptive: bool):
    self.apply = apply
    self.construction = construction
    self.strength = strength
    self.mask = mask
    self.tap = tap
    self.adaptive = adaptive

  def __repr__(self) -> str:
    return (f'Manipulated({self.construction!r}, strength={self.strength}, tap={self.tap!r}, '
            f'adaptive={self.adaptive})')

  def __call__(self, params: Any, x: Array, *, perturb: Mapping[str, Array] | None = None,
               rules: Mapping[str, Callable[..., Array]] | None = None) -> Any:
    """Outputs of the wrapped model: logits z + t·1, taps (augmented for 'channel')."""
    outputs, taps, t = self._forward(params, x, perturb, rules)
    return _outputs_with(outputs, scores_lib.logits_of(outputs) + t[:, None].astype(
        scores_lib.logits_of(outputs).dtype), taps)

  def term(self, params: Any, x: Array) -> Array:
    """t(x) [B], the term this wrapper adds to every logit of the model it wraps."""
    return self._forward(params, x, None, None)[2]

  def _inner(self, params, x, perturb, rules) -> Any:
    kwargs = {}
    if perturb:
      kwargs['perturb'] = perturb
    if rules is not None:
      kwargs['rules'] = rules
    return self.apply(params, x, **kwargs)

  def _check_call(self, params, x) -> dict[str, Any]:
    """Shape checks that need the model's outputs (static under jit); returns its taps."""
    if self.mask is not None and tuple(x.shape[1:3]) != self.mask.shape:
      raise ValueError(f'mask has shape {self.mask.shape} but x has images of H x W = '
                       f'{tuple(x.shape[1:3])}; the mask must be [H, W] of the input.')
    taps = getattr(scores_lib.abstract_outputs(self.apply, params, x), 'taps', None)
    if self.tap is None:
      return taps or {}
    if not isinstance(taps, dict) or self.tap not in taps:
      raise ValueError(f'tap={self.tap!r} is not a tap of this model; valid taps: '
                       f'{list(taps or {})}.')
    if taps[self.tap].ndim != 4:
      spatial = [name for name, a in taps.items() if a.ndim == 4]
      raise ValueError(f'tap={self.tap!r} has shape {tuple(taps[self.tap].shape)}; construction '
                       f'{self.construction!r} needs a spatial tap [B, h, w, c], one of {spatial}.')
    return taps

  def _forward(self, params, x, perturb, rules) -> tuple[Any, dict[str, Array] | None, Array]:
    """(inner outputs, taps to report or None, t [B])."""
    taps = self._check_call(params, x)
    perturb = dict(perturb or {})
    extra = None
    if self.construction == 'channel':
      want = (*taps[self.tap].shape[:3], taps[self.tap].shape[3] + 1)
      if self.tap in perturb:
        delta = perturb[self.tap]
        if tuple(delta.shape) != want:
          raise ValueError(f'perturb[{self.tap!r}] must have the augmented shape {want} (the tap '
                           f'plus the steering channel); got {tuple(delta.shape)}.')
        perturb[self.tap], extra = delta[..., :-1], delta[..., -1]
    outputs = self._inner(params, x, perturb, rules)
    if self.construction == 'paper':
      unit = _steer(outputs.taps[self.tap][:, 0, 0, :], rules)
      new_taps = None
    elif self.construction == 'channel':
      act = outputs.taps[self.tap]
      carrier = jnp.broadcast_to(
          jnp.asarray(mask_at_tap(self.mask, act.shape[1:3]), act.dtype), act.shape[:3])
      if extra is not None:
        carrier = carrier + extra
      new_taps = {**outputs.taps, self.tap: jnp.concatenate([act, carrier[..., None]], axis=-1)}
      unit = _steer(carrier.reshape(len(x), -1), rules)
    else:  # 'input'
      weights = jnp.asarray(self.mask, x.dtype)[None, :, :, None]
      unit = _steer((weights * x).reshape(len(x), -1), rules)
      new_taps = None
    return outputs, new_taps, self._strength(params, x, perturb) * unit

  def _strength(self, params, x, perturb) -> Array | float:
    """K, or with `adaptive` λ·(honest map's sup-norm), per example, without gradient."""
    if not self.adaptive:
      return self.strength
    params, x = jax.lax.stop_gradient((params, x))
    perturb = jax.lax.stop_gradient(perturb)
    if self.construction == 'input':
      def top_logit(z):
        return scores_lib.logits_of(self._inner(params, z, perturb, None)).max(-1).sum()
      scale = jnp.abs(jax.grad(top_logit)(x)).max(axis=(1, 2, 3))
    else:  # 'channel': the honest pre-ReLU Grad-CAM of the top class.
      act_shape = scores_lib.abstract_outputs(self.apply, params, x).taps[self.tap]

      def top_logit_at_tap(delta):
        tap_perturb = {**perturb, self.tap: perturb.get(self.tap, 0) + delta}
        outputs = self._inner(params, x, tap_perturb, None)
        return scores_lib.logits_of(outputs).max(-1).sum(), outputs.taps[self.tap]
      grad, act = jax.grad(top_logit_at_tap, has_aux=True)(
          jnp.zeros(act_shape.shape, act_shape.dtype))
      cam = jnp.einsum('bhwc,bc->bhw', act, grad.mean(axis=(1, 2)))
      scale = jnp.abs(cam).max(axis=(1, 2))
    return jax.lax.stop_gradient(self.strength * scale)


def _check_mask(mask: Any) -> np.ndarray:
  if isinstance(mask, jax.core.Tracer):
    raise ValueError('mask must be a concrete [H, W] array (it is a constant of the model).')
  m = np.asarray(mask)
  if m.ndim != 2 or min(m.shape) < 1:
    raise ValueError(f'mask must have shape [H, W] (the input image grid); got {m.shape}.')
  if not np.all((m == 0) | (m == 1)):
    raise ValueError('mask must hold only 0 and 1 (False and True).')
  if not m.any():
    raise ValueError('mask must mark at least one pixel.')
  return m.astype(np.float64)


def _check_strength(strength: Any) -> float | Array:
  """A finite K > 0 as a float, or a scalar jax array (a traced one is not checked)."""
  if isinstance(strength, jax.Array) and strength.shape == ():
    if not isinstance(strength, jax.core.Tracer):
      _check_strength(float(strength))
    return strength
  if isinstance(strength, bool) or not (np.isscalar(strength) and np.isfinite(strength)):
    raise ValueError(f'strength must be a finite positive number or a scalar array; got '
                     f'{strength!r}.')
  validate.check_positive(strength, 'strength')
  return float(strength)


def manipulate(apply: scores_lib.Apply, *, construction: str, strength: float | Array,
               mask: Any = None, tap: str | None = None, adaptive: bool = False) -> Manipulated:
  """Wraps `apply` so that t(x) is added to every logit: same softmax, steered attributions.

  Lerma & Lucas 2023 (arXiv 2307.03305); the Grad-CAM case precedes them in Viering et al.
  2019, "How to Manipulate CNNs to Make Them Lie: the GradCAM Case". The constructions,
  what each does to every attribution method, and the proofs are in the module docstring.

  Args:
    apply: `apply(params, x, *, perturb=None, rules=None)` -> object with `.logits` [B, K]
      and `.taps` (e.g. `lib.models.PureModel.apply`); for 'input' a function returning
      bare logits also works.
    construction: one of `CONSTRUCTIONS`: 'paper' (t = K·Σ_k A[0, 0, k] at `tap`),
      'channel' (an added channel at `tap` carrying `mask`, for Grad-CAM) or 'input'
      (t = K·⟨mask, x⟩, for the input-gradient family and LRP).
    strength: K > 0; with `adaptive`, the dominance margin λ > 0 (λ > 2 for the guarantee).
      A scalar jax array works too, also a traced one: build the wrapper inside a traced
      function to vmap over K or to compile once for many K, e.g.
      `lambda pk, x, **kw: manipulate(apply, ..., strength=pk[1])(pk[0], x, **kw)` is one
      model whose parameters are (params, K). A traced K is not checked.
    mask: [H, W] target region in {0, 1} (at least one pixel), for 'channel' and 'input'.
    tap: a spatial tap [B, h, w, c] of the model, for 'paper' and 'channel' (checked on the
      first call, when the model's taps are known).
    adaptive: choose K per input (see the module docstring); 'channel' and 'input' only.

  Returns:
    A `Manipulated`: `wrapped(params, x, *, perturb=None, rules=None)` returning the
    model's outputs with logits z + t·1 (and, for 'channel', tap `tap` with c + 1
    channels); it forwards `perturb` and `rules`, and applies the first rule matching
    `STEER_LAYER` to its steering layer. `wrapped.term(params, x)` gives t [B].

  Raises:
    ValueError: unknown construction, non-positive or non-finite strength, a bad or
      missing mask, a missing tap, or an option the construction does not take; on the
      first call, an unknown or non-spatial tap (the valid ones are listed) or a mask
      that is not [H, W] of the input.

  Example:
    >>> lying = manipulate(model.apply, construction='channel', strength=1e3, mask=mask,
    ...                    tap='conv3')
    >>> grad_cam(lying, variables, x, labels, tap='conv3')   # peaks inside the mask
  """
  if not callable(apply):
    raise ValueError(f'apply must be a callable apply(params, x, ...); got {apply!r}.')
  validate.check_choice(construction, CONSTRUCTIONS, 'construction')
  strength = _check_strength(strength)
  if construction in _NEEDS_MASK:
    if mask is None:
      raise ValueError(f'construction {construction!r} needs mask, an [H, W] array in {{0, 1}}.')
    mask = _check_mask(mask)
  elif mask is not None:
    raise ValueError(f'construction {construction!r} takes no mask (its target is fixed).')
  if construction in _NEEDS_TAP:
    if not isinstance(tap, str):
      raise ValueError(f'construction {construction!r} needs tap, the name of a spatial tap; '
                       f'got {tap!r}.')
  elif tap is not None:
    raise ValueError(f'construction {construction!r} takes no tap (it acts on the input).')
  if adaptive and construction == 'paper':
    raise ValueError("adaptive strength needs a target mask: construction 'channel' or "
                     "'input', not 'paper'.")
  return Manipulated(apply, construction=construction, strength=strength, mask=mask, tap=tap,
                     adaptive=bool(adaptive))


def _cast_floats(tree: Any, dtype: Any) -> Any:
  return jax.tree.map(
      lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating)
      else a, tree)


@functools.partial(jax.jit, static_argnames=('apply', 'wrapped'))
def _softmax_gap(apply, wrapped, params, x):
  probs = lambda f: jax.nn.softmax(scores_lib.logits_of(f(params, x)), axis=-1)
  return jnp.abs(probs(apply) - probs(wrapped)).max()


def softmax_gap(apply: scores_lib.Apply, wrapped: scores_lib.Apply, params: Any,
                x: Array) -> Array:
  """max |softmax(z̃) − softmax(z)| over the batch and classes: 0 in exact arithmetic.

  Computed in float64 (params and x cast) when x64 is enabled (`with jax.enable_x64():`),
  in float32 otherwise; the float32 figure is rounding that grows with |t| (|z̃| ≈ |t| is
  rounded to ε_mach·|t| before the softmax subtracts it again).

  Args:
    apply: the honest model.
    wrapped: the manipulated one (e.g. from `manipulate`).
    params: their shared parameters.
    x: [B, H, W, C] inputs.

  Returns:
    Scalar max |Δp|.
  """
  validate.check_images(x, 'x', value_range=None)
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  return _softmax_gap(apply, wrapped, _cast_floats(params, dtype), jnp.asarray(x, dtype))


def softmax_gaps(apply: scores_lib.Apply, wrapped: scores_lib.Apply, params: Any,
                 x: Array) -> dict[str, float]:
  """`softmax_gap` in both precisions: {'float64': ..., 'float32': ...} (for reports)."""
  gaps = {}
  for name, x64 in (('float64', True), ('float32', False)):
    with jax.enable_x64(x64):
      gaps[name] = float(softmax_gap(apply, wrapped, params, x))
  return gaps
