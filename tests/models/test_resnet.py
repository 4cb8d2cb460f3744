"""ResNet-18 (CIFAR stem): reference forward of the tiny variant, full-size structure."""

from __future__ import annotations

import model_reference as ref
import pytest
from model_cases import assert_outputs_close, full_model, get_case

from lib import models


def test_matches_numpy_reference():
  case = get_case('resnet18')
  assert_outputs_close(case.apply(case.variables, case.x), ref.resnet(case.variables, case.x))


def test_resnet18_structure():
  model = full_model('resnet18')
  assert model.tap_shapes == {'stem': (32, 32, 64), 'stage1': (32, 32, 64),
                              'stage2': (16, 16, 128), 'stage3': (8, 8, 256),
                              'stage4': (4, 4, 512), 'features': (512,)}
  blocks = [f'stage{s}/block{b}' for s in range(1, 5) for b in range(2)]
  convs = [f'{block}/{conv}' for block in blocks for conv in ('conv1', 'conv2')]
  shortcuts = [f'stage{s}/block0/shortcut' for s in (2, 3, 4)]   # where the shape changes
  assert sorted(model.layer_names) == sorted(['stem', 'head', *convs, *shortcuts])


@pytest.mark.parametrize('kwargs', [dict(widths=(8, 16), blocks=(1,)),
                                    dict(widths=(8, 16), blocks=(1, 0))])
def test_bad_stage_configuration_raises(kwargs):
  with pytest.raises(ValueError, match='widths, blocks and strides'):
    models.get_model('resnet18', input_shape=(16, 16, 3), num_classes=10, **kwargs)
