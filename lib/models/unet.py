"""The diffusion UNet of diffusers' `UNet2DModel` (Ho et al. 2020, "Denoising Diffusion
Probabilistic Models"), in NHWC, configured by `lib.models.unet_config.UNetConfig`.

For `config = DDPM_CIFAR10` (google/ddpm-cifar10-32) and a 32x32x3 input:

  inputs {'x': [B, 32, 32, 3] noisy images in [-1, 1], 't': [B] int or float timesteps}
  sinusoidal features of t -> 'time_embedding' MLP (linear, SiLU, linear)   [B, 512]
  'conv_in' 3x3                                                    [B, 32, 32, 128]
  down0..down3: ResNet blocks (+ attention in AttnDownBlock2D), then a stride-2 conv
                                    [taps 'down0' 16x16x128 .. 'down3' 4x4x256]
  mid: ResNet, attention, ResNet                                   [tap 'mid' 4x4x256]
  up0..up3: each ResNet block takes the last unused skip feature concatenated on the
            channel axis (+ attention in AttnUpBlock2D), then nearest x2 and a 3x3 conv
                                    [taps 'up0' 8x8x256 .. 'up3' 32x32x128]
  GroupNorm, SiLU, 'conv_out' 3x3               -> Outputs.features [B, 32, 32, 3]

**Outputs.** A denoiser has no classes: `Outputs(logits=None, taps, features=eps)`, with
`features` the network's prediction [B, H, W, out_channels] (the noise epsilon for an
epsilon model such as DDPM's). Tap 'down{i}' is down block i's output (after its
downsampling conv; a perturbation there also reaches the skip connection that carries the
same tensor), 'mid' the middle block's, 'up{i}' up block i's (after its upsampling).

**Layer names** (what `rules` patterns match; each conv and dense goes through
`Context.linear`): 'conv_in', 'time_embedding/linear_1', 'time_embedding/linear_2',
'down1/resnet0/conv1', 'down1/resnet0/time_emb_proj', 'down1/resnet0/conv2',
'down1/resnet0/conv_shortcut', 'down1/attn0/to_q' (to_k, to_v, to_out), 'down0/downsample',
'mid/resnet1/conv1', 'mid/attn0/to_q', 'up2/upsample', 'conv_out'. GroupNorm, the
attention's softmax and the time features are not linear layers: rules do not see them.

Parameters follow the diffusers module tree ('params/down_blocks/1/attentions/0/to_q/
kernel' for `down_blocks.1.attentions.0.to_q.weight`; `downsamplers.0.conv` is
'downsample', `upsamplers.0.conv` 'upsample', `to_out.0` 'to_out'), so
`lib.models.unet_weights` loads a diffusers checkpoint with a plain name map. Dropout
(config.dropout, inside ResNet blocks) is active in `apply_train` only.

Initialisation (for training from scratch; parity tests load weights): the project's
`Conv`/`Dense` defaults, GroupNorm scale 1 and bias 0. Matrix products run in the process's
precision: `jax.default_matmul_precision('highest')` for float32 parity on a GPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lib.contract import Context, Outputs
from lib.models.core import PureModel
from lib.models.inputs import NoisyImages
from lib.models.layers import Conv, Dense, dropout
from lib.models.residual import PAD_3X3
from lib.models.unet_config import DDPM_CIFAR10, UNetConfig

Array = jax.Array

__all__ = ['DDPM_CIFAR10', 'UNet', 'UNetConfig', 'timestep_features', 'unet_model']


def timestep_features(t: Array, dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                      max_period: float = 10000.0) -> Array:
  """Sinusoidal timestep features (diffusers' `get_timestep_embedding`, DDPM's embedding).

  The frequencies are constants computed on the host as diffusers computes them (float32
  product and quotient; the exponential correctly rounded to float32): XLA:CPU may turn the
  division into a multiplication by the reciprocal, and at t ~ 1000 a one-ulp change of a
  frequency moves a feature by ~1e-5.

  Args:
    t: [B] integer or float timesteps.
    dim: feature width D (an odd D gets a zero last column).
    flip_sin_to_cos: [cos, sin] order if True, else [sin, cos].
    freq_shift: frequencies are exp(-ln(max_period) * i / (D // 2 - freq_shift)), i < D // 2.
    max_period: the longest period.

  Returns:
    [B, D] float32 features.
  """
  half = dim // 2
  exponent = (np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
              / np.float32(half - freq_shift))
  freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class GroupNorm(nnx.Module):
  """GroupNorm over the channel (last) axis, statistics per example and group (two-pass).

  Mirrors `torch.nn.GroupNorm(groups, channels, eps, affine=True)`. Not a linear layer of
  the contract (it normalises per example), so rules do not see it.

  Args:
    channels: C.
    groups: G, dividing C.
    eps: added to the variance.
  """

  def __init__(self, channels: int, groups: int, eps: float):
    self.scale = nnx.Param(jnp.ones((channels,)))
    self.bias = nnx.Param(jnp.zeros((channels,)))
    self.groups, self.eps = groups, eps

  def __call__(self, x: Array) -> Array:
    """[B, ..., C] -> [B, ..., C]."""
    c = x.shape[-1]
    g = x.reshape(x.shape[0], -1, self.groups, c // self.groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(g - mean).mean(axis=(1, 3), keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + self.eps)
    return g.reshape(x.shape) * self.scale[...] + self.bias[...]


class ResnetBlock(nnx.Module):
  """diffusers' `ResnetBlock2D`: [B, H, W, in_ch] x temb [B, T] -> [B, H, W, out_ch].

  h = conv1(SiLU(norm1(x))); the time embedding enters as
  'default':     h = norm2(h + proj(SiLU(temb)))
  'scale_shift': h = norm2(h) * (1 + scale) + shift, (scale, shift) = proj(SiLU(temb));
  then h = conv2(dropout(SiLU(h))) and out = (shortcut(x) + h) / output_scale_factor, the
  shortcut a 1x1 conv when the channels change.

  Args:
    in_ch: input channels.
    out_ch: output channels.
    config: the UNet's config (groups, eps, time scale-shift, dropout, embedding width).
    name: layer-name prefix ('down1/resnet0').
    rngs: parameter generators.
    output_scale_factor: divides the residual sum (the middle block's factor).
  """

  def __init__(self, in_ch: int, out_ch: int, config: UNetConfig, *, name: str,
               rngs: nnx.Rngs, output_scale_factor: float = 1.0):
    groups, eps = config.norm_num_groups, config.norm_eps
    self.scale_shift = config.resnet_time_scale_shift == 'scale_shift'
    self.norm1 = GroupNorm(in_ch, groups, eps)
    self.conv1 = Conv(in_ch, out_ch, 3, name=f'{name}/conv1', padding=PAD_3X3, rngs=rngs)
    self.time_emb_proj = Dense(config.temb_dim, out_ch * (2 if self.scale_shift else 1),
                               name=f'{name}/time_emb_proj', rngs=rngs)
    self.norm2 = GroupNorm(out_ch, groups, eps)
    self.conv2 = Conv(out_ch, out_ch, 3, name=f'{name}/conv2', padding=PAD_3X3, rngs=rngs)
    self.conv_shortcut = (Conv(in_ch, out_ch, 1, name=f'{name}/conv_shortcut', padding='VALID',
                               rngs=rngs) if in_ch != out_ch else None)
    self.name, self.dropout, self.output_scale_factor = name, config.dropout, output_scale_factor

  def __call__(self, x: Array, temb: Array, ctx: Context) -> Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)), ctx)
    t = self.time_emb_proj(jax.nn.silu(temb), ctx)[:, None, None, :]
    if self.scale_shift:
      scale, shift = jnp.split(t, 2, axis=-1)
      h = self.norm2(h) * (1 + scale) + shift
    else:
      h = self.norm2(h + t)
    h = dropout(jax.nn.silu(h), self.dropout, ctx, f'{self.name}/dropout')
    h = self.conv2(h, ctx)
    skip = x if self.conv_shortcut is None else self.conv_shortcut(x, ctx)
    return (skip + h) / self.output_scale_factor


class Attention(nnx.Module):
  """diffusers' spatial self-attention (`Attention` with `AttnProcessor2_0`, as the UNet
  blocks build it): [B, H, W, C] -> [B, H, W, C].

  Tokens are the H*W positions: optional GroupNorm, q/k/v dense layers to heads * d
  channels (heads = C // d), softmax(q k^T / sqrt(d)) v per head with the softmax in
  float32, 'to_out' back to C, plus the input, divided by `rescale_output_factor`.

  Args:
    channels: C.
    head_dim: d, channels per head (heads = C // d).
    groups: GroupNorm groups, or None for no GroupNorm (the middle block with
      'scale_shift').
    eps: GroupNorm epsilon.
    name: layer-name prefix ('mid/attn0').
    rngs: parameter generators.
    rescale_output_factor: divides the residual sum.
  """

  def __init__(self, channels: int, head_dim: int, groups: int | None, eps: float, *,
               name: str, rngs: nnx.Rngs, rescale_output_factor: float = 1.0):
    self.heads, self.head_dim = channels // head_dim, head_dim
    inner = self.heads * head_dim
    self.group_norm = None if groups is None else GroupNorm(channels, groups, eps)
    self.to_q = Dense(channels, inner, name=f'{name}/to_q', rngs=rngs)
    self.to_k = Dense(channels, inner, name=f'{name}/to_k', rngs=rngs)
    self.to_v = Dense(channels, inner, name=f'{name}/to_v', rngs=rngs)
    self.to_out = Dense(inner, channels, name=f'{name}/to_out', rngs=rngs)
    self.rescale_output_factor = rescale_output_factor

  def __call__(self, x: Array, ctx: Context) -> Array:
    b, h, w, c = x.shape
    y = (x if self.group_norm is None else self.group_norm(x)).reshape(b, h * w, c)
    split = lambda z: z.reshape(b, h * w, self.heads, self.head_dim)
    q, k, v = (split(layer(y, ctx)) for layer in (self.to_q, self.to_k, self.to_v))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) / math.sqrt(self.head_dim)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    y = jnp.einsum('bhqk,bkhd->bqhd', probs, v).reshape(b, h * w, self.heads * self.head_dim)
    y = self.to_out(y, ctx).reshape(b, h, w, c)
    return (y + x) / self.rescale_output_factor


def _upsample_nearest(x: Array) -> Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], each pixel repeated 2x2 (`F.interpolate`, 'nearest')."""
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def _head_dim(config: UNetConfig, channels: int) -> int:
  """Channels per attention head: `attention_head_dim`, or all channels if None."""
  return config.attention_head_dim or channels


class DownBlock(nnx.Module):
  """diffusers' `DownBlock2D` / `AttnDownBlock2D`: [B, H, W, in_ch] -> [B, H/2, W/2, out_ch].

  `layers_per_block` ResNet blocks (each followed by attention when `attention`), then,
  unless it is the last level, the stride-2 3x3 conv 'down{i}/downsample' with diffusers'
  padding. Every ResNet (or attention) output and the downsampled output are skips.

  Args:
    index: level i (names 'down{i}/...').
    in_ch: input channels.
    out_ch: channels of the level.
    config: the UNet's config.
    attention: AttnDownBlock2D (True) or DownBlock2D.
    downsample: whether the level ends with the downsampling conv.
    rngs: parameter generators.
  """

  def __init__(self, index: int, in_ch: int, out_ch: int, config: UNetConfig, *,
               attention: bool, downsample: bool, rngs: nnx.Rngs):
    name, n = f'down{index}', config.layers_per_block
    self.resnets = nnx.List([
        ResnetBlock(in_ch if j == 0 else out_ch, out_ch, config, name=f'{name}/resnet{j}',
                    rngs=rngs) for j in range(n)])
    self.attentions = nnx.List([
        Attention(out_ch, _head_dim(config, out_ch), config.norm_num_groups, config.norm_eps,
                  name=f'{name}/attn{j}', rngs=rngs) for j in range(n if attention else 0)])
    p = config.downsample_padding
    pads = ((p, p), (p, p)) if p else ((0, 1), (0, 1))
    self.downsample = (Conv(out_ch, out_ch, 3, name=f'{name}/downsample', strides=2,
                            padding=pads, rngs=rngs) if downsample else None)

  def __call__(self, x: Array, temb: Array, ctx: Context) -> tuple[Array, list[Array]]:
    """-> (output, skips), the output also the last skip."""
    skips = []
    for j, resnet in enumerate(self.resnets):
      x = resnet(x, temb, ctx)
      x = self.attentions[j](x, ctx) if self.attentions else x
      skips.append(x)
    if self.downsample is not None:
      x = self.downsample(x, ctx)
      skips.append(x)
    return x, skips


class MidBlock(nnx.Module):
  """diffusers' `UNetMidBlock2D` (one layer): ResNet, attention (if any), ResNet.

  Args:
    channels: C, in and out.
    config: the UNet's config (`mid_block_scale_factor` divides every residual sum; the
      attention's GroupNorm follows `config.mid_attention_groups`).
    rngs: parameter generators.
  """

  def __init__(self, channels: int, config: UNetConfig, *, rngs: nnx.Rngs):
    factor = config.mid_block_scale_factor
    self.resnets = nnx.List([
        ResnetBlock(channels, channels, config, name=f'mid/resnet{j}', rngs=rngs,
                    output_scale_factor=factor) for j in range(2)])
    self.attentions = nnx.List([
        Attention(channels, _head_dim(config, channels), config.mid_attention_groups,
                  config.norm_eps, name='mid/attn0', rngs=rngs, rescale_output_factor=factor)
        for _ in range(1 if config.add_attention else 0)])

  def __call__(self, x: Array, temb: Array, ctx: Context) -> Array:
    x = self.resnets[0](x, temb, ctx)
    x = self.attentions[0](x, ctx) if self.attentions else x
    return self.resnets[1](x, temb, ctx)


class UpBlock(nnx.Module):
  """diffusers' `UpBlock2D` / `AttnUpBlock2D`: [B, H, W, in_ch] -> [B, 2H, 2W, out_ch].

  `layers_per_block + 1` ResNet blocks, block j taking [x, skips[j]] concatenated on the
  channel axis (x first, as `torch.cat([hidden, res_hidden], dim=1)`), each followed by
  attention when `attention`; then, unless it is the last level, nearest x2 and the 3x3
  conv 'up{i}/upsample'.

  Args:
    index: level i (names 'up{i}/...').
    in_ch: channels of the incoming features.
    skip_channels: channels of the skips block j consumes, in the order consumed.
    out_ch: channels of the level.
    config: the UNet's config.
    attention: AttnUpBlock2D (True) or UpBlock2D.
    upsample: whether the level ends with upsampling.
    rngs: parameter generators.
  """

  def __init__(self, index: int, in_ch: int, skip_channels: list[int], out_ch: int,
               config: UNetConfig, *, attention: bool, upsample: bool, rngs: nnx.Rngs):
    name = f'up{index}'
    self.resnets = nnx.List([
        ResnetBlock((in_ch if j == 0 else out_ch) + s, out_ch, config, name=f'{name}/resnet{j}',
                    rngs=rngs) for j, s in enumerate(skip_channels)])
    self.attentions = nnx.List([
        Attention(out_ch, _head_dim(config, out_ch), config.norm_num_groups, config.norm_eps,
                  name=f'{name}/attn{j}', rngs=rngs)
        for j in range(len(skip_channels) if attention else 0)])
    self.upsample = (Conv(out_ch, out_ch, 3, name=f'{name}/upsample', padding=PAD_3X3,
                          rngs=rngs) if upsample else None)

  def __call__(self, x: Array, skips: list[Array], temb: Array, ctx: Context) -> Array:
    for j, resnet in enumerate(self.resnets):
      x = resnet(jnp.concatenate([x, skips[j]], axis=-1), temb, ctx)
      x = self.attentions[j](x, ctx) if self.attentions else x
    if self.upsample is not None:
      x = self.upsample(_upsample_nearest(x), ctx)
    return x


class UNet(nnx.Module):
  """diffusers' `UNet2DModel` (positional time embedding, no class conditioning).

  Args:
    config: the architecture (`UNetConfig`; e.g. `DDPM_CIFAR10`).
    rngs: parameter generators.
  """

  def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
    ch, n = config.block_out_channels, len(config.block_out_channels)
    self.config = config
    self.conv_in = Conv(config.in_channels, ch[0], 3, name='conv_in', padding=PAD_3X3,
                        rngs=rngs)
    self.time_embedding = nnx.Dict(
        linear_1=Dense(ch[0], config.temb_dim, name='time_embedding/linear_1', rngs=rngs),
        linear_2=Dense(config.temb_dim, config.temb_dim, name='time_embedding/linear_2',
                       rngs=rngs))
    skips, down, prev = [ch[0]], [], ch[0]
    for i, kind in enumerate(config.down_block_types):
      down.append(DownBlock(i, prev, ch[i], config, attention=kind == 'AttnDownBlock2D',
                            downsample=i < n - 1, rngs=rngs))
      skips += [ch[i]] * (config.layers_per_block + (i < n - 1))
      prev = ch[i]
    self.down_blocks = nnx.List(down)
    self.mid_block = (MidBlock(ch[-1], config, rngs=rngs) if config.mid_block_type is not None
                      else None)
    up = []
    for i, kind in enumerate(config.up_block_types):
      used = [skips.pop() for _ in range(config.layers_per_block + 1)]
      up.append(UpBlock(i, prev, used, ch[n - 1 - i], config, attention=kind == 'AttnUpBlock2D',
                        upsample=i < n - 1, rngs=rngs))
      prev = ch[n - 1 - i]
    self.up_blocks = nnx.List(up)
    self.conv_norm_out = GroupNorm(ch[0], config.norm_num_groups, config.norm_eps)
    self.conv_out = Conv(ch[0], config.out_channels, 3, name='conv_out', padding=PAD_3X3,
                         rngs=rngs)

  def _time_embedding(self, t: Array, ctx: Context) -> Array:
    """[B] timesteps -> [B, temb_dim] (diffusers' `Timesteps` + `TimestepEmbedding`)."""
    c = self.config
    emb = timestep_features(t, c.block_out_channels[0], flip_sin_to_cos=c.flip_sin_to_cos,
                            freq_shift=c.freq_shift)
    emb = self.time_embedding['linear_1'](emb, ctx)
    return self.time_embedding['linear_2'](jax.nn.silu(emb), ctx)

  def __call__(self, inputs: dict[str, Array], ctx: Context) -> Outputs:
    """{'x': [B, H, W, in_channels], 't': [B]} -> Outputs(features [B, H, W, out_channels])."""
    x = inputs['x']
    if self.config.center_input_sample:
      x = 2 * x - 1.0
    temb = self._time_embedding(inputs['t'], ctx)
    x = self.conv_in(x, ctx)
    skips = [x]
    for i, block in enumerate(self.down_blocks):
      x, block_skips = block(x, temb, ctx)
      x = ctx.tap(f'down{i}', x)
      skips += block_skips[:-1] + [x]
    if self.mid_block is not None:
      x = ctx.tap('mid', self.mid_block(x, temb, ctx))
    for i, block in enumerate(self.up_blocks):
      used = [skips.pop() for _ in block.resnets]
      x = ctx.tap(f'up{i}', block(x, used, temb, ctx))
    eps = self.conv_out(jax.nn.silu(self.conv_norm_out(x)), ctx)
    return Outputs(logits=None, features=eps)


def unet_model(config: UNetConfig = DDPM_CIFAR10) -> PureModel:
  """The pure form of `UNet(config)`, taking `NoisyImages(config.input_shape)`.

  Equal configs give the same (cached) `PureModel`, so its compiled programs are shared.

  Args:
    config: the architecture; `config.sample_size` fixes the image size the model takes
      (`dataclasses.replace(config, sample_size=...)` for another; the weights do not
      depend on it).

  Returns:
    `PureModel('unet', ...)`: `apply(variables, {'x': [B, H, W, C], 't': [B]})` returns
    `Outputs(logits=None, taps, features=eps [B, H, W, out_channels])`.

  Raises:
    ValueError: `config` is not a `UNetConfig`.
  """
  if not isinstance(config, UNetConfig):
    raise ValueError(f'config must be a UNetConfig (e.g. UNetConfig.from_diffusers_config or '
                     f'DDPM_CIFAR10); got {type(config).__name__}.')
  return _unet_model(config)


@functools.lru_cache(maxsize=8)
def _unet_model(config: UNetConfig) -> PureModel:
  return PureModel('unet', lambda rngs: UNet(config, rngs=rngs), NoisyImages(config.input_shape))
