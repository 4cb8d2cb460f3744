"""Eager argument checks shared by every attack (ValueError naming the argument).

Value checks run on concrete arguments only; under `jit`/`vmap` (a traced ε, say) they are
skipped, so the same attack can be called at the top level or inside a vmapped program.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from lib import validate

NORMS = ('linf', 'l2')


def check_norm(norm: Any) -> str:
  """'linf' or 'l2'."""
  validate.check_choice(norm, NORMS, 'norm')
  return norm


def check_eps(eps: Any, norm: str, name: str = 'eps') -> None:
  """ε ≥ 0, finite; in ℓ∞ at most 1 (pixels live in [0, 1]). A traced ε is not checked."""
  if isinstance(eps, jax.core.Tracer):
    return
  value = np.asarray(eps)
  if value.ndim:
    raise ValueError(f'{name} must be a scalar (vmap over a batch of ε); got shape {value.shape}.')
  validate.check_number(value.item(), name, low=0.0, high=1.0 if norm == 'linf' else None)


def check_count(value: Any, name: str, *, minimum: int = 1) -> None:
  """A Python int ≥ `minimum` (steps, restarts, EOT samples, queries)."""
  validate.check_int(value, name, minimum=minimum)


def check_batch(x: Any, y: Any, num_classes: int | None = None, *, name_x: str = 'x',
                name_y: str = 'y') -> None:
  """Images [B, ...] float in [0, 1] (finite) and integer labels [B] (in range when known)."""
  if not hasattr(x, 'shape') or not hasattr(x, 'dtype') or x.ndim < 2:
    raise ValueError(f'{name_x} must be an array [B, ...] of inputs in [0, 1]; got '
                     f'{type(x).__name__} of shape {getattr(x, "shape", None)}.')
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f'{name_x} must be a floating-point array in [0, 1]; got dtype {x.dtype}.')
  validate.check_finite(x, name_x)
  if validate.is_concrete(x):
    a = np.asarray(x)
    if a.size and (a.min() < 0 or a.max() > 1):
      raise ValueError(f'{name_x} must lie in [0, 1]; got values in [{a.min():.4g}, {a.max():.4g}].')
  validate.check_labels(y, num_classes if num_classes is not None else np.iinfo(np.int32).max,
                        name_y, batch=x.shape[0])


def check_key_if_given(key: Any, *, needed: bool, why: str = '') -> None:
  """A typed PRNG key; a missing one is an error when `needed` (random start, a stochastic
  model, Square's sampling), with `why` in the message."""
  if key is None:
    if needed:
      raise ValueError(f'key must be a typed PRNG key (jax.random.key(seed)){": " + why if why else ""}.')
    return
  validate.check_key(key)
