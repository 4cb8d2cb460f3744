"""The model registry: names, errors, default architectures and their parameter counts."""

from __future__ import annotations

import pytest
from model_cases import full_model, param_count

from lib import models


def test_model_names():
  assert set(models.model_names()) >= {'cnn', 'resnet18', 'wrn28_10', 'vit', 'vit_b16'}


def test_unknown_name_lists_valid_ones():
  with pytest.raises(ValueError, match=r"'resnet50' is not valid.*'resnet18'.*'wrn28_10'"):
    models.get_model('resnet50', input_shape=(32, 32, 3), num_classes=10)


@pytest.mark.parametrize('input_shape, num_classes, message', [
    ((32, 32), 10, 'input_shape'), ((32, 0, 3), 10, 'input_shape'),
    ((32, 32, 3), 1, 'num_classes')])
def test_bad_shape_or_classes_raise(input_shape, num_classes, message):
  with pytest.raises(ValueError, match=message):
    models.get_model('resnet18', input_shape=input_shape, num_classes=num_classes)


@pytest.mark.parametrize('name, count', [
    ('resnet18', 11_173_962),   # pytorch-cifar ResNet18, 10 classes
    ('wrn28_10', 36_479_194),   # RobustBench Standard WRN-28-10
    ('vit', 2_693_578),
    ('vit_b16', 85_806_346),    # 86,567,656 with a 1000-class head, as timm's vit_base_patch16_224
])
def test_parameter_counts(name, count):
  assert param_count(full_model(name)) == count



def test_configured_families_take_config_fields_and_reject_others():
  assert {'ddpm_unet', 'bert'} <= set(models.model_names())
  unet = models.get_model('ddpm_unet', input_shape=(8, 8, 3), block_out_channels=(8, 16),
                          down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
                          up_block_types=('AttnUpBlock2D', 'UpBlock2D'), norm_num_groups=4,
                          layers_per_block=1)
  assert unet.input_shape == (8, 8, 3) and unet.num_classes is None
  bert = models.get_model('bert', input_shape=(12,), num_classes=3, hidden_size=16,
                          num_attention_heads=2, intermediate_size=32, num_hidden_layers=1)
  assert bert.num_classes == 3
  with pytest.raises(ValueError, match=r"'bert' has no option \['widths'\]"):
    models.get_model('bert', widths=(1,))
  with pytest.raises(ValueError, match='no classification head'):
    models.get_model('ddpm_unet', num_classes=10)
  with pytest.raises(ValueError, match='must be a BertConfig'):
    models.get_model('bert', config=models.unet.DDPM_CIFAR10)
