"""Pre-LN transformer encoder blocks (Vaswani et al. 2017; pre-LN as in ViT, Dosovitskiy 2021).

  y = x + attn(LN1(x));  out = y + mlp(LN2(y))          (all [B, T, D])

Every dense layer goes through `Context.linear` under a path-like name ('block3/attn/q',
'block3/attn/k', 'block3/attn/v', 'block3/attn/out', 'block3/mlp/fc1', 'block3/mlp/fc2'),
so layer rules can intercept them. The query-key product, the softmax and the layer norms
are not linear layers and are crossed with their plain gradient. Query, key and value are
separate projections, as in the Hugging Face CLIP layout (`q_proj`, `k_proj`, `v_proj`).
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from lib import validate
from lib.models.core import Context
from lib.models.layers import Dense

Array = jax.Array


def quick_gelu(x: Array) -> Array:
  """OpenAI CLIP's GELU approximation x * sigmoid(1.702 x) (Radford et al. 2021)."""
  return x * jax.nn.sigmoid(1.702 * x)


# 'gelu' is the exact (erf) GELU of PyTorch's nn.GELU and Hugging Face ViT.
ACTIVATIONS = {'gelu': functools.partial(jax.nn.gelu, approximate=False),
               'quick_gelu': quick_gelu}

_xavier = nnx.initializers.xavier_uniform()


def layer_norm(dim: int, epsilon: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm over the last axis, with the two-pass variance (for parity with PyTorch)."""
  return nnx.LayerNorm(dim, epsilon=epsilon, use_fast_variance=False, rngs=rngs)


class SelfAttention(nnx.Module):
  """Multi-head scaled dot-product self-attention; [B, T, D] -> [B, T, D].

  Args:
    dim: model width D.
    heads: number of heads (must divide D).
    name: layer-name prefix ('block3/attn').
    rngs: parameter generators.
  """

  def __init__(self, dim: int, heads: int, *, name: str, rngs: nnx.Rngs):
    if heads < 1 or dim % heads:
      raise ValueError(f'heads must be a positive divisor of dim={dim}; got {heads}.')
    dense = lambda part: Dense(dim, dim, name=f'{name}/{part}', kernel_init=_xavier, rngs=rngs)
    self.q, self.k, self.v, self.out = dense('q'), dense('k'), dense('v'), dense('out')
    self.heads = heads

  def __call__(self, x: Array, ctx: Context) -> Array:
    b, t, d = x.shape
    q, k, v = (layer(x, ctx).reshape(b, t, self.heads, d // self.heads)
               for layer in (self.q, self.k, self.v))
    return self.out(jax.nn.dot_product_attention(q, k, v).reshape(b, t, d), ctx)


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
    self.fc1 = Dense(dim, hidden, name=f'{name}/fc1', kernel_init=_xavier, rngs=rngs)
    self.fc2 = Dense(hidden, dim, name=f'{name}/fc2', kernel_init=_xavier, rngs=rngs)
    self.activation = activation

  def __call__(self, x: Array, ctx: Context) -> Array:
    return self.fc2(ACTIVATIONS[self.activation](self.fc1(x, ctx)), ctx)


class EncoderBlock(nnx.Module):
  """Pre-LN residual block: x + attn(LN(x)), then + mlp(LN(.)); [B, T, D] -> [B, T, D].

  Args:
    dim: model width D.
    heads: attention heads.
    mlp_dim: MLP hidden width.
    activation: MLP activation, a key of `ACTIVATIONS`.
    epsilon: layer-norm epsilon.
    name: layer-name prefix and tap name ('block3').
    rngs: parameter generators.
  """

  def __init__(self, dim: int, heads: int, mlp_dim: int, *, activation: str, epsilon: float,
               name: str, rngs: nnx.Rngs):
    self.ln1 = layer_norm(dim, epsilon, rngs)
    self.attn = SelfAttention(dim, heads, name=f'{name}/attn', rngs=rngs)
    self.ln2 = layer_norm(dim, epsilon, rngs)
    self.mlp = MLP(dim, mlp_dim, activation, name=f'{name}/mlp', rngs=rngs)
    self.name = name

  def __call__(self, x: Array, ctx: Context) -> Array:
    x = x + self.attn(self.ln1(x), ctx)
    return x + self.mlp(self.ln2(x), ctx)
