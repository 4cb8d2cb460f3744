"""Layers every model is built from; each routes its linear op through `Context.linear`.

Routing through the context is what lets a caller swap how a layer is applied (LRP rules)
by layer name without the model knowing about attribution. `ConvBN` folds its batch norm
into the convolution when a rule applies, as LRP requires (Montavon et al. 2019, §10.3).
The stand-alone `BatchNorm` of pre-activation blocks is the one layer rules do not see
(an element-wise affine map; see its docstring). `dropout` is the one stochastic layer: it
takes its key from `ctx.rng(name)` and is active only in training mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lib import validate
from lib.contract import Context
from lib.contract import dense as dense_op
from lib.models.conv import conv2d

Array = jax.Array


def conv_op(x: Array, kernel: Array, bias: Array | None, *, strides: int = 1,
            padding: str | tuple = 'SAME') -> Array:
  """NHWC convolution with an HWIO kernel, plus bias, via `conv.conv2d` (fast gradients)."""
  y = conv2d(x, kernel, strides=strides, padding=padding)
  return y if bias is None else y + bias


def _check_sizes(**sizes: int) -> None:
  """Raises ValueError unless every size (features, kernel size, stride) is an integer >= 1."""
  for name, value in sizes.items():
    validate.check_int(value, name, minimum=1)


def _check_norm(momentum: float, epsilon: float) -> None:
  """Raises ValueError unless batch norm's momentum is in [0, 1] and epsilon >= 0."""
  validate.check_number(momentum, 'momentum', low=0.0, high=1.0)
  validate.check_number(epsilon, 'epsilon', low=0.0)


class Conv(nnx.Module):
  """2-D convolution (NHWC, HWIO kernel), optionally without bias."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, name: str,
               rngs: nnx.Rngs, strides: int = 1, padding: str | tuple = 'SAME',
               use_bias: bool = True):
    _check_sizes(in_features=in_features, out_features=out_features, kernel_size=kernel_size,
                 strides=strides)
    validate.check_bool(use_bias, 'use_bias')
    init = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')
    self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
    self.name, self.strides, self.padding = name, strides, padding

  def op(self, x: Array, kernel: Array, bias: Array | None) -> Array:
    return conv_op(x, kernel, bias, strides=self.strides, padding=self.padding)

  def __call__(self, x: Array, ctx: Context) -> Array:
    bias = None if self.bias is None else self.bias[...]
    return ctx.linear(self.name, self.op, x, self.kernel[...], bias)


class Dense(nnx.Module):
  """Fully connected layer over the last axis."""

  def __init__(self, in_features: int, out_features: int, *, name: str, rngs: nnx.Rngs,
               use_bias: bool = True, kernel_init=None):
    _check_sizes(in_features=in_features, out_features=out_features)
    validate.check_bool(use_bias, 'use_bias')
    init = kernel_init or nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
    self.name = name

  def __call__(self, x: Array, ctx: Context) -> Array:
    bias = None if self.bias is None else self.bias[...]
    return ctx.linear(self.name, dense_op, x, self.kernel[...], bias)


class ConvBN(nnx.Module):
  """Convolution (no bias) followed by batch norm.

  In training mode the batch norm normalises with batch statistics and updates its running
  averages; in evaluation mode it uses the running averages. When `ctx` has a rule for this
  layer, the (evaluation-mode) batch norm is folded into the kernel and bias first, so the
  rule sees one linear layer.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, name: str,
               rngs: nnx.Rngs, strides: int = 1, padding: str | tuple = 'SAME',
               momentum: float = 0.9, epsilon: float = 1e-5):
    _check_norm(momentum, epsilon)
    self.conv = Conv(in_features, out_features, kernel_size, name=name, rngs=rngs,
                     strides=strides, padding=padding, use_bias=False)
    self.bn = nnx.BatchNorm(out_features, momentum=momentum, epsilon=epsilon, rngs=rngs)
    self.name = name

  def __call__(self, x: Array, ctx: Context) -> Array:
    if ctx.train:
      return self.bn(self.conv.op(x, self.conv.kernel[...], None), use_running_average=False)
    scale = self.bn.scale[...] * jax.lax.rsqrt(self.bn.var[...] + self.bn.epsilon)
    kernel = self.conv.kernel[...] * scale
    bias = self.bn.bias[...] - self.bn.mean[...] * scale
    return ctx.linear(self.name, self.conv.op, x, kernel, bias)


class BatchNorm(nnx.BatchNorm):
  """Stand-alone batch norm over the last axis, for pre-activation blocks (BN -> ReLU -> conv).

  There the batch norm precedes a non-linearity, so it cannot be folded into a convolution
  as `ConvBN` does. In training mode it normalises with batch statistics and updates its
  running averages; in evaluation mode it uses the running averages.

  It is not routed through `Context.linear`, so layer rules (LRP) never see it: in
  evaluation mode it is the element-wise affine map `x * s + t` (`s = scale / sqrt(var +
  eps)`, `t = bias - mean * s`), which the backward pass crosses with its plain gradient.
  For such a map the plain gradient is LRP-0: input relevance `x * s / (x * s + t)` times
  output relevance, the share of the shift `t` being absorbed.

  Args:
    num_features: C, the size of the last axis.
    rngs: the model's generators (batch norm's initialisation draws none).
    momentum: running-average decay (0.9 = PyTorch's momentum 0.1).
    epsilon: added to the variance.
  """

  def __init__(self, num_features: int, *, rngs: nnx.Rngs, momentum: float = 0.9,
               epsilon: float = 1e-5):
    _check_sizes(num_features=num_features)
    _check_norm(momentum, epsilon)
    super().__init__(num_features, momentum=momentum, epsilon=epsilon, rngs=rngs)

  def __call__(self, x: Array, ctx: Context) -> Array:
    """[..., C] -> [..., C], with batch or running statistics as `ctx.train` says."""
    return super().__call__(x, use_running_average=not ctx.train)


def dropout(x: Array, rate: float, ctx: Context, name: str) -> Array:
  """Inverted dropout: in training mode zeroes each entry with probability `rate` and scales
  the rest by 1 / (1 - rate); the identity in evaluation mode or for rate 0.

  Args:
    x: any array.
    rate: drop probability in [0, 1).
    ctx: the call's context; its key (via `ctx.rng(name)`) draws the mask.
    name: the layer's name ('block3/attn/dropout'); distinct layers draw distinct masks.

  Raises:
    ValueError: training mode, rate > 0 and the call got no key.
  """
  if not ctx.train or rate == 0:
    return x
  keep = jax.random.bernoulli(ctx.rng(name), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
