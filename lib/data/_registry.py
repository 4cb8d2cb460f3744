"""`get_dataset`: one entry point that picks a loader by name."""

from __future__ import annotations

from typing import Any

from lib.data import _digits, _shapes, _tfds
from lib.data._dataset import Dataset

_TFDS_PREFIX = 'tfds:'
# Embedded data sets: name -> loader(split, *, image_size, seed, **kwargs).
_EMBEDDED = {'digits': _digits.load, 'shapes': _shapes.load}
# Plain names that mean 'tfds:<name>'.
TFDS_ALIASES = ('mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'imagenet2012', 'svhn_cropped')
NAMES = tuple(_EMBEDDED) + TFDS_ALIASES


def get_dataset(name: str, split: str = 'train', *, image_size: int | None = None, seed: int = 0,
                **kwargs: Any) -> Dataset:
  """Loads a split of a data set by name.

  Names:
    'digits': scikit-learn's handwritten digits, embedded; splits 'train' (1500) and 'test'
      (297); image_size any integer >= 8 (default 32); kwarg channels=1 or 3.
    'shapes': procedural scenes with masks, boxes, captions and QA, embedded; splits
      'train', 'validation', 'test'; image_size a multiple of 8 in [32, 256] (default 32);
      kwarg num_examples (default 10000/1000/2000).
    'tfds:<name>' (or a plain alias in TFDS_ALIASES, e.g. 'mnist', 'cifar10',
      'imagenet2012'): a prepared TFDS image-classification set read through
      `tfds.data_source`; image_size resizes the shorter side and centre-crops (default:
      native size); kwargs data_dir and download.

  Args:
    name: one of the names above.
    split: split name (TFDS split strings such as 'train[:10%]' for TFDS sets).
    image_size: output side H = W in pixels, or None for the data set's default.
    seed: generator seed of procedural data sets ('shapes'); fixed data sets ignore it.
    **kwargs: loader-specific options listed above.

  Returns:
    A Dataset: `len`, `get(indices)`, `num_classes`, `class_names`, `image_shape`,
    `name`, `split`.

  Raises:
    ValueError: for an unknown name, split or image size, naming the valid choices.

  Example:
    >>> ds = get_dataset('shapes', 'validation', image_size=64)
    >>> ds.get(np.arange(4))['mask'].shape
    (4, 64, 64)
  """
  if name in _EMBEDDED:
    return _EMBEDDED[name](split, image_size=image_size, seed=seed, **kwargs)
  if name in TFDS_ALIASES:
    return _tfds.load(name, split, image_size=image_size, seed=seed, **kwargs)
  if isinstance(name, str) and name.startswith(_TFDS_PREFIX) and name != _TFDS_PREFIX:
    return _tfds.load(name.removeprefix(_TFDS_PREFIX), split, image_size=image_size, seed=seed,
                      **kwargs)
  raise ValueError(f'name={name!r} is not a known data set; expected one of {list(NAMES)} '
                   f"or '{_TFDS_PREFIX}<name>' for any TFDS image-classification data set.")
