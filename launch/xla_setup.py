"""XLA flags the project runs with, set before JAX starts a backend.

XLA:CPU sends a lone convolution to YNNPACK by default; on this project's CPUs that path is
slower than XLA's own convolution (measured by `python -m launch.bench --only=pgd`; see the
README), so `--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` takes it out of
YNNPACK's fusion types. The flag concerns only the CPU backend (jax >= 0.10.2 accepts it; an
unknown flag would abort every JAX process). A value the user already set in XLA_FLAGS wins.

Called by `launch/run.py`, `launch/bench.py` and `tests/conftest.py`, each before any JAX
backend has started (XLA reads XLA_FLAGS when the first backend starts, not at import).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'


def add_flags(*flags: str, environ: MutableMapping[str, str] = os.environ) -> str:
  """Appends each `--name=value` of `flags` to XLA_FLAGS unless XLA_FLAGS sets `--name`.

  Returns:
    The resulting XLA_FLAGS.
  """
  current = environ.get('XLA_FLAGS', '')
  added = [f for f in flags if f.split('=')[0] not in current]
  environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  return environ['XLA_FLAGS']


def add_project_flags(environ: MutableMapping[str, str] = os.environ) -> str:
  """Adds the project's CPU flag (`YNN_FLAG`) to XLA_FLAGS; returns the result."""
  return add_flags(YNN_FLAG, environ=environ)
