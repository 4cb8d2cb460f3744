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


def check_int(value: Any, name: str, *, minimum: int | None = None) -> None:
  """Raises ValueError unless `value` is an integer (not a bool), at least `minimum` if given."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be an integer; got {value!r} ({type(value).__name__}).')
  if minimum is not None and value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}; got {value!r}.')


def check_ints(values: Any, name: str, *, minimum: int | None = None,
               length: int | None = None) -> None:
  """Raises ValueError unless `values` is a non-empty sequence of integers (see `check_int`).

  Args:
    values: the sequence (a tuple or list; a string or a scalar is rejected).
    name: the argument's name, for the message.
    minimum: smallest allowed entry, or None.
    length: required number of entries, or None for any non-zero number.
  """
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
    raise ValueError(f'{name} must be a non-empty sequence of integers; got {values!r}.')
  if length is not None and len(values) != length:
    raise ValueError(f'{name} must have {length} entries; got {len(values)} in {values!r}.')
  for i, value in enumerate(values):
    check_int(value, f'{name}[{i}]', minimum=minimum)


def check_bool(value: Any, name: str) -> None:
  """Raises ValueError unless `value` is a bool (a string such as 'no' is not one)."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f'{name} must be True or False; got {value!r} ({type(value).__name__}).')


def check_number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
                 high_inclusive: bool = True) -> None:
  """Raises ValueError unless `value` is a finite real number (not a bool) in [low, high].

  Args:
    value: the number.
    name: the argument's name, for the message.
    low: inclusive lower bound, or None.
    high: upper bound, or None.
    high_inclusive: whether `high` itself is allowed.
  """
  if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number))
      or not np.isfinite(value)):
    raise ValueError(f'{name} must be a finite number; got {value!r}.')
  above = high is not None and (value > high if high_inclusive else value >= high)
  if (low is not None and value < low) or above:
    bounds = f'[{low}, {high}{"]" if high_inclusive else ")"}'
    raise ValueError(f'{name} must be in {bounds}; got {value!r}.')


def check_key(key: Any, name: str = 'key') -> None:
  """Raises ValueError unless `key` is one typed PRNG key (`jax.random.key(seed)`), shape ()."""
  dtype = getattr(key, 'dtype', None)
  if dtype is None or not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    raise ValueError(f'{name} must be a typed PRNG key from jax.random.key(seed); got '
                     f'{type(key).__name__} with dtype {dtype}.')
  if key.shape != ():
    raise ValueError(f'{name} must be a single key of shape (); got shape {tuple(key.shape)} '
                     '(vmap over keys instead of passing a batch).')
