"""Orbax checkpointing with automatic resume and fall-back past a damaged checkpoint.

The only module in `lib` that touches the file system (besides `lib.report` and
`lib.run_config`). Writes are atomic (orbax writes to a temporary directory and renames it
when complete), so a run killed mid-save leaves the previous checkpoints intact.

`restore_latest` tries the newest checkpoint first. One that cannot be read (an empty step
directory, a missing item folder, a truncated file) is damaged: it is renamed to
`<step>.damaged-<n>` beside the others (out of orbax's view, never deleted), a one-line
warning names it, and the one before it is tried. A checkpoint that reads fine but holds a
different tree (another architecture) is not damaged: it raises a `ValueError` and nothing
is moved.

A failed restore leaves tensorstore reads of the other arrays in flight after orbax has
closed the event loop that awaits them (its `asyncio.gather` fails on the first error):
when they finish, their callbacks into the closed loop print "RuntimeError: Event loop is
closed" tracebacks, and asyncio logs "Task exception was never retrieved" for those that
fail too, although the run goes on fine. So restores install an unraisable-exception hook
that drops exactly the first (raised by `call_soon_threadsafe`) and a filter on asyncio's
logger that drops the second when the error names a checkpoint directory being restored;
everything else passes.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

T = TypeVar('T')

_MESSAGE_LIMIT = 300


class Checkpointer:
  """Saves and restores one pytree (e.g. a `TrainState`) under `directory`.

  Args:
    directory: where checkpoints live (created if missing).
    max_to_keep: how many recent checkpoints to keep (at least 2, so a damaged newest one
      has a predecessor).
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 2:
      raise ValueError(f'max_to_keep must be an integer of at least 2 (to fall back past a '
                       f'damaged checkpoint); got {max_to_keep!r}.')
    self.directory = os.path.abspath(directory)
    # One item handler fixes orbax's single-item layout up front; left to be inferred, the
    # first step directory it looks at decides it, and an empty one makes every other
    # checkpoint (and every later save) fail.
    self._manager = ocp.CheckpointManager(
        self.directory, item_handlers=ocp.StandardCheckpointHandler(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def steps(self) -> list[int]:
    """Steps of the finished checkpoints, ascending."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def save(self, step: int, tree: Any) -> None:
    """Saves `tree` as checkpoint `step` and waits until it is on disk.

    Raises:
      ValueError: `step` is not above the newest checkpoint on disk (orbax would skip the
        save silently; a damaged checkpoint is set aside by `restore_latest`, after which
        its step can be saved again).
      RuntimeError: orbax skipped the save for another reason.
    """
    steps = self.steps()
    if steps and step <= steps[-1]:
      raise ValueError(f'step must be above the newest checkpoint in {self.directory} '
                       f'(step {steps[-1]}); got {step}. Checkpoints are never overwritten.')
    if not self._manager.save(step, args=ocp.args.StandardSave(tree)):
      raise RuntimeError(f'orbax declined to save step {step} in {self.directory}.')
    self._manager.wait_until_finished()

  def restore_latest(self, like: T) -> tuple[int, T] | None:
    """Restores the newest readable checkpoint, setting damaged newer ones aside.

    Args:
      like: a pytree with the structure, shapes, dtypes (and shardings) to restore into;
        concrete arrays or `jax.ShapeDtypeStruct`s.

    Returns:
      `(step, tree)`, or None when no checkpoint can be read.

    Raises:
      ValueError: a readable checkpoint holds a tree of another structure or other shapes
        than `like` (the directory belongs to a different model).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    _quiet_failed_reads(self.directory)
    for step in reversed(self.steps()):
      difference, failure = self._compare(step, abstract)
      if _everyone(failure is None):
        if difference is not None:
          raise ValueError(
              f'{self.directory} holds checkpoints of a different model: {difference}. '
              f'Restart the run (launch.run --restart moves the old run aside) or use '
              f'another directory.')
        tree, failure = self._read(step, abstract)
        if _everyone(failure is None):
          return step, tree
      self._set_aside(step, failure or RuntimeError('another process could not read it'))
    return None

  def _compare(self, step: int, abstract: Any) -> tuple[str | None, Exception | None]:
    """(how checkpoint `step` differs from `abstract` or None, the read error or None)."""
    try:
      stored = self._manager.item_metadata(step)
      return _first_difference(getattr(stored, 'tree', stored), abstract), None
    except Exception as err:  # noqa: BLE001 -- unreadable metadata means "damaged"
      return None, err

  def _read(self, step: int, abstract: T) -> tuple[T | None, Exception | None]:
    """(restored tree, None), or (None, the error) when checkpoint `step` is damaged."""
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract)), None
    except Exception as err:  # noqa: BLE001 -- any read failure means "damaged"
      return None, err

  def _set_aside(self, step: int, err: BaseException) -> None:
    """Renames a damaged step directory out of orbax's view and warns in one line."""
    source = os.path.join(self.directory, str(step))
    n = 1
    while os.path.exists(f'{source}.damaged-{n}'):
      n += 1
    if jax.process_index() == 0:
      os.rename(source, f'{source}.damaged-{n}')
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'checkpoint_set_aside_{step}')
    logging.warning('Checkpoint step %d in %s cannot be read (%s); moved it to %s and '
                    'falling back to the one before it.', step, self.directory,
                    _one_line(err), f'{source}.damaged-{n}')

  def close(self) -> None:
    """Waits for pending writes and releases orbax's threads."""
    self._manager.close()


def _one_line(err: BaseException) -> str:
  """`Type: first line of the message`, at most `_MESSAGE_LIMIT` characters."""
  lines = str(err).strip().splitlines()
  text = f'{type(err).__name__}: {lines[0] if lines else ""}'
  return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT - 3] + '...'


def _path(path: tuple[Any, ...]) -> str:
  """'params.conv1.kernel' for a jax key path (dict keys, attributes, indices alike)."""
  keys = (getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))) for k in path)
  return '.'.join(str(k) for k in keys)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path(p): tuple(leaf.shape if hasattr(leaf, 'shape') else np.shape(leaf))
          for p, leaf in leaves}


def _first_difference(stored: Any, wanted: Any) -> str | None:
  """How the stored tree's structure or shapes differ from `wanted`'s, or None.

  A checkpoint without array metadata is not compared (its restore decides).
  """
  have, want = _shapes(stored), _shapes(wanted)
  if not have:
    return None
  for path, shape in want.items():
    if path not in have:
      return f"the model's leaf '{path}' {shape} is not in the checkpoint"
    if have[path] != shape:
      return f"leaf '{path}' has shape {have[path]} in the checkpoint and {shape} in the model"
  extra = [path for path in have if path not in want]
  return f"the checkpoint's leaf '{extra[0]}' is not in the model" if extra else None


def _everyone(ok: bool) -> bool:
  """True when `ok` holds on every process (the same answer on all of them)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


class _DropClosedLoopErrors:
  """`sys.unraisablehook` that drops a result's callback into a closed event loop.

  That is a `RuntimeError('Event loop is closed')` raised by `call_soon_threadsafe`;
  anything else goes to the previous hook.
  """

  def __init__(self, previous):
    self.previous = previous

  def __call__(self, unraisable) -> None:
    err, frames = unraisable.exc_value, traceback.extract_tb(unraisable.exc_traceback)
    if not (isinstance(err, RuntimeError) and str(err) == 'Event loop is closed' and frames
            and frames[0].name == 'call_soon_threadsafe'):
      self.previous(unraisable)


class _DropUnretrievedReads(logging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' for reads in `directories`."""

  def __init__(self):
    super().__init__()
    self.directories: set[str] = set()

  def filter(self, record: logging.LogRecord) -> bool:
    err = record.exc_info[1] if record.exc_info else None
    return not (err is not None and
                record.getMessage().startswith('Task exception was never retrieved') and
                any(d in str(err) for d in self.directories))


_UNRETRIEVED = _DropUnretrievedReads()


def _quiet_failed_reads(directory: str) -> None:
  """Installs the hook and the filter of the module docstring (once) for `directory`."""
  if not isinstance(sys.unraisablehook, _DropClosedLoopErrors):
    sys.unraisablehook = _DropClosedLoopErrors(sys.unraisablehook)
  _UNRETRIEVED.directories.add(os.path.join(directory, ''))
  asyncio_logger = logging.getLogger('asyncio')
  if _UNRETRIEVED not in asyncio_logger.filters:
    asyncio_logger.addFilter(_UNRETRIEVED)
