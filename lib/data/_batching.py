"""Stateless batching: the batch of a training step is a function of (seed, step) alone.

Training visits the data in epochs of `steps_per_epoch = len(dataset) // batch_size` steps;
each epoch reads a fresh permutation drawn from `np.random.default_rng([seed, epoch])` and
drops the `len % batch_size` examples left over at its end, so a batch never straddles two
epochs. Because nothing depends on iterator state, a run resumed at step s reads exactly the
batches an uninterrupted run reads.

With several processes (multi-host), every process calls the same function with its own
`process_index` and receives its contiguous slice of the global batch; concatenating the
slices in process order gives the global batch.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator

import numpy as np

from lib.data._checks import check_int
from lib.data._dataset import Batch, Dataset


def _check_sharding(batch_size: int, process_index: int, process_count: int) -> int:
  """Validates the batch/process arguments; returns the per-process batch size."""
  check_int(batch_size, 'batch_size', minimum=1)
  check_int(process_count, 'process_count', minimum=1)
  if not isinstance(process_index, (int, np.integer)) or not 0 <= process_index < process_count:
    raise ValueError(
        f'process_index must be an integer in [0, {process_count}); got {process_index!r}.')
  if batch_size % process_count:
    raise ValueError(f'batch_size={batch_size} must be divisible by process_count={process_count}.')
  return batch_size // process_count


def steps_per_epoch(dataset: Dataset, batch_size: int) -> int:
  """Number of full batches of `batch_size` in one epoch of `dataset` (remainder dropped)."""
  check_int(batch_size, 'batch_size', minimum=1)
  if batch_size > len(dataset):
    raise ValueError(
        f'batch_size={batch_size} must be at most the size of the split ({len(dataset)}).')
  return len(dataset) // batch_size


@functools.lru_cache(maxsize=4)
def _epoch_permutation(size: int, seed: int, epoch: int) -> np.ndarray:
  """The order int64 [size] in which epoch `epoch` reads the examples (memoised)."""
  order = np.random.default_rng([seed, epoch]).permutation(size)
  order.flags.writeable = False
  return order


def batch_at(
    dataset: Dataset,
    step: int,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Batch:
  """Returns this process's part of the training batch of step `step`.

  Args:
    dataset: the training split.
    step: the training step, >= 0.
    batch_size: global batch size (over all processes), at most len(dataset).
    seed: data-order seed, >= 0.
    process_index: this process's index in [0, process_count).
    process_count: number of processes sharing the global batch; must divide batch_size.

  Returns:
    A batch of batch_size // process_count examples: rows
    [process_index * b, (process_index + 1) * b) of the global batch of step `step`.

  Example:
    >>> batch = batch_at(get_dataset('digits'), 7, batch_size=32, seed=0)
    >>> batch['image'].shape
    (32, 32, 32, 1)
  """
  local_size = _check_sharding(batch_size, process_index, process_count)
  epoch_steps = steps_per_epoch(dataset, batch_size)
  check_int(step, 'step', minimum=0)
  check_int(seed, 'seed', minimum=0)
  epoch, position = divmod(int(step), epoch_steps)
  start = position * batch_size + process_index * local_size
  order = _epoch_permutation(len(dataset), int(seed), epoch)
  return dataset.get(order[start:start + local_size])


def iterate(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    num_steps: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
  """Yields `batch_at(dataset, step, ...)` for step = start_step, start_step + 1, ...

  Arguments are validated when `iterate` is called, not at the first `next`.

  Args:
    dataset: the training split.
    batch_size: global batch size, as in `batch_at`.
    seed: data-order seed, >= 0.
    start_step: first step to yield (the step a resumed run restarts at).
    num_steps: number of batches to yield; None for an endless stream.
    process_index: this process's index, as in `batch_at`.
    process_count: number of processes, as in `batch_at`.

  Returns:
    An iterator of batches.
  """
  _check_sharding(batch_size, process_index, process_count)
  steps_per_epoch(dataset, batch_size)
  check_int(seed, 'seed', minimum=0)
  check_int(start_step, 'start_step', minimum=0)
  if num_steps is None:
    steps = itertools.count(start_step)
  else:
    check_int(num_steps, 'num_steps', minimum=0)
    steps = range(start_step, start_step + num_steps)
  return (batch_at(dataset, step, batch_size=batch_size, seed=seed, process_index=process_index,
                   process_count=process_count) for step in steps)


def eval_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
  """Yields the whole split in order, in batches of one fixed shape.

  Every batch has `batch_size // process_count` rows, so a jitted evaluation step compiles
  once. The last global batch is padded by repeating the split's last example; the extra
  field 'valid' (bool [b]) is False on padding rows, and metrics must be weighted by it.
  Over all batches and processes every example appears exactly once with valid=True.

  Args:
    dataset: the split to evaluate.
    batch_size: global batch size (over all processes).
    process_index: this process's index in [0, process_count).
    process_count: number of processes; must divide batch_size.

  Returns:
    An iterator of ceil(len(dataset) / batch_size) batches with an extra 'valid' field.
  """
  local_size = _check_sharding(batch_size, process_index, process_count)
  size = len(dataset)

  def batches() -> Iterator[Batch]:
    for global_start in range(0, size, batch_size):
      start = global_start + process_index * local_size
      positions = np.arange(start, start + local_size)
      batch = dataset.get(np.minimum(positions, size - 1))
      batch['valid'] = positions < size
      yield batch

  return batches()
