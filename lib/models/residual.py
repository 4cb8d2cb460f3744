"""Stages of residual blocks, shared by `resnet.ResNet` and `wide_resnet.WideResNet`.

A stage is `n` blocks of one width; its first block takes the stage's stride and the
previous stage's width and carries a 1x1 projection shortcut when either changes
(He et al. 2016, "Deep Residual Learning for Image Recognition", option B). The stage's
output is recorded as a tap named after the stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

from lib import validate
from lib.contract import Context

Array = jax.Array
# Padding of every 3x3 convolution: PyTorch's `padding=1`. For stride 2 on an even side,
# 'SAME' would pad (0, 1) instead of (1, 1) and sample a shifted grid, so weights converted
# from PyTorch (RobustBench, pytorch-cifar) would give different outputs.
PAD_3X3 = ((1, 1), (1, 1))
# block(in_features, out_features, stride, *, name, rngs) -> module with __call__(x, ctx).
BlockFn = Callable[..., nnx.Module]


def needs_projection(in_features: int, out_features: int, stride: int) -> bool:
  """Whether a block's identity shortcut must become a 1x1 projection (shape changes)."""
  return stride != 1 or in_features != out_features


class Stage(nnx.Module):
  """`num_blocks` residual blocks; [B, H, W, in_features] -> [B, H/stride, W/stride, out_features].

  Args:
    block: block constructor, `block(in_features, out_features, stride, *, name, rngs)`.
    num_blocks: blocks in the stage (at least 1).
    in_features: channels entering the stage.
    out_features: channels of every block in the stage.
    stride: stride of the first block (the others use 1).
    name: tap name of the stage's output and prefix of its layers ('stage2' gives layers
      'stage2/block0/...', 'stage2/block1/...').
    rngs: parameter generators.
  """

  def __init__(self, block: BlockFn, num_blocks: int, in_features: int, out_features: int,
               stride: int, *, name: str, rngs: nnx.Rngs):
    self.blocks = nnx.List([
        block(in_features if j == 0 else out_features, out_features, stride if j == 0 else 1,
              name=f'{name}/block{j}', rngs=rngs) for j in range(num_blocks)])
    self.name = name

  def __call__(self, x: Array, ctx: Context) -> Array:
    for block in self.blocks:
      x = block(x, ctx)
    return ctx.tap(self.name, x)


def stages(block: BlockFn, in_features: int, widths: Sequence[int], blocks: Sequence[int],
           strides: Sequence[int], *, prefix: str, rngs: nnx.Rngs) -> nnx.List:
  """Consecutive stages named `{prefix}1`, `{prefix}2`, ...

  Args:
    block: block constructor (see `Stage`).
    in_features: channels entering the first stage.
    widths: output channels of each stage.
    blocks: number of blocks of each stage.
    strides: first-block stride of each stage.
    prefix: stage name prefix ('stage' or 'group').
    rngs: parameter generators.

  Raises:
    ValueError: lengths differ, or a width, block count or stride is below 1.
  """
  for values, what in ((widths, 'widths'), (blocks, 'blocks'), (strides, 'strides')):
    validate.check_ints(values, what)
  if not len(widths) == len(blocks) == len(strides):
    raise ValueError(f'widths, blocks and strides must have one entry per stage; got '
                     f'{tuple(widths)}, {tuple(blocks)}, {tuple(strides)}.')
  if min((*widths, *blocks, *strides), default=0) < 1:
    raise ValueError(f'widths, blocks and strides must be positive integers; got '
                     f'{tuple(widths)}, {tuple(blocks)}, {tuple(strides)}.')
  chans = (in_features, *widths)
  return nnx.List([
      Stage(block, n, chans[i], chans[i + 1], s, name=f'{prefix}{i + 1}', rngs=rngs)
      for i, (n, s) in enumerate(zip(blocks, strides))])
