"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"), CLIP-ready.

  patches: conv P x P, stride P ('patch_embed')           [B, (H/P)(W/P), D]
  prepend the class token, add position embeddings        [B, T, D], T = (H/P)(W/P) + 1
  optional LayerNorm ('pre_norm', CLIP's `pre_layrnorm`)  [tap 'embed' B x T x D]
  `depth` pre-LN encoder blocks                           [taps 'block0'.. B x T x D]
  final LayerNorm of the class token                      [tap 'features' B x D]
  dense 'head'                                            -> logits (none if num_classes=None)

The options cover OpenAI CLIP's vision tower (Radford et al. 2021): `pre_norm=True`,
`activation='quick_gelu'`, `epsilon=1e-5`, `patch_bias=False`; parameter shapes follow the
Hugging Face layout (class token [D], position embeddings [T, D]). The taps 'embed' and
'block{i}' are CLIP's `hidden_states` (the features PRM attacks). Applying the final
LayerNorm to the class token only equals ViT's norm-all-tokens-then-pool and is CLIP's
`post_layernorm(CLS)`; it is `Outputs.features` (the image embedding before CLIP's
projection). Dropout (`dropout`, `attention_dropout`) acts in training mode only.

Initialisation: dense kernels Xavier-uniform (the head LeCun-normal), biases zero, class
token and position embeddings N(0, 0.02^2).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lib import validate
from lib.contract import Context, Outputs
from lib.models.head import make_head, pooled_outputs
from lib.models.layers import Conv
from lib.models.transformer import EncoderBlock, layer_norm

Array = jax.Array


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
    dropout: dropout probability on each block's sub-layer outputs (training mode only).
    attention_dropout: dropout probability on the attention probabilities.
    rngs: parameter generators.

  Raises:
    ValueError: a size that is not a positive integer, P does not divide H and W, heads do
      not divide D, unknown activation, a non-bool option, a dropout rate outside [0, 1),
      or (at call time, hence when `get_model` traces the model) an input whose H, W
      differ from `image_size`.
  """

  def __init__(self, *, num_classes: int | None, in_channels: int,
               image_size: int | tuple[int, int], patch_size: int, dim: int, depth: int,
               heads: int, mlp_dim: int, activation: str = 'gelu', epsilon: float = 1e-6,
               pre_norm: bool = False, patch_bias: bool = True, dropout: float = 0.0,
               attention_dropout: float = 0.0, rngs: nnx.Rngs):
    size = image_size if isinstance(image_size, Sequence) else (image_size, image_size)
    validate.check_ints(size, 'image_size', minimum=1, length=2)
    size = tuple(size)
    for value, name in ((patch_size, 'patch_size'), (dim, 'dim'), (depth, 'depth')):
      validate.check_int(value, name, minimum=1)
    validate.check_bool(pre_norm, 'pre_norm')
    validate.check_bool(patch_bias, 'patch_bias')
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
    self.head = make_head(dim, num_classes, rngs=rngs)
    self.image_size = size

  def __call__(self, x: Array, ctx: Context) -> Outputs:
    """[B, H, W, in_channels] images -> Outputs(logits [B, K] or None, features [B, D])."""
    if tuple(x.shape[1:3]) != self.image_size:
      raise ValueError(f'this ViT was built for {self.image_size[0]}x{self.image_size[1]} '
                       f'images (image_size); got {x.shape[1]}x{x.shape[2]}. Pass image_size '
                       'to match input_shape.')
    x = self.patch_embed(x, ctx)
    b, d = x.shape[0], x.shape[-1]
    x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...], (b, 1, d)),
                         x.reshape(b, -1, d)], axis=1) + self.pos_embed[...]
    if self.pre_norm is not None:
      x = self.pre_norm(x)
    x = ctx.tap('embed', x)
    for block in self.blocks:
      x = ctx.tap(block.name, block(x, ctx))
    return pooled_outputs(self.head, ctx.tap('features', self.norm(x[:, 0])), ctx)
