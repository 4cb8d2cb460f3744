"""Tests of TFDS data sets through tfds.data_source: mocked MNIST/CIFAR/ImageNet and a tiny
array_record data set prepared by the test."""

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from lib import data


class TinyVaryingImagesForTest(tfds.core.GeneratorBasedBuilder):
  """Five train and three test RGB images of varying size, three classes."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.ClassLabel(names=['a', 'b', 'c'])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(5), 'test': self._generate_examples(3)}

  def _generate_examples(self, n):
    for i in range(n):
      image = np.full((10 + 4 * i, 14, 3), 40 * i, np.uint8)
      yield i, {'image': PIL.Image.fromarray(image), 'label': i % 3}


@pytest.fixture(scope='module')
def tiny_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  TinyVaryingImagesForTest(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir


@pytest.mark.parametrize('name, shape, num_classes', [
    ('mnist', (28, 28, 1), 10), ('tfds:mnist', (28, 28, 1), 10), ('cifar10', (32, 32, 3), 10),
    ('tfds:fashion_mnist', (28, 28, 1), 10), ('cifar100', (32, 32, 3), 100)])
def test_mocked_data_sets_give_batches(name, shape, num_classes):
  with tfds.testing.mock_data(num_examples=12):
    ds = data.get_dataset(name, 'test')
    batch = ds.get(np.array([0, 5, 11]))
    again = ds.get(np.array([0, 5, 11]))
  assert len(ds) == 12 and ds.image_shape == shape and ds.num_classes == num_classes
  assert ds.name == 'tfds:' + name.removeprefix('tfds:') and ds.split == 'test'
  assert batch['image'].shape == (3,) + shape and batch['image'].dtype == np.float32
  assert 0 <= batch['image'].min() and batch['image'].max() <= 1
  assert batch['label'].dtype == np.int32
  assert ((0 <= batch['label']) & (batch['label'] < num_classes)).all()
  np.testing.assert_array_equal(batch['image'], again['image'])


def test_mocked_data_set_works_with_batch_at_and_eval_batches():
  with tfds.testing.mock_data(num_examples=10):
    ds = data.get_dataset('mnist', 'train', image_size=32)
    batch = data.batch_at(ds, 3, batch_size=4, seed=0)
    evaluated = list(data.eval_batches(ds, 4))
  assert batch['image'].shape == (4, 32, 32, 1)
  assert len(evaluated) == 3 and evaluated[-1]['valid'].sum() == 2


def test_varying_image_sizes_need_image_size():
  with tfds.testing.mock_data(num_examples=4):
    ds = data.get_dataset('imagenet2012', 'validation', image_size=24)
    assert ds.get(np.arange(4))['image'].shape == (4, 24, 24, 3)
    assert ds.num_classes == 1000
    with pytest.raises(ValueError, match='image_size'):
      data.get_dataset('imagenet2012', 'validation')


def test_prepared_data_set_reads_resizes_and_crops(tiny_data_dir):
  ds = data.get_dataset('tfds:tiny_varying_images_for_test', 'train', data_dir=tiny_data_dir,
                        image_size=8)
  batch = ds.get(np.arange(5))
  assert len(ds) == 5 and ds.class_names == ('a', 'b', 'c')
  assert batch['image'].shape == (5, 8, 8, 3)
  # Constant images stay constant (value 40 * i / 255) through resizing and cropping.
  values = np.sort(batch['image'][:, 0, 0, 0])
  np.testing.assert_allclose(values, np.arange(5) * 40 / 255, atol=1 / 255)
  assert (batch['image'] == batch['image'][:, :1, :1]).all()
  sliced = data.get_dataset('tfds:tiny_varying_images_for_test', 'train[:2]+test',
                            data_dir=tiny_data_dir, image_size=8)
  assert len(sliced) == 5


def test_unknown_split_of_a_prepared_data_set_lists_its_splits(tiny_data_dir):
  with pytest.raises(ValueError, match=r"split='validation'.*\['train', 'test'\]"):
    data.get_dataset('tfds:tiny_varying_images_for_test', 'validation', data_dir=tiny_data_dir,
                     image_size=8)


def test_unprepared_data_set_raises_without_downloading(tmp_path):
  with pytest.raises(FileNotFoundError, match='tfds build mnist'):
    data.get_dataset('tfds:mnist', 'train', data_dir=str(tmp_path))


@pytest.mark.parametrize('name, message', [
    ('tfds:no_such_data_set', r"no_such_data_set.*'mnist'.*'cifar10'"),
    ('tfds:imdb_reviews', "expected an 'image'"),
    ('tfds:', r"expected one of \['digits', 'shapes', 'bios', 'bias_in_bios', 'mnist'"),
    ('imagenet', r"expected one of \['digits', 'shapes'.*'mnist'.*'imagenet2012'"),
])
def test_bad_names_raise_with_choices(name, message):
  with pytest.raises(ValueError, match=message):
    data.get_dataset(name)
