"""`get_dataset`: one entry point that picks a loader by name."""

from __future__ import annotations

from typing import Any

from lib.data import _bios, _bios_files, _digits, _shapes, _tfds
from lib.data._dataset import Dataset

_TFDS_PREFIX = 'tfds:'
# Embedded data sets: name -> loader(split, *, image_size, seed, **kwargs).
_EMBEDDED = {'digits': _digits.load, 'shapes': _shapes.load, 'bios': _bios.load}
# Data sets read from a user's local files, called like the embedded loaders.
_LOCAL = {'bias_in_bios': _bios_files.load}
# Plain names that mean 'tfds:<name>'.
TFDS_ALIASES = ('mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'imagenet2012', 'svhn_cropped')
NAMES = tuple(_EMBEDDED) + tuple(_LOCAL) + TFDS_ALIASES


def get_dataset(name: str, split: str = 'train', *, image_size: int | None = None, seed: int = 0,
                **kwargs: Any) -> Dataset:
  """Loads a split of a data set by name.

  Names:
    'digits': scikit-learn's handwritten digits, embedded; splits 'train' (1500) and 'test'
      (297); image_size any integer >= 8 (default 32); kwarg channels=1 or 3.
    'shapes': procedural scenes with masks, boxes, captions and QA, embedded; splits
      'train', 'validation', 'test'; image_size a multiple of 8 in [32, 256] (default 32);
      kwarg num_examples (default 10000/1000/2000).
    'bios': generated biographies (text, no image: image_size must be None and the
      Dataset's image_shape is None), embedded; splits 'train', 'validation', 'test'; fields
      'text', 'profession' (28 Bias in Bios classes), 'gender' (0 male, 1 female), 'label';
      kwargs num_examples (default 10000/1000/2000), task='profession' or 'gender' (sets
      'label' and num_classes), gender_leak in [0, 1] (default 1: names match the gender;
      0: the text is independent of it), gender_correlation in [0, 1] (default 0.5: how
      strongly the profession predicts the gender); see lib/data/_bios.py.
    'bias_in_bios': the real Bias in Bios from local files, the same fields as 'bios';
      kwarg path (required): a .parquet file of Hugging Face LabHC/bias_in_bios, a .jsonl
      file of microsoft/biosbias records, or a directory searched for both; all rows are
      pooled, pronouns replaced by they/them/their, shuffled with `seed` and split 85/5/10
      into 'train', 'validation', 'test'; kwargs task, text_field, drop_unknown; see
      lib/data/_bios_files.py.
    'tfds:<name>' (or a plain alias in TFDS_ALIASES, e.g. 'mnist', 'cifar10',
      'imagenet2012'): a prepared TFDS image-classification set read through
      `tfds.data_source`; image_size resizes the shorter side and centre-crops (default:
      native size); kwargs data_dir and download.

  Args:
    name: one of the names above.
    split: split name (TFDS split strings such as 'train[:10%]' for TFDS sets).
    image_size: output side H = W in pixels, or None for the data set's default (text sets
      accept only None).
    seed: generator seed of procedural data sets ('shapes', 'bios'), split shuffle seed of
      'bias_in_bios'; fixed data sets ignore it.
    **kwargs: loader-specific options listed above.

  Returns:
    A Dataset: `len`, `get(indices)`, `num_classes`, `class_names`, `image_shape` (None for
    text sets), `name`, `split`.

  Raises:
    ValueError: for an unknown name, split or image size, naming the valid choices.

  Example:
    >>> ds = get_dataset('shapes', 'validation', image_size=64)
    >>> ds.get(np.arange(4))['mask'].shape
    (4, 64, 64)
  """
  loaders = {**_EMBEDDED, **_LOCAL}
  if name in loaders:
    return loaders[name](split, image_size=image_size, seed=seed, **kwargs)
  if name in TFDS_ALIASES:
    return _tfds.load(name, split, image_size=image_size, seed=seed, **kwargs)
  if isinstance(name, str) and name.startswith(_TFDS_PREFIX) and name != _TFDS_PREFIX:
    return _tfds.load(name.removeprefix(_TFDS_PREFIX), split, image_size=image_size, seed=seed,
                      **kwargs)
  raise ValueError(f'name={name!r} is not a known data set; expected one of {list(NAMES)} '
                   f"or '{_TFDS_PREFIX}<name>' for any TFDS image-classification data set.")
