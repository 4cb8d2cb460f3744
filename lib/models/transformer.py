"""Transformer encoder blocks (Vaswani et al. 2017), pre-LN or post-LN, with attention masks.

  pre-LN  (ViT, CLIP; Dosovitskiy 2021):  y = x + attn(LN1(x));  out = y + mlp(LN2(y))
  post-LN (BERT, Vaswani 2017):            y = LN1(x + attn(x));  out = LN2(y + mlp(y))
                                                                    (all [B, T, D])

Attention takes an optional padding mask `mask` [B, T] (1 = token, 0 = padding: no query
attends to a padding key, so padding never changes the other tokens' outputs) and, when the
block is built with `causal=True` (CLIP's text tower, GPT), lets position i attend only to
positions j <= i. Dropout (Srivastava et al. 2014) on the attention probabilities
(`attention_dropout`) and on each sub-layer's output before the residual sum (`dropout`),
as in Hugging Face BERT/ViT, is active only in training mode and draws its masks from
`ctx.rng` under the names '{name}/attn/dropout', '{name}/dropout1', '{name}/dropout2'.

Every dense layer goes through `Context.linear` under a path-like name ('block3/attn/q',
'block3/attn/k', 'block3/attn/v', 'block3/attn/out', 'block3/mlp/fc1', 'block3/mlp/fc2'),
so layer rules can intercept them. The query-key product, the softmax and the layer norms
are not linear layers and are crossed with their plain gradient. Query, key and value are
separate projections, as in the Hugging Face layouts (CLIP's `q_proj`/`k_proj`/`v_proj`,
BERT's `query`/`key`/`value`), with kernels [in, out].
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lib import validate
from lib.contract import Context
from lib.models.layers import Dense, dropout

Array = jax.Array


def quick_gelu(x: Array) -> Array:
  """OpenAI CLIP's GELU approximation x * sigmoid(1.702 x) (Radford et al. 2021)."""
  return x * jax.nn.sigmoid(1.702 * x)


# 'gelu' is the exact (erf) GELU of PyTorch's nn.GELU, Hugging Face ViT and BERT.
ACTIVATIONS = {'gelu': functools.partial(jax.nn.gelu, approximate=False),
               'quick_gelu': quick_gelu}

_xavier = nnx.initializers.xavier_uniform()


def layer_norm(dim: int, epsilon: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm over the last axis, with the two-pass variance (for parity with PyTorch)."""
  validate.check_number(epsilon, 'epsilon', low=0.0)
  return nnx.LayerNorm(dim, epsilon=epsilon, use_fast_variance=False, rngs=rngs)


def check_rate(rate: float, name: str) -> None:
  """Raises ValueError unless the dropout probability `rate` is in [0, 1)."""
  validate.check_number(rate, name, low=0.0, high=1.0, high_inclusive=False)


def allowed_pairs(mask: Array | None, length: int, causal: bool) -> Array | None:
  """Which (query, key) pairs attention may use, or None for all of them.

  Args:
    mask: [B, T] padding mask (nonzero = token, 0 = padding), or None.
    length: T.
    causal: whether query i may see only keys j <= i.

  Returns:
    bool [B or 1, 1, T, T] (batch, head, query, key), or None when nothing is masked.
  """
  allowed = None if mask is None else (mask != 0)[:, None, None, :]
  if causal:
    lower = jnp.tril(jnp.ones((length, length), bool))[None, None]
    allowed = lower if allowed is None else allowed & lower
  return allowed


class SelfAttention(nnx.Module):
  """Multi-head scaled dot-product self-attention; [B, T, D] -> [B, T, D].

  Args:
    dim: model width D.
    heads: number of heads (must divide D).
    name: layer-name prefix ('block3/attn').
    rngs: parameter generators.
    causal: query i attends only to keys j <= i.
    dropout: dropout probability on the attention probabilities (training mode only).
  """

  def __init__(self, dim: int, heads: int, *, name: str, rngs: nnx.Rngs, causal: bool = False,
               dropout: float = 0.0):
    validate.check_int(dim, 'dim', minimum=1)
    validate.check_int(heads, 'heads', minimum=1)
    if dim % heads:
      raise ValueError(f'heads must be a positive divisor of dim={dim}; got {heads}.')
    validate.check_bool(causal, 'causal')
    check_rate(dropout, 'attention_dropout')
    dense = lambda part: Dense(dim, dim, name=f'{name}/{part}', kernel_init=_xavier, rngs=rngs)
    self.q, self.k, self.v, self.out = dense('q'), dense('k'), dense('v'), dense('out')
    self.heads, self.causal, self.dropout, self.name = heads, causal, dropout, name

  def __call__(self, x: Array, ctx: Context, mask: Array | None = None) -> Array:
    """x [B, T, D], optional padding mask [B, T] -> [B, T, D]."""
    b, t, d = x.shape
    # Heads first ([B, heads, T, c]): batched matmuls over (b, h) without strided operands,
    # whose gradients ran ~15% faster on XLA:CPU than 'bqhc,bkhc' (launch/bench_prm.py).
    q, k, v = (layer(x, ctx).reshape(b, t, self.heads, d // self.heads).transpose(0, 2, 1, 3)
               for layer in (self.q, self.k, self.v))
    logits = jnp.einsum('bhqc,bhkc->bhqk', q, k) / math.sqrt(d // self.heads)
    allowed = allowed_pairs(mask, t, self.causal)
    if allowed is not None:
      logits = jnp.where(allowed, logits, jnp.finfo(logits.dtype).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1), self.dropout, ctx, f'{self.name}/dropout')
    heads = jnp.einsum('bhqk,bhkc->bhqc', probs, v).transpose(0, 2, 1, 3)
    return self.out(heads.reshape(b, t, d), ctx)


class MLP(nnx.Module):
  """Dense -> activation -> dense; [B, T, D] -> [B, T, D].

  Args:
    dim: model width D.
    hidden: hidden width.
    activation: a key of `ACTIVATIONS`.
    name: layer-name prefix ('block3/mlp').
    rngs: parameter generators.
  """

  def __init__(self, dim: int, hidden: int, activation: str, *, name: str, rngs: nnx.Rngs):
    validate.check_choice(activation, ACTIVATIONS, 'activation')
    validate.check_int(hidden, 'mlp_dim', minimum=1)
    self.fc1 = Dense(dim, hidden, name=f'{name}/fc1', kernel_init=_xavier, rngs=rngs)
    self.fc2 = Dense(hidden, dim, name=f'{name}/fc2', kernel_init=_xavier, rngs=rngs)
    self.activation = activation

  def __call__(self, x: Array, ctx: Context) -> Array:
    return self.fc2(ACTIVATIONS[self.activation](self.fc1(x, ctx)), ctx)


class EncoderBlock(nnx.Module):
  """Residual attention + MLP block, pre-LN or post-LN; [B, T, D] -> [B, T, D].

  Args:
    dim: model width D.
    heads: attention heads.
    mlp_dim: MLP hidden width.
    activation: MLP activation, a key of `ACTIVATIONS`.
    epsilon: layer-norm epsilon.
    name: layer-name prefix and tap name ('block3').
    rngs: parameter generators.
    norm_first: pre-LN (True: ViT, CLIP) or post-LN (False: BERT).
    causal: causal self-attention (CLIP's text tower).
    dropout: dropout probability on each sub-layer's output (training mode only).
    attention_dropout: dropout probability on the attention probabilities.

  Raises:
    ValueError: a size that is not a positive integer, heads not dividing dim, an unknown
      activation, a non-bool option, a dropout rate outside [0, 1), epsilon < 0.
  """

  def __init__(self, dim: int, heads: int, mlp_dim: int, *, activation: str, epsilon: float,
               name: str, rngs: nnx.Rngs, norm_first: bool = True, causal: bool = False,
               dropout: float = 0.0, attention_dropout: float = 0.0):
    validate.check_bool(norm_first, 'norm_first')
    check_rate(dropout, 'dropout')
    self.ln1 = layer_norm(dim, epsilon, rngs)
    self.attn = SelfAttention(dim, heads, name=f'{name}/attn', causal=causal,
                              dropout=attention_dropout, rngs=rngs)
    self.ln2 = layer_norm(dim, epsilon, rngs)
    self.mlp = MLP(dim, mlp_dim, activation, name=f'{name}/mlp', rngs=rngs)
    self.name, self.norm_first, self.dropout = name, norm_first, dropout

  def __call__(self, x: Array, ctx: Context, mask: Array | None = None) -> Array:
    """x [B, T, D], optional padding mask [B, T] (1 = token, 0 = padding) -> [B, T, D]."""
    drop = lambda y, i: dropout(y, self.dropout, ctx, f'{self.name}/dropout{i}')
    if self.norm_first:
      x = x + drop(self.attn(self.ln1(x), ctx, mask), 1)
      return x + drop(self.mlp(self.ln2(x), ctx), 2)
    x = self.ln1(x + drop(self.attn(x, ctx, mask), 1))
    return self.ln2(x + drop(self.mlp(x, ctx), 2))
