"""Layer-wise relevance propagation (LRP) as modified gradients.

LRP (Bach et al. 2015, "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation"; Montavon et al. 2019, "Layer-Wise Relevance Propagation:
An Overview", hereafter M19) hands the score S of one class down the network, layer by
layer, as relevances that (nearly) sum to S at every layer, and returns the relevance R_i of
every input feature.

**Modified gradients.** Every rule here is a `jax.custom_vjp` around one linear layer
(dense or convolution; M19 §10.2.2, the approach of Zennit): its forward value is the
layer's own, its backward pass is the rule's. Relevance travels as R = a ⊙ g, a a layer's
input or output and g the (modified) gradient of S there, so:

  * at a linear layer z = f(x, W) + b with output relevance R_k = z_k g_k, a rule made of
    parts p (scales c_p) and terms t (input modifiers u_t, weight modifiers ρ_t) computes

        z^p_k = Σ_t f(u_t(x), ρ_t(W))_k  [+ b_k],     s^p_k = c_p R_k / (z^p_k + ε sign z^p_k),
        R_j = Σ_p Σ_t u_t(x)_j · (ρ_t(W)ᵀ s^p)_j,

    where ρ_t(W)ᵀ s is the VJP of x ↦ f(x, ρ_t(W)) (a transposed convolution for a conv),
    and sign 0 = +1. For the gradient rules (u_t(x) is x, x⁺ = max(x, 0) or x⁻ = min(x, 0))
    the backward pass returns g_j = R_j / x_j exactly, as the VJP through u_t (whose
    gradient is the gate 1, 1[x>0] or 1[x<0]);
  * non-linear and parameter-free layers keep their plain gradient, which is the LRP rule
    they need: ReLU passes relevance where it is active (ReLU's backward mask); max pooling
    hands it to the winner (winner-take-all); average pooling and the stand-alone batch norm
    of pre-activation blocks are linear, and their plain gradient is LRP-0; a residual sum
    a + b splits R_out in proportion a/(a+b), b/(a+b) (again its plain gradient);
  * a `ConvBN` layer folds its evaluation-mode batch norm into kernel and bias before the
    rule sees it (`lib.models.layers`), as M19 §10.3 requires.

So the relevance at the input is x ⊙ g, g the modified gradient of S. The rules that give
relevance to inputs in other proportions than x (z^B, flat, w², "reference rules", meant for
the layer that reads the model input) hand their R_j to `lrp` through an extra input, the
probe, instead: no gradient g gives x_j g_j ≠ 0 where x_j = 0, yet a black pixel can be
relevant under z^B.

The rules are meant for ReLU networks. Attention and other multiplicative non-linearities
keep their plain gradient, which is not a conservative LRP rule for them (transformers need
rules of their own, e.g. Achtibat et al. 2024, "AttnLRP").

**The bias.** The layer bias b_k is an input that receives relevance but passes none down:
the relevance it absorbs is lost. ε, γ and z⁺ keep b unmodified in the denominator z^p, as
Captum does (`EpsilonRule`, `GammaRule`, `Alpha1_Beta0_Rule`); α-β puts b in the positive
part only, so that α-β with (1, 0) is z⁺. Zennit instead passes b through the weight
modifier (b + γb⁺ for γ, b⁺ and b⁻ for the α and β parts, b² for w²). Flat, w² and z^B
take no bias. With ReLUs, every neuron that carries relevance has z_k > 0, and then the
denominators of ε, γ, z⁺ and the α part are ≥ z_k > 0: stable.

**Conservation.** With bias-free layers and ε → 0, Σ_i R_i = S (ε and the stabilisers
absorb O(ε) relevance; α-β conserves when α − β = 1 and every neuron has inputs of both
signs). z⁺, γ and α-β assume a ReLU after the layer (z_k > 0 wherever R_k ≠ 0): the
convolution before a residual addition has none, and there z⁺ loses the relevance of
neurons with z_k < 0 and no positive contribution, and γ's denominator z_k + γ Σ_j (x_j
w_jk)⁺ can cross zero.

**Which score.** LRP redistributes a score that is linear in the logits: the logit z_t
('logit', standard) or the logit difference z_t − mean_{j≠t} z_j ('logit_difference',
`lib.attribution.scores`; immune to adding the same t(x) to every logit, see Lerma & Lucas
2023). Probabilities (softmax, log-softmax) are not linear in the logits: their gradient at
the logits is not a relevance, so `lrp` refuses them.

Composites (per-layer rule choices) are ordered dicts of layer-name patterns (`fnmatch`,
first match wins) to rules, passed to `model.apply(..., rules=...)` by `lrp`; a rule is
`rule(linear_fn, x, kernel, bias) -> y` (`lib.models.core.Rule`).

Example:
  >>> model = models.get_model('cnn', input_shape=(32, 32, 3), num_classes=10)
  >>> variables = model.init(jax.random.key(0))
  >>> rules = lrp.epsilon_gamma_box(0., 1., first=model.layer_names[0])
  >>> relevance = lrp.lrp(model.apply, variables, x, labels, rules=rules)  # [B, 32, 32, 3]
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate
from lib.attribution import scores as scores_lib

Array = jax.Array
# linear_fn(x, kernel, bias) -> y: the op of a dense or conv layer.
LinearFn = Callable[[Array, Array, Array | None], Array]
LayerRule = Callable[[LinearFn, Array, Array, Array | None], Array]

# Scores LRP can start from (linear in the logits); see the module docstring.
LRP_SCORES: tuple[str, ...] = ('logit', 'logit_difference')


def _identity(a: Array) -> Array:
  return a


def _positive(a: Array) -> Array:
  return jnp.where(a > 0, a, 0)


def _negative(a: Array) -> Array:
  return jnp.where(a < 0, a, 0)


def _ones(a: Array) -> Array:
  return jnp.ones_like(a)


def _minus(bound: np.ndarray) -> Callable[[Array], Array]:
  """The input modifier x ↦ −bound, broadcast to x (z^B's reference points l and h)."""
  return lambda x: -jnp.broadcast_to(jnp.asarray(bound, x.dtype), x.shape)


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
  bias: bool  # whether the layer's bias b enters this part's denominator


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Rule:
  """An LRP rule for one linear layer: `rule(linear_fn, x, kernel, bias) -> y`.

  Built by the constructors below (`epsilon`, `gamma`, ...); the equation it implements is
  in the module docstring. Rules compare and hash by identity, so `lrp` compiles once per
  rules mapping: build the mapping once and reuse it.

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
  probe: Array | None = None

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
        if part.bias and bias is not None:
          z = z + bias
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
  return Rule(f'epsilon(eps={eps})', (_Part(1.0, (_Term(_identity, _identity),), True),), eps)


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
  weights = lambda w: w + gamma * _positive(w)
  return Rule(f'gamma(gamma={gamma}, stabilizer={stabilizer})',
              (_Part(1.0, (_Term(_identity, weights),), True),), stabilizer)


def alpha_beta(alpha: float = 1.0, beta: float = 0.0, *, stabilizer: float = 1e-6) -> Rule:
  """LRP-αβ (Bach et al. 2015; M19 §10.2.1): positive and negative parts weighted α, −β.

    R_j = Σ_k ( α (x_j w_jk)⁺ / (Σ_j' (x_j' w_j'k)⁺ + b_k)
                − β (x_j w_jk)⁻ / Σ_j' (x_j' w_j'k)⁻ ) R_k,

  with (x w)⁺ = x⁺ w⁺ + x⁻ w⁻ and (x w)⁻ = x⁺ w⁻ + x⁻ w⁺ (so inputs of either sign are
  allowed), ε sign(·) added to each denominator, and the bias in the positive part only
  (Zennit puts b⁺ there and b⁻ in the negative part; see the module docstring). (1, 0) is
  `zplus`; (2, 1) is the other common choice.

  Args:
    alpha: α ≥ 0.
    beta: β ≥ 0 with α − β = 1 (relevance is conserved).
    stabilizer: ε > 0 of the denominators.
  """
  validate.check_positive(alpha, 'alpha', allow_zero=True)
  validate.check_positive(beta, 'beta', allow_zero=True)
  if not np.isclose(alpha - beta, 1.0):
    raise ValueError(f'alpha - beta must be 1 (conservation); got alpha={alpha}, beta={beta}.')
  _check_stabilizer(stabilizer)
  positive = _Part(alpha, (_Term(_positive, _positive), _Term(_negative, _negative)), True)
  negative = _Part(-beta, (_Term(_positive, _negative), _Term(_negative, _positive)), False)
  return Rule(f'alpha_beta(alpha={alpha}, beta={beta}, stabilizer={stabilizer})',
              (positive, negative) if beta else (positive,), stabilizer)


def zplus(*, stabilizer: float = 1e-6) -> Rule:
  """z⁺ = α1β0 (M19 §10.2.1; deep Taylor, Montavon et al. 2017).

    R_j = Σ_k (x_j w_jk)⁺ / (Σ_j' (x_j' w_j'k)⁺ + b_k + ε) R_k,

  which for inputs x ≥ 0 (after a ReLU, or pixels) is x_j w⁺_jk / (Σ_j' x_j' w⁺_j'k + b_k),
  Captum's `Alpha1_Beta0_Rule` (bias unmodified). For lower convolutions.

  Args:
    stabilizer: ε > 0 of the denominator.
  """
  return dataclasses.replace(alpha_beta(1.0, 0.0, stabilizer=stabilizer),
                             name=f'zplus(stabilizer={stabilizer})')


def flat(*, stabilizer: float = 1e-6) -> Rule:
  """Flat rule (Lapuschkin et al. 2019): R_j = Σ_k R_k / (number of inputs of k), no bias.

  Every input in neuron k's receptive field gets an equal share, whatever its value (a
  reference rule: only for the layer that reads the model input). Zero padding is no input.

  Args:
    stabilizer: ε > 0 of the denominator.
  """
  _check_stabilizer(stabilizer)
  return Rule(f'flat(stabilizer={stabilizer})',
              (_Part(1.0, (_Term(_ones, _ones),), False),), stabilizer, reference=True)


def wsquare(*, stabilizer: float = 1e-6) -> Rule:
  """w²-rule (Montavon et al. 2017; M19 §10.2.2): R_j = Σ_k w²_jk / Σ_j' w²_j'k R_k, no bias.

  For the layer that reads unbounded inputs (a reference rule; Zennit adds b² to the
  denominator).

  Args:
    stabilizer: ε > 0 of the denominator.
  """
  _check_stabilizer(stabilizer)
  return Rule(f'wsquare(stabilizer={stabilizer})',
              (_Part(1.0, (_Term(_ones, jnp.square),), False),), stabilizer, reference=True)


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
  terms = (_Term(_identity, _identity), _Term(_minus(lo), _positive), _Term(_minus(hi), _negative))
  return Rule(f'zbox(low={low!r}, high={high!r}, stabilizer={stabilizer})',
              (_Part(1.0, terms, False),), stabilizer, reference=True)


def pass_through() -> Rule:
  """The plain gradient, LRP-0: R_j = x_j Σ_k w_jk R_k / z_k (z_k with its bias).

  Map a pattern to it to keep later patterns off the layers it matches.
  """
  return Rule('pass_through()', (), 0.0)


_gamma = gamma


@dataclasses.dataclass(frozen=True, eq=False)
class ByKind:
  """Applies `conv` to convolutions (kernel rank > 2) and `dense` to dense layers.

  Zennit chooses rules by layer type; this does the same from the kernel a rule receives.
  """
  conv: LayerRule
  dense: LayerRule

  def __call__(self, linear_fn: LinearFn, x: Array, kernel: Array, bias: Array | None) -> Array:
    rule = self.conv if kernel.ndim > 2 else self.dense
    return rule(linear_fn, x, kernel, bias)


def epsilon_plus(*, eps: float = 1e-6, stabilizer: float = 1e-6) -> dict[str, LayerRule]:
  """Zennit's `EpsilonPlus`: ε for dense layers, z⁺ (with `stabilizer`) for convolutions."""
  return {'*': ByKind(conv=zplus(stabilizer=stabilizer), dense=epsilon(eps))}


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


def epsilon_alpha2_beta1(*, eps: float = 1e-6,
                         stabilizer: float = 1e-6) -> dict[str, LayerRule]:
  """Zennit's `EpsilonAlpha2Beta1`: α2β1 (with `stabilizer`) for convolutions, ε for dense."""
  return {'*': ByKind(conv=alpha_beta(2.0, 1.0, stabilizer=stabilizer), dense=epsilon(eps))}


# Rules by name, with default parameters (for `rules={'conv*': 'gamma', ...}`).
_NAMED: dict[str, Rule] = {
    'epsilon': epsilon(), 'gamma': gamma(), 'zplus': zplus(), 'alpha_beta': alpha_beta(),
    'alpha2_beta1': alpha_beta(2.0, 1.0), 'flat': flat(), 'wsquare': wsquare(),
    'zbox': zbox(), 'pass': pass_through(),
}
RULE_NAMES: tuple[str, ...] = tuple(_NAMED)


def _resolve(rules: Any) -> tuple[tuple[str, LayerRule], ...]:
  """The rules mapping as ordered (pattern, rule) pairs, names replaced by rules."""
  if not isinstance(rules, Mapping):
    raise ValueError('rules must be a mapping of layer-name patterns to rules (or rule names '
                     f'{list(RULE_NAMES)}); got {type(rules).__name__}.')
  pairs = []
  for pattern, rule in rules.items():
    if not isinstance(pattern, str):
      raise ValueError(f'rules keys must be layer-name patterns (str); got {pattern!r}.')
    if isinstance(rule, str):
      validate.check_choice(rule, RULE_NAMES, f'rules[{pattern!r}]')
      rule = _NAMED[rule]
    elif not callable(rule):
      raise ValueError(f'rules[{pattern!r}] must be a rule or one of {list(RULE_NAMES)}; '
                       f'got {rule!r}.')
    pairs.append((pattern, rule))
  return tuple(pairs)


def _check_score(score: str) -> None:
  if score in scores_lib.SCORES and score not in LRP_SCORES:
    raise ValueError(f'score={score!r} is not linear in the logits, so LRP cannot start from it; '
                     f'expected one of {list(LRP_SCORES)}.')
  validate.check_choice(score, LRP_SCORES, 'score')


def _bind(rule: LayerRule, probe: Array) -> LayerRule:
  """`rule` with the probe set, if it is a reference rule."""
  if isinstance(rule, Rule) and rule.reference:
    return dataclasses.replace(rule, probe=probe)
  return rule


def _recorded(pattern: str, rule: LayerRule, matched: set[str]) -> LayerRule:
  """`rule`, noting in `matched` that `pattern` chose it for some layer."""
  def apply_rule(linear_fn, x, kernel, bias):
    matched.add(pattern)
    return rule(linear_fn, x, kernel, bias)
  return apply_rule


@functools.partial(jax.jit, static_argnames=('apply', 'rules', 'score', 'tap'))
def _relevance(apply, params, x, target, *, rules, score, tap):
  matched: set[str] = set()

  def forward(args):
    x_in, probe, delta = args
    bound = {p: _recorded(p, _bind(r, probe), matched) for p, r in rules}
    perturb = {} if tap is None else {'perturb': {tap: delta}}
    return apply(params, x_in, rules=bound, **perturb)

  delta = None
  if tap is not None:
    aval = scores_lib.abstract_outputs(apply, params, x).taps[tap]
    delta = jnp.zeros(aval.shape, aval.dtype)
  (grad_x, input_relevance, grad_tap), outputs = scores_lib.score_grad(
      forward, (x, jnp.zeros_like(x), delta), target, score)
  unmatched = [p for p, _ in rules if p not in matched]
  if unmatched:  # raised while tracing, before anything runs
    raise ValueError(f'rules patterns {unmatched} match no layer (or only layers an earlier '
                     'pattern took); see the model\'s layer_names.')
  if tap is None:
    return x * grad_x + input_relevance
  return outputs.taps[tap] * grad_tap


def lrp(apply: scores_lib.Apply, params: Any, x: Array, target: Array, *,
        rules: Mapping[str, LayerRule | str], score: str = 'logit',
        key: Array | None = None) -> Array:
  """Relevance of every input feature for the target score, by LRP.

  Bach et al. 2015; Montavon et al. 2019 (see the module docstring for the rules, the
  bias convention and what differs from Captum and Zennit). Layers no pattern matches keep
  their plain gradient (LRP-0); `{}` gives gradient × input.

  Args:
    apply: `apply(params, x, rules=...)` -> logits [B, K] or an object with `.logits`
      (e.g. `lib.models.PureModel.apply`), honouring layer rules.
    params: the model's parameters.
    x: [B, H, W, C] finite float inputs.
    target: [B] int classes to explain.
    rules: layer-name pattern (`fnmatch`, first match wins) -> rule, or a rule name from
      `RULE_NAMES` (default parameters); e.g. `epsilon_gamma_box(first='conv1')`. Every
      pattern must match a layer. Build it once: compilation is cached per mapping.
    score: 'logit' (z_t, standard) or 'logit_difference' (z_t − mean_{j≠t} z_j). Probability
      scores are refused: they are not linear in the logits.
    key: unused (deterministic method); accepted so all methods share one signature.

  Returns:
    [B, H, W, C] relevances; with bias-free layers and ε → 0 each example's sum is its score.

  Raises:
    ValueError: bad `x`, `target`, `score`, an unknown rule name, or a pattern that matches
      no layer.

  Example:
    >>> rules = epsilon_plus()
    >>> relevance = lrp(model.apply, variables, x, labels, rules=rules)
  """
  del key
  _check_score(score)
  pairs = _resolve(rules)
  scores_lib.check_inputs(apply, params, x, target, score)
  return _relevance(apply, params, x, target, rules=pairs, score=score, tap=None)


def lrp_layer(apply: scores_lib.Apply, params: Any, x: Array, target: Array, *, tap: str,
              rules: Mapping[str, LayerRule | str], score: str = 'logit',
              key: Array | None = None) -> Array:
  """Relevance of the features at a tap: A ⊙ g, g the modified gradient at that tap.

  The gradient at the tap is taken at a zero perturbation of it, so only the rules of the
  layers above the tap matter (those below are still applied in the forward pass).

  Args:
    apply: `apply(params, x, rules=..., perturb={tap: delta})` -> object with `.logits` and
      `.taps` (e.g. `lib.models.PureModel.apply`).
    params: the model's parameters.
    x: [B, H, W, C] finite float inputs.
    target: [B] int classes to explain.
    tap: name of a tap of the model (e.g. 'conv2', 'features').
    rules: as for `lrp`.
    score: as for `lrp`.
    key: unused (deterministic method); accepted so all methods share one signature.

  Returns:
    [B, ...] relevances shaped like the tap.

  Raises:
    ValueError: as for `lrp`, or an unknown tap.
  """
  del key
  _check_score(score)
  pairs = _resolve(rules)
  outputs = scores_lib.check_inputs(apply, params, x, target, score)
  taps = getattr(outputs, 'taps', None)
  if not isinstance(taps, dict) or tap not in taps:
    raise ValueError(f'tap={tap!r} is not a tap of this model; valid taps: '
                     f'{list(taps or {})}.')
  return _relevance(apply, params, x, target, rules=pairs, score=score, tap=tap)
