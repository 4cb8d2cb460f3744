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
modifier (b + γb⁺ for γ, b⁺ and b⁻ for the α and β parts, b² for w²); `zplus`, `alpha_beta`,
`epsilon_plus` and `epsilon_alpha2_beta1` take bias='zennit' for its z⁺/α-β convention
(Zennit's γ is a different, output-sign-dependent rule, not offered). Flat, w² and z^B take
no bias. With ReLUs, every neuron that carries relevance has z_k > 0, and then the
denominators of ε, γ, z⁺ and the α part are ≥ z_k > 0 (with b or b⁺): stable.

**Against Zennit** (`tests/attribution/test_lrp.py`, measured on its random-init 3-conv
TorchCNN, half of whose conv biases are negative, float64): EpsilonPlus with Captum's b in
z⁺ is 20% off Zennit's (relative L2; α2β1 27%); with bias='zennit' 2.1e-5 (α2β1 5.9e-5), and
2e-11 once both stabilisers are 1e-12: the rest is Zennit's stabiliser on average pooling
(its `Norm` rule, also used for sums), where ours takes the plain gradient (LRP-0), and
Zennit starting from relevance 1 where LRP of the logit starts from z_t (a scale). With
non-negative biases the two conventions coincide.

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

The rules and composites are built in `lib.attribution.lrp_rules` (re-exported here).
Composites (per-layer rule choices) are ordered dicts of layer-name patterns (`fnmatch`,
first match wins) to rules, passed to `model.apply(..., rules=...)` by `lrp`; a rule is
`rule(linear_fn, x, kernel, bias) -> y` (`lib.contract.Rule`; `lib.contract` also shows how
a user's own `apply` routes its linear ops through the rules).

Example:
  >>> model = models.get_model('cnn', input_shape=(32, 32, 3), num_classes=10)
  >>> variables = model.init(jax.random.key(0))
  >>> rules = lrp.epsilon_gamma_box(0., 1., first=model.layer_names[0])
  >>> relevance = lrp.lrp(model.apply, variables, x, labels, rules=rules)  # [B, 32, 32, 3]
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lib import contract, validate
from lib.attribution import scores as scores_lib
from lib.attribution.lrp_rules import (BIAS_CONVENTIONS, NAMED_RULES, RULE_NAMES, ByKind,
                                       LayerRule, LinearFn, Rule, alpha_beta, epsilon,
                                       epsilon_alpha2_beta1, epsilon_gamma_box, epsilon_plus,
                                       flat, gamma, pass_through, wsquare, zbox, zplus)

__all__ = ['BIAS_CONVENTIONS', 'ByKind', 'LRP_SCORES', 'LayerRule', 'LinearFn', 'NAMED_RULES',
           'RULE_NAMES', 'Rule', 'alpha_beta', 'epsilon', 'epsilon_alpha2_beta1',
           'epsilon_gamma_box', 'epsilon_plus', 'flat', 'gamma', 'lrp', 'lrp_layer',
           'pass_through', 'wsquare', 'zbox', 'zplus']

Array = jax.Array

# Scores LRP can start from (linear in the logits); see the module docstring.
LRP_SCORES: tuple[str, ...] = ('logit', 'logit_difference')


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
      rule = NAMED_RULES[rule]
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
      pattern must match a layer. Compilation is cached per mapping, compared by value.
    score: 'logit' (z_t, standard) or 'logit_difference' (z_t − mean_{j≠t} z_j). Probability
      scores are refused: they are not linear in the logits.
    key: unused (deterministic method); accepted so all methods share one signature.

  Returns:
    [B, H, W, C] relevances; with bias-free layers and ε → 0 each example's sum is its score.

  Raises:
    ValueError: bad `x`, `target`, `score`, an unknown rule name, a pattern that matches
      no layer, or an `apply` that takes no `rules` keyword.

  Example:
    >>> rules = epsilon_plus()
    >>> relevance = lrp(model.apply, variables, x, labels, rules=rules)
  """
  del key
  _check_score(score)
  pairs = _resolve(rules)
  scores_lib.check_inputs(apply, params, x, target, score)
  contract.require_keywords(apply, ('rules',), needed_by='lrp')
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
    ValueError: as for `lrp`, an unknown tap, or an `apply` without a `perturb` keyword.
  """
  del key
  _check_score(score)
  pairs = _resolve(rules)
  outputs = scores_lib.check_inputs(apply, params, x, target, score)
  scores_lib.check_tap(outputs, tap, needed_by='lrp_layer')
  contract.require_keywords(apply, ('rules', 'perturb'), needed_by='lrp_layer')
  return _relevance(apply, params, x, target, rules=pairs, score=score, tap=tap)
