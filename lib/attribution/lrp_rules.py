"""LRP rules for one linear layer, and the composites that choose them per layer.

Every rule is a `jax.custom_vjp` around the layer (`Rule`): forward the layer's own value,
backward the rule's redistribution. The equations, the bias conventions (Captum's and, with
bias='zennit', Zennit's) and what they conserve are in the `lib.attribution.lrp` docstring,
which also runs them (`lrp`, `lrp_layer`); this module only builds them.

Rules are immutable and compare and hash by value, so a rules mapping is a static jit
argument that compiles once however often it is rebuilt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lib import contract, validate

Array = jax.Array
# linear_fn(x, kernel, bias) -> y: the op of a dense or conv layer.
LinearFn = Callable[[Array, Array, Array | None], Array]
LayerRule = contract.Rule

# How the layer bias enters z⁺ and α-β (see the `lrp` docstring, "The bias").
BIAS_CONVENTIONS: tuple[str, ...] = ('captum', 'zennit')


def _identity(a: Array) -> Array:
  return a


def _positive(a: Array) -> Array:
  return jnp.where(a > 0, a, 0)


def _negative(a: Array) -> Array:
  return jnp.where(a < 0, a, 0)


def _ones(a: Array) -> Array:
  return jnp.ones_like(a)


@dataclasses.dataclass(frozen=True)
class _Minus:
  """The input modifier x ↦ −bound, broadcast to x (z^B's reference points l and h).

  Holds the bound as float64 bytes and a shape, so rules compare and hash by value.
  """
  shape: tuple[int, ...]
  data: bytes

  @classmethod
  def of(cls, bound: np.ndarray) -> _Minus:
    bound = np.ascontiguousarray(bound, np.float64)
    return cls(bound.shape, bound.tobytes())

  def __call__(self, x: Array) -> Array:
    bound = np.frombuffer(self.data, np.float64).reshape(self.shape)
    return -jnp.broadcast_to(jnp.asarray(bound, x.dtype), x.shape)


@dataclasses.dataclass(frozen=True)
class _PlusGamma:
  """The weight modifier w ↦ w + γ w⁺ of LRP-γ (compares by γ)."""
  gamma: float

  def __call__(self, w: Array) -> Array:
    return w + self.gamma * _positive(w)


def _stabilise(z: Array, stabilizer: float) -> Array:
  """z + ε sign(z), with sign(0) = +1 (Captum's and Zennit's convention)."""
  return z + jnp.where(z >= 0, stabilizer, -stabilizer)


class _Term(NamedTuple):
  """One contribution f(u(x), ρ(W)) to a denominator: `inputs` is u, `weights` is ρ."""
  inputs: Callable[[Array], Array]
  weights: Callable[[Array], Array]


class _Part(NamedTuple):
  """Relevance scaled by `scale`, redistributed in proportion to the sum of `terms`."""
  scale: float
  terms: tuple[_Term, ...]
  bias: Callable[[Array], Array] | None  # the bias b as it enters the denominator (None: not)


@dataclasses.dataclass(frozen=True, repr=False)
class Rule:
  """An LRP rule for one linear layer: `rule(linear_fn, x, kernel, bias) -> y`.

  Built by the constructors below (`epsilon`, `gamma`, ...); the equation it implements is
  in the module docstring. Rules are immutable and compare and hash by value (their parts,
  modifiers and stabiliser; not the probe), so `lrp` compiles once for equal rules
  mappings, however often they are rebuilt.

  Attributes:
    name: how the rule was made, e.g. 'gamma(gamma=0.25, stabilizer=1e-06)'.
    parts: its parts; none for the plain gradient.
    stabilizer: ε of the denominators.
    reference: True for rules whose relevance is not x ⊙ g (z^B, flat, w²): they return a
      zero gradient and hand R to `probe`, the cotangent slot `lrp` provides.
    probe: zeros shaped like the model input, set by `lrp` for reference rules.
  """
  name: str
  parts: tuple[_Part, ...]
  stabilizer: float
  reference: bool = False
  probe: Array | None = dataclasses.field(default=None, compare=False)

  def __repr__(self) -> str:
    return self.name

  def __call__(self, linear_fn: LinearFn, x: Array, kernel: Array, bias: Array | None) -> Array:
    if not self.parts:
      return linear_fn(x, kernel, bias)
    if self.reference and self.probe is None:
      raise ValueError(f'{self!r} gives relevance that is not input ⊙ gradient; run it through '
                       'lrp() or lrp_layer(), which collect that relevance.')
    if self.reference and self.probe.shape != x.shape:
      raise ValueError(f'{self!r} must match only the layer that reads the model input (shape '
                       f'{tuple(self.probe.shape)}); it matched a layer whose input has shape '
                       f'{tuple(x.shape)}.')

    @jax.custom_vjp
    def layer(x, kernel, bias, probe):
      del probe
      return linear_fn(x, kernel, bias)

    def forward(x, kernel, bias, probe):
      del probe
      y = linear_fn(x, kernel, bias)
      return y, (x, kernel, bias, y)

    def backward(residuals, grad):
      x, kernel, bias, y = residuals
      relevance = grad * y  # R_k = z_k g_k
      grad_x = jnp.zeros_like(x)
      input_relevance = jnp.zeros_like(x)
      for part in self.parts:
        inputs, inputs_vjp = jax.vjp(lambda v: tuple(t.inputs(v) for t in part.terms), x)
        weights = tuple(t.weights(kernel) for t in part.terms)
        z, linear_vjp = jax.vjp(
            lambda *us: sum(linear_fn(u, w, None) for u, w in zip(us, weights)), *inputs)
        if part.bias is not None and bias is not None:
          z = z + part.bias(bias)
        contributions = linear_vjp(part.scale * relevance / _stabilise(z, self.stabilizer))
        if self.reference:
          input_relevance += sum(u * c for u, c in zip(inputs, contributions))
        else:
          grad_x += inputs_vjp(contributions)[0]
      zero_bias = None if bias is None else jnp.zeros_like(bias)
      return (grad_x, jnp.zeros_like(kernel), zero_bias,
              input_relevance if self.reference else None)

    layer.defvjp(forward, backward)
    return layer(x, kernel, bias, self.probe if self.reference else None)


def _check_stabilizer(stabilizer: float) -> None:
  validate.check_positive(stabilizer, 'stabilizer')


def epsilon(eps: float = 1e-6) -> Rule:
  """LRP-ε (Bach et al. 2015; M19 §10.2.1): R_j = x_j Σ_k w_jk R_k / (z_k + ε sign z_k).

  z_k = Σ_j x_j w_jk + b_k is the layer's own output (bias included, as in Captum's
  `EpsilonRule`); ε → 0 gives LRP-0, the plain gradient (`pass_through`). For middle and
  top layers.

  Args:
    eps: ε > 0, the stabiliser (and the relevance absorbed: larger ε, sparser maps).
  """
  validate.check_positive(eps, 'eps')
  return Rule(f'epsilon(eps={eps})', (_Part(1.0, (_Term(_identity, _identity),), _identity),),
              eps)


def gamma(gamma: float = 0.25, *, stabilizer: float = 1e-6) -> Rule:
  """LRP-γ (M19 §10.2.1), favouring positive contributions.

    R_j = x_j Σ_k (w_jk + γ w⁺_jk) R_k / (Σ_j' x_j' (w_j'k + γ w⁺_j'k) + b_k + ε sign(·)),

  the bias b_k unmodified, as in Captum's `GammaRule` (M19 and Zennit use b_k + γ b⁺_k).
  For lower convolutions, inputs x ≥ 0.

  Args:
    gamma: γ ≥ 0; 0 gives LRP-ε, γ → ∞ approaches z⁺.
    stabilizer: ε > 0 of the denominator.
  """
  validate.check_positive(gamma, 'gamma', allow_zero=True)
  _check_stabilizer(stabilizer)
  return Rule(f'gamma(gamma={gamma}, stabilizer={stabilizer})',
              (_Part(1.0, (_Term(_identity, _PlusGamma(float(gamma))),), _identity),),
              stabilizer)


def alpha_beta(alpha: float = 1.0, beta: float = 0.0, *, stabilizer: float = 1e-6,
               bias: str = 'captum') -> Rule:
  """LRP-αβ (Bach et al. 2015; M19 §10.2.1): positive and negative parts weighted α, −β.

    R_j = Σ_k ( α (x_j w_jk)⁺ / (Σ_j' (x_j' w_j'k)⁺ + b_k)
                − β (x_j w_jk)⁻ / Σ_j' (x_j' w_j'k)⁻ ) R_k,

  with (x w)⁺ = x⁺ w⁺ + x⁻ w⁻ and (x w)⁻ = x⁺ w⁻ + x⁻ w⁺ (so inputs of either sign are
  allowed), ε sign(·) added to each denominator, and the bias b in the positive part only
  (Captum's convention), or with bias='zennit' b⁺ in the positive part and b⁻ in the
  negative one (Zennit's `AlphaBeta`; see the module docstring). (1, 0) is `zplus`; (2, 1)
  is the other common choice.

  Args:
    alpha: α ≥ 0.
    beta: β ≥ 0 with α − β = 1 (relevance is conserved).
    stabilizer: ε > 0 of the denominators.
    bias: one of `BIAS_CONVENTIONS`: 'captum' (b as is, positive part) or 'zennit'.
  """
  validate.check_positive(alpha, 'alpha', allow_zero=True)
  validate.check_positive(beta, 'beta', allow_zero=True)
  if not np.isclose(alpha - beta, 1.0):
    raise ValueError(f'alpha - beta must be 1 (conservation); got alpha={alpha}, beta={beta}.')
  _check_stabilizer(stabilizer)
  validate.check_choice(bias, BIAS_CONVENTIONS, 'bias')
  zennit = bias == 'zennit'
  positive = _Part(alpha, (_Term(_positive, _positive), _Term(_negative, _negative)),
                   _positive if zennit else _identity)
  negative = _Part(-beta, (_Term(_positive, _negative), _Term(_negative, _positive)),
                   _negative if zennit else None)
  suffix = ", bias='zennit'" if zennit else ''
  return Rule(f'alpha_beta(alpha={alpha}, beta={beta}, stabilizer={stabilizer}{suffix})',
              (positive, negative) if beta else (positive,), stabilizer)


def zplus(*, stabilizer: float = 1e-6, bias: str = 'captum') -> Rule:
  """z⁺ = α1β0 (M19 §10.2.1; deep Taylor, Montavon et al. 2017).

    R_j = Σ_k (x_j w_jk)⁺ / (Σ_j' (x_j' w_j'k)⁺ + b_k + ε) R_k,

  which for inputs x ≥ 0 (after a ReLU, or pixels) is x_j w⁺_jk / (Σ_j' x_j' w⁺_j'k + b_k),
  Captum's `Alpha1_Beta0_Rule` (bias unmodified); bias='zennit' puts b⁺_k in place of b_k,
  as Zennit's `ZPlus`. For lower convolutions.

  Args:
    stabilizer: ε > 0 of the denominator.
    bias: one of `BIAS_CONVENTIONS`.
  """
  suffix = ", bias='zennit'" if bias == 'zennit' else ''
  return dataclasses.replace(alpha_beta(1.0, 0.0, stabilizer=stabilizer, bias=bias),
                             name=f'zplus(stabilizer={stabilizer}{suffix})')


def flat(*, stabilizer: float = 1e-6) -> Rule:
  """Flat rule (Lapuschkin et al. 2019): R_j = Σ_k R_k / (number of inputs of k), no bias.

  Every input in neuron k's receptive field gets an equal share, whatever its value (a
  reference rule: only for the layer that reads the model input). Zero padding is no input.

  Args:
    stabilizer: ε > 0 of the denominator.
  """
  _check_stabilizer(stabilizer)
  return Rule(f'flat(stabilizer={stabilizer})',
              (_Part(1.0, (_Term(_ones, _ones),), None),), stabilizer, reference=True)


def wsquare(*, stabilizer: float = 1e-6) -> Rule:
  """w²-rule (Montavon et al. 2017; M19 §10.2.2): R_j = Σ_k w²_jk / Σ_j' w²_j'k R_k, no bias.

  For the layer that reads unbounded inputs (a reference rule; Zennit adds b² to the
  denominator).

  Args:
    stabilizer: ε > 0 of the denominator.
  """
  _check_stabilizer(stabilizer)
  return Rule(f'wsquare(stabilizer={stabilizer})',
              (_Part(1.0, (_Term(_ones, jnp.square),), None),), stabilizer, reference=True)


def zbox(low: Any = 0.0, high: Any = 1.0, *, stabilizer: float = 1e-6) -> Rule:
  """z^B-rule for inputs bounded in [l, h] (Montavon et al. 2017; M19 §10.2.2).

    R_j = Σ_k q_jk / (Σ_j' q_j'k + ε sign(·)) R_k,   q_jk = x_j w_jk − l_j w⁺_jk − h_j w⁻_jk,

  no bias (Zennit's `ZBox`; its bias terms cancel). For the layer that reads the pixels (a
  reference rule): l and h bound that layer's input, so for a model that normalises its
  input they are the normalised bounds.

  Args:
    low: l, a scalar or an array that broadcasts to the layer input [B, H, W, C] (e.g. one
      value per channel, shape [C]).
    high: h, the same, with h ≥ l.
    stabilizer: ε > 0 of the denominator.
  """
  lo, hi = np.asarray(low, np.float64), np.asarray(high, np.float64)
  if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
    raise ValueError(f'low and high must be finite; got low={low!r}, high={high!r}.')
  if np.any(lo > hi):
    raise ValueError(f'low must not exceed high; got low={low!r}, high={high!r}.')
  _check_stabilizer(stabilizer)
  terms = (_Term(_identity, _identity), _Term(_Minus.of(lo), _positive),
           _Term(_Minus.of(hi), _negative))
  return Rule(f'zbox(low={low!r}, high={high!r}, stabilizer={stabilizer})',
              (_Part(1.0, terms, None),), stabilizer, reference=True)


def pass_through() -> Rule:
  """The plain gradient, LRP-0: R_j = x_j Σ_k w_jk R_k / z_k (z_k with its bias).

  Map a pattern to it to keep later patterns off the layers it matches.
  """
  return Rule('pass_through()', (), 0.0)


_gamma = gamma


@dataclasses.dataclass(frozen=True)
class ByKind:
  """Applies `conv` to convolutions (kernel rank > 2) and `dense` to dense layers.

  Zennit chooses rules by layer type; this does the same from the kernel a rule receives.
  Compares and hashes by its two rules.
  """
  conv: LayerRule
  dense: LayerRule

  def __call__(self, linear_fn: LinearFn, x: Array, kernel: Array, bias: Array | None) -> Array:
    rule = self.conv if kernel.ndim > 2 else self.dense
    return rule(linear_fn, x, kernel, bias)


def epsilon_plus(*, eps: float = 1e-6, stabilizer: float = 1e-6,
                 bias: str = 'captum') -> dict[str, LayerRule]:
  """Zennit's `EpsilonPlus`: ε for dense layers, z⁺ (with `stabilizer`, `bias`) for convs."""
  return {'*': ByKind(conv=zplus(stabilizer=stabilizer, bias=bias), dense=epsilon(eps))}


def epsilon_gamma_box(low: Any = 0.0, high: Any = 1.0, *, first: str, gamma: float = 0.25,
                      eps: float = 1e-6, stabilizer: float = 1e-6) -> dict[str, LayerRule]:
  """Zennit's `EpsilonGammaBox`: z^B on the first layer, γ on convolutions, ε on dense layers.

  Args:
    low: lower bound of the first layer's input (see `zbox`).
    high: upper bound of the first layer's input.
    first: name (or pattern) of the layer that reads the model input, e.g.
      `model.layer_names[0]`.
    gamma: γ of the convolutions.
    eps: ε of the dense layers.
    stabilizer: ε of the z^B and γ denominators.
  """
  return {first: zbox(low, high, stabilizer=stabilizer),
          '*': ByKind(conv=_gamma(gamma, stabilizer=stabilizer), dense=epsilon(eps))}


def epsilon_alpha2_beta1(*, eps: float = 1e-6, stabilizer: float = 1e-6,
                         bias: str = 'captum') -> dict[str, LayerRule]:
  """Zennit's `EpsilonAlpha2Beta1`: α2β1 (`stabilizer`, `bias`) for convolutions, ε for dense."""
  return {'*': ByKind(conv=alpha_beta(2.0, 1.0, stabilizer=stabilizer, bias=bias),
                      dense=epsilon(eps))}


# Rules by name, with default parameters (for `rules={'conv*': 'gamma', ...}`).
NAMED_RULES: dict[str, Rule] = {
    'epsilon': epsilon(), 'gamma': gamma(), 'zplus': zplus(), 'alpha_beta': alpha_beta(),
    'alpha2_beta1': alpha_beta(2.0, 1.0), 'flat': flat(), 'wsquare': wsquare(),
    'zbox': zbox(), 'pass': pass_through(),
}
RULE_NAMES: tuple[str, ...] = tuple(NAMED_RULES)
