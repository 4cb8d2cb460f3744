"""Progress of a long loop: a tqdm bar on a terminal, periodic log lines otherwise.

A bar redraws itself with carriage returns, which turn a log file into megabytes of
repeated lines; when stderr is not a terminal (`./launch/demo.sh > log`), `Progress` logs
'<name>: step i/N loss L, S s/step' at most once every `every_s` seconds instead (and at the
last step). Only process 0 reports.
"""

from __future__ import annotations

import sys
import time

import jax
from absl import logging
from tqdm import tqdm


class Progress:
  """Reports steps `initial + 1 ... total` of a loop.

  Args:
    total: number of the last step.
    initial: number of steps already done (a resumed run).
    name: shown before every report.
    enabled: False silences it.
    every_s: minimum seconds between two log lines (non-terminal output).
  """

  def __init__(self, *, total: int, initial: int, name: str, enabled: bool = True,
               every_s: float = 10.0):
    self._on = enabled and jax.process_index() == 0
    self._total, self._name, self._every_s = total, name, every_s
    self._bar = None
    if self._on and sys.stderr.isatty():
      self._bar = tqdm(total=total, initial=initial, desc=name, dynamic_ncols=True)
    self._since = (time.monotonic(), initial)

  def update(self, step: int, loss: float | None = None) -> None:
    """Reports that `step` steps are done; `loss` when it is known (at log steps)."""
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      if loss is not None:
        self._bar.set_postfix(loss=loss)
      return
    now = time.monotonic()
    since_t, since_step = self._since
    due = now - since_t >= self._every_s or step == self._total
    if not self._on or loss is None or not due or step == since_step:
      return
    logging.info('%s: step %d/%d loss %.4g, %.3g s/step', self._name, step, self._total, loss,
                 (now - since_t) / (step - since_step))
    self._since = (now, step)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
