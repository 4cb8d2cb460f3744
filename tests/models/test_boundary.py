"""The model boundary beyond image classifiers, and its ValueErrors.

Every bad input a user can hand `get_model` or a built model (wrong types, ranges, shapes,
inputs too small for the network, variables of another model, raw keys, non-finite
perturbations) raises a ValueError naming the argument before anything is traced.
Encoders without a head, pooled features, keys reaching dropout, token and
noisy-image inputs, and user functions through `lib.contract`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_cases import INPUT_SHAPE, VIT_KWARGS, get_case, images, key

from lib import contract, models
from lib.models.inputs import NoisyImages, Tokens
from lib.models.layers import Conv

IMG = dict(input_shape=INPUT_SHAPE, num_classes=5)


@pytest.mark.parametrize('name, kwargs, message', [
    # class counts
    ('cnn', dict(num_classes=2.5), r'num_classes must be an integer; got 2.5'),
    ('cnn', dict(num_classes=True), r'num_classes must be an integer; got True'),
    ('cnn', dict(num_classes='10'), r'num_classes must be an integer'),
    ('cnn', dict(num_classes=1), r'num_classes must be an integer >= 2'),
    ('cnn', dict(num_classes=-3), r'num_classes must be an integer >= 2'),
    # input shapes
    ('cnn', dict(input_shape=(16.0, 16, 3)), r'input_shape\[0\] must be an integer'),
    ('cnn', dict(input_shape=(16, 16, True)), r'input_shape\[2\] must be an integer'),
    ('cnn', dict(input_shape=(16, 16)), r'input_shape must have 3 entries'),
    ('cnn', dict(input_shape=(16, -16, 3)), r'input_shape\[1\] must be an integer >= 1'),
    ('cnn', dict(input_shape='16x16'), r'input_shape must be a non-empty sequence'),
    ('cnn', dict(input_shape=None), r"'cnn' takes images: pass input_shape"),
    ('cnn', dict(input_shape=(2, 2, 3), widths=(4, 8, 8)),
     r"too small for 'cnn': its tap 'conv3' would have the empty shape \(0, 0, 8\)"),
    # options
    ('cnn', dict(widths=(4, -8, 8)), r'widths\[1\] must be an integer >= 1'),
    ('cnn', dict(widths=(4, 0)), r'widths\[1\] must be an integer >= 1'),
    ('cnn', dict(widths=()), r'widths must be a non-empty sequence'),
    ('cnn', dict(widths=8), r'widths must be a non-empty sequence'),
    ('cnn', dict(widths=(4.0, 8)), r'widths\[0\] must be an integer'),
    ('cnn', dict(batch_norm='no'), r"batch_norm must be True or False; got 'no'"),
    ('cnn', dict(batch_norm=1), r'batch_norm must be True or False'),
    ('cnn', dict(width=(4,)), r"'cnn' has no option \['width'\]; valid options: "
                              r"\['batch_norm', 'widths'\]"),
    ('resnet18', dict(widths=(8, 16.5), blocks=(1, 1)), r'widths\[1\] must be an integer'),
    ('resnet18', dict(widths=(8, 16), blocks=(1, True)), r'blocks\[1\] must be an integer'),
    ('resnet18', dict(widths=(8, 16), blocks=(1, -1)), r'must be positive integers'),
    ('wrn28_10', dict(depth=10.0, widen=1), r'depth must be an integer; got 10.0'),
    ('wrn28_10', dict(depth=12, widen=1), r'depth must be 6n \+ 4'),
    ('wrn28_10', dict(depth=10, widen=0), r'widen must be an integer >= 1'),
    ('wrn28_10', dict(depth=10, widen=1.5), r'widen must be an integer'),
    ('vit', VIT_KWARGS | dict(dim=0), r'dim must be an integer >= 1'),
    ('vit', VIT_KWARGS | dict(depth=0), r'depth must be an integer >= 1'),
    ('vit', VIT_KWARGS | dict(heads=0), r'heads must be an integer >= 1'),
    ('vit', VIT_KWARGS | dict(mlp_dim=-4), r'mlp_dim must be an integer >= 1'),
    ('vit', VIT_KWARGS | dict(patch_size=0), r'patch_size must be an integer >= 1'),
    ('vit', VIT_KWARGS | dict(image_size=(16,)), r'image_size must have 2 entries'),
    ('vit', VIT_KWARGS | dict(pre_norm='yes'), r'pre_norm must be True or False'),
    ('vit', VIT_KWARGS | dict(patch_bias=None), r'patch_bias must be True or False'),
    ('vit', VIT_KWARGS | dict(epsilon=-1e-6), r'epsilon must be in \[0.0, None\]'),
    ('vit', VIT_KWARGS | dict(epsilon=float('nan')), r'epsilon must be a finite number'),
    ('vit', VIT_KWARGS | dict(dropout=1.5), r'dropout must be in \[0.0, 1.0\)'),
    ('vit', VIT_KWARGS | dict(attention_dropout='0.1'), r'attention_dropout must be a finite'),
])
def test_bad_get_model_arguments_raise(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.get_model(name, **(IMG | kwargs))


TEXT = dict(input_shape=(6,), num_classes=3, vocab_size=20, dim=8, depth=1, heads=2, mlp_dim=16)


@pytest.mark.parametrize('kwargs, message', [
    (dict(vocab_size=None), r'vocab_size must be an integer'),
    (dict(vocab_size=0), r'vocab_size must be an integer >= 1'),
    (dict(input_shape=(0,)), r'input_shape\[0\] must be an integer >= 1'),
    (dict(input_shape=(6, 6)), r'input_shape must have 1 entries'),
    (dict(input_shape=None), r'input_shape must be a non-empty sequence'),
    (dict(max_len=4), r'takes its max_len from input_shape'),
    (dict(pool='cls'), r"pool='cls' is not valid"),
    (dict(causal='True'), r'causal must be True or False'),
    (dict(norm_first=0), r'norm_first must be True or False'),
])
def test_bad_text_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.get_model('text_transformer', **(TEXT | kwargs))


def test_text_model_needs_vocab_size():
  kwargs = {k: v for k, v in TEXT.items() if k != 'vocab_size'}
  with pytest.raises(ValueError, match=r"needs the option\(s\) \['vocab_size'\]"):
    models.get_model('text_transformer', **kwargs)


# The model boundary.

def test_bad_variables_raise():
  case, other = get_case('cnn'), get_case('cnn_bn')
  with pytest.raises(ValueError, match="variables must be a dict with 'params' and 'batch_stats'"):
    case.model.apply(case.variables['params'], case.x)
  bad = jax.tree.map(lambda a: a, case.variables)
  bad['params']['head']['kernel'] = np.zeros((3, 5), np.float32)
  with pytest.raises(ValueError, match=r"variables 'params/head/kernel' has shape \(3, 5\); "
                                       r"'cnn' expects \(8, 5\)"):
    case.model.apply(bad, case.x)
  with pytest.raises(ValueError, match="variables lack 'params/convs/0/bias'"):
    case.model.apply(other.variables, case.x)
  with pytest.raises(ValueError, match=r"entries 'cnn' does not have: \['batch_stats/x'\]"):
    other.model.apply_train({'params': other.variables['params'],
                             'batch_stats': {**other.variables['batch_stats'], 'x': np.zeros(1)}},
                            case.x)


def test_bad_keys_raise():
  case = get_case('cnn')
  with pytest.raises(ValueError, match='key must be a typed PRNG key'):
    case.model.apply(case.variables, case.x, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r'single key of shape \(\); got shape \(2,\)'):
    case.model.apply_train(case.variables, case.x, key=jax.random.split(key(0)))
  with pytest.raises(ValueError, match='key must be a typed PRNG key'):
    case.model.init(0)


@pytest.mark.parametrize('value', [np.nan, np.inf])
def test_non_finite_perturbation_raises(value):
  case = get_case('cnn')
  delta = {'conv2': np.full((2, 8, 8, 8), value, np.float32)}
  with pytest.raises(ValueError, match=r"perturb\['conv2'\] contains NaN or Inf"):
    case.model.apply(case.variables, case.x, perturb=delta)
  with pytest.raises(ValueError, match=r"perturb\['conv2'\] contains NaN or Inf"):
    case.model.apply_train(case.variables, case.x, perturb=delta)


def test_perturbation_shape_is_checked_under_jit():
  case = get_case('cnn')
  with pytest.raises(ValueError, match=r"perturb\['features'\] must have shape \(2, 8\)"):
    jax.jit(case.model.apply)(case.variables, case.x, perturb={'features': jnp.zeros((8,))})


# Encoders, features, keys.

@pytest.mark.parametrize('num_classes', [None, 0])
def test_headless_encoder(num_classes):
  model = models.get_model('vit', input_shape=INPUT_SHAPE, num_classes=num_classes,
                           **VIT_KWARGS)
  classifier = get_case('vit')
  assert model.num_classes is None and 'head' not in model.abstract_variables['params']
  assert 'head' not in model.layer_names and model.tap_shapes == classifier.model.tap_shapes
  params = {k: v for k, v in classifier.variables['params'].items() if k != 'head'}
  out = jax.jit(model.apply)({'params': params, 'batch_stats': {}}, classifier.x)
  assert out.logits is None and out.features.shape == (2, 16)
  np.testing.assert_allclose(out.features, classifier.apply(classifier.variables,
                                                            classifier.x).features, rtol=1e-6)
  with pytest.raises(ValueError, match='without a head'):
    model.logits_fn()


def test_features_are_the_pooled_tap(case):
  out = case.apply(case.variables, case.x)
  np.testing.assert_array_equal(out.features, out.taps['features'])
  np.testing.assert_allclose(case.model.logits_fn()(case.variables, case.x), out.logits,
                             rtol=1e-5, atol=1e-6)


@pytest.fixture(scope='module')
def text():
  """A tiny text encoder with dropout, its variables, and jitted entry points."""
  model = models.get_model('text_transformer', **(TEXT | dict(dropout=0.2,
                                                              attention_dropout=0.2)))
  variables = model.init(key(0))
  return model, variables, jax.jit(model.apply), jax.jit(model.apply_train)


def tokens(length: int = 6, pad: int = 2) -> dict[str, np.ndarray]:
  ids = np.random.default_rng(0).integers(0, 20, size=(2, length)).astype(np.int32)
  mask = np.ones((2, length), np.int32)
  mask[0, length - pad:] = 0
  return {'input_ids': ids, 'attention_mask': mask}


def test_key_reaches_dropout(text):
  model, variables, apply, apply_train = text
  x = tokens()
  (a, _), (b, _) = apply_train(variables, x, key=key(1)), apply_train(variables, x, key=key(1))
  np.testing.assert_array_equal(a.logits, b.logits)
  c, _ = apply_train(variables, x, key=key(2))
  assert not np.allclose(a.logits, c.logits)
  clean = apply(variables, x)
  assert not np.allclose(a.logits, clean.logits)
  # Evaluation mode: dropout off, with or without a key.
  np.testing.assert_array_equal(apply(variables, x, key=key(3)).logits, clean.logits)
  with pytest.raises(ValueError, match="layer 'embed/dropout' is stochastic.*needs a PRNG key"):
    model.apply_train(variables, x)


@pytest.mark.parametrize('pool', ['first', 'last', 'mean'])
def test_text_padding_does_not_change_features(text, pool):
  model = models.get_model('text_transformer', **(TEXT | dict(pool=pool)))
  variables = text[1]
  x = tokens()
  padded = model.apply(variables, x)
  x['input_ids'][0, 4:] = 7   # other padding ids change nothing
  np.testing.assert_allclose(model.apply(variables, x).features, padded.features, rtol=1e-5)
  short = model.apply(variables, {k: v[:1, :4] for k, v in x.items()})
  np.testing.assert_allclose(short.features[0], padded.features[0], rtol=1e-5, atol=1e-6)
  assert short.taps['embed'].shape == (1, 4, 8)   # shorter sequences, shorter taps


@pytest.mark.parametrize('bad, message', [
    (lambda x: x['input_ids'], r"x must be a dict with keys \['input_ids', 'attention_mask'\]"),
    (lambda x: {'input_ids': x['input_ids']}, r'x must be a dict with keys'),
    (lambda x: {**x, 'input_ids': x['input_ids'] + 20}, r"input_ids'\] must lie in \[0, 20\)"),
    (lambda x: {**x, 'input_ids': x['input_ids'] - 20}, r"input_ids'\] must lie in \[0, 20\)"),
    (lambda x: {**x, 'input_ids': x['input_ids'].astype(np.float32)}, 'integer dtype'),
    (lambda x: {**x, 'attention_mask': x['attention_mask'][:, :4]}, 'shape of input_ids'),
    (lambda x: {**x, 'attention_mask': 2 * x['attention_mask']}, r'only 0 \(padding\) and 1'),
    (lambda x: {**x, 'attention_mask': x['attention_mask'].astype(np.float32)},
     'integer or bool'),
    (lambda x: {k: v[0] for k, v in x.items()}, r"input_ids'\] must have rank 2"),
    (lambda x: {k: np.concatenate([v, v], 1) for k, v in x.items()}, r'1 to max_len=6 tokens'),
])
def test_bad_tokens_raise(text, bad, message):
  model, variables = text[:2]
  with pytest.raises(ValueError, match=message):
    model.apply(variables, bad(tokens()))


def test_text_perturbation_at_embed(text):
  model, variables, apply, _ = text
  x = tokens()
  delta = np.zeros((2, 6, 8), np.float32)
  delta[1, 0] = np.random.default_rng(1).normal(size=8)   # not a shift: LN would remove it
  moved = apply(variables, x, perturb={'embed': delta})
  assert np.abs(moved.logits[1] - apply(variables, x).logits[1]).max() > 1e-4
  with pytest.raises(ValueError, match=r"perturb\['embed'\] must have shape \(2, 4, 8\)"):
    model.apply(variables, {k: v[:, :4] for k, v in x.items()}, perturb={'embed': delta})


# Other input families and user functions.

class ToyDenoiser(nnx.Module):
  """x + t-scaled conv(x): a stand-in for a UNet on noisy images with timesteps."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = Conv(3, 3, 3, name='conv', rngs=rngs)

  def __call__(self, inputs, ctx):
    x, t = inputs['x'], inputs['t']
    y = ctx.tap('conv', self.conv(x, ctx))
    return contract.Outputs(features=x + t.astype(x.dtype)[:, None, None, None] * y)


def test_noisy_image_family():
  model = models.PureModel('toy_denoiser', ToyDenoiser, NoisyImages(INPUT_SHAPE))
  assert model.tap_shapes == {'conv': INPUT_SHAPE} and model.num_classes is None
  assert model.input_shape == INPUT_SHAPE   # the images' shape, not the timesteps'
  variables = model.init(key(0))
  x = {'x': 3 * images(0) - 1, 't': np.array([0, 5], np.int32)}   # noisy: outside [0, 1]
  out = model.apply(variables, x)
  np.testing.assert_allclose(out.features[0], x['x'][0], rtol=1e-6)
  assert out.logits is None
  for bad, message in [({'x': x['x']}, r"keys \['x', 't'\]"),
                       ({**x, 't': np.array([-1, 2], np.int32)}, "'t'\\] must be non-negative"),
                       ({**x, 't': np.array([1.0, np.nan], np.float32)}, 'NaN'),
                       ({**x, 't': np.zeros((3,), np.int32)}, 'share the batch size'),
                       ({**x, 't': np.zeros((2, 1), np.int32)}, "'t'\\] must have rank 1"),
                       ({**x, 'x': x['x'][..., :2]}, 'per-image shape'),
                       ({**x, 'x': np.full_like(x['x'], np.inf)}, 'NaN or Inf')]:
    with pytest.raises(ValueError, match=message):
      model.apply(variables, bad)


def test_token_spec_rejects_bad_sizes():
  with pytest.raises(ValueError, match='vocab_size must be an integer >= 1'):
    Tokens(max_len=4, vocab_size=0)
  with pytest.raises(ValueError, match='max_len must be an integer'):
    Tokens(max_len=4.5, vocab_size=10)


def test_user_tuple_and_keyword_contract():
  case = get_case('cnn')

  def user_apply(params, x):   # a user's pure function: (logits, taps), no keywords
    out = case.model.apply(params, x)
    return out.logits, {'features': out.features}

  out = contract.as_outputs(user_apply(case.variables, case.x))
  assert isinstance(out, contract.Outputs) and out.features is None
  np.testing.assert_allclose(out.logits, case.apply(case.variables, case.x).logits, rtol=1e-5,
                             atol=1e-6)
  contract.require_keywords(case.model.apply, ('key', 'perturb', 'rules'), needed_by='lrp')
  with pytest.raises(ValueError, match=r"lrp calls apply\(params, x, rules=...\)"):
    contract.require_keywords(user_apply, ('rules',), needed_by='lrp')
  with pytest.raises(ValueError, match='takes no keyword'):
    contract.require_keywords(case.model.apply_train, ('rules',), needed_by='lrp')


def test_bad_pure_model_arguments_raise():
  with pytest.raises(ValueError, match='inputs must be an InputSpec'):
    models.PureModel('toy', ToyDenoiser, (16, 16, 3))
  with pytest.raises(ValueError, match='num_classes must be an integer'):
    models.PureModel('toy', ToyDenoiser, NoisyImages(INPUT_SHAPE), num_classes=2.0)
  with pytest.raises(ValueError, match="model name 3 is not valid"):
    models.get_model(3, **IMG)
  with pytest.raises(ValueError, match="num_classes=4 but 'toy' returns no logits"):
    models.PureModel('toy', ToyDenoiser, NoisyImages(INPUT_SHAPE), num_classes=4)
