"""Tests of ArrayDataset, the in-memory Dataset behind the embedded sets."""

import numpy as np
import pytest

from lib import data


def _dataset(size: int = 6) -> data.ArrayDataset:
  return data.ArrayDataset(
      name='toy', split='train', class_names=('a', 'b'),
      arrays={'image': np.full((size, 2, 2, 3), 255, np.uint8),
              'label': np.arange(size) % 2,
              'mask': np.ones((size, 2, 2), bool),
              'caption': np.array([f'caption {i}' for i in range(size)])})


def test_get_converts_stored_fields_to_batch_dtypes():
  batch = _dataset().get(np.array([4, 1]))
  assert batch['image'].dtype == np.float32 and batch['image'].max() == 1.0  # uint8 / 255.
  assert batch['label'].dtype == np.int32 and list(batch['label']) == [0, 1]
  assert batch['mask'].dtype == np.float32
  assert list(batch['caption']) == ['caption 4', 'caption 1']


def test_batches_cannot_change_the_stored_arrays():
  ds = _dataset()
  batch = ds.get(np.arange(3))
  batch['label'][:] = 7
  assert list(ds.get(np.arange(3))['label']) == [0, 1, 0]
  with pytest.raises(ValueError):
    ds.arrays['label'][0] = 1  # Read-only.


def test_properties():
  ds = _dataset()
  assert (len(ds), ds.num_classes, ds.image_shape) == (6, 2, (2, 2, 3))
  assert (ds.name, ds.split) == ('toy', 'train')


@pytest.mark.parametrize('indices', [np.array([6]), np.array([-1])])
def test_out_of_range_indices_raise(indices):
  with pytest.raises(IndexError):
    _dataset().get(indices)


def test_inconsistent_arrays_raise():
  with pytest.raises(ValueError, match=r"arrays\['label'\]"):
    data.ArrayDataset(name='bad', split='train', class_names=('a',),
                      arrays={'image': np.zeros((3, 2, 2, 1)), 'label': np.zeros(2, int)})
