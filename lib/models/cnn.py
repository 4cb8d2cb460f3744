"""A small convolutional classifier: the workhorse of the `runlocal` configs.

Layout for a 32x32 input and widths (32, 64, 128):
  conv1 3x3 -> ReLU -> [tap 'conv1' 32x32x32] -> maxpool 2
  conv2 3x3 -> ReLU -> [tap 'conv2' 16x16x64] -> maxpool 2
  conv3 3x3 -> ReLU -> [tap 'conv3'  8x8x128] -> global average pool
  -> [tap 'features' 128] -> dense 'head' -> logits
Every conv is followed by batch norm when `batch_norm=True`. `Outputs.features` is the
pooled [B, 128]; with `num_classes=None` there is no head and no logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from lib import validate
from lib.contract import Context, Outputs
from lib.models.head import make_head, pooled_outputs
from lib.models.layers import Conv, ConvBN

Array = jax.Array


def max_pool(x: Array, window: int = 2) -> Array:
  """Non-overlapping max pooling over H and W of an NHWC array [B, H, W, C] -> [B, H/w, W/w, C].

  Trailing rows/columns that do not fill a window are dropped ('VALID'). Written as a reshape
  and a max rather than `lax.reduce_window`: the gradient of a max is then an elementwise
  mask (x == max) that XLA fuses, instead of `select_and_scatter`, which is 2-3x slower on
  XLA:CPU and dominated the backward pass of attribution methods (`launch/bench.py
  --only=attribution`). Exact ties inside a window share the gradient equally
  (PyTorch/reduce_window pick one winner); after a ReLU the only common tie is at zero,
  where the ReLU's own gradient is zero either way.
  """
  validate.check_int(window, 'window', minimum=1)
  b, h, w, c = x.shape
  h, w = h // window * window, w // window * window
  x = x[:, :h, :w].reshape(b, h // window, window, w // window, window, c)
  return x.max(axis=(2, 4))


class SmallCNN(nnx.Module):
  """Conv stages with ReLU and 2x2 max pooling between them, global average pool, dense head.

  Args:
    num_classes: number of logits, or None for no head.
    in_channels: channels of the input images.
    widths: output channels of each conv stage (positive integers).
    batch_norm: whether every conv is followed by batch norm.
    rngs: parameter generators.

  Raises:
    ValueError: widths not a non-empty sequence of positive integers, batch_norm not a bool.
  """

  def __init__(self, *, num_classes: int | None, in_channels: int,
               widths: Sequence[int] = (32, 64, 128), batch_norm: bool = False, rngs: nnx.Rngs):
    validate.check_ints(widths, 'widths', minimum=1)
    validate.check_bool(batch_norm, 'batch_norm')
    layer = ConvBN if batch_norm else Conv
    chans = (in_channels, *widths)
    self.convs = nnx.List([layer(chans[i], chans[i + 1], 3, name=f'conv{i + 1}', rngs=rngs)
                           for i in range(len(widths))])
    self.head = make_head(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: Array, ctx: Context) -> Outputs:
    """[B, H, W, in_channels] images -> Outputs(logits [B, K] or None, features [B, C])."""
    for i, conv in enumerate(self.convs):
      x = ctx.tap(conv.name, jax.nn.relu(conv(x, ctx)))
      if i < len(self.convs) - 1:
        x = max_pool(x)
    return pooled_outputs(self.head, ctx.tap('features', x.mean(axis=(1, 2))), ctx)
