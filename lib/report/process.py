"""Which process writes files: one guard for metric logs, figures and reports."""

from __future__ import annotations

import jax


def is_writer() -> bool:
  """True on process 0, the one process of a (multi-process) run that writes files."""
  return jax.process_index() == 0
