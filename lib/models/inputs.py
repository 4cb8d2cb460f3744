"""Input families: what one example of a model's inputs looks like, and how to check a batch.

A `PureModel` is built from an `InputSpec`: `example` is a pytree of `jax.ShapeDtypeStruct`
for a batch of one (the model is traced on it to learn its taps and layers), and `check`
validates a batch eagerly at the public boundary (shapes and dtypes always; values only
when concrete, see `lib.validate`).

  Images(shape)                 x: float [B, H, W, C], finite, pixels in [0, 1]
  Tokens(max_len, vocab_size)   {'input_ids': int [B, T], 'attention_mask': int/bool [B, T]}
                                ids in [0, vocab_size), mask of 1 (token) / 0 (padding),
                                1 <= T <= max_len
  NoisyImages(shape)            {'x': float [B, H, W, C] finite, 't': [B] finite, >= 0}

A model family with other inputs subclasses `InputSpec`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax
import numpy as np

from lib import validate


class InputSpec(abc.ABC):
  """The inputs a model family takes."""

  @property
  @abc.abstractmethod
  def example(self) -> Any:
    """A pytree of `jax.ShapeDtypeStruct` for one example (batch size 1)."""

  @property
  def shape(self) -> tuple[int, ...]:
    """Per-example shape of the primary input (images' (H, W, C), tokens' (T,))."""
    return tuple(jax.tree.leaves(self.example)[0].shape[1:])

  @abc.abstractmethod
  def check(self, inputs: Any, name: str = 'x') -> None:
    """Raises ValueError unless `inputs` is a valid batch of this family."""


def batch_size(inputs: Any) -> int:
  """Leading dimension of the first leaf of a batch of inputs."""
  return int(jax.tree.leaves(inputs)[0].shape[0])


def _check_array(x: Any, name: str, rank: int) -> None:
  if not hasattr(x, 'shape') or not hasattr(x, 'dtype'):
    raise ValueError(f'{name} must be an array of rank {rank}; got {type(x).__name__}.')
  if x.ndim != rank:
    raise ValueError(f'{name} must have rank {rank}; got shape {tuple(x.shape)}.')


def _check_keys(inputs: Any, keys: tuple[str, ...], name: str) -> None:
  if not isinstance(inputs, dict) or set(inputs) != set(keys):
    got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
    raise ValueError(f'{name} must be a dict with keys {list(keys)}; got {got}.')


def _check_same_batch(inputs: dict[str, Any], name: str) -> None:
  sizes = {k: v.shape[0] for k, v in inputs.items()}
  if len(set(sizes.values())) > 1:
    raise ValueError(f'{name} entries must share the batch size; got {sizes}.')


def _shape3(shape: Any, name: str) -> tuple[int, int, int]:
  validate.check_ints(shape, name, minimum=1, length=3)
  return tuple(int(s) for s in shape)


@dataclasses.dataclass(frozen=True)
class Images(InputSpec):
  """Float images [B, H, W, C] with pixels in [0, 1].

  Args:
    image_shape: (H, W, C) of one image, positive integers.
  """
  image_shape: tuple[int, int, int]

  def __post_init__(self):
    object.__setattr__(self, 'image_shape', _shape3(self.image_shape, 'input_shape'))

  @property
  def example(self) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, *self.image_shape), np.float32)

  def check(self, inputs: Any, name: str = 'x') -> None:
    validate.check_images(inputs, name, shape=self.image_shape)


@dataclasses.dataclass(frozen=True)
class Tokens(InputSpec):
  """Token ids with an attention mask: {'input_ids': [B, T], 'attention_mask': [B, T]}.

  Args:
    max_len: longest sequence T the model takes (its position embeddings).
    vocab_size: number of token ids; ids lie in [0, vocab_size).
  """
  max_len: int
  vocab_size: int

  def __post_init__(self):
    validate.check_int(self.max_len, 'max_len', minimum=1)
    validate.check_int(self.vocab_size, 'vocab_size', minimum=1)

  @property
  def example(self) -> dict[str, jax.ShapeDtypeStruct]:
    spec = jax.ShapeDtypeStruct((1, self.max_len), np.int32)
    return {'input_ids': spec, 'attention_mask': spec}

  def check(self, inputs: Any, name: str = 'x') -> None:
    _check_keys(inputs, ('input_ids', 'attention_mask'), name)
    ids, mask = inputs['input_ids'], inputs['attention_mask']
    _check_array(ids, f"{name}['input_ids']", 2)
    _check_array(mask, f"{name}['attention_mask']", 2)
    if not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"{name}['input_ids'] must have an integer dtype; got {ids.dtype}.")
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
      raise ValueError(f"{name}['attention_mask'] must be integer or bool (1 = token, "
                       f'0 = padding); got {mask.dtype}.')
    if ids.shape != mask.shape:
      raise ValueError(f"{name}['attention_mask'] must have the shape of input_ids "
                       f'{tuple(ids.shape)}; got {tuple(mask.shape)}.')
    if not 1 <= ids.shape[1] <= self.max_len:
      raise ValueError(f"{name}['input_ids'] must have 1 to max_len={self.max_len} tokens; "
                       f'got {ids.shape[1]}.')
    if validate.is_concrete(ids):
      a = np.asarray(ids)
      if a.size and (a.min() < 0 or a.max() >= self.vocab_size):
        raise ValueError(f"{name}['input_ids'] must lie in [0, {self.vocab_size}); got values "
                         f'in [{a.min()}, {a.max()}].')
    if validate.is_concrete(mask) and not np.isin(np.asarray(mask), (0, 1)).all():
      raise ValueError(f"{name}['attention_mask'] must hold only 0 (padding) and 1 (token).")


@dataclasses.dataclass(frozen=True)
class NoisyImages(InputSpec):
  """A denoiser's inputs: {'x': float [B, H, W, C] noisy images, 't': [B] timesteps}.

  Noisy images are not restricted to a pixel range (only finite); timesteps are integer
  steps or continuous times, finite and non-negative.

  Args:
    image_shape: (H, W, C) of one image.
  """
  image_shape: tuple[int, int, int]

  def __post_init__(self):
    object.__setattr__(self, 'image_shape', _shape3(self.image_shape, 'input_shape'))

  @property
  def example(self) -> dict[str, jax.ShapeDtypeStruct]:
    return {'x': jax.ShapeDtypeStruct((1, *self.image_shape), np.float32),
            't': jax.ShapeDtypeStruct((1,), np.int32)}

  @property
  def shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the noisy images (the primary input; not the timesteps' ())."""
    return self.image_shape

  def check(self, inputs: Any, name: str = 'x') -> None:
    _check_keys(inputs, ('x', 't'), name)
    validate.check_images(inputs['x'], f"{name}['x']", shape=self.image_shape,
                          value_range=None)
    t = inputs['t']
    _check_array(t, f"{name}['t']", 1)
    if not (np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating)):
      raise ValueError(f"{name}['t'] must be integer or float timesteps; got {t.dtype}.")
    _check_same_batch(inputs, name)
    validate.check_finite(t, f"{name}['t']")
    if validate.is_concrete(t) and np.asarray(t).size and np.asarray(t).min() < 0:
      raise ValueError(f"{name}['t'] must be non-negative; got min {np.asarray(t).min()}.")
