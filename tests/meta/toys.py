"""Toys of the meta tests: a tiny MLP encoder honouring the model contract."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lib.contract import Outputs


def mlp_apply(params, x):
  """Two tanh layers; `features` [B, D] is the second one (an encoder, no head)."""
  h = jnp.tanh(x @ params['w1'] + params['b1'])
  return Outputs(features=jnp.tanh(h @ params['w2'] + params['b2']))


def mlp_init(key, d_in: int, hidden: int, d_out: int, dtype=jnp.float32):
  k1, k2 = jax.random.split(key)
  return {'w1': jax.random.normal(k1, (d_in, hidden), dtype) / np.sqrt(d_in),
          'b1': jnp.zeros((hidden,), dtype),
          'w2': jax.random.normal(k2, (hidden, d_out), dtype) / np.sqrt(hidden),
          'b2': jnp.zeros((d_out,), dtype)}
