"""Tests of stateless batching: batch_at, iterate, eval_batches, host sharding."""

import numpy as np
import pytest

from lib import data


def _indexed(size: int = 103) -> data.ArrayDataset:
  """A data set whose label is the example's index, to track which examples a batch holds."""
  images = np.linspace(0, 1, size * 4 * 4, dtype=np.float32).reshape(size, 4, 4, 1)
  return data.ArrayDataset(name='indexed', split='train', class_names=tuple(map(str, range(size))),
                           arrays={'image': images, 'label': np.arange(size, dtype=np.int32)})


def test_batch_at_is_deterministic_and_seed_dependent():
  ds = _indexed()
  first = data.batch_at(ds, 5, batch_size=16, seed=3)
  again = data.batch_at(ds, 5, batch_size=16, seed=3)
  other = data.batch_at(ds, 5, batch_size=16, seed=4)
  np.testing.assert_array_equal(first['label'], again['label'])
  np.testing.assert_array_equal(first['image'], again['image'])
  assert not np.array_equal(first['label'], other['label'])
  assert first['image'].dtype == np.float32 and first['label'].dtype == np.int32


def test_batch_at_equals_the_step_of_iterate_and_a_resumed_iterate():
  ds = _indexed()
  stream = [b['label'] for b in data.iterate(ds, batch_size=10, seed=1, num_steps=25)]
  resumed = [b['label']
             for b in data.iterate(ds, batch_size=10, seed=1, start_step=17, num_steps=8)]
  for step, labels in enumerate(stream):
    np.testing.assert_array_equal(labels, data.batch_at(ds, step, batch_size=10, seed=1)['label'])
  np.testing.assert_array_equal(np.stack(stream[17:]), np.stack(resumed))


def test_each_epoch_is_a_permutation_without_straddling():
  ds, batch_size = _indexed(103), 10
  steps = data.steps_per_epoch(ds, batch_size)
  assert steps == 10
  epochs = []
  for epoch in range(3):
    labels = np.concatenate([
        data.batch_at(ds, epoch * steps + s, batch_size=batch_size, seed=0)['label']
        for s in range(steps)])
    assert len(np.unique(labels)) == steps * batch_size  # No example twice within an epoch.
    epochs.append(labels)
  assert not np.array_equal(epochs[0], epochs[1])  # A fresh order each epoch.
  # Over epochs the dropped remainder changes, so every example is eventually seen.
  assert len(np.unique(np.concatenate(epochs))) == len(ds)


@pytest.mark.parametrize('process_count', [2, 4])
def test_process_slices_concatenate_to_the_global_batch(process_count):
  ds = _indexed()
  for step in (0, 9, 31):
    whole = data.batch_at(ds, step, batch_size=8, seed=2)
    parts = [data.batch_at(ds, step, batch_size=8, seed=2, process_index=i,
                           process_count=process_count) for i in range(process_count)]
    assert all(len(p['label']) == 8 // process_count for p in parts)
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


@pytest.mark.parametrize('kwargs, message', [
    (dict(batch_size=6, process_count=4), 'divisible by process_count'),
    (dict(batch_size=8, process_count=2, process_index=2), 'process_index'),
    (dict(batch_size=0), 'batch_size'),
    (dict(batch_size=200), 'at most the size'),
    (dict(batch_size=8, seed=-1), 'seed'),
])
def test_bad_batching_arguments_raise(kwargs, message):
  kwargs.setdefault('seed', 0)
  with pytest.raises(ValueError, match=message):
    data.batch_at(_indexed(), 0, **kwargs)
  with pytest.raises(ValueError, match=message):
    data.iterate(_indexed(), **kwargs)  # Eagerly, before the first batch.


def test_negative_step_raises():
  with pytest.raises(ValueError, match='step'):
    data.batch_at(_indexed(), -1, batch_size=4, seed=0)


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_batches_cover_the_split_once_with_fixed_shapes(process_count):
  ds, batch_size = _indexed(103), 20
  per_process = [
      list(data.eval_batches(ds, batch_size, process_index=i, process_count=process_count))
      for i in range(process_count)]
  assert len({len(batches) for batches in per_process}) == 1  # Same number on every process.
  assert len(per_process[0]) == 6
  seen = []
  for step_batches in zip(*per_process):
    for batch in step_batches:
      assert batch['image'].shape == (batch_size // process_count, 4, 4, 1)
      assert batch['valid'].dtype == bool
      seen.append(batch['label'][batch['valid']])
  np.testing.assert_array_equal(np.concatenate(seen), np.arange(103))  # In order, once each.
