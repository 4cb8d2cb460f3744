"""APGD's checkpoints: the iterations at which the step size may be halved.

Croce & Hein 2020 ("Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", §3.1) place checkpoints at w_j = p_j · N_iter with

    p_0 = 0,  p_1 = 0.22,  p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06),

i.e. the gap between checkpoints starts at 22% of the budget and shrinks by 3% of it per
checkpoint down to 6%. As the authors' code (and torchattacks) do, the three fractions are
floored to whole iterations, at least one each, so the gaps are integers:

    h_1 = max(⌊0.22 N⌋, 1),  h_{j+1} = max(h_j − max(⌊0.03 N⌋, 1), max(⌊0.06 N⌋, 1)),
    w_j = h_1 + ... + h_j ≤ N.

For N = 100 this is exactly the paper's sequence 22, 41, 57, 70, 80, 87, 93, 99.
"""

from __future__ import annotations

import numpy as np


def checkpoints(steps: int) -> tuple[int, ...]:
  """The checkpoints w_1 < w_2 < ... ≤ steps (iteration counts, 1-based).

  Args:
    steps: N_iter ≥ 1, the attack's iteration budget.

  Returns:
    The iterations after which the halving conditions are checked.
  """
  gap = max(int(0.22 * steps), 1)
  shrink, floor = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
  points, w = [], gap
  while w <= steps:
    points.append(w)
    gap = max(gap - shrink, floor)
    w += gap
  return tuple(points)


def tables(steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-iteration lookup tables for a scanned loop.

  Args:
    steps: N_iter ≥ 1.

  Returns:
    `(is_checkpoint, window)`, each [steps] indexed by the 0-based iteration i:
    `is_checkpoint[i]` is True when iteration i + 1 is a checkpoint w_j, and `window[i]`
    is w_j − w_{j−1}, the length of the window that iteration closes (0 elsewhere).
  """
  is_checkpoint = np.zeros(steps, bool)
  window = np.zeros(steps, np.int32)
  previous = 0
  for w in checkpoints(steps):
    is_checkpoint[w - 1] = True
    window[w - 1] = w - previous
    previous = w
  return is_checkpoint, window
