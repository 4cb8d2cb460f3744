"""Integer argument check used by the loaders (the rest comes from `lib.validate`)."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(value: Any, name: str, *, minimum: int) -> None:
  """Raises ValueError unless `value` is an integer (not a bool) >= `minimum`."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f'{name} must be an integer >= {minimum}; got {value!r}.')
