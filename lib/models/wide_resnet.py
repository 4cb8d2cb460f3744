"""Wide residual network (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

The pre-activation WRN-depth-widen of RobustBench's "Standard" CIFAR-10 model
(`robustbench/model_zoo/architectures/wide_resnet.py`, dropout 0, so none is built):
(depth - 4) / 6 blocks per group, channels 16 / 16k / 32k / 64k for widen factor k,
first-block strides 1/2/2, 3x3 convolutions padded as PyTorch's `padding=1`. For
WRN-28-10 on a 32x32x3 input:

  stem 3x3 conv (no bias, no BN)      [tap 'stem'   32x32x16]
  group1 (4 blocks, stride 1)         [tap 'group1' 32x32x160]
  group2 (4 blocks, stride 2)         [tap 'group2' 16x16x320]
  group3 (4 blocks, stride 2)         [tap 'group3'  8x8x640]
  BN -> ReLU -> global average pool   [tap 'features' 640]
  dense 'head'                        -> logits (none with num_classes=None)

About 36.48M parameters for 10 classes. Group taps are residual sums (before the next
block's BN-ReLU). Layer names: 'stem', 'group1/block0/conv1', 'group1/block0/conv2',
'group1/block0/shortcut', 'head'.

Batch norms sit before convolutions, so they cannot be folded into them: they are
`layers.BatchNorm`, which layer rules (LRP) do not see and the backward pass crosses with
its plain gradient (LRP-0 for an element-wise affine map; see `layers.BatchNorm`).
"""

from __future__ import annotations

import jax
from flax import nnx

from lib import validate
from lib.contract import Context, Outputs
from lib.models.head import make_head, pooled_outputs
from lib.models.layers import BatchNorm, Conv
from lib.models.residual import PAD_3X3, needs_projection, stages

Array = jax.Array


class PreActBlock(nnx.Module):
  """BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 3x3 conv, plus the shortcut.

  [B, H, W, in_features] -> [B, H/stride, W/stride, out_features]. As in RobustBench, a
  projection shortcut (1x1 conv, no bias) reads the pre-activated input BN-ReLU(x); the
  identity shortcut reads x itself.

  Args:
    in_features: input channels.
    out_features: output channels.
    stride: stride of the first convolution and of the projection shortcut.
    name: layer-name prefix ('group2/block0').
    rngs: parameter generators.
  """

  def __init__(self, in_features: int, out_features: int, stride: int, *, name: str,
               rngs: nnx.Rngs):
    self.bn1 = BatchNorm(in_features, rngs=rngs)
    self.conv1 = Conv(in_features, out_features, 3, name=f'{name}/conv1', strides=stride,
                      padding=PAD_3X3, use_bias=False, rngs=rngs)
    self.bn2 = BatchNorm(out_features, rngs=rngs)
    self.conv2 = Conv(out_features, out_features, 3, name=f'{name}/conv2', padding=PAD_3X3,
                      use_bias=False, rngs=rngs)
    self.shortcut = (Conv(in_features, out_features, 1, name=f'{name}/shortcut',
                          strides=stride, use_bias=False, rngs=rngs)
                     if needs_projection(in_features, out_features, stride) else None)

  def __call__(self, x: Array, ctx: Context) -> Array:
    a = jax.nn.relu(self.bn1(x, ctx))
    y = self.conv2(jax.nn.relu(self.bn2(self.conv1(a, ctx), ctx)), ctx)
    return y + (x if self.shortcut is None else self.shortcut(a, ctx))


class WideResNet(nnx.Module):
  """WRN-depth-widen with pre-activation blocks; defaults give WRN-28-10.

  Args:
    num_classes: number of logits, or None for no head.
    in_channels: channels of the input images.
    depth: total depth, 6n + 4 for n blocks per group (10, 16, 22, 28, 34, ...).
    widen: widening factor k (channels 16k / 32k / 64k).
    rngs: parameter generators.

  Raises:
    ValueError: depth not an integer 6n + 4 with n >= 1, or widen not a positive integer.
  """

  def __init__(self, *, num_classes: int | None, in_channels: int, depth: int = 28,
               widen: int = 10, rngs: nnx.Rngs):
    validate.check_int(depth, 'depth')
    if depth < 10 or (depth - 4) % 6:
      raise ValueError(f'depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...); got {depth}.')
    validate.check_int(widen, 'widen', minimum=1)
    widths = (16 * widen, 32 * widen, 64 * widen)
    self.stem = Conv(in_channels, 16, 3, name='stem', padding=PAD_3X3, use_bias=False,
                     rngs=rngs)
    self.groups = stages(PreActBlock, 16, widths, ((depth - 4) // 6,) * 3, (1, 2, 2),
                         prefix='group', rngs=rngs)
    self.bn = BatchNorm(widths[-1], rngs=rngs)
    self.head = make_head(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: Array, ctx: Context) -> Outputs:
    """[B, H, W, in_channels] images -> Outputs(logits [B, K] or None, features [B, C])."""
    x = ctx.tap('stem', self.stem(x, ctx))
    for group in self.groups:
      x = group(x, ctx)
    x = jax.nn.relu(self.bn(x, ctx)).mean(axis=(1, 2))
    return pooled_outputs(self.head, ctx.tap('features', x), ctx)
