"""Tests of the embedded digits data set."""

import jax
import numpy as np
import pytest

from lib import data


def test_splits_are_fixed_stratified_and_disjoint():
  train, test = data.get_dataset('digits', 'train'), data.get_dataset('digits', 'test')
  assert (len(train), len(test)) == (1500, 297)
  assert train.num_classes == 10 and train.class_names[3] == '3'
  train_counts = np.bincount(train.get(np.arange(len(train)))['label'], minlength=10)
  test_counts = np.bincount(test.get(np.arange(len(test)))['label'], minlength=10)
  np.testing.assert_allclose(train_counts / 1500, test_counts / 297, atol=0.01)  # Stratified.
  # The split ignores the seed: same images whatever seed is passed.
  other_seed = data.get_dataset('digits', 'test', seed=5)
  np.testing.assert_array_equal(other_seed.get(np.arange(9))['image'],
                                test.get(np.arange(9))['image'])


@pytest.mark.parametrize('image_size, channels', [(None, 1), (8, 1), (16, 3), (37, 1), (64, 3)])
def test_images_have_requested_shape_and_range(image_size, channels):
  ds = data.get_dataset('digits', 'test', image_size=image_size, channels=channels)
  size = image_size or 32
  batch = ds.get(np.arange(50))
  assert ds.image_shape == (size, size, channels)
  assert batch['image'].shape == (50, size, size, channels) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (50,) and batch['label'].dtype == np.int32
  assert 0 <= batch['image'].min() and batch['image'].max() <= 1 and batch['image'].max() > 0.9
  assert set(batch) == {'image', 'label'}


def test_upsampling_is_bilinear():
  native = data.get_dataset('digits', 'test', image_size=8).get(np.arange(20))['image']
  big = data.get_dataset('digits', 'test', image_size=20).get(np.arange(20))['image']
  np.testing.assert_array_equal(native * 16, np.round(native * 16))  # Counts / 16 exactly.
  expected = jax.image.resize(native, (20, 20, 20, 1), method='linear')
  np.testing.assert_allclose(big, expected, atol=1e-5)


@pytest.mark.parametrize('kwargs, message', [
    (dict(split='validation'), r"split='validation'.*\['train', 'test'\]"),
    (dict(image_size=7), 'image_size must be an integer >= 8'),
    (dict(image_size=16.0), 'image_size'),
    (dict(channels=2), r'channels=2.*\[1, 3\]'),
])
def test_bad_arguments_raise_with_choices(kwargs, message):
  with pytest.raises(ValueError, match=message):
    data.get_dataset('digits', **kwargs)
