"""LRP: rule equations, parity with Captum, conservation, batch-norm folding, rule matching,
boundary checks.

Exact comparisons run in float64 on both sides (`jax.enable_x64`). The network is our
SmallCNN (batch_norm=False) and its PyTorch twin `TorchCNN`, whose pooling layers are
modules: Captum's LRP attaches rules to modules, and pooling done with functional ops would
hand relevance down with its plain gradient (the mean would split R evenly instead of in
proportion to the activations). Variables are built from the PyTorch weights and checked
against `jax.eval_shape(model.init)`, never initialised: eager `model.init` compiles
`jax.random.normal` for each kernel shape, which takes tens of seconds on this CPU.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum.attr import LRP
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule
from torch import nn

from lib import contract, models
from lib.attribution import lrp

INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 5
WIDTHS = (6, 8, 10)


class TorchCNN(nn.Module):
  """SmallCNN in PyTorch: (conv 3x3 'same' -> ReLU -> max pool 2) x2 -> conv -> ReLU -> GAP -> fc.

  Captum's LRP gives `MaxPool2d` and `AdaptiveAvgPool2d` its default `EpsilonRule(1e-9)`:
  for max pooling that is winner-take-all times a/(a + 1e-9), for average pooling LRP-ε
  with ε = 1e-9, against the exact plain gradient (LRP-0 for both) here: they differ by a
  relative 1e-9 / a, far below the tolerance.
  """

  def __init__(self):
    super().__init__()
    chans = (INPUT_SHAPE[-1], *WIDTHS)
    layers = []
    for i in range(len(WIDTHS)):
      pool = nn.MaxPool2d(2) if i < len(WIDTHS) - 1 else nn.AdaptiveAvgPool2d(1)
      layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1), nn.ReLU(), pool]
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(WIDTHS[-1], NUM_CLASSES)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.head(self.features(x).flatten(1))

  def convs(self) -> list[nn.Conv2d]:
    return [m for m in self.features if isinstance(m, nn.Conv2d)]


class Case(NamedTuple):
  net: TorchCNN
  model: models.PureModel
  variables: Any  # float64 numpy
  x: np.ndarray   # [B, H, W, C] float64 in [0, 1]
  target: np.ndarray


def checked_variables(model: models.PureModel, variables: Any) -> Any:
  expected = jax.eval_shape(model.init, jax.random.key(0))
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, expected)
  return variables


@pytest.fixture(scope='module')
def case() -> Case:
  torch.manual_seed(0)
  net = TorchCNN().double().eval()
  model = models.get_model('cnn', input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                           widths=WIDTHS)
  as_np = lambda t: t.detach().numpy()
  params = {'convs': {i: {'kernel': as_np(conv.weight.permute(2, 3, 1, 0)),
                          'bias': as_np(conv.bias)} for i, conv in enumerate(net.convs())},
            'head': {'kernel': as_np(net.head.weight.T), 'bias': as_np(net.head.bias)}}
  variables = checked_variables(model, {'params': params, 'batch_stats': {}})
  x = np.random.default_rng(0).uniform(size=(3, *INPUT_SHAPE))
  return Case(net, model, variables, x, np.array([1, 4, 2]))


def to_torch(a) -> torch.Tensor:
  return torch.from_numpy(np.asarray(a, np.float64)).permute(0, 3, 1, 2)


def from_torch(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def as_dtype(tree, dtype):
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def without_biases(variables):
  params = jax.tree.map_with_path(
      lambda path, a: np.zeros_like(a) if path[-1].key == 'bias' else a, variables['params'])
  return {**variables, 'params': params}


def stab(z, eps):
  return z + eps * np.where(z >= 0, 1.0, -1.0)


def pos(a):
  return np.maximum(a, 0)


def neg(a):
  return np.minimum(a, 0)


def redistribute(c, relevance, bias, eps):
  """R_j = Σ_k c_bjk R_k / stab(Σ_j' c_bj'k + bias_k): the textbook form (M19 §10.2)."""
  return np.einsum('bjk,bk->bj', c, relevance / stab(c.sum(1) + bias, eps))


# rule -> (our rule, its relevance R_j from (x [B, J], w [J, K], b [K], R [B, K])) for a
# dense layer, written out from the equations with Captum's bias convention.
_LOW, _HIGH = np.array([-1.0, -0.5, 0.0, -0.2, -1.0]), np.array([1.0, 0.5, 2.0, 0.3, 0.0])
_XW = lambda x, w: x[:, :, None] * w
EQUATIONS = {
    'epsilon': (lambda: lrp.epsilon(0.1), lambda x, w, b, r: redistribute(_XW(x, w), r, b, 0.1)),
    'gamma': (lambda: lrp.gamma(0.5, stabilizer=0.1),
              lambda x, w, b, r: redistribute(_XW(x, w + 0.5 * pos(w)), r, b, 0.1)),
    'zplus': (lambda: lrp.zplus(stabilizer=0.1),
              lambda x, w, b, r: redistribute(pos(_XW(x, w)), r, b, 0.1)),
    'alpha2_beta1': (lambda: lrp.alpha_beta(2.0, 1.0, stabilizer=0.1),
                     lambda x, w, b, r: (2 * redistribute(pos(_XW(x, w)), r, b, 0.1)
                                         - redistribute(neg(_XW(x, w)), r, 0.0, 0.1))),
    'zplus_zennit_bias': (lambda: lrp.zplus(stabilizer=0.1, bias='zennit'),
                          lambda x, w, b, r: redistribute(pos(_XW(x, w)), r, pos(b), 0.1)),
    'alpha2_beta1_zennit_bias': (
        lambda: lrp.alpha_beta(2.0, 1.0, stabilizer=0.1, bias='zennit'),
        lambda x, w, b, r: (2 * redistribute(pos(_XW(x, w)), r, pos(b), 0.1)
                            - redistribute(neg(_XW(x, w)), r, neg(b), 0.1))),
    'flat': (lambda: lrp.flat(stabilizer=0.1),
             lambda x, w, b, r: redistribute(np.ones_like(_XW(x, w)), r, 0.0, 0.1)),
    'wsquare': (lambda: lrp.wsquare(stabilizer=0.1),
                lambda x, w, b, r: redistribute(np.ones_like(x)[:, :, None] * w**2, r, 0.0, 0.1)),
    'zbox': (lambda: lrp.zbox(_LOW, _HIGH, stabilizer=0.1),
             lambda x, w, b, r: redistribute(
                 _XW(x, w) - _LOW[:, None] * pos(w) - _HIGH[:, None] * neg(w), r, 0.0, 0.1)),
    'pass': (lrp.pass_through, lambda x, w, b, r: redistribute(_XW(x, w), r, b, 0.0)),
}


def rule_relevance(rule, x, w, b, grad):
  """R at a dense layer's input from our rule, for the output gradient `grad`."""
  def layer(x, probe):
    bound = dataclasses.replace(rule, probe=probe) if rule.reference else rule
    return bound(contract.dense, x, w, b)
  y, vjp = jax.vjp(layer, x, jnp.zeros_like(x))
  np.testing.assert_allclose(y, x @ w + b, rtol=1e-12)  # the forward value is the layer's
  grad_x, probe_relevance = vjp(grad)
  return np.asarray(x * grad_x + probe_relevance)


@pytest.mark.parametrize('name', list(EQUATIONS))
def test_rule_equations_on_a_dense_layer(name):
  make, expected = EQUATIONS[name]
  rng = np.random.default_rng(0)
  w, b, grad = rng.normal(size=(5, 4)), rng.normal(size=4), rng.normal(size=(2, 4))
  x = rng.uniform(_LOW, _HIGH, size=(2, 5)) if name == 'zbox' else rng.normal(size=(2, 5))
  with jax.enable_x64(True):
    ours = rule_relevance(make(), *as_dtype((x, w, b, grad), jnp.float64))
  np.testing.assert_allclose(ours, expected(x, w, b, (x @ w + b) * grad), rtol=1e-10,
                             atol=1e-12)


# setting -> (Captum rule for convs, Captum rule for the linear layer, our rules).
CAPTUM_SETTINGS = {
    'epsilon': (lambda: EpsilonRule(1e-2), lambda: EpsilonRule(1e-2),
                lambda: {'*': lrp.epsilon(1e-2)}),
    'gamma': (lambda: GammaRule(gamma=0.25), lambda: EpsilonRule(1e-2),
              lambda: {'conv*': lrp.gamma(0.25, stabilizer=1e-9), 'head': lrp.epsilon(1e-2)}),
    'alpha1_beta0': (Alpha1_Beta0_Rule, lambda: EpsilonRule(1e-2),
                     lambda: {'conv*': lrp.zplus(stabilizer=1e-9), 'head': lrp.epsilon(1e-2)}),
}


def captum_lrp(case, conv_rule, head_rule, pool_eps=None):
  """Captum's LRP of `case` (float64, NHWC) with rules on the convs, head and (optionally) pools."""
  net = copy.deepcopy(case.net)
  for conv in net.convs():
    conv.rule = conv_rule()
  net.head.rule = head_rule()
  if pool_eps is not None:
    for pool in net.features:
      if isinstance(pool, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
        pool.rule = EpsilonRule(pool_eps)
  x = to_torch(case.x).requires_grad_(True)
  return from_torch(LRP(net).attribute(x, target=[int(t) for t in case.target]))


@pytest.mark.parametrize('setting', list(CAPTUM_SETTINGS))
def test_parity_with_captum(case, rel_err, setting):
  conv_rule, head_rule, ours = CAPTUM_SETTINGS[setting]
  with jax.enable_x64(True):
    relevance = lrp.lrp(case.model.apply, as_dtype(case.variables, jnp.float64),
                        jnp.asarray(case.x), jnp.asarray(case.target), rules=ours())
    assert relevance.dtype == jnp.float64 and relevance.shape == case.x.shape
    relevance = np.asarray(relevance)
  # Captum's pools keep their default EpsilonRule(1e-9): a relative 1e-9/a off LRP-0.
  assert rel_err(relevance, captum_lrp(case, conv_rule, head_rule)) < 1e-6
  # With that ε negligible both compute the same LRP, to rounding.
  assert rel_err(relevance, captum_lrp(case, conv_rule, head_rule, pool_eps=1e-30)) < 1e-12


def test_zennit_bias_convention_matches_zennit(case, rel_err):
  """Zennit's EpsilonPlus (b⁺ in z⁺) equals ours with bias='zennit'; Captum's b differs.

  Zennit starts from relevance 1 at the target, LRP of the logit from z_t, and every rule is
  linear in the relevance it receives, so Zennit's map is scaled by z_t. Its AvgPool `Norm`
  rule adds the stabiliser (1e-12 here, negligible) where ours takes the plain gradient.
  """
  composites = pytest.importorskip('zennit.composites')
  attribution = pytest.importorskip('zennit.attribution')
  x = to_torch(case.x).contiguous()
  one_hot = torch.eye(NUM_CLASSES, dtype=torch.float64)[case.target]
  with attribution.Gradient(model=case.net,
                            composite=composites.EpsilonPlus(stabilizer=1e-12)) as attributor:
    _, relevance = attributor(x.clone().requires_grad_(True), one_hot)
  z_t = case.net(x).detach().numpy()[np.arange(len(case.target)), case.target]
  ref = from_torch(relevance) * z_t[:, None, None, None]
  with jax.enable_x64(True):
    ours = {bias: np.asarray(lrp.lrp(case.model.apply, as_dtype(case.variables, jnp.float64),
                                     jnp.asarray(case.x), jnp.asarray(case.target),
                                     rules=lrp.epsilon_plus(stabilizer=1e-12, bias=bias)))
            for bias in lrp.BIAS_CONVENTIONS}
  assert rel_err(ours['zennit'], ref) < 1e-9
  assert rel_err(ours['captum'], ref) > 1e-2


def target_scores(case, variables, score):
  z = np.asarray(case.model.apply(variables, jnp.asarray(case.x)).logits)
  chosen = z[np.arange(len(case.target)), case.target]
  if score == 'logit':
    return chosen
  return chosen - (z.sum(-1) - chosen) / (z.shape[-1] - 1)


CONSERVATION_CASES = {
    'box-gamma-plus-epsilon': (
        lambda: {'conv1': lrp.zbox(0.0, 1.0, stabilizer=1e-12),
                 'conv2': lrp.gamma(0.25, stabilizer=1e-12),
                 'conv3': lrp.zplus(stabilizer=1e-12), 'head': lrp.epsilon(1e-12)}, 'logit'),
    'flat-epsilon-difference': (
        lambda: {'conv1': lrp.flat(stabilizer=1e-12), '*': lrp.epsilon(1e-12)},
        'logit_difference'),
}


@pytest.mark.parametrize('name', list(CONSERVATION_CASES))
def test_relevance_sums_to_the_score_without_biases(case, name):
  rules, score = CONSERVATION_CASES[name]
  with jax.enable_x64(True):
    variables = as_dtype(without_biases(case.variables), jnp.float64)
    relevance = np.asarray(lrp.lrp(case.model.apply, variables, jnp.asarray(case.x),
                                   jnp.asarray(case.target), rules=rules(), score=score))
    expected = target_scores(case, variables, score)
  np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), expected, rtol=1e-8, atol=1e-10)
  assert (relevance != 0).mean() > 0.5  # spread over the image, not one pixel


def test_layer_relevance_sums_to_the_logit_without_biases(case):
  with jax.enable_x64(True):
    variables = as_dtype(without_biases(case.variables), jnp.float64)
    relevance = np.asarray(lrp.lrp_layer(case.model.apply, variables, jnp.asarray(case.x),
                                         jnp.asarray(case.target), tap='conv2',
                                         rules=lrp.epsilon_plus(eps=1e-12, stabilizer=1e-12)))
    expected = target_scores(case, variables, 'logit')
  assert relevance.shape == (len(case.x), *case.model.tap_shapes['conv2'])
  np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), expected, rtol=1e-8, atol=1e-10)


def textbook_lrp_epsilon(convs, head, x, target, eps):
  """LRP-ε layer by layer, the four steps of M19 §10.2.2.

  z = layer(a), s = R / (z + ε sign z), c = ∂(z·s)/∂a, R = a·c.

  PyTorch float64, NCHW; relevance tensors pass from layer to layer. `convs` is a list of
  (weight [O, I, 3, 3], bias [O]), each followed by a ReLU (relevance passes it unchanged)
  and 2x2 max pooling (except the last), then global average pooling and the dense `head`
  (weight [K, C], bias [K]); the pooling layers take the same four steps with ε = 1e-30 (LRP-0).
  """
  layers = []
  for i, (w, b) in enumerate(convs):
    conv = lambda a, w=w, b=b: nn.functional.conv2d(a, w, b, padding=1)
    layers.append((lambda a, conv=conv: nn.functional.relu(conv(a)), conv, eps))
    if i < len(convs) - 1:
      pool = lambda a: nn.functional.max_pool2d(a, 2)
      layers.append((pool, pool, 1e-30))
  gap = lambda a: a.mean(dim=(2, 3))
  dense = lambda a: nn.functional.linear(a, *head)
  layers += [(gap, gap, 1e-30), (dense, dense, eps)]
  inputs, a = [], x
  for forward, _, _ in layers:
    inputs.append(a)
    a = forward(a)
  relevance = nn.functional.one_hot(target, a.shape[-1]) * a
  for (_, linear, eps_layer), a in zip(reversed(layers), reversed(inputs)):
    a = a.clone().requires_grad_(True)
    z = linear(a)
    sign = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)  # python floats alone give float32
    s = (relevance / (z + eps_layer * sign)).detach()
    (z * s).sum().backward()
    relevance = a * a.grad
  return relevance.detach()


def test_batch_norm_is_folded_before_the_rule(case, rel_err):
  model = models.get_model('cnn', input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                           widths=WIDTHS, batch_norm=True)
  rng = np.random.default_rng(1)
  convs, stats, folded = {}, {}, []
  for i, layer in case.variables['params']['convs'].items():
    c = layer['kernel'].shape[-1]
    scale, shift = rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c)
    mean, var = rng.normal(0, 0.5, c), rng.uniform(0.3, 2.0, c)
    convs[i] = {'conv': {'kernel': layer['kernel']}, 'bn': {'scale': scale, 'bias': shift}}
    stats[i] = {'bn': {'mean': mean, 'var': var}}
    s = scale / np.sqrt(var + 1e-5)  # nnx.BatchNorm's default epsilon
    folded.append((torch.from_numpy(layer['kernel'] * s).permute(3, 2, 0, 1),
                   torch.from_numpy(shift - mean * s)))
  head = case.variables['params']['head']
  variables = checked_variables(model, {'params': {'convs': convs, 'head': head},
                                        'batch_stats': {'convs': stats}})
  ref = textbook_lrp_epsilon(folded, (torch.from_numpy(head['kernel'].T),
                                      torch.from_numpy(head['bias'])),
                             to_torch(case.x), torch.from_numpy(case.target), 1e-2)
  with jax.enable_x64(True):
    relevance = lrp.lrp(model.apply, as_dtype(variables, jnp.float64), jnp.asarray(case.x),
                        jnp.asarray(case.target), rules={'*': lrp.epsilon(1e-2)})
    assert rel_err(relevance, from_torch(ref)) < 1e-12


def test_rules_only_touch_matching_layers(case):
  v, x = as_dtype(case.variables, jnp.float32), jnp.asarray(case.x, jnp.float32)
  t, apply = jnp.asarray(case.target), case.model.apply
  # Rules on conv1 and conv2 change nothing above the conv2 tap...
  below = lrp.lrp_layer(apply, v, x, t, tap='conv2',
                        rules={'conv1': lrp.zplus(), 'conv2': lrp.gamma()})
  plain = lrp.lrp_layer(apply, v, x, t, tap='conv2', rules={})
  np.testing.assert_array_equal(below, plain)
  # ...nor the forward pass; `ByKind` tells convolutions from the dense head.
  seen = []
  def spy(kind):
    def rule(linear_fn, x, kernel, bias):
      seen.append((kind, kernel.ndim))
      return linear_fn(x, kernel, bias)
    return rule
  rules = {'conv1': lrp.pass_through(), '*': lrp.ByKind(conv=spy('conv'), dense=spy('dense'))}
  np.testing.assert_array_equal(apply(v, x, rules=rules).logits, apply(v, x).logits)
  assert seen == [('conv', 4), ('conv', 4), ('dense', 2)]


def test_composites_and_named_rules():
  box = lrp.epsilon_gamma_box(-1.0, 1.0, first='stem')
  assert list(box) == ['stem', '*'] and box['stem'].reference
  assert repr(box['*'].conv).startswith('gamma(gamma=0.25')
  assert repr(box['*'].dense).startswith('epsilon(eps=1e-06')
  assert repr(lrp.epsilon_plus()['*'].conv) == 'zplus(stabilizer=1e-06)'
  assert repr(lrp.epsilon_alpha2_beta1()['*'].conv).startswith('alpha_beta(alpha=2.0, beta=1.0')
  assert set(lrp.RULE_NAMES) >= {'epsilon', 'gamma', 'zplus', 'flat', 'wsquare', 'zbox', 'pass'}


@pytest.mark.parametrize('make', [
    lambda: lrp.epsilon(0.0), lambda: lrp.gamma(-0.1), lambda: lrp.alpha_beta(2.0, 0.5),
    lambda: lrp.alpha_beta(-1.0, -2.0), lambda: lrp.zbox(1.0, 0.0),
    lambda: lrp.zbox(np.nan, 1.0), lambda: lrp.zplus(stabilizer=0.0),
    lambda: lrp.zplus(bias='other')])
def test_rule_constructors_reject_bad_parameters(make):
  with pytest.raises(ValueError):
    make()


def with_nan(x):
  x = np.array(x)
  x[0, 3, 4, 1] = np.nan
  return x


@pytest.mark.parametrize('change, message', [
    (lambda c: dict(target=np.array([0, 5, 1])), 'target'),
    (lambda c: dict(x=with_nan(c.x)), 'NaN'),
    (lambda c: dict(score='probability'), 'not linear'),
    (lambda c: dict(score='margin'), 'score'),
    (lambda c: dict(rules='epsilon'), 'mapping'),
    (lambda c: dict(rules={'conv*': 'gama'}), 'gama'),
    (lambda c: dict(rules={'conv*': 3}), 'rules'),
    (lambda c: dict(rules={'conv9': lrp.epsilon()}), 'conv9'),
    (lambda c: dict(rules={'conv*': lrp.epsilon(), 'conv1': lrp.gamma()}), 'conv1'),
    (lambda c: dict(rules={'conv2': lrp.zbox()}), 'model input'),
])
def test_boundary_errors(case, change, message):
  args = dict(x=case.x, target=case.target, rules={'*': 'epsilon'}, score='logit')
  args.update(change(case))
  with pytest.raises(ValueError, match=message):
    lrp.lrp(case.model.apply, as_dtype(case.variables, jnp.float32),
            np.asarray(args['x'], np.float32), args['target'], rules=args['rules'],
            score=args['score'])


def test_layer_and_direct_use_errors(case):
  v, x = as_dtype(case.variables, jnp.float32), jnp.asarray(case.x, jnp.float32)
  with pytest.raises(ValueError, match='tap'):
    lrp.lrp_layer(case.model.apply, v, x, case.target, tap='conv9', rules={})
  with pytest.raises(ValueError, match='lrp'):  # a reference rule outside lrp()
    case.model.apply(v, x, rules={'conv1': lrp.zbox()})
