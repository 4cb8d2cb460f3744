"""Configuration of the diffusion UNet: the fields of diffusers' `UNet2DModel` config.json.

`UNetConfig` mirrors the `UNet2DModel.__init__` arguments that shape the network, with
diffusers' defaults, so a config.json that omits a field builds the network diffusers
would build. `UNetConfig.from_diffusers_config(d)` reads such a dict and refuses, naming
the option, anything this port does not implement (Fourier or learned time embeddings,
class conditioning, ResNet-style resampling, other activations, block types other than
`DownBlock2D`/`AttnDownBlock2D`/`UpBlock2D`/`AttnUpBlock2D`).

`DDPM_CIFAR10` is google/ddpm-cifar10-32 (Ho et al. 2020, "Denoising Diffusion
Probabilistic Models", CIFAR-10 model): 35,746,307 parameters, channels 128/256/256/256,
two ResNet blocks per level, self-attention at 16x16 and in the 4x4 middle block, GroupNorm
eps 1e-6, padding-0 downsampling (pad right/bottom by one), sin-then-cos time features
with freq_shift 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lib import validate

DOWN_BLOCKS = ('DownBlock2D', 'AttnDownBlock2D')
UP_BLOCKS = ('UpBlock2D', 'AttnUpBlock2D')
MID_BLOCKS = ('UNetMidBlock2D', None)
ACTIVATIONS = ('silu', 'swish')   # diffusers' names of the same function, x * sigmoid(x)
TIME_SCALE_SHIFTS = ('default', 'scale_shift')
# config.json entries that describe no weight-bearing choice of a positional-embedding
# UNet (`num_train_timesteps` sizes only the 'learned' embedding).
_IGNORED = ('num_train_timesteps',)
# Class conditioning is not implemented: these must be absent or null.
_MUST_BE_NULL = ('class_embed_type', 'num_class_embeds')


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The shape of a diffusers `UNet2DModel` (names and defaults are diffusers').

  Attributes:
    sample_size: side S of square images, or (H, W); each must be divisible by
      2 ** (len(block_out_channels) - 1).
    in_channels: channels of the noisy images.
    out_channels: channels of the prediction (the noise, for an epsilon model).
    center_input_sample: map inputs x -> 2x - 1 first (for inputs in [0, 1]).
    time_embedding_type: only 'positional' (sinusoidal) is implemented.
    time_embedding_dim: width of the time embedding; None: 4 * block_out_channels[0].
    freq_shift: `downscale_freq_shift` of the sinusoid: frequencies
      exp(-ln(10000) * i / (half - freq_shift)), i < half = block_out_channels[0] // 2.
    flip_sin_to_cos: order the features [cos, sin] (True) or [sin, cos] (False).
    down_block_types: 'DownBlock2D' or 'AttnDownBlock2D' per level, finest first.
    mid_block_type: 'UNetMidBlock2D', or None for no middle block.
    up_block_types: 'UpBlock2D' or 'AttnUpBlock2D' per level, coarsest first.
    block_out_channels: channels per level, finest first.
    layers_per_block: ResNet blocks per down level (up levels have one more).
    mid_block_scale_factor: the middle block divides each residual sum by it.
    downsample_padding: padding p of the stride-2 3x3 downsampling conv; p = 0 pads one
      pixel at the bottom and right only (diffusers' `Downsample2D`).
    downsample_type: only 'conv'.
    upsample_type: only 'conv' (nearest-neighbour x2, then a 3x3 conv).
    dropout: dropout rate inside each ResNet block (training mode only).
    act_fn: 'silu' (or its alias 'swish').
    attention_head_dim: channels per attention head; None: one head over all channels.
    norm_num_groups: GroupNorm groups (must divide every channel count).
    attn_norm_num_groups: groups of the middle attention's GroupNorm; None: norm_num_groups
      with 'default' time scale-shift and no GroupNorm at all with 'scale_shift'.
    norm_eps: GroupNorm epsilon.
    resnet_time_scale_shift: 'default' (add the projected time embedding before the
      second GroupNorm) or 'scale_shift' (h * (1 + scale) + shift after it).
    add_attention: whether the middle block has its attention layer.

  Raises:
    ValueError: a field of the wrong type or range, or an option this port does not
      implement (the message names the field).
  """
  sample_size: int | tuple[int, int]
  in_channels: int = 3
  out_channels: int = 3
  center_input_sample: bool = False
  time_embedding_type: str = 'positional'
  time_embedding_dim: int | None = None
  freq_shift: float = 0
  flip_sin_to_cos: bool = True
  down_block_types: tuple[str, ...] = ('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D',
                                       'AttnDownBlock2D')
  mid_block_type: str | None = 'UNetMidBlock2D'
  up_block_types: tuple[str, ...] = ('AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D',
                                     'UpBlock2D')
  block_out_channels: tuple[int, ...] = (224, 448, 672, 896)
  layers_per_block: int = 2
  mid_block_scale_factor: float = 1.0
  downsample_padding: int = 1
  downsample_type: str = 'conv'
  upsample_type: str = 'conv'
  dropout: float = 0.0
  act_fn: str = 'silu'
  attention_head_dim: int | None = 8
  norm_num_groups: int = 32
  attn_norm_num_groups: int | None = None
  norm_eps: float = 1e-5
  resnet_time_scale_shift: str = 'default'
  add_attention: bool = True

  def __post_init__(self):
    for name in ('sample_size', 'down_block_types', 'up_block_types', 'block_out_channels'):
      value = getattr(self, name)
      if isinstance(value, Sequence) and not isinstance(value, str):
        object.__setattr__(self, name, tuple(value))
    self._check_options()
    self._check_sizes()
    self._check_blocks()

  def _check_options(self) -> None:
    validate.check_choice(self.time_embedding_type, ('positional',), 'time_embedding_type')
    validate.check_choice(self.act_fn, ACTIVATIONS, 'act_fn')
    validate.check_choice(self.resnet_time_scale_shift, TIME_SCALE_SHIFTS,
                          'resnet_time_scale_shift')
    validate.check_choice(self.mid_block_type, MID_BLOCKS, 'mid_block_type')
    validate.check_choice(self.downsample_type, ('conv',), 'downsample_type')
    validate.check_choice(self.upsample_type, ('conv',), 'upsample_type')
    for name in ('center_input_sample', 'flip_sin_to_cos', 'add_attention'):
      validate.check_bool(getattr(self, name), name)
    validate.check_number(self.freq_shift, 'freq_shift')
    validate.check_number(self.mid_block_scale_factor, 'mid_block_scale_factor')
    validate.check_positive(self.mid_block_scale_factor, 'mid_block_scale_factor')
    validate.check_number(self.dropout, 'dropout', low=0.0, high=1.0, high_inclusive=False)
    validate.check_number(self.norm_eps, 'norm_eps', low=0.0)

  def _check_sizes(self) -> None:
    if isinstance(self.sample_size, (int, np.integer)) and not isinstance(self.sample_size, bool):
      validate.check_int(self.sample_size, 'sample_size', minimum=1)
    else:
      validate.check_ints(self.sample_size, 'sample_size', minimum=1, length=2)
    size = self.image_size
    for name in ('in_channels', 'out_channels', 'layers_per_block', 'norm_num_groups'):
      validate.check_int(getattr(self, name), name, minimum=1)
    validate.check_int(self.downsample_padding, 'downsample_padding', minimum=0)
    validate.check_ints(self.block_out_channels, 'block_out_channels', minimum=1)
    for name in ('time_embedding_dim', 'attention_head_dim', 'attn_norm_num_groups'):
      if getattr(self, name) is not None:
        validate.check_int(getattr(self, name), name, minimum=1)
    factor = 2 ** (len(self.block_out_channels) - 1)
    if size[0] % factor or size[1] % factor:
      raise ValueError(f'sample_size={self.sample_size!r} must be divisible by {factor} '
                       f'(2 ** (len(block_out_channels) - 1)).')
    channels = self.block_out_channels
    if any(c % self.norm_num_groups for c in channels):
      raise ValueError(f'norm_num_groups={self.norm_num_groups} must divide every entry of '
                       f'block_out_channels={channels}.')
    if self.attn_norm_num_groups is not None and channels[-1] % self.attn_norm_num_groups:
      raise ValueError(f'attn_norm_num_groups={self.attn_norm_num_groups} must divide '
                       f'block_out_channels[-1]={channels[-1]}.')
    if channels[0] < 2:
      raise ValueError('block_out_channels[0] sizes the sinusoidal time features and must be '
                       f'at least 2; got {channels[0]}.')
    if channels[0] // 2 == self.freq_shift:
      raise ValueError(f'freq_shift={self.freq_shift!r} must differ from '
                       f'block_out_channels[0] // 2 (it divides by their difference).')

  def _check_blocks(self) -> None:
    n = len(self.block_out_channels)
    for name, allowed in (('down_block_types', DOWN_BLOCKS), ('up_block_types', UP_BLOCKS)):
      types = getattr(self, name)
      if isinstance(types, str) or not isinstance(types, Sequence) or len(types) != n:
        raise ValueError(f'{name} must list one block type per entry of block_out_channels '
                         f'({n}); got {types!r}.')
      for i, t in enumerate(types):
        validate.check_choice(t, allowed, f'{name}[{i}]')
    head = self.attention_head_dim
    if head is not None:
      widths = [c for c, t in zip(self.block_out_channels, self.down_block_types)
                if t.startswith('Attn')]
      widths += [c for c, t in zip(self.block_out_channels[::-1], self.up_block_types)
                 if t.startswith('Attn')]
      widths += [self.block_out_channels[-1]] if self.has_mid_attention else []
      if any(c < head for c in widths):
        raise ValueError(f'attention_head_dim={head} exceeds the channels {min(widths)} of an '
                         'attention layer (it would have no head).')

  @property
  def image_size(self) -> tuple[int, int]:
    """(H, W) of the images."""
    s = self.sample_size
    return (int(s), int(s)) if np.ndim(s) == 0 else tuple(int(v) for v in s)

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one noisy image (NHWC)."""
    return (*self.image_size, self.in_channels)

  @property
  def temb_dim(self) -> int:
    """Width of the time embedding fed to every ResNet block."""
    return self.time_embedding_dim or 4 * self.block_out_channels[0]

  @property
  def has_mid_attention(self) -> bool:
    """Whether a middle block exists and has its attention layer."""
    return self.mid_block_type is not None and self.add_attention

  @property
  def mid_attention_groups(self) -> int | None:
    """GroupNorm groups of the middle attention (None: it has no GroupNorm)."""
    if self.attn_norm_num_groups is not None:
      return self.attn_norm_num_groups
    return self.norm_num_groups if self.resnet_time_scale_shift == 'default' else None

  @classmethod
  def from_diffusers_config(cls, config: Mapping[str, Any]) -> UNetConfig:
    """The config of a diffusers `UNet2DModel` config.json (a parsed dict).

    Entries starting with '_' (`_class_name`, `_diffusers_version`) are metadata;
    `_class_name`, when present, must be 'UNet2DModel'. Absent fields take diffusers'
    defaults.

    Raises:
      ValueError: not a mapping; another model class; an option this port does not
        implement or a key `UNet2DModel` does not have (named); `sample_size` missing or
        null; any check of `UNetConfig`.
    """
    if not isinstance(config, Mapping):
      raise ValueError(f'config must be a dict (a parsed config.json); got '
                       f'{type(config).__name__}.')
    name = config.get('_class_name', 'UNet2DModel')
    if name != 'UNet2DModel':
      raise ValueError(f"config is a {name!r} (_class_name); only 'UNet2DModel' is supported.")
    fields = {f.name for f in dataclasses.fields(cls)}
    options = {k: v for k, v in config.items() if not k.startswith('_') and k not in _IGNORED}
    for key in _MUST_BE_NULL:
      if options.pop(key, None) is not None:
        raise ValueError(f'config option {key}={config[key]!r} (class conditioning) is not '
                         'supported; it must be null.')
    unknown = sorted(set(options) - fields)
    if unknown:
      raise ValueError(f'config options {unknown} are not UNet2DModel options this port '
                       f'supports; supported: {sorted(fields)}.')
    if options.get('sample_size') is None:
      raise ValueError('config must give sample_size (the image side or [H, W]).')
    return cls(**options)


DDPM_CIFAR10 = UNetConfig(
    sample_size=32,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
    layers_per_block=2,
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
)
