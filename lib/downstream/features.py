"""The image-feature interface every downstream head reads, and an adapter for ViT taps.

An encoder is any callable `encode(params, images) -> (patch_tokens, image_embedding)`:

  images           float [B, H, W, C] in [0, 1]
  patch_tokens     float [B, h, w, E]  one token per patch, class token removed
  image_embedding  float [B, E]        the pooled embedding (CLIP: proj(LN(CLS)))

Both live in the same E-dimensional space as the caller's text embeddings [K, E] (zero-shot
heads compare them by cosine). For CLIP, `image_embedding` is the visual projection of the
final LayerNorm of the class token; `patch_tokens` are what MaskCLIP (Zhou, Loy & Dai 2022,
"Extract Free Dense Labels from CLIP", §3) uses: in the last attention layer the query-key
attention is dropped and each patch keeps its own value embedding, passed through the
output projection, the final LayerNorm and the visual projection. Which variant an encoder
uses is its own choice; the heads only assume the shapes above.

`encode` must be hashable and reused across calls (a function, a bound method or a frozen
dataclass such as `TapEncoder`): the jitted training and prediction programs take it as a
static argument and compile once per encoder.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from lib import contract

Array = jax.Array
Encode = Callable[[Any, Array], tuple[Array, Array]]


class Features(NamedTuple):
  """What an encoder gives a head.

  Attributes:
    patch_tokens: [B, h, w, E] per-patch tokens (class token removed).
    image_embedding: [B, E] pooled image embedding.
  """
  patch_tokens: Array
  image_embedding: Array


def check_features(features: Any, name: str = 'encode(params, images)') -> Features:
  """`features` as `Features`, raising ValueError unless its shapes follow the interface."""
  if not isinstance(features, tuple) or len(features) != 2:
    raise ValueError(f'{name} must return (patch_tokens [B, h, w, E], image_embedding [B, E]); '
                     f'got {type(features).__name__}.')
  tokens, embedding = features
  if getattr(tokens, 'ndim', None) != 4:
    raise ValueError(f'{name}: patch_tokens must have shape [B, h, w, E]; got '
                     f'{getattr(tokens, "shape", None)}.')
  if getattr(embedding, 'ndim', None) != 2 or embedding.shape[0] != tokens.shape[0]:
    raise ValueError(f'{name}: image_embedding must have shape [B={tokens.shape[0]}, E]; got '
                     f'{getattr(embedding, "shape", None)}.')
  return Features(tokens, embedding)


def check_patch_tokens(tokens: Any, name: str = 'patch_tokens') -> None:
  """Raises ValueError unless `tokens` is a float [B, h, w, E] array."""
  if getattr(tokens, 'ndim', None) != 4 or not np.issubdtype(tokens.dtype, np.floating):
    raise ValueError(f'{name} must be a float array [B, h, w, E]; got shape '
                     f'{getattr(tokens, "shape", None)}, dtype {getattr(tokens, "dtype", None)}.')


def check_embeddings(embeddings: Any, dim: int | None, name: str) -> None:
  """Raises ValueError unless `embeddings` is a finite float [K, E] array (E = dim if given)."""
  shape = getattr(embeddings, 'shape', None)
  if shape is None or len(shape) != 2 or shape[0] < 1:
    raise ValueError(f'{name} must be a float array [K, E] with K >= 1; got shape {shape}.')
  if dim is not None and shape[1] != dim:
    raise ValueError(f'{name} must have E={dim} columns (the image features\' width); got '
                     f'{shape[1]}.')
  if not np.issubdtype(embeddings.dtype, np.floating):
    raise ValueError(f'{name} must be floating point; got {embeddings.dtype}.')


@dataclasses.dataclass(frozen=True)
class TapEncoder:
  """`encode` for a ViT-like `apply` that honours `lib.contract`.

  `patch_tokens` are the tokens of tap `tap` ([B, 1 + h*w, D], class token first) without
  the class token, on a square h x w grid, mapped by `project` if given; `image_embedding`
  is `Outputs.features` (for `lib.models` 'vit': the final LayerNorm of the class token).

  Training-free heads (MaskCLIP, zero-shot boxes) compare patch tokens with text
  embeddings, so for them `project` must take the tokens into the embedding space of
  `features` (CLIP: the final LayerNorm and the visual projection); trained heads work on
  raw hidden states as well.

  Attributes:
    apply: `apply(params, images) -> Outputs` (e.g. a headless `PureModel.apply`).
    tap: the tap holding the last hidden state, e.g. 'block{depth-1}'.
    project: optional hashable `project(params, tokens [B, h, w, D]) -> [B, h, w, E]`.
  """
  apply: contract.Apply
  tap: str
  project: Callable[[Any, Array], Array] | None = None

  def __call__(self, params: Any, images: Array) -> tuple[Array, Array]:
    """[B, H, W, C] images -> (patch_tokens [B, h, w, D], image_embedding [B, D])."""
    out = contract.as_outputs(self.apply(params, images))
    if self.tap not in out.taps or out.features is None:
      raise ValueError(f'TapEncoder needs apply to return tap {self.tap!r} and features; it '
                       f'returned taps {sorted(out.taps)} and features={out.features is not None}.')
    tokens = out.taps[self.tap][:, 1:]
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
      raise ValueError(f'tap {self.tap!r} has {tokens.shape[1]} patch tokens, not a square grid.')
    tokens = tokens.reshape(tokens.shape[0], side, side, tokens.shape[-1])
    if self.project is not None:
      tokens = self.project(params, tokens)
    return tokens, out.features
