"""Shared fixtures for the attack tests: a small CNN in JAX and its PyTorch twin.

`twin` is a session-wide `Twin`: `launch.bench_torch.SmallCNN` (float32, evaluation mode)
with its weights copied into `lib.models.get_model('cnn', ...)`, and a batch of images in
[0, 1] with labels (the twin's predictions on half of them, other classes on the rest, so
both correctly and wrongly classified points occur). torchattacks runs on `twin.net`.

    def test_something(twin):
      ours = pgd(twin.apply, twin.variables, twin.x, twin.y, eps=8 / 255, ...)
      ref = torchattacks.PGD(twin.net, eps=8 / 255, ...)(twin.to_torch(twin.x), twin.torch_y)
      np.testing.assert_allclose(ours, twin.from_torch(ref), atol=1e-5)
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch

from launch.bench_torch import SmallCNN
from lib import models
from tests.synthetic import block_images, small_cnn_twins

INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 5
WIDTHS = (6, 8, 10)
BATCH = 8


@dataclasses.dataclass(frozen=True)
class Twin:
  """One classifier in both frameworks, with a batch to attack.

  Attributes:
    net: the PyTorch network, float32, evaluation mode.
    model: our `PureModel` with the same layout and weights.
    variables: `net`'s weights in our layout.
    x: [B, H, W, C] float32 images in [0, 1].
    y: [B] int32 labels.
  """
  net: SmallCNN
  model: models.PureModel
  variables: models.Variables
  x: np.ndarray
  y: np.ndarray

  @property
  def apply(self):
    """The model's `apply` (one object: compiled programs are shared across tests)."""
    return self.model.apply

  @property
  def torch_y(self) -> torch.Tensor:
    return torch.from_numpy(self.y.astype(np.int64))

  @staticmethod
  def to_torch(a) -> torch.Tensor:
    """NHWC array -> NCHW float32 tensor."""
    return torch.from_numpy(np.asarray(a, np.float32)).permute(0, 3, 1, 2).contiguous()

  @staticmethod
  def from_torch(t: torch.Tensor) -> np.ndarray:
    """NCHW tensor -> NHWC numpy array."""
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def images(seed: int, batch: int = BATCH) -> np.ndarray:
  """[batch, *INPUT_SHAPE] float32 pixels in [0, 1] (`tests.synthetic.block_images`)."""
  return block_images(seed, batch, INPUT_SHAPE)


@pytest.fixture(scope='session')
def twin() -> Twin:
  net, model, variables = small_cnn_twins(INPUT_SHAPE, WIDTHS, NUM_CLASSES, torch.float32)
  x = images(0)
  pred = np.asarray(jax.jit(model.apply)(variables, x).logits.argmax(-1))
  y = np.where(np.arange(BATCH) % 2 == 0, pred, (pred + 1) % NUM_CLASSES).astype(np.int32)
  return Twin(net, model, variables, x, y)
