"""TFDS image-classification data sets through `tfds.data_source` (array_record, no TensorFlow).

Any TFDS data set whose features hold an 'image' (`tfds.features.Image`, 1 or 3 channels)
and a 'label' (`tfds.features.ClassLabel`) works; other features are dropped. Records are
read and decoded one by one in `get`, so a split costs no memory up front. Nothing is
downloaded unless `download=True`: the data set must already be prepared in the array_record
format (`tfds build <name> --file_format=array_record`) under `data_dir` (TFDS's default
directory when None).

With `image_size`, every image is resized so that its shorter side is `image_size` (PIL
bilinear, antialiased when shrinking) and the centre `image_size` x `image_size` square is
kept; images already of that size are left untouched. Without it, the data set must have a
fixed image shape (e.g. MNIST, CIFAR); ImageNet-like sets need `image_size`.
"""

from __future__ import annotations

import numpy as np

from lib.data import _image_ops
from lib.data._checks import check_int
from lib.data._dataset import Batch, check_indices
from lib.validate import check_choice

# Data sets named in error messages; any other TFDS name with 'image' and 'label' works too.
KNOWN_NAMES = ('mnist', 'fashion_mnist', 'kmnist', 'emnist', 'cifar10', 'cifar100',
               'svhn_cropped', 'stl10', 'imagenet2012', 'imagenette', 'imagenet_resized/32x32',
               'caltech101', 'oxford_flowers102', 'food101')


class TfdsDataset:
  """A TFDS split read record by record (see the module docstring for sizes and layout).

  Attributes:
    name: 'tfds:<tfds name>'.
    split: the TFDS split string, e.g. 'train' or 'train[:90%]'.
    class_names: the ClassLabel's names.
    image_shape: (H, W, C) of the images `get` returns.
  """

  def __init__(self, source, *, name: str, split: str, class_names: tuple[str, ...],
               image_shape: tuple[int, int, int], resize: bool):
    self._source = source
    self._resize = resize
    self.name = name
    self.split = split
    self.class_names = class_names
    self.image_shape = image_shape

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self._source)

  def get(self, indices: np.ndarray) -> Batch:
    """Reads and decodes the records at `indices` (int [B]): 'image' [B, H, W, C], 'label' [B]."""
    records = [self._source[i] for i in check_indices(indices, len(self)).tolist()]
    size = self.image_shape[0]
    images = [_image_ops.resize_and_center_crop(r['image'], size) if self._resize else r['image']
              for r in records]
    images = np.stack(images) if images else np.zeros((0,) + self.image_shape, np.uint8)
    return {
        'image': images.astype(np.float32) * np.float32(1 / 255),
        'label': np.array([r['label'] for r in records], np.int32),
    }


def _split_names(split: str) -> list[str]:
  """Split names in a TFDS split string: 'train[:90%]+test' -> ['train', 'test']."""
  return [part.split('[')[0].strip() for part in split.split('+')]


def load(name: str, split: str, *, image_size: int | None, seed: int,
         data_dir: str | None = None, download: bool = False) -> TfdsDataset:
  """Opens a split of a TFDS image-classification data set.

  Args:
    name: TFDS name, optionally with config and version ('imagenet_resized/32x32:0.1.0').
    split: TFDS split string; its split names must be ones the prepared data set has.
    image_size: output side in pixels (resize shorter side + centre crop), or None to keep
      the data set's fixed image shape.
    seed: unused: the split is fixed (accepted so all loaders share one signature).
    data_dir: TFDS data directory; None for TFDS's default.
    download: whether TFDS may download and prepare the data set if it is missing.

  Returns:
    A TfdsDataset named 'tfds:<name>'.
  """
  del seed  # The split is fixed; nothing here is random.
  # TFDS takes about a second to import; only users of TFDS data sets pay for it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as error:
    raise ValueError(f'name={name!r} is not a TFDS data set; image-classification sets include '
                     f'{list(KNOWN_NAMES)}.') from error
  features = builder.info.features
  image, label = (features[key] if key in features else None for key in ('image', 'label'))
  if not (isinstance(image, tfds.features.Image) and isinstance(label, tfds.features.ClassLabel)
          and image.shape[-1] in (1, 3)):
    raise ValueError(f"TFDS data set {name!r} has features {list(features)}; expected an 'image' "
                     "(1 or 3 channels) and a ClassLabel 'label'.")
  known_splits = list(builder.info.splits)
  if known_splits:  # Empty when the data set is not prepared (or mocked in tests).
    for split_name in _split_names(split):
      check_choice(split_name, known_splits, 'split')

  if image_size is None:
    if None in image.shape:
      raise ValueError(f'TFDS data set {name!r} has images of varying shape {image.shape}; '
                       'pass image_size to resize and centre-crop them.')
    image_shape = tuple(image.shape)
  else:
    check_int(image_size, 'image_size', minimum=1)
    image_shape = (int(image_size), int(image_size), image.shape[-1])
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except NotImplementedError as error:  # TFDS's answer when no array_record files exist.
    raise FileNotFoundError(
        f'TFDS data set {name!r} is not prepared in the array_record format under '
        f'{builder.data_dir}: run `tfds build {name} --file_format=array_record` (with '
        '--data_dir), pass data_dir=, or pass download=True.') from error
  return TfdsDataset(source, name=f'tfds:{name}', split=split, class_names=tuple(label.names),
                     image_shape=image_shape, resize=image_size is not None)
