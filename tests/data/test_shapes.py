"""Tests of the procedural shapes data set: determinism, fields, and their consistency."""

import numpy as np
import pytest

from lib import data
from lib.data import _shapes_scene

KINDS = ('circle', 'square', 'triangle', 'cross', 'star', 'ring', 'crescent', 'diamond')


@pytest.fixture(scope='module')
def ds32():
  return data.get_dataset('shapes', 'train', image_size=32, seed=0, num_examples=600)


@pytest.fixture(scope='module')
def batch32(ds32):
  return ds32.get(np.arange(len(ds32)))


@pytest.fixture(scope='module')
def batch64():
  ds = data.get_dataset('shapes', 'train', image_size=64, seed=0, num_examples=300)
  return ds.get(np.arange(len(ds)))


def test_fields_have_documented_shapes_dtypes_and_ranges(ds32, batch32, batch64):
  assert ds32.class_names == KINDS and ds32.num_classes == 8 and ds32.image_shape == (32, 32, 3)
  assert ds32.categories == KINDS + ('bar', 'dot')
  for batch, size in ((batch32, 32), (batch64, 64)):
    n = len(batch['label'])
    expected = {'image': ((n, size, size, 3), np.float32), 'label': ((n,), np.int32),
                'mask': ((n, size, size), np.float32), 'segmentation': ((n, size, size), np.int32),
                'boxes': ((n, 3, 4), np.float32), 'box_labels': ((n, 3), np.int32),
                'caption': ((n,), np.str_), 'question': ((n, 4), np.str_),
                'answer': ((n, 4), np.str_)}
    assert {k: (v.shape, v.dtype.type) for k, v in batch.items()} == expected
    assert 0 <= batch['image'].min() and batch['image'].max() <= 1
    assert set(np.unique(batch['mask'])) == {0.0, 1.0}
    assert 0 <= batch['segmentation'].min() and batch['segmentation'].max() <= 10
    assert 0 <= batch['boxes'].min() and batch['boxes'].max() <= 1
    assert set(np.unique(batch['label'])) == set(range(8))


def test_same_seed_same_data_other_seed_or_split_differs(batch32):
  # A smaller split is generated separately and must equal the prefix of the larger one.
  prefix = data.get_dataset('shapes', 'train', image_size=32, seed=0, num_examples=100)
  for key, values in prefix.get(np.arange(100)).items():
    np.testing.assert_array_equal(values, batch32[key][:100])
  other_seed = data.get_dataset('shapes', 'train', seed=1, num_examples=100).get(np.arange(100))
  other_split = data.get_dataset('shapes', 'test', seed=0, num_examples=100).get(np.arange(100))
  for other in (other_seed, other_split):
    assert not np.array_equal(other['image'], batch32['image'][:100])
    assert not np.array_equal(other['label'], batch32['label'][:100])


def test_one_seed_gives_the_same_scenes_at_every_size(batch32, batch64):
  for key in ('label', 'box_labels', 'caption', 'question', 'answer'):
    np.testing.assert_array_equal(batch32[key][:300], batch64[key])
  np.testing.assert_allclose(batch32['boxes'][:300], batch64['boxes'], atol=2 / 32)
  pooled = batch64['mask'].reshape(300, 32, 2, 32, 2).mean(axis=(2, 4))
  assert np.abs(pooled - batch32['mask'][:300]).mean() < 0.02


@pytest.mark.parametrize('batch_name', ['batch32', 'batch64'])
def test_mask_is_the_class_object_segment_and_boxes_are_tight(batch_name, request):
  batch = request.getfixturevalue(batch_name)
  size = batch['mask'].shape[-1]
  segmentation, labels = batch['segmentation'], batch['label']
  np.testing.assert_array_equal(batch['mask'], segmentation == labels[:, None, None] + 1)
  for i in range(200):
    covered = np.zeros((size, size), bool)
    for box, category in zip(batch['boxes'][i], batch['box_labels'][i]):
      if category < 0:
        np.testing.assert_array_equal(box, 0)
        continue
      y0, x0, y1, x1 = np.round(box * size).astype(int)
      np.testing.assert_allclose(box * size, [y0, x0, y1, x1], atol=1e-4)  # On pixel edges.
      inside = segmentation[i, y0:y1, x0:x1] == category + 1
      # Tight: the object touches all four sides of its box.
      assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
      covered[y0:y1, x0:x1] |= inside
    # Every object pixel lies in a box of its category (the class object's box holds its mask).
    np.testing.assert_array_equal(covered, segmentation[i] > 0)


def test_circles_are_whole(batch64):
  # A circle fills pi/4 of its box: a clipped or truncated drawing would not.
  circles = batch64['label'] == KINDS.index('circle')
  boxes = batch64['boxes'][circles, 0] * 64
  box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  np.testing.assert_allclose(batch64['mask'][circles].sum((1, 2)), np.pi / 4 * box_area, rtol=0.12)


def test_box_labels_list_class_object_first_then_distractors(batch32):
  box_labels = batch32['box_labels']
  np.testing.assert_array_equal(box_labels[:, 0], batch32['label'])
  assert np.isin(box_labels[:, 1:], [-1, 8, 9]).all()  # Distractors: bar, dot, or padding.
  assert not ((box_labels[:, 1] < 0) & (box_labels[:, 2] >= 0)).any()  # Padding at the end.
  counts = np.bincount((box_labels >= 0).sum(1), minlength=4)
  assert counts[0] == 0 and min(counts[1:]) > 100  # 0, 1 and 2 distractors all common.
  sides = batch32['boxes'][:, 0, 2:] - batch32['boxes'][:, 0, :2]
  assert 0.12 <= sides.min() and sides.max() <= 0.5  # Objects span 30-50% of the side.


def test_captions_and_answers_name_the_shape_and_colour_seen(batch32):
  palette = {name: np.array(rgb) for name, rgb in _shapes_scene.COLOURS.items()}
  for i in range(len(batch32['label'])):
    kind = KINDS[batch32['label'][i]]
    question, answer = batch32['question'][i], batch32['answer'][i]
    colour = answer[1]
    assert answer[0] == kind and question[0] == f'what shape is the {colour} object?'
    assert question[1] == f'what colour is the {kind}?'
    assert batch32['caption'][i].split(' on a ')[0].split(',')[0].split(' and ')[0].endswith(
        f'{colour} {kind}')
    assert answer[2] == str((batch32['box_labels'][i] >= 0).sum())
    assert batch32['caption'][i].endswith(f'on a {answer[3]} background')
    # The named colour is the palette colour nearest to the object's pixels.
    pixels = np.median(batch32['image'][i][batch32['mask'][i] > 0], axis=0)
    assert min(palette, key=lambda name: np.abs(palette[name] - pixels).sum()) == colour


def test_distractors_are_not_class_kinds_and_captioned(batch32):
  captions = batch32['caption']
  with_two = np.nonzero((batch32['box_labels'] >= 0).sum(1) == 3)[0]
  for i in with_two[:50]:
    words = captions[i].split(' on a ')[0]
    assert words.count('bar') + words.count('dot') == 2 - words.count('two ')


def test_colour_and_texture_do_not_reveal_the_label(batch32):
  colours = batch32['answer'][:, 1]
  for kind in range(8):
    assert len(set(colours[batch32['label'] == kind])) >= 6


def test_generating_2000_examples():
  ds = data.get_dataset('shapes', 'validation', image_size=32, seed=7, num_examples=2000)
  assert len(ds) == 2000 and ds.get(np.array([1999]))['image'].shape == (1, 32, 32, 3)


def test_default_split_sizes():
  assert data.get_dataset('shapes', 'validation', seed=11).get(np.arange(2))['label'].shape == (2,)
  assert len(data.get_dataset('shapes', 'validation', seed=11)) == 1000


@pytest.mark.parametrize('kwargs, message', [
    (dict(split='valid'), r"split='valid'.*\['train', 'validation', 'test'\]"),
    (dict(image_size=30), r'image_size=30.*\[32, 40, 48'),
    (dict(image_size=33), r'image_size=33.*256\]'),
    (dict(image_size=264), 'image_size=264'),
    (dict(num_examples=0), 'num_examples'),
    (dict(seed=-1), 'seed'),
])
def test_bad_arguments_raise_with_choices(kwargs, message):
  with pytest.raises(ValueError, match=message):
    data.get_dataset('shapes', **kwargs)
