"""ResNet with the CIFAR stem (He et al. 2016, "Deep Residual Learning for Image Recognition").

ResNet-18 as used for CIFAR (e.g. kuangliu/pytorch-cifar): a 3x3 stride-1 stem without
max pooling, four stages of two `BasicBlock`s with widths 64/128/256/512 and first-block
strides 1/2/2/2, global average pooling and a dense head. Every convolution is a `ConvBN`,
so layer rules see batch norm folded into it; 3x3 convolutions pad one pixel on each side,
as PyTorch's `padding=1` (so weights converted from PyTorch give its outputs). For a
32x32x3 input:

  stem 3x3 -> BN -> ReLU       [tap 'stem'   32x32x64]
  stage1 (2 blocks, stride 1)  [tap 'stage1' 32x32x64]
  stage2 (2 blocks, stride 2)  [tap 'stage2' 16x16x128]
  stage3 (2 blocks, stride 2)  [tap 'stage3'  8x8x256]
  stage4 (2 blocks, stride 2)  [tap 'stage4'  4x4x512]
  global average pool          [tap 'features' 512]
  dense 'head'                 -> logits (none with num_classes=None)

About 11.17M parameters for 10 classes. Layer names are path-like: 'stem',
'stage2/block0/conv1', 'stage2/block0/conv2', 'stage2/block0/shortcut', 'head'.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from lib import validate
from lib.contract import Context, Outputs
from lib.models.head import make_head, pooled_outputs
from lib.models.layers import ConvBN
from lib.models.residual import PAD_3X3, needs_projection, stages

Array = jax.Array


class BasicBlock(nnx.Module):
  """Two 3x3 ConvBNs with a residual connection, ReLU after the sum (post-activation).

  [B, H, W, in_features] -> [B, H/stride, W/stride, out_features]. The shortcut is the
  identity, or a 1x1 ConvBN with the block's stride when the shape changes.

  Args:
    in_features: input channels.
    out_features: output channels.
    stride: stride of the first convolution and of the projection shortcut.
    name: layer-name prefix ('stage2/block0').
    rngs: parameter generators.
  """

  def __init__(self, in_features: int, out_features: int, stride: int, *, name: str,
               rngs: nnx.Rngs):
    self.conv1 = ConvBN(in_features, out_features, 3, name=f'{name}/conv1', strides=stride,
                        padding=PAD_3X3, rngs=rngs)
    self.conv2 = ConvBN(out_features, out_features, 3, name=f'{name}/conv2', padding=PAD_3X3,
                        rngs=rngs)
    self.shortcut = (ConvBN(in_features, out_features, 1, name=f'{name}/shortcut',
                            strides=stride, rngs=rngs)
                     if needs_projection(in_features, out_features, stride) else None)

  def __call__(self, x: Array, ctx: Context) -> Array:
    y = self.conv2(jax.nn.relu(self.conv1(x, ctx)), ctx)
    return jax.nn.relu(y + (x if self.shortcut is None else self.shortcut(x, ctx)))


class ResNet(nnx.Module):
  """ResNet of `BasicBlock`s with the CIFAR stem; defaults give ResNet-18.

  Args:
    num_classes: number of logits, or None for no head.
    in_channels: channels of the input images.
    widths: channels of each stage (positive integers).
    blocks: `BasicBlock`s per stage (positive integers, one per stage).
    rngs: parameter generators.

  The first stage keeps the resolution and each later stage halves it, so an input of
  side S gives a last stage of side S / 2**(len(widths) - 1) (rounded up).
  """

  def __init__(self, *, num_classes: int | None, in_channels: int,
               widths: Sequence[int] = (64, 128, 256, 512), blocks: Sequence[int] = (2, 2, 2, 2),
               rngs: nnx.Rngs):
    validate.check_ints(widths, 'widths', minimum=1)
    strides = (1,) + (2,) * (len(widths) - 1)
    self.stem = ConvBN(in_channels, widths[0], 3, name='stem', padding=PAD_3X3, rngs=rngs)
    self.stages = stages(BasicBlock, widths[0], widths, blocks, strides, prefix='stage',
                         rngs=rngs)
    self.head = make_head(widths[-1], num_classes, rngs=rngs)

  def __call__(self, x: Array, ctx: Context) -> Outputs:
    """[B, H, W, in_channels] images -> Outputs(logits [B, K] or None, features [B, C])."""
    x = ctx.tap('stem', jax.nn.relu(self.stem(x, ctx)))
    for stage in self.stages:
      x = stage(x, ctx)
    return pooled_outputs(self.head, ctx.tap('features', x.mean(axis=(1, 2))), ctx)
