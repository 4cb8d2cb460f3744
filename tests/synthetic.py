"""Synthetic inputs shared by the test packages."""

import numpy as np


def block_images(seed: int, batch: int, shape: tuple[int, int, int]) -> np.ndarray:
  """[batch, *shape] float32 pixels in [0, 1]: 4x4 blocks of colour plus fine noise.

  The blocks give models structure to respond to (a gradient is not all noise); H and W must
  be multiples of 4.
  """
  rng = np.random.default_rng(seed)
  h, w, c = shape
  blocks = np.repeat(np.repeat(rng.uniform(size=(batch, 4, 4, c)), h // 4, 1), w // 4, 2)
  return (0.7 * blocks + 0.3 * rng.uniform(size=(batch, h, w, c))).astype(np.float32)


def small_cnn_twins(input_shape: tuple[int, int, int], widths: tuple[int, ...], num_classes: int,
                    torch_dtype) -> tuple:
  """(PyTorch SmallCNN in evaluation mode, our 'cnn' model, its variables): one network twice.

  The PyTorch net (`launch.bench_torch.SmallCNN`, seeded with `torch.manual_seed(0)`) is the
  reference of the parity tests; its weights are copied into our model without batch norm.
  """
  import torch  # pylint: disable=g-import-not-at-top  (test dependency)
  from launch.bench_torch import SmallCNN, copy_small_cnn  # pylint: disable=g-import-not-at-top
  from lib import models  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = SmallCNN(input_shape[-1], widths, num_classes).to(torch_dtype).eval()
  model = models.get_model('cnn', input_shape=input_shape, num_classes=num_classes,
                           widths=widths, batch_norm=False)
  return net, model, copy_small_cnn(net, model)
