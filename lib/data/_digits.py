"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), upsampled; offline.

The images ship inside the scikit-learn wheel (UCI optical recognition of handwritten
digits, test part). Pixel counts 0..16 become intensities k / 16, are resized once per
`image_size` with bilinear interpolation and cached in memory.

Splits are a fixed stratified partition (`sklearn.model_selection.train_test_split`,
random_state=0): 'train' has 1500 images, 'test' 297, both with the class proportions of
the whole set. The partition does not depend on any user seed.
"""

from __future__ import annotations

import functools

import numpy as np

from lib.data import _image_ops
from lib.data._checks import check_int
from lib.data._dataset import ArrayDataset
from lib.validate import check_choice

SPLITS = ('train', 'test')
_TEST_SIZE = 297
_SPLIT_SEED = 0
_NATIVE_SIZE = 8


@functools.cache
def _split_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Split name -> (images float32 [N, 8, 8] in [0, 1], labels int32 [N])."""
  # scikit-learn takes about 2 s to import; only users of this data set pay for it.
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = (digits.images / 16).astype(np.float32)
  labels = digits.target.astype(np.int32)
  train_x, test_x, train_y, test_y = model_selection.train_test_split(
      images, labels, test_size=_TEST_SIZE, stratify=labels, random_state=_SPLIT_SEED)
  return {'train': (train_x, train_y), 'test': (test_x, test_y)}


@functools.lru_cache(maxsize=8)
def _load_cached(split: str, image_size: int, channels: int) -> ArrayDataset:
  images, labels = _split_arrays()[split]
  if image_size != _NATIVE_SIZE:
    images = np.clip(_image_ops.resize_bilinear(images, image_size, image_size), 0, 1)
  images = np.repeat(images[..., None], channels, axis=-1)
  return ArrayDataset(name='digits', split=split, class_names=tuple(str(d) for d in range(10)),
                      arrays={'image': images, 'label': labels})


def load(split: str, *, image_size: int | None, seed: int, channels: int = 1) -> ArrayDataset:
  """Loads a split of the digits data set.

  Args:
    split: 'train' (1500 images) or 'test' (297 images).
    image_size: output side H = W in pixels, any integer >= 8; None for 32.
    seed: unused: the split is fixed (accepted so all loaders share one signature).
    channels: 1 (grey) or 3 (grey repeated over RGB).

  Returns:
    An ArrayDataset of images float32 [N, S, S, channels] in [0, 1] and labels in 0..9.
  """
  del seed  # The split is fixed; nothing here is random.
  check_choice(split, SPLITS, 'split')
  image_size = 32 if image_size is None else image_size
  check_int(image_size, 'image_size', minimum=_NATIVE_SIZE)
  check_choice(channels, (1, 3), 'channels')
  return _load_cached(split, int(image_size), int(channels))
