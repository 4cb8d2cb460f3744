"""The interface every data source offers: random access to numpy batches.

A batch is a dict of numpy arrays sharing the leading batch axis B:

- 'image': float32 [B, H, W, C], pixels in [0, 1], C = 1 or 3.
- 'label': int32 [B], class index in [0, num_classes).
- optional 'mask': float32 [B, H, W] in {0, 1}, ground-truth evidence (the pixels of the
  class-determining object).
- optional 'segmentation': int32 [B, H, W], 0 = background, i + 1 = `categories[i]`.
- optional 'boxes': float32 [B, N, 4] as (y0, x0, y1, x1) in [0, 1], with 'box_labels'
  int32 [B, N] (index into `categories`), padded at the end with -1 and zero boxes.
- optional 'caption': str [B]; 'question' and 'answer': str [B, Q].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

import numpy as np

Batch = dict[str, np.ndarray]

# dtype each field has in a batch; storage may be narrower (uint8 images, bool masks).
_BATCH_DTYPES = {
    'image': np.float32,
    'label': np.int32,
    'mask': np.float32,
    'segmentation': np.int32,
    'boxes': np.float32,
    'box_labels': np.int32,
}


class Dataset(Protocol):
  """A finite, random-access split of a data set.

  Attributes:
    name: canonical name, e.g. 'shapes' or 'tfds:mnist' (also for the alias 'mnist').
    split: the split name, e.g. 'train'.
    class_names: one name per class index.
    image_shape: (H, W, C) of every image.
  """

  name: str
  split: str
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]

  @property
  def num_classes(self) -> int:
    """Number of classes; labels lie in [0, num_classes)."""

  def __len__(self) -> int:
    """Number of examples in the split."""

  def get(self, indices: np.ndarray) -> Batch:
    """Returns the examples at `indices` (int [B], each in [0, len)) as a batch."""


def check_indices(indices: np.ndarray, size: int) -> np.ndarray:
  """Returns `indices` as a 1-D integer array, raising if any lies outside [0, size)."""
  indices = np.asarray(indices)
  if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
    raise ValueError(f'indices must be a 1-D integer array; got shape {indices.shape}, '
                     f'dtype {indices.dtype}.')
  if indices.size and (indices.min() < 0 or indices.max() >= size):
    raise IndexError(
        f'indices must lie in [0, {size}); got values in [{indices.min()}, {indices.max()}].')
  return indices.astype(np.int64, copy=False)


def to_batch_dtype(key: str, values: np.ndarray) -> np.ndarray:
  """Converts a stored field to its batch dtype (uint8 images are scaled to [0, 1])."""
  if key == 'image' and values.dtype == np.uint8:
    return values.astype(np.float32) * np.float32(1 / 255)
  dtype = _BATCH_DTYPES.get(key)
  return values if dtype is None else values.astype(dtype, copy=False)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
  """A split held in memory as arrays with a shared leading axis; `get` gathers rows.

  Fields may be stored narrower than their batch dtype (uint8 images, bool masks, uint8
  segmentations) to save memory; `get` converts them. The arrays are made read-only so a
  cached split cannot be changed through a batch.

  Attributes:
    name: registry name.
    split: split name.
    class_names: one name per class index.
    arrays: field name -> array [N, ...]; must hold 'image' [N, H, W, C] and 'label' [N].
    categories: names of the ids in 'segmentation' (id i + 1) and 'box_labels' (id i);
      empty when the data set has neither.
  """

  name: str
  split: str
  class_names: tuple[str, ...]
  arrays: Mapping[str, np.ndarray]
  categories: tuple[str, ...] = ()

  def __post_init__(self):
    images, labels = self.arrays.get('image'), self.arrays.get('label')
    if images is None or images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"arrays['image'] must have shape [N, H, W, C] with C in (1, 3); got "
                       f'{None if images is None else images.shape}.')
    if labels is None or labels.shape != images.shape[:1]:
      raise ValueError(f"arrays['label'] must have shape [{len(images)}]; got "
                       f'{None if labels is None else labels.shape}.')
    for key, values in self.arrays.items():
      if len(values) != len(images):
        raise ValueError(f'arrays[{key!r}] has {len(values)} rows; expected {len(images)}.')
      values.flags.writeable = False

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.arrays['image'].shape[1:])

  def __len__(self) -> int:
    return len(self.arrays['label'])

  def get(self, indices: np.ndarray) -> Batch:
    """Gathers the rows at `indices` (int [B]) of every field, in batch dtypes."""
    indices = check_indices(indices, len(self))
    return {key: to_batch_dtype(key, values[indices]) for key, values in self.arrays.items()}
