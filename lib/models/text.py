"""A text transformer encoder over token ids with an attention mask (BERT- or CLIP-text-like).

  token embedding [V, D] + position embedding [max_len, D]   [B, T, D]
  post-LN only: LayerNorm 'embed_norm' (BERT's embeddings.LayerNorm)
  dropout                                                   [tap 'embed' B x T x D]
  `depth` encoder blocks (padding mask; causal if asked)    [taps 'block0'.. B x T x D]
  pre-LN only: final LayerNorm of every token (CLIP's final_layer_norm)
  pool: 'first' token (BERT's [CLS]), 'last' unpadded token (CLIP's end-of-text with
    right padding) or the 'mean' of unpadded tokens          [tap 'features' B x D]
  dense 'head'                                              -> logits (none if num_classes=None)

Inputs are `lib.models.inputs.Tokens`: {'input_ids': int [B, T], 'attention_mask': [B, T]}
with T <= max_len; positions are 0..T-1. Padding tokens never change the other tokens'
outputs. The embedding lookup is not a linear layer (rules do not see it); perturbing the
'embed' tap is how gradient methods and attacks reach the input.

Initialisation: embeddings N(0, 0.02^2), dense kernels Xavier-uniform (the head
LeCun-normal), biases zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lib import validate
from lib.contract import Context, Outputs
from lib.models.head import make_head, pooled_outputs
from lib.models.layers import dropout
from lib.models.transformer import EncoderBlock, check_rate, layer_norm

Array = jax.Array
POOLS = ('first', 'last', 'mean')


def pool(x: Array, mask: Array, how: str) -> Array:
  """[B, T, D] tokens, [B, T] padding mask (1 = token) -> [B, D], as `how` in `POOLS` says."""
  if how == 'first':
    return x[:, 0]
  keep = (mask != 0).astype(x.dtype)
  if how == 'last':
    last = jnp.maximum(keep.sum(1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
  return (x * keep[..., None]).sum(1) / jnp.maximum(keep.sum(1, keepdims=True), 1.0)


class TextTransformer(nnx.Module):
  """Transformer encoder over token ids, pooled to one feature vector per sequence.

  Args:
    num_classes: number of logits, or None for an encoder without a head.
    vocab_size: number of token ids V.
    max_len: longest sequence (position embeddings).
    dim: model width D.
    depth: number of encoder blocks.
    heads: attention heads (must divide D).
    mlp_dim: MLP hidden width.
    norm_first: pre-LN blocks and a final LayerNorm (CLIP) or post-LN blocks after an
      embedding LayerNorm (BERT).
    causal: causal attention (CLIP's text tower).
    pool: how tokens become features, one of `POOLS`.
    activation: MLP activation ('gelu' or 'quick_gelu').
    epsilon: layer-norm epsilon.
    dropout: dropout on the embeddings and each block's sub-layer outputs (training only).
    attention_dropout: dropout on the attention probabilities (training only).
    rngs: parameter generators.

  Raises:
    ValueError: a size that is not a positive integer, an unknown pool or activation, a
      non-bool option or a dropout rate outside [0, 1).
  """

  def __init__(self, *, num_classes: int | None, vocab_size: int, max_len: int, dim: int,
               depth: int, heads: int, mlp_dim: int, norm_first: bool = True,
               causal: bool = False, pool: str = 'first', activation: str = 'gelu',
               epsilon: float = 1e-5, dropout: float = 0.0, attention_dropout: float = 0.0,
               rngs: nnx.Rngs):
    for value, name in ((vocab_size, 'vocab_size'), (max_len, 'max_len'), (dim, 'dim'),
                        (depth, 'depth')):
      validate.check_int(value, name, minimum=1)
    validate.check_choice(pool, POOLS, 'pool')
    validate.check_bool(norm_first, 'norm_first')
    check_rate(dropout, 'dropout')
    init = nnx.initializers.normal(0.02)
    self.token_embed = nnx.Param(init(rngs.params(), (vocab_size, dim)))
    self.pos_embed = nnx.Param(init(rngs.params(), (max_len, dim)))
    self.embed_norm = None if norm_first else layer_norm(dim, epsilon, rngs)
    self.blocks = nnx.List([
        EncoderBlock(dim, heads, mlp_dim, activation=activation, epsilon=epsilon,
                     name=f'block{i}', norm_first=norm_first, causal=causal, dropout=dropout,
                     attention_dropout=attention_dropout, rngs=rngs) for i in range(depth)])
    self.norm = layer_norm(dim, epsilon, rngs) if norm_first else None
    self.head = make_head(dim, num_classes, rngs=rngs)
    self.pool, self.dropout = pool, dropout

  def __call__(self, inputs: dict[str, Array], ctx: Context) -> Outputs:
    """Tokens {'input_ids', 'attention_mask'} [B, T] -> Outputs(logits or None, features [B, D])."""
    ids, mask = inputs['input_ids'], inputs['attention_mask']
    x = jnp.take(self.token_embed[...], ids, axis=0) + self.pos_embed[:ids.shape[1]]
    if self.embed_norm is not None:
      x = self.embed_norm(x)
    x = ctx.tap('embed', dropout(x, self.dropout, ctx, 'embed/dropout'))
    for block in self.blocks:
      x = ctx.tap(block.name, block(x, ctx, mask))
    if self.norm is not None:
      x = self.norm(x)
    return pooled_outputs(self.head, ctx.tap('features', pool(x, mask, self.pool)), ctx)
