"""Orbax checkpointing with automatic resume and fall-back past a damaged checkpoint.

The only module in `lib` that touches the file system (besides `lib.report`). Writes are
atomic (orbax writes to a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoints intact. When the newest finished checkpoint
cannot be read (a truncated or corrupted file), `restore_latest` warns and falls back to the
one before it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, TypeVar

import jax
import orbax.checkpoint as ocp

T = TypeVar('T')


class Checkpointer:
  """Saves and restores one pytree (e.g. a `TrainState`) under `directory`.

  Args:
    directory: where checkpoints live (created if missing).
    max_to_keep: how many recent checkpoints to keep (at least 2, so a damaged newest one
      has a predecessor).
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3):
    if max_to_keep < 2:
      raise ValueError(f'max_to_keep must be at least 2 (to fall back past a damaged '
                       f'checkpoint); got {max_to_keep}.')
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def steps(self) -> list[int]:
    """Steps of the finished checkpoints, ascending."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def save(self, step: int, tree: Any) -> None:
    """Saves `tree` as checkpoint `step` and waits until it is on disk."""
    self._manager.save(step, args=ocp.args.StandardSave(tree))
    self._manager.wait_until_finished()

  def restore_latest(self, like: T) -> tuple[int, T] | None:
    """Restores the newest readable checkpoint.

    Args:
      like: a pytree with the structure, shapes, dtypes (and shardings) to restore into;
        concrete arrays or `jax.ShapeDtypeStruct`s.

    Returns:
      `(step, tree)`, or None when no checkpoint can be read.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    for step in reversed(self.steps()):
      try:
        tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as err:  # noqa: BLE001 -- any read failure means "damaged"
        logging.warning('Checkpoint at step %d in %s cannot be read (%s: %s); falling back '
                        'to the one before it.', step, self.directory, type(err).__name__, err)
        continue
      return step, tree
    return None

  def close(self) -> None:
    self._manager.close()
