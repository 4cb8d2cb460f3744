"""Shared fixtures for the attribution tests: a PyTorch CNN mirrored into our SmallCNN.

`mirror` is a session-wide `Mirror`: a small PyTorch network (float64, evaluation mode) with
the SmallCNN layout, its weights copied into `lib.models.get_model('cnn', ...)`, a batch of
images and targets, and the conversions a Captum reference needs. Captum (PyTorch) is a
test dependency only.

    def test_something(mirror, rel_err):
      ours = saliency(mirror.model.apply, mirror.variables, mirror.x, mirror.target)
      ref = Saliency(mirror.torch_forward('logit')).attribute(
          mirror.to_torch(mirror.x), target=mirror.torch_target, abs=False)
      assert rel_err(ours, mirror.from_torch(ref)) < 1e-4
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from launch.bench_torch import SmallCNN
from lib import models
from tests.synthetic import block_images, small_cnn_twins

INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 5
WIDTHS = (6, 8, 10)
BATCH = 3


class ScoreHead(nn.Module):
  """Wraps a classifier so its per-class output is one of `lib.attribution.scores.SCORES`.

  Captum explains the forward output at `target`, so this turns a score kind into a model.
  """

  def __init__(self, net: nn.Module, kind: str):
    super().__init__()
    self.net, self.kind = net, kind

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    z = self.net(x)
    if self.kind == 'logit':
      return z
    if self.kind == 'probability':
      return torch.softmax(z, dim=-1)
    if self.kind == 'log_probability':
      return torch.log_softmax(z, dim=-1)
    if self.kind == 'logit_difference':
      return z - (z.sum(dim=-1, keepdim=True) - z) / (z.shape[-1] - 1)
    raise ValueError(f'unknown score kind {self.kind!r}')


@dataclasses.dataclass(frozen=True)
class Mirror:
  """One network in both frameworks, with inputs to explain.

  Attributes:
    net: the PyTorch network, float64, evaluation mode.
    model: our `PureModel` with the same layout.
    variables: `net`'s weights in our layout (float32).
    x: [B, H, W, C] float32 images in [0, 1].
    target: [B] int classes (all different, not all the predicted ones).
  """
  net: SmallCNN
  model: models.PureModel
  variables: models.Variables
  x: np.ndarray
  target: np.ndarray

  @property
  def torch_target(self) -> list[int]:
    return [int(t) for t in self.target]

  def torch_forward(self, score: str = 'logit') -> nn.Module:
    """`net` whose outputs are scores of kind `score` (what Captum should explain)."""
    return ScoreHead(self.net, score)

  def torch_layer(self, tap: str) -> nn.Module:
    """The PyTorch module whose output is our tap `tap` ('conv1'...'conv3')."""
    return getattr(self.net, 'relu' + tap.removeprefix('conv'))

  @staticmethod
  def to_torch(a) -> torch.Tensor:
    """NHWC array -> NCHW float64 tensor."""
    return torch.from_numpy(np.asarray(a, np.float64)).permute(0, 3, 1, 2).contiguous()

  @staticmethod
  def from_torch(t: torch.Tensor) -> np.ndarray:
    """NCHW tensor -> NHWC numpy array (2-D and 3-D tensors are returned as they are)."""
    a = t.detach().cpu().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


@pytest.fixture(scope='session')
def mirror() -> Mirror:
  net, model, variables = small_cnn_twins(INPUT_SHAPE, WIDTHS, NUM_CLASSES, torch.float64)
  return Mirror(net, model, variables, images(0), np.array([1, 4, 2]))


def images(seed: int, batch: int = BATCH) -> np.ndarray:
  """[batch, *INPUT_SHAPE] float32 pixels in [0, 1] (`tests.synthetic.block_images`)."""
  return block_images(seed, batch, INPUT_SHAPE)


def relative_error(actual, expected) -> float:
  """||actual - expected||_2 / ||expected||_2 over all elements (float64)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.fixture
def rel_err() -> Callable[..., float]:
  """`relative_error(actual, expected)`: the tolerance measure of the parity tests."""
  return relative_error
