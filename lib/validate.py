"""Eager checks at the public boundary.

Every public entry point validates its inputs here, before anything is traced, so that a
bad input gets a `ValueError` naming the argument and what was expected instead of a trace
from inside XLA. Shape and dtype checks run always (they are static under `jit`); value
checks (ranges, finiteness) run only on concrete arrays and are skipped for tracers, so the
same function can be called inside and outside `jit`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when `x` holds values (not a tracer), so value checks can run."""
  return not isinstance(x, jax.core.Tracer)


def check_choice(value: Any, choices: Iterable[Any], name: str) -> None:
  """Raises ValueError unless `value` is one of `choices` (listed in the message)."""
  choices = list(choices)
  if value not in choices:
    raise ValueError(f'{name}={value!r} is not valid; expected one of {choices}.')


def check_finite(x: Any, name: str) -> None:
  """Raises ValueError if a concrete `x` contains NaN or Inf."""
  if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
    raise ValueError(f'{name} contains NaN or Inf values; expected finite values.')


def check_images(
    x: Any,
    name: str = 'x',
    *,
    shape: Sequence[int] | None = None,
    value_range: tuple[float, float] | None = (0.0, 1.0),
) -> None:
  """Checks a batch of images: float [B, H, W, C], finite, pixels in `value_range`.

  Args:
    x: the images.
    name: the argument's name, for the message.
    shape: expected (H, W, C) of one image, or None to accept any.
    value_range: inclusive pixel range, or None to skip the range check.
  """
  if not hasattr(x, 'shape') or not hasattr(x, 'dtype'):
    raise ValueError(f'{name} must be an array of shape [B, H, W, C]; got {type(x).__name__}.')
  if x.ndim != 4:
    raise ValueError(f'{name} must have rank 4 [B, H, W, C]; got shape {tuple(x.shape)}.')
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f'{name} must be a floating-point array with pixels in [0, 1]; got dtype {x.dtype}.')
  if shape is not None and tuple(x.shape[1:]) != tuple(shape):
    raise ValueError(f'{name} must have per-image shape (H, W, C) = {tuple(shape)}; got {tuple(x.shape[1:])}.')
  check_finite(x, name)
  if value_range is not None and is_concrete(x):
    lo, hi = value_range
    a = np.asarray(x)
    if a.size and (a.min() < lo or a.max() > hi):
      raise ValueError(
          f'{name} must have pixels in [{lo}, {hi}]; got values in [{a.min():.4g}, {a.max():.4g}].')


def check_labels(y: Any, num_classes: int, name: str = 'y', *, batch: int | None = None) -> None:
  """Checks integer labels of shape [B] with values in [0, num_classes)."""
  if not hasattr(y, 'shape') or y.ndim != 1:
    raise ValueError(f'{name} must be an integer array of shape [B]; got shape {getattr(y, "shape", None)}.')
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'{name} must have an integer dtype; got {y.dtype}.')
  if batch is not None and y.shape[0] != batch:
    raise ValueError(f'{name} must have {batch} entries (one per input); got {y.shape[0]}.')
  if is_concrete(y):
    a = np.asarray(y)
    if a.size and (a.min() < 0 or a.max() >= num_classes):
      raise ValueError(
          f'{name} must hold class indices in [0, {num_classes}); got values in [{a.min()}, {a.max()}].')


def check_positive(value: Any, name: str, *, allow_zero: bool = False) -> None:
  """Raises ValueError unless the scalar `value` is > 0 (or >= 0 with allow_zero)."""
  ok = value >= 0 if allow_zero else value > 0
  if not np.isscalar(value) or not ok:
    raise ValueError(f'{name} must be a {"non-negative" if allow_zero else "positive"} number; got {value!r}.')
