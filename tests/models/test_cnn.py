"""SmallCNN (with and without batch norm): reference forward, default layout, eager path.

The contract (taps, perturbations, rules, training mode, errors) is in test_contract.py.
"""

from __future__ import annotations

import jax
import model_reference as ref
import numpy as np
import pytest
from model_cases import assert_outputs_close, full_model, get_case, param_count


@pytest.mark.parametrize('name', ['cnn', 'cnn_bn'])
def test_matches_numpy_reference(name):
  case = get_case(name)
  assert_outputs_close(case.apply(case.variables, case.x), ref.small_cnn(case.variables, case.x))


def test_eager_apply_matches_jit():
  case = get_case('cnn_bn')
  eager = case.model.apply(case.variables, case.x)
  np.testing.assert_allclose(eager.logits, case.apply(case.variables, case.x).logits,
                             rtol=1e-5, atol=1e-6)


def test_rule_on_head_doubles_logits():
  case = get_case('cnn_bn')
  double = lambda fn, x, kernel, bias: 2 * fn(x, kernel, bias)
  identity = lambda fn, x, kernel, bias: fn(x, kernel, bias)
  doubled = jax.jit(lambda v, x: case.model.apply(
      v, x, rules={'head': double, '*': identity}).logits)(case.variables, case.x)
  np.testing.assert_allclose(doubled, 2 * case.apply(case.variables, case.x).logits,
                             rtol=1e-5, atol=1e-6)


def test_default_layout():
  model = full_model('cnn')
  assert model.tap_shapes == {'conv1': (32, 32, 32), 'conv2': (16, 16, 64),
                              'conv3': (8, 8, 128), 'features': (128,)}
  assert model.layer_names == ('conv1', 'conv2', 'conv3', 'head')
  assert param_count(model) == 94_538
