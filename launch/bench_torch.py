"""Plain-PyTorch ResNet (CIFAR stem) and its SGD training step: the reference for `launch.bench`.

The architecture mirrors `lib.models.resnet.ResNet` layer for layer: a 3x3 stride-1 stem
conv (no bias) -> BN -> ReLU, no max pool; stages of `BasicBlock`s (two 3x3 conv-BN, ReLU
after the residual sum, a 1x1 conv-BN projection shortcut where the shape changes); global
average pooling; a linear head. Convolutions use Kaiming-normal fan-out initialisation like
the JAX model; BN momentum 0.1 (= Flax 0.9), epsilon 1e-5. No torchvision.

PyTorch is a benchmark/test dependency only; nothing in `lib` imports this file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _conv_bn(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
  conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
  nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
  return nn.Sequential(conv, nn.BatchNorm2d(cout, momentum=0.1, eps=1e-5))


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN with a residual connection; ReLU after the sum."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = _conv_bn(cin, cout, 3, stride)
    self.conv2 = _conv_bn(cout, cout, 3, 1)
    self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.conv2(F.relu(self.conv1(x)))
    return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
  """ResNet of BasicBlocks with the CIFAR stem; defaults give ResNet-18 (11.17M params, 10 classes)."""

  def __init__(self, *, num_classes: int = 10, in_channels: int = 3,
               widths: Sequence[int] = (64, 128, 256, 512), blocks: Sequence[int] = (2, 2, 2, 2)):
    super().__init__()
    self.stem = _conv_bn(in_channels, widths[0], 3, 1)
    layers, cin = [], widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
      for j in range(n):
        layers.append(BasicBlock(cin, w, (1 if i == 0 else 2) if j == 0 else 1))
        cin = w
    self.stages = nn.Sequential(*layers)
    self.head = nn.Linear(widths[-1], num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.stages(F.relu(self.stem(x)))
    return self.head(x.mean(dim=(2, 3)))


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, *, compile_step: bool = False):
  """`step(images NCHW, labels) -> (loss, accuracy)` tensors: one SGD step in train mode.

  Computes what `lib.train.train_step` computes except the global gradient norm.
  """

  def step(images: torch.Tensor, labels: torch.Tensor):
    optimizer.zero_grad(set_to_none=True)
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.detach().argmax(-1) == labels).float().mean()

  if compile_step:
    model.forward = torch.compile(model.forward)  # the optimizer step stays eager
  return step


def param_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
