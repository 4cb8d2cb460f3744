"""Plain-PyTorch mirrors of our models, the references for `launch.bench` and the parity tests.

`SmallCNN` mirrors `lib.models.cnn.SmallCNN` (without batch norm), with `copy_small_cnn` to
copy its weights into ours; `ResNet` and its SGD training step `make_step` mirror
`lib.models.resnet.ResNet`, with `copy_resnet` (and `randomize_batch_norm`, so that evaluation-mode
batch norm is not the identity).

ResNet:
The architecture mirrors `lib.models.resnet.ResNet` layer for layer: a 3x3 stride-1 stem
conv (no bias) -> BN -> ReLU, no max pool; stages of `BasicBlock`s (two 3x3 conv-BN, ReLU
after the residual sum, a 1x1 conv-BN projection shortcut where the shape changes); global
average pooling; a linear head. Convolutions use Kaiming-normal fan-out initialisation like
the JAX model; BN momentum 0.1 (= Flax 0.9), epsilon 1e-5. No torchvision.

PyTorch is a benchmark/test dependency only; nothing in `lib` imports this file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class SmallCNN(nn.Module):
  """The SmallCNN layout in PyTorch: (conv 3x3 'same' -> ReLU [-> maxpool 2]) x3 -> GAP -> fc.

  `relu{i}` outputs are the features our model exposes as tap `conv{i}`.
  """

  def __init__(self, in_channels: int, widths: tuple[int, ...], num_classes: int):
    super().__init__()
    chans = (in_channels, *widths)
    for i in range(len(widths)):
      self.add_module(f'conv{i + 1}', nn.Conv2d(chans[i], chans[i + 1], 3, padding=1))
      self.add_module(f'relu{i + 1}', nn.ReLU())
    self.n_convs = len(widths)
    self.fc = nn.Linear(widths[-1], num_classes)
    # He-normal weights and small random biases: logits that vary clearly with the input
    # (PyTorch's default init gives nearly input-independent logits through the pooling).
    for module in self.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
        nn.init.normal_(module.bias, std=0.1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for i in range(1, self.n_convs + 1):
      x = getattr(self, f'relu{i}')(getattr(self, f'conv{i}')(x))
      if i < self.n_convs:
        x = nn.functional.max_pool2d(x, 2)
    return self.fc(x.mean(dim=(2, 3)))


def _checked(variables: dict, model: Any) -> dict:
  """`variables` if their shapes are `model`'s; else ValueError listing both."""
  expected = jax.tree.map(lambda a: a.shape, jax.eval_shape(model.init, jax.random.key(0)))
  if jax.tree.map(np.shape, variables) != expected:
    raise ValueError(f'model has variables of shapes {expected}; the PyTorch net has '
                     f'{jax.tree.map(np.shape, variables)}.')
  return variables


def copy_small_cnn(net: SmallCNN, model: Any) -> dict:
  """Variables of `model` (a `lib.models` 'cnn' without batch norm) holding `net`'s weights.

  OIHW conv kernels become HWIO, [out, in] dense kernels [in, out].
  """
  as_np = lambda t: np.asarray(t.detach().cpu().numpy(), np.float32)
  convs = {i: {'kernel': as_np(getattr(net, f'conv{i + 1}').weight.permute(2, 3, 1, 0)),
               'bias': as_np(getattr(net, f'conv{i + 1}').bias)} for i in range(net.n_convs)}
  head = {'kernel': as_np(net.fc.weight.T), 'bias': as_np(net.fc.bias)}
  variables = {'params': {'convs': convs, 'head': head}, 'batch_stats': {}}
  return _checked(variables, model)


def torch_device() -> str:
  """'cuda' when JAX runs on a GPU and PyTorch sees one, else 'cpu' (all cores), set up so
  that PyTorch computes what JAX does at 'highest' matmul precision (no TF32)."""
  if jax.default_backend() == 'gpu' and torch.cuda.is_available():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    return 'cuda'
  torch.set_num_threads(os.cpu_count())
  return 'cpu'


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


def copy_resnet(net: ResNet, model: Any) -> dict:
  """Variables of `model` (a `lib.models` 'resnet18') holding `ResNet` `net`'s weights.

  Args:
    net: a `ResNet` of the same widths and blocks.
    model: the `lib.models` ResNet.

  Returns:
    {'params', 'batch_stats'}: OIHW kernels as HWIO, BN scale/bias and running statistics.
  """
  as_np = lambda t: np.asarray(t.detach().cpu().numpy(), np.float32)

  def conv_bn(seq):
    conv, bn = seq
    params = {'conv': {'kernel': as_np(conv.weight.permute(2, 3, 1, 0))},
              'bn': {'scale': as_np(bn.weight), 'bias': as_np(bn.bias)}}
    return params, {'bn': {'mean': as_np(bn.running_mean), 'var': as_np(bn.running_var)}}

  params, stats = {}, {}
  params['stem'], stats['stem'] = conv_bn(net.stem)
  stages, stage_stats, width = [], [], None
  for block in net.stages:  # a stage is a run of blocks of one width
    if block.conv2[0].out_channels != width:
      width = block.conv2[0].out_channels
      stages.append([])
      stage_stats.append([])
    pair = {name: conv_bn(getattr(block, name)) for name in ('conv1', 'conv2', 'shortcut')
            if getattr(block, name) is not None}
    stages[-1].append({k: v[0] for k, v in pair.items()})
    stage_stats[-1].append({k: v[1] for k, v in pair.items()})
  # nnx lists are int-keyed dicts in plain variables.
  params['stages'] = {i: {'blocks': dict(enumerate(b))} for i, b in enumerate(stages)}
  stats['stages'] = {i: {'blocks': dict(enumerate(b))} for i, b in enumerate(stage_stats)}
  params['head'] = {'kernel': as_np(net.head.weight.T), 'bias': as_np(net.head.bias)}
  variables = {'params': params, 'batch_stats': stats}
  return _checked(variables, model)


def randomize_batch_norm(net: nn.Module) -> None:
  """Random BN affine maps and running statistics, so evaluation mode is not the identity."""
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.0)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(1.0, 2.0)


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
