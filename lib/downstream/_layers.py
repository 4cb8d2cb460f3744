"""Pure building blocks of the heads: dense and per-patch layers over param dicts, checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = dict[str, Any]


def dense_init(key: Array, fan_in: int, fan_out: int, *, bias: float = 0.0) -> Params:
  """{'kernel': [fan_in, fan_out] LeCun-normal, 'bias': [fan_out] filled with `bias`}."""
  kernel = jax.random.normal(key, (fan_in, fan_out), jnp.float32) / np.sqrt(fan_in)
  return {'kernel': kernel, 'bias': jnp.full((fan_out,), bias, jnp.float32)}


def dense(params: Params, x: Array) -> Array:
  """x [..., fan_in] -> [..., fan_out]."""
  return x @ params['kernel'] + params['bias']


def patch_head_init(key: Array, dim: int, out: int, hidden: int, *, bias: float = 0.0) -> Params:
  """Params of `patch_head`: a 3x3 conv of `hidden` channels (if hidden > 0), then 1x1."""
  k1, k2 = jax.random.split(key)
  params = {'out': dense_init(k2, hidden or dim, out, bias=bias)}
  if hidden:
    params['conv'] = dense_init(k1, 9 * dim, hidden)
  return params


def patch_head(params: Params, tokens: Array) -> Array:
  """Per-patch outputs [B, h, w, out] of tokens [B, h, w, D].

  A 1x1 linear layer, or (with a 'conv' entry) a 3x3 convolution with zero padding and a
  ReLU before it, written as a dense layer over the 3x3 neighbourhoods.
  """
  if 'conv' in params:
    _, h, w, _ = tokens.shape
    padded = jnp.pad(tokens, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                              axis=-1)
    tokens = jax.nn.relu(dense(params['conv'], windows))
  return dense(params['out'], tokens)


def check_int_field(batch: Mapping[str, np.ndarray], key: str, name: str, *, shape: tuple,
                    low: int, high: int) -> None:
  """Raises ValueError unless batch[key] is an integer array of `shape` in [low, high).

  `shape` may hold None for any size (e.g. the batch axis).
  """
  values = np.asarray(batch[key])
  expected = tuple(values.shape[i] if s is None else s for i, s in enumerate(shape))
  if values.ndim != len(shape) or values.shape != expected:
    raise ValueError(f"{name}[{key!r}] must have shape {shape} (None: any); got "
                     f'{values.shape}.')
  if not np.issubdtype(values.dtype, np.integer):
    raise ValueError(f'{name}[{key!r}] must be integer; got {values.dtype}.')
  if values.size and (values.min() < low or values.max() >= high):
    raise ValueError(f'{name}[{key!r}] must lie in [{low}, {high}); got values in '
                     f'[{values.min()}, {values.max()}].')
