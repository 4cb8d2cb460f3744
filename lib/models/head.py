"""The optional classification head shared by every family: pooled features -> logits.

A model built with `num_classes=None` is an encoder: it has no 'head' layer and returns
`Outputs(logits=None, features=...)`.
"""

from __future__ import annotations

import jax
from flax import nnx

from lib.contract import Context, Outputs
from lib.models.layers import Dense

Array = jax.Array


def make_head(in_features: int, num_classes: int | None, *, rngs: nnx.Rngs) -> Dense | None:
  """The dense layer 'head' [in_features -> num_classes], or None when num_classes is None."""
  return None if num_classes is None else Dense(in_features, num_classes, name='head', rngs=rngs)


def pooled_outputs(head: Dense | None, features: Array, ctx: Context) -> Outputs:
  """`Outputs(logits=head(features) or None, features=features)`; features [B, D]."""
  return Outputs(logits=None if head is None else head(features, ctx), features=features)
