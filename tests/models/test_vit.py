"""ViT: reference forward (ViT and CLIP options), token layout, configuration errors."""

from __future__ import annotations

import jax
import model_reference as ref
import numpy as np
import pytest
from model_cases import (INPUT_SHAPE, NUM_CLASSES, VIT_KWARGS, assert_outputs_close, full_model,
                         get_case, images, jitter, key)

from lib import models
from lib.models.transformer import quick_gelu

CLIP_OPTIONS = dict(pre_norm=True, activation='quick_gelu', epsilon=1e-5, patch_bias=False)


def reference(variables, x, kwargs):
  options = dict(pre_norm=False, activation='gelu', epsilon=1e-6) | kwargs
  return ref.vit(variables, x, patch_size=kwargs['patch_size'], heads=kwargs['heads'],
                 activation=options['activation'], epsilon=options['epsilon'],
                 pre_norm=options['pre_norm'])


def test_matches_numpy_reference():
  case = get_case('vit')
  assert_outputs_close(case.apply(case.variables, case.x),
                       reference(case.variables, case.x, VIT_KWARGS))


def test_clip_options_match_numpy_reference():
  kwargs = VIT_KWARGS | CLIP_OPTIONS
  model = models.get_model('vit', input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, **kwargs)
  # The tiny ViT's variables, minus the patch bias, plus a pre-norm (saves compiling init).
  params = dict(get_case('vit').variables['params'])
  params['patch_embed'] = {'kernel': params['patch_embed']['kernel']}
  params['pre_norm'] = jitter({'scale': np.ones(16, np.float32), 'bias': np.zeros(16, np.float32)})
  variables = {'params': params, 'batch_stats': {}}
  abstract = jax.eval_shape(model.init, key(0))
  assert jax.tree.structure(abstract) == jax.tree.structure(variables)
  assert jax.tree.map(np.shape, abstract) == jax.tree.map(np.shape, variables)
  assert params['cls_token'].shape == (16,) and params['pos_embed'].shape == (17, 16)
  x = images(2)
  assert_outputs_close(jax.jit(model.apply)(variables, x), reference(variables, x, kwargs))


def test_vit_structure():
  model = full_model('vit')
  assert model.tap_names == ('embed', *(f'block{i}' for i in range(6)), 'features')
  assert model.tap_shapes['embed'] == (65, 192) and model.tap_shapes['features'] == (192,)
  assert model.layer_names[:3] == ('patch_embed', 'block0/attn/q', 'block0/attn/k')
  assert model.layer_names[-3:] == ('block5/mlp/fc1', 'block5/mlp/fc2', 'head')


def test_vit_b16_structure():
  model = full_model('vit_b16')
  assert len(model.tap_names) == 14   # CLIP's 13 hidden states and the pooled features
  assert model.tap_shapes['block11'] == (197, 768)


@pytest.mark.parametrize('input_shape, kwargs, message', [
    ((30, 30, 3), dict(image_size=30), 'patch_size=4 must divide'),
    ((32, 30, 3), dict(image_size=(32, 30)), 'patch_size=4 must divide'),
    ((16, 16, 3), dict(image_size=32), 'built for 32x32 images'),
    ((32, 32, 3), dict(heads=5), 'heads must be a positive divisor'),
    ((32, 32, 3), dict(activation='relu'), 'activation'),
])
def test_bad_configuration_raises(input_shape, kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.get_model('vit', input_shape=input_shape, num_classes=10, **kwargs)


def test_quick_gelu():
  x = np.linspace(-4, 4, 9, dtype=np.float32)
  np.testing.assert_allclose(quick_gelu(x), ref.ACTIVATIONS['quick_gelu'](x), rtol=1e-6)


def test_image_size_defaults_to_input_shape():
  kwargs = {k: v for k, v in VIT_KWARGS.items() if k != 'image_size'}
  model = models.get_model('vit', input_shape=(8, 12, 3), num_classes=None, **kwargs)
  assert model.tap_shapes['embed'] == (2 * 3 + 1, 16)
