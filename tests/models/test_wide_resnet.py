"""WRN-28-10 (pre-activation, RobustBench layout): reference forward, full-size structure."""

from __future__ import annotations

import model_reference as ref
import pytest
from model_cases import assert_outputs_close, full_model, get_case

from lib import models


def test_matches_numpy_reference():
  case = get_case('wrn')
  assert_outputs_close(case.apply(case.variables, case.x),
                       ref.wide_resnet(case.variables, case.x))


def test_wrn28_10_structure():
  model = full_model('wrn28_10')
  assert model.tap_shapes == {'stem': (32, 32, 16), 'group1': (32, 32, 160),
                              'group2': (16, 16, 320), 'group3': (8, 8, 640),
                              'features': (640,)}
  convs = [f'group{g}/block{b}/conv{c}' for g in (1, 2, 3) for b in range(4) for c in (1, 2)]
  shortcuts = [f'group{g}/block0/shortcut' for g in (1, 2, 3)]   # 16 -> 160 needs one too
  # Batch norms come before convolutions and are not layers that rules see.
  assert sorted(model.layer_names) == sorted(['stem', 'head', *convs, *shortcuts])


@pytest.mark.parametrize('kwargs, message', [
    (dict(depth=27), 'depth must be 6n'), (dict(depth=4), 'depth must be 6n'),
    (dict(depth=10, widen=0), 'widen must be')])
def test_bad_depth_or_widen_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.get_model('wrn28_10', input_shape=(16, 16, 3), num_classes=10, **kwargs)
