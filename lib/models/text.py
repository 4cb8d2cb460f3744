"""A text transformer encoder over token ids with an attention mask (BERT- or CLIP-text-like).

  token embedding [V, D] + position embedding [max_len, D]   [B, T, D]
  post-LN only: LayerNorm 'embed_norm' (BERT's embeddings.LayerNorm)
  dropout                                                   [tap 'embed' B x T x D]
  `depth` encoder blocks (padding mask; causal if asked)    [taps 'block0'.. B x T x D]
  pre-LN only: final LayerNorm of every token (CLIP's final_layer_norm)
  pool: 'first' token (BERT's [CLS]), 'last' unpadded token, the 'mean' of unpadded
    tokens, or CLIP's end-of-text token: 'eos' (the first position holding
    `eos_token_id`) or 'argmax' (the position of the largest id)  [B x D]
  optional dense 'proj' without bias (text_projection)      [tap 'features' B x D or B x E]
  dense 'head'                                              -> logits (none if num_classes=None)

Inputs are `lib.models.inputs.Tokens`: {'input_ids': int [B, T], 'attention_mask': [B, T]}
with T <= max_len; positions are 0..T-1. Padding tokens never change the other tokens'
outputs.

CLIP's text tower (Hugging Face `CLIPTextModelWithProjection`) is `norm_first=True,
causal=True, activation='quick_gelu', epsilon=1e-5, projection_dim=E` with pool 'argmax'
when the checkpoint's config has `eos_token_id == 2` (OpenAI's legacy setting: the
end-of-text token has the largest id) and pool 'eos' with its `eos_token_id` otherwise, as
`CLIPTextTransformer.forward` in transformers decides. A sequence without the end-of-text
token pools position 0 under 'eos' (as transformers does). The taps 'embed' and 'block{i}'
are its `hidden_states` (L + 1, before the final LayerNorm).

The embedding lookup is not a linear layer (rules do not see it); perturbing the 'embed' tap
is how gradient methods and attacks reach the input.

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
from lib.models.layers import Dense, dropout
from lib.models.transformer import EncoderBlock, check_rate, layer_norm

Array = jax.Array
POOLS = ('first', 'last', 'mean', 'eos', 'argmax')


def pool(x: Array, mask: Array, how: str, *, ids: Array | None = None,
         eos_token_id: int | None = None) -> Array:
  """[B, T, D] tokens -> [B, D], as `how` in `POOLS` says.

  Args:
    x: [B, T, D] token features.
    mask: [B, T] padding mask (1 = token).
    how: one of `POOLS`.
    ids: [B, T] token ids ('eos' and 'argmax').
    eos_token_id: the end-of-text id ('eos').
  """
  if how == 'first':
    return x[:, 0]
  if how in ('eos', 'argmax'):
    where = jnp.argmax(ids == eos_token_id if how == 'eos' else ids, axis=1)
    return jnp.take_along_axis(x, where[:, None, None], axis=1)[:, 0]
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
    eos_token_id: the end-of-text id pool 'eos' looks for (required by it, unused otherwise).
    projection_dim: width E of a bias-free projection 'proj' of the pooled features (CLIP's
      `text_projection`), or None for none.
    activation: MLP activation ('gelu' or 'quick_gelu').
    epsilon: layer-norm epsilon.
    dropout: dropout on the embeddings and each block's sub-layer outputs (training only).
    attention_dropout: dropout on the attention probabilities (training only).
    rngs: parameter generators.

  Raises:
    ValueError: a size that is not a positive integer, an unknown pool or activation, a
      non-bool option, a dropout rate outside [0, 1), or pool 'eos' without an
      `eos_token_id` in [0, vocab_size).
  """

  def __init__(self, *, num_classes: int | None, vocab_size: int, max_len: int, dim: int,
               depth: int, heads: int, mlp_dim: int, norm_first: bool = True,
               causal: bool = False, pool: str = 'first', eos_token_id: int | None = None,
               projection_dim: int | None = None, activation: str = 'gelu',
               epsilon: float = 1e-5, dropout: float = 0.0, attention_dropout: float = 0.0,
               rngs: nnx.Rngs):
    for value, name in ((vocab_size, 'vocab_size'), (max_len, 'max_len'), (dim, 'dim'),
                        (depth, 'depth')):
      validate.check_int(value, name, minimum=1)
    validate.check_choice(pool, POOLS, 'pool')
    if pool == 'eos':
      validate.check_int(eos_token_id, 'eos_token_id', minimum=0)
      if eos_token_id >= vocab_size:
        raise ValueError(f'eos_token_id={eos_token_id} must be below vocab_size={vocab_size}.')
    if projection_dim is not None:
      validate.check_int(projection_dim, 'projection_dim', minimum=1)
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
    self.proj = (None if projection_dim is None else
                 Dense(dim, projection_dim, name='proj', use_bias=False, rngs=rngs))
    self.head = make_head(dim if projection_dim is None else projection_dim, num_classes,
                          rngs=rngs)
    self.pool, self.eos_token_id, self.dropout = pool, eos_token_id, dropout

  def __call__(self, inputs: dict[str, Array], ctx: Context) -> Outputs:
    """Tokens {'input_ids', 'attention_mask'} [B, T] -> Outputs(logits, features [B, D or E])."""
    ids, mask = inputs['input_ids'], inputs['attention_mask']
    x = jnp.take(self.token_embed[...], ids, axis=0) + self.pos_embed[:ids.shape[1]]
    if self.embed_norm is not None:
      x = self.embed_norm(x)
    x = ctx.tap('embed', dropout(x, self.dropout, ctx, 'embed/dropout'))
    for block in self.blocks:
      x = ctx.tap(block.name, block(x, ctx, mask))
    if self.norm is not None:
      x = self.norm(x)
    pooled = pool(x, mask, self.pool, ids=ids, eos_token_id=self.eos_token_id)
    pooled = pooled if self.proj is None else self.proj(pooled, ctx)
    return pooled_outputs(self.head, ctx.tap('features', pooled), ctx)
