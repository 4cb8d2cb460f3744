"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), CLIP-ready.

  optional (x - pixel_mean) / pixel_std per channel       [B, H, W, C]
  patches: conv P x P, stride P ('patch_embed')           [B, (H/P)(W/P), D]
  prepend the class token, add position embeddings        [B, T, D], T = (H/P)(W/P) + 1
  optional LayerNorm ('pre_norm', CLIP's `pre_layrnorm`)  [tap 'embed' B x T x D]
  `depth` pre-LN encoder blocks                           [taps 'block0'.. B x T x D]
  final LayerNorm of the class token                      [B x D]
  optional dense 'proj' without bias (visual_projection)  [tap 'features' B x D or B x E]
  dense 'head'                                            -> logits (none if num_classes=None)

The options cover OpenAI CLIP's vision tower (Radford et al. 2021), Hugging Face
`CLIPVisionModelWithProjection`: `pre_norm=True`, `activation='quick_gelu'`, `epsilon=1e-5`,
`patch_bias=False`, `projection_dim=E`, and OpenAI's `pixel_mean`/`pixel_std` (the
normalisation transformers' `CLIPImageProcessor` applies; here inside the model, so inputs
stay [0, 1] pixels, the space attacks work in). Parameter shapes follow the Hugging Face
layout (class token [D], position embeddings [T, D]). The taps 'embed' and 'block{i}' are
CLIP's `hidden_states` (L + 1 of them: the features PRM attacks). Applying the final
LayerNorm to the class token only equals ViT's norm-all-tokens-then-pool and is CLIP's
`post_layernorm(CLS)`; it is `Outputs.features`, or with `projection_dim` its projection
(CLIP's `get_image_features`, not normalised). Dropout (`dropout`, `attention_dropout`)
acts in training mode only.

With `interpolate_pos_encoding=True` the model takes images of any size whose height and
width are multiples of P (input family `PatchImages`): the position embeddings of the
native patch grid are resized to the image's grid with PyTorch's bicubic kernel, as
`CLIPVisionEmbeddings.interpolate_pos_encoding` in transformers does
(`torch.nn.functional.interpolate(mode='bicubic', align_corners=False)`: cubic convolution
with A = -0.75, source coordinates (i + 0.5) * in / out - 0.5, indices clamped at the
borders, no antialiasing; `jax.image.resize` is a different kernel). At the native grid
the embeddings are used as they are (transformers skips the interpolation there too).

Initialisation: dense kernels Xavier-uniform (the head LeCun-normal), biases zero, class
token and position embeddings N(0, 0.02^2).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lib import validate
from lib.contract import Context, Outputs
from lib.models.head import make_head, pooled_outputs
from lib.models.inputs import InputSpec
from lib.models.layers import Conv, Dense
from lib.models.transformer import EncoderBlock, layer_norm

Array = jax.Array
BICUBIC_A = -0.75   # PyTorch's cubic-convolution coefficient (Keys 1981 uses -0.5)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """[n] offsets in [0, 1] -> [n, 4] weights of the taps at floor - 1 .. floor + 2 (float32).

  PyTorch's `get_cubic_upsample_coefficients` (aten/src/ATen/native/UpSample.h).
  """
  a = np.float32(BICUBIC_A)
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1              # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a        # 1 < |x| < 2
  one = np.float32(1)
  return np.stack([far(t + one), near(t), near(one - t), far((one - t) + one)], axis=-1)


@functools.cache
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 matrix of PyTorch's 1-D bicubic resize (align_corners=False).

  Row i holds the weights of output i: source coordinate s = (i + 0.5) * in / out - 0.5
  (computed in float32 as PyTorch does), taps floor(s) - 1 .. floor(s) + 2 clamped to
  [0, in_size - 1], weights `_cubic_weights(s - floor(s))`; no antialiasing. The 2-D resize
  is this matrix applied along each axis (the kernel is separable).
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  floor = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  t = np.clip(src - floor.astype(np.float32), 0, 1).astype(np.float32)
  taps = np.clip(floor[:, None] + np.arange(-1, 3), 0, in_size - 1)
  matrix = np.zeros((out_size, in_size), np.float32)
  np.add.at(matrix, (np.arange(out_size)[:, None].repeat(4, 1), taps), _cubic_weights(t))
  return matrix


def resize_bicubic(x: Array, size: tuple[int, int]) -> Array:
  """[..., h, w, C] -> [..., H, W, C] with PyTorch's bicubic kernel (see `bicubic_matrix`).

  `torch.nn.functional.interpolate(x, size, mode='bicubic', align_corners=False)` on the
  channels-last layout (e.g. [B, H, W, C] images or an [h, w, D] grid of embeddings);
  values are not clamped (PyTorch does not clamp float outputs either).
  """
  rows = bicubic_matrix(x.shape[-3], size[0]).astype(x.dtype)
  cols = bicubic_matrix(x.shape[-2], size[1]).astype(x.dtype)
  return jnp.einsum('Hh,...hwc,Ww->...HWc', rows, x, cols)


def interpolate_pos_embed(pos: Array, grid: tuple[int, int], new_grid: tuple[int, int]) -> Array:
  """Class + patch position embeddings [1 + h*w, D] -> [1 + H*W, D] for a new patch grid.

  Mirrors transformers' `CLIPVisionEmbeddings.interpolate_pos_encoding`: the class
  token's embedding is kept, the patch embeddings are resized bicubically as an image;
  the native grid returns `pos` itself.
  """
  if tuple(new_grid) == tuple(grid):
    return pos
  patches = resize_bicubic(pos[1:].reshape(*grid, pos.shape[-1]), new_grid)
  return jnp.concatenate([pos[:1], patches.reshape(-1, pos.shape[-1])], axis=0)


def check_patch_multiple(height: int, width: int, patch_size: int, name: str) -> None:
  """Raises ValueError unless the patch grid covers the image (H and W multiples of P)."""
  if height % patch_size or width % patch_size:
    raise ValueError(f'{name} is {height}x{width}, which the {patch_size}x{patch_size} patch '
                     f'grid does not cover; height and width must be multiples of '
                     f'patch_size={patch_size} (resize or crop the images).')


@dataclasses.dataclass(frozen=True)
class PatchImages(InputSpec):
  """Float images [B, H, W, C] in [0, 1] of any size with H and W multiples of `patch_size`.

  The input family of a ViT built with `interpolate_pos_encoding=True`.

  Args:
    image_shape: (H, W, C) of the native size (the example the model is traced on).
    patch_size: P.
  """
  image_shape: tuple[int, int, int]
  patch_size: int

  def __post_init__(self):
    validate.check_ints(self.image_shape, 'input_shape', minimum=1, length=3)
    validate.check_int(self.patch_size, 'patch_size', minimum=1)
    object.__setattr__(self, 'image_shape', tuple(int(s) for s in self.image_shape))

  @property
  def example(self) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, *self.image_shape), np.float32)

  def check(self, inputs: Any, name: str = 'x') -> None:
    validate.check_images(inputs, name)
    if inputs.shape[-1] != self.image_shape[-1]:
      raise ValueError(f'{name} must have {self.image_shape[-1]} channels; got '
                       f'{inputs.shape[-1]} (shape {tuple(inputs.shape)}).')
    check_patch_multiple(inputs.shape[1], inputs.shape[2], self.patch_size, name)


def check_pixel_norm(mean: Sequence[float] | None, std: Sequence[float] | None, channels: int,
                     names: tuple[str, str] = ('pixel_mean', 'pixel_std')
                     ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
  """(mean, std) as tuples of `channels` floats (std > 0), or None when neither is given.

  Raises:
    ValueError: only one given, a wrong length, a non-finite entry or std <= 0 (the
      argument named by `names`).
  """
  if mean is None and std is None:
    return None
  if mean is None or std is None:
    raise ValueError(f'{names[0]} and {names[1]} go together; got only '
                     f'{names[0] if std is None else names[1]}.')
  for values, name in zip((mean, std), names):
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != channels:
      raise ValueError(f'{name} must hold {channels} numbers (one per channel); got {values!r}.')
    for i, v in enumerate(values):
      validate.check_number(v, f'{name}[{i}]')
  if min(std) <= 0:
    raise ValueError(f'{names[1]} must be positive; got {tuple(std)}.')
  return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class ViT(nnx.Module):
  """ViT classifying from the class token, for one fixed image size.

  Args:
    num_classes: number of logits, or None for an encoder without a head.
    in_channels: channels of the input images.
    image_size: side S of square inputs, or (H, W); position embeddings are sized for it.
    patch_size: side P of the square patches (must divide H and W).
    dim: model width D.
    depth: number of encoder blocks.
    heads: attention heads (must divide D).
    mlp_dim: MLP hidden width.
    activation: 'gelu' (exact) or 'quick_gelu' (CLIP).
    epsilon: layer-norm epsilon (1e-6 for ViT, 1e-5 for CLIP).
    pre_norm: LayerNorm after the position embeddings, before the blocks (CLIP).
    patch_bias: whether the patch embedding has a bias (CLIP's has none).
    projection_dim: width E of a bias-free projection 'proj' of the pooled features (CLIP's
      `visual_projection`), or None for none.
    interpolate_pos_encoding: accept any H, W that are multiples of P, resizing the position
      embeddings bicubically (see the module docstring); False: only `image_size`.
    pixel_mean: per-channel mean subtracted from the [0, 1] pixels first (CLIP's
      `image_mean`), or None for none; given together with `pixel_std`.
    pixel_std: per-channel standard deviation the centred pixels are divided by.
    dropout: dropout probability on each block's sub-layer outputs (training mode only).
    attention_dropout: dropout probability on the attention probabilities.
    rngs: parameter generators.

  Raises:
    ValueError: a size that is not a positive integer, P does not divide H and W, heads do
      not divide D, unknown activation, a non-bool option, a dropout rate outside [0, 1),
      or (at call time, hence when `get_model` traces the model) an input whose H, W
      differ from `image_size` (with interpolation: are not multiples of P).
  """

  def __init__(self, *, num_classes: int | None, in_channels: int,
               image_size: int | tuple[int, int], patch_size: int, dim: int, depth: int,
               heads: int, mlp_dim: int, activation: str = 'gelu', epsilon: float = 1e-6,
               pre_norm: bool = False, patch_bias: bool = True,
               projection_dim: int | None = None, interpolate_pos_encoding: bool = False,
               pixel_mean: Sequence[float] | None = None,
               pixel_std: Sequence[float] | None = None,
               dropout: float = 0.0, attention_dropout: float = 0.0, rngs: nnx.Rngs):
    size = image_size if isinstance(image_size, Sequence) else (image_size, image_size)
    validate.check_ints(size, 'image_size', minimum=1, length=2)
    size = tuple(size)
    for value, name in ((patch_size, 'patch_size'), (dim, 'dim'), (depth, 'depth')):
      validate.check_int(value, name, minimum=1)
    validate.check_bool(pre_norm, 'pre_norm')
    validate.check_bool(patch_bias, 'patch_bias')
    validate.check_bool(interpolate_pos_encoding, 'interpolate_pos_encoding')
    self.pixel_norm = check_pixel_norm(pixel_mean, pixel_std, in_channels)
    if projection_dim is not None:
      validate.check_int(projection_dim, 'projection_dim', minimum=1)
    if size[0] % patch_size or size[1] % patch_size:
      raise ValueError(f'patch_size={patch_size} must divide the image height and width '
                       f'{size}.')
    tokens = (size[0] // patch_size) * (size[1] // patch_size) + 1
    init = nnx.initializers.normal(0.02)
    self.patch_embed = Conv(in_channels, dim, patch_size, name='patch_embed', strides=patch_size,
                            padding='VALID', use_bias=patch_bias, rngs=rngs)
    self.cls_token = nnx.Param(init(rngs.params(), (dim,)))
    self.pos_embed = nnx.Param(init(rngs.params(), (tokens, dim)))
    self.pre_norm = layer_norm(dim, epsilon, rngs) if pre_norm else None
    self.blocks = nnx.List([
        EncoderBlock(dim, heads, mlp_dim, activation=activation, epsilon=epsilon,
                     name=f'block{i}', dropout=dropout, attention_dropout=attention_dropout,
                     rngs=rngs) for i in range(depth)])
    self.norm = layer_norm(dim, epsilon, rngs)
    self.proj = (None if projection_dim is None else
                 Dense(dim, projection_dim, name='proj', use_bias=False, rngs=rngs))
    features = dim if projection_dim is None else projection_dim
    self.head = make_head(features, num_classes, rngs=rngs)
    self.image_size, self.patch_size = size, patch_size
    self.interpolate = interpolate_pos_encoding

  def _check_size(self, height: int, width: int) -> None:
    if self.interpolate:
      check_patch_multiple(height, width, self.patch_size, 'x')
    elif (height, width) != self.image_size:
      raise ValueError(f'this ViT was built for {self.image_size[0]}x{self.image_size[1]} '
                       f'images (image_size); got {height}x{width}. Pass image_size to match '
                       'input_shape, or build it with interpolate_pos_encoding=True.')

  def __call__(self, x: Array, ctx: Context) -> Outputs:
    """[B, H, W, in_channels] images -> Outputs(logits [B, K] or None, features [B, D or E])."""
    self._check_size(x.shape[1], x.shape[2])
    if self.pixel_norm is not None:
      mean, std = (jnp.asarray(v, x.dtype) for v in self.pixel_norm)
      x = (x - mean) / std
    x = self.patch_embed(x, ctx)
    b, gh, gw, d = x.shape
    grid = (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)
    pos = interpolate_pos_embed(self.pos_embed[...], grid, (gh, gw))
    x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...], (b, 1, d)),
                         x.reshape(b, -1, d)], axis=1) + pos
    if self.pre_norm is not None:
      x = self.pre_norm(x)
    x = ctx.tap('embed', x)
    for block in self.blocks:
      x = ctx.tap(block.name, block(x, ctx))
    pooled = self.norm(x[:, 0])
    pooled = pooled if self.proj is None else self.proj(pooled, ctx)
    return pooled_outputs(self.head, ctx.tap('features', pooled), ctx)
