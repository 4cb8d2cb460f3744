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
  (Measured sizes of these effects: README, "Measured: what the paper construction does".)
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
  last channel perturbs C.
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
computes t as K·steer(u) with a dense layer of unit weights, `lib.attribution.constructions`,
through `lib.contract.apply_linear`), so LRP sees t as one more linear layer.

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

Everything is pure: the wrapper is an immutable `Manipulated` that compares and hashes by
value (its model, construction, strength, mask bytes, tap), so methods that take it as a
static jit argument compile once per distinct wrapper and never serve a stale program; it
jits, and vmaps over params (seeds), inputs and perturbations like the model it wraps. The
invariance itself is measured by `lib.attribution.invariance.softmax_gaps`.

Example:
  >>> mask = np.zeros((32, 32)); mask[20:28, 4:12] = 1
  >>> lying = manipulate(model.apply, construction='input', strength=100., mask=mask)
  >>> invariance.softmax_gap(model.apply, lying, variables, x)  # float32 rounding only
  >>> saliency(lying, variables, x, labels)                     # points into the mask
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from lib import contract, validate
from lib.attribution import constructions
from lib.attribution import scores as scores_lib

Array = jax.Array

CONSTRUCTIONS: tuple[str, ...] = ('paper', 'channel', 'input')
STEER_LAYER = constructions.STEER_LAYER
mask_at_tap = constructions.mask_at_tap

_NEEDS_TAP = ('paper', 'channel')
_NEEDS_MASK = ('channel', 'input')


class Mask(NamedTuple):
  """An [H, W] 0/1 mask held as bytes, so the wrapper holding it hashes by value."""
  shape: tuple[int, int]
  data: bytes  # bool, C order

  @classmethod
  def of(cls, mask: np.ndarray) -> Mask:
    return cls(tuple(mask.shape), np.ascontiguousarray(mask, bool).tobytes())

  def array(self) -> np.ndarray:
    """The mask as a read-only float64 [H, W] array."""
    return np.frombuffer(self.data, bool).reshape(self.shape).astype(np.float64)


def _is_traced(strength: Any) -> bool:
  return isinstance(strength, jax.core.Tracer)


@dataclasses.dataclass(frozen=True, eq=False)
class Manipulated:
  """A model whose logits are z(x) + t(x)·1: built by `manipulate`, called like the model.

  `wrapped(params, x, *, key=None, perturb=None, rules=None)` has the contract of the
  `apply` it wraps (see `manipulate`); `wrapped.term(params, x)` is the t(x) [B] this
  wrapper adds (a nested wrapper adds its own on top).

  Immutable; equal and hashed by value (the wrapped `apply`, construction, strength, mask,
  tap, adaptive), so two equal wrappers share one compiled program of a method that takes
  `apply` as a static jit argument, and `dataclasses.replace(wrapped, strength=...)` gets a
  program of its own. A strength traced by an outer jit (a wrapper built inside a traced
  function, e.g. one model for every K) has no value: such a wrapper equals only itself and
  hashing it raises TypeError (it cannot be a static argument; the traced function that
  builds it can).

  Attributes:
    apply: the model it wraps.
    construction: one of `CONSTRUCTIONS`.
    strength: K (or λ when `adaptive`), a float, or a traced scalar.
    mask_bytes: the target mask as `Mask`, or None ('paper').
    tap: the spatial tap ('paper', 'channel'), or None.
    adaptive: whether K is chosen per input.
  """
  apply: contract.Apply
  construction: str
  strength: float | Array
  mask_bytes: Mask | None
  tap: str | None
  adaptive: bool

  @property
  def mask(self) -> np.ndarray | None:
    """The target mask [H, W] (float64 0/1), or None."""
    return None if self.mask_bytes is None else self.mask_bytes.array()

  def _value(self) -> tuple:
    return (self.apply, self.construction, self.strength, self.mask_bytes, self.tap,
            self.adaptive)

  def __eq__(self, other: Any) -> bool:
    if not isinstance(other, Manipulated):
      return NotImplemented
    if self is other:
      return True
    if _is_traced(self.strength) or _is_traced(other.strength):
      return False
    return self._value() == other._value()

  def __hash__(self) -> int:
    if _is_traced(self.strength):
      raise TypeError(f'{self!r} has a traced strength and cannot be hashed (e.g. as a static '
                      'jit argument): pass the traced function that builds it instead.')
    return hash(self._value())

  def __repr__(self) -> str:
    return (f'Manipulated({self.construction!r}, strength={self.strength}, tap={self.tap!r}, '
            f'adaptive={self.adaptive})')

  def __call__(self, params: Any, x: Array, *, key: Array | None = None,
               perturb: Mapping[str, Array] | None = None,
               rules: contract.Rules | None = None) -> contract.Outputs:
    """Outputs of the wrapped model: logits z + t·1, taps (augmented for 'channel')."""
    outputs, t = self._forward(params, x, key, perturb, rules)
    return outputs._replace(logits=outputs.logits + t[:, None].astype(outputs.logits.dtype))

  def term(self, params: Any, x: Array) -> Array:
    """t(x) [B], the term this wrapper adds to every logit of the model it wraps."""
    return self._forward(params, x, None, None, None)[1]

  def _inner(self, params, x, key, perturb, rules) -> contract.Outputs:
    kwargs = {name: value for name, value in
              (('key', key), ('perturb', perturb or None), ('rules', rules)) if value is not None}
    contract.require_keywords(self.apply, kwargs, needed_by=repr(self))
    return contract.as_outputs(self.apply(params, x, **kwargs))

  def _check_call(self, params, x) -> dict[str, Any]:
    """Shape checks that need the model's outputs (static under jit); returns its taps."""
    if self.mask_bytes is not None and tuple(x.shape[1:3]) != self.mask_bytes.shape:
      raise ValueError(f'mask has shape {self.mask_bytes.shape} but x has images of H x W = '
                       f'{tuple(x.shape[1:3])}; the mask must be [H, W] of the input.')
    outputs = scores_lib.abstract_outputs(self.apply, params, x)
    if self.tap is not None:
      scores_lib.check_tap(outputs, self.tap, needed_by=f'construction {self.construction!r}',
                           spatial=True)
    return outputs.taps

  def _forward(self, params, x, key, perturb, rules) -> tuple[contract.Outputs, Array]:
    """(the outputs to report, with the logits still honest; t [B])."""
    taps = self._check_call(params, x)
    perturb = dict(perturb or {})
    extra = None
    if self.construction == 'channel' and self.tap in perturb:
      want = (*taps[self.tap].shape[:3], taps[self.tap].shape[3] + 1)
      delta = perturb[self.tap]
      if tuple(delta.shape) != want:
        raise ValueError(f'perturb[{self.tap!r}] must have the augmented shape {want} (the tap '
                         f'plus the steering channel); got {tuple(delta.shape)}.')
      perturb[self.tap], extra = delta[..., :-1], delta[..., -1]
    outputs = self._inner(params, x, key, perturb, rules)
    if self.construction == 'paper':
      unit = constructions.paper_unit(outputs, self.tap, rules)
    elif self.construction == 'channel':
      unit, taps = constructions.channel_unit(outputs, self.tap, self.mask, extra, rules)
      outputs = outputs._replace(taps=taps)
    else:  # 'input'
      unit = constructions.input_unit(x, self.mask, rules)
    return outputs, self._strength(params, x, key, perturb) * unit

  def _strength(self, params, x, key, perturb) -> Array | float:
    """K, or with `adaptive` λ·(honest map's sup-norm), per example, without gradient."""
    if not self.adaptive:
      return self.strength
    params, x, perturb = jax.lax.stop_gradient((params, x, perturb))
    inner = lambda z, p: self._inner(params, z, key, p, None)
    if self.construction == 'input':
      scale = constructions.input_scale(inner, x, perturb)
    else:  # 'channel'
      tap_aval = scores_lib.abstract_outputs(self.apply, params, x).taps[self.tap]
      scale = constructions.channel_scale(inner, x, perturb, self.tap, tap_aval)
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
  """A finite K > 0 as a float (concrete scalar arrays too), or a traced scalar as it is."""
  if isinstance(strength, jax.Array) and strength.shape == ():
    return strength if _is_traced(strength) else _check_strength(float(strength))
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
    apply: `apply(params, x, *, key=None, perturb=None, rules=None)` -> `Outputs(logits,
      taps)` or a `(logits, taps)` tuple (`lib.contract`; e.g. `lib.models.PureModel.apply`);
      for 'input' a function returning bare logits also works.
    construction: one of `CONSTRUCTIONS`: 'paper' (t = K·Σ_k A[0, 0, k] at `tap`),
      'channel' (an added channel at `tap` carrying `mask`, for Grad-CAM) or 'input'
      (t = K·⟨mask, x⟩, for the input-gradient family and LRP).
    strength: K > 0; with `adaptive`, the dominance margin λ > 0 (λ > 2 for the guarantee).
      A concrete scalar array is taken as its float value. A traced one works too: build the
      wrapper inside a traced function to vmap over K or to compile once for many K, e.g.
      `lambda pk, x, **kw: manipulate(apply, ..., strength=pk[1])(pk[0], x, **kw)` is one
      model whose parameters are (params, K). A traced K is not checked.
    mask: [H, W] target region in {0, 1} (at least one pixel), for 'channel' and 'input'.
    tap: a spatial tap [B, h, w, c] of the model, for 'paper' and 'channel' (checked on the
      first call, when the model's taps are known).
    adaptive: choose K per input (see the module docstring); 'channel' and 'input' only.

  Returns:
    A `Manipulated`: `wrapped(params, x, *, key=None, perturb=None, rules=None)` returning
    the model's outputs (`contract.Outputs`) with logits z + t·1 (and, for 'channel', tap
    `tap` with c + 1 channels); it forwards `key`, `perturb` and `rules`, and applies the
    first rule matching `STEER_LAYER` to its steering layer. `wrapped.term(params, x)` gives
    t [B].

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
  return Manipulated(apply, construction, strength, None if mask is None else Mask.of(mask),
                     tap, bool(adaptive))


def steered(apply: contract.Apply, mask: Any, *, tap: str, strength: float | Array,
            adaptive: bool = False) -> Manipulated:
  """The steering manipulation of every family: 'input' nested in 'channel'.

  'input' (t = K·⟨M̄, x⟩) steers the input-gradient family and LRP to `mask`; the 'channel'
  wrapper around it (at `tap`) steers Grad-CAM and HiResCAM there too.

  Args:
    apply: the honest model.
    mask: [H, W] target region in {0, 1}.
    tap: the spatial tap the CAM methods read.
    strength: K of both (λ with `adaptive`).
    adaptive: choose K per input (see the module docstring).

  Example:
    >>> lying = steered(model.apply, mask, tap='conv3', strength=1e3)
  """
  inner = manipulate(apply, construction='input', strength=strength, mask=mask,
                     adaptive=adaptive)
  return manipulate(inner, construction='channel', strength=strength, mask=mask, tap=tap,
                    adaptive=adaptive)
