"""Occlusion: parity with Captum's Occlusion, chunking, boundary errors."""

from __future__ import annotations

import numpy as np
import pytest
from captum.attr import Occlusion

from lib.attribution.occlusion import occlusion

TOL = 1e-4


@pytest.mark.parametrize('window, stride, baseline, score', [
    ((4, 4), (2, 2), 0.0, 'logit'),
    ((5, 3), (3, 2), 0.5, 'probability'),   # clipped windows at the bottom border
    ((16, 6), (1, 4), 'per_example', 'log_probability'),
])
def test_matches_captum(mirror, rel_err, window, stride, baseline, score):
  if baseline == 'per_example':
    baseline = (0.5 * mirror.x[:, ::-1]).astype(np.float32)
  ours = occlusion(mirror.model.apply, mirror.variables, mirror.x, mirror.target, score=score,
                   window=window, stride=stride, baseline=baseline)
  channels = mirror.x.shape[-1]
  ref = Occlusion(mirror.torch_forward(score)).attribute(
      mirror.to_torch(mirror.x), sliding_window_shapes=(channels, *window),
      strides=(channels, *stride), target=mirror.torch_target,
      baselines=mirror.to_torch(baseline) if np.ndim(baseline) else baseline)
  assert ours.shape == mirror.x.shape
  assert rel_err(ours, mirror.from_torch(ref)) < TOL


def test_chunking_does_not_change_the_result(mirror):
  args = (mirror.model.apply, mirror.variables, mirror.x, mirror.target)
  full = occlusion(*args, window=6, stride=5, internal_batch_size=None)
  # 9 windows, 3 examples, at most 6 rows per pass: 4 chunks of 2 windows, then 1.
  chunked = occlusion(*args, window=6, stride=5, internal_batch_size=6)
  np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kwargs, message', [
    (dict(window=(4, 4), stride=(5, 2)), 'stride'),
    (dict(window=(17, 4)), 'exceeds the input height'),
    (dict(window=(0, 4)), 'window must be a positive int'),
    (dict(window=(2, 2, 2)), 'window'),
    (dict(baseline=np.zeros((3, 16, 16), np.float32)), 'baseline'),
    (dict(internal_batch_size=-1), 'internal_batch_size'),
    (dict(score='prob'), 'score'),
    (dict(target=np.array([5, 0, 0])), 'target'),
])
def test_bad_inputs(mirror, kwargs, message):
  target = kwargs.pop('target', mirror.target)
  with pytest.raises(ValueError, match=message):
    occlusion(mirror.model.apply, mirror.variables, mirror.x, target, **kwargs)
