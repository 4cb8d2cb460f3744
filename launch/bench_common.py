"""Timing, FLOP counting and table helpers shared by the `launch.bench` benchmarks."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np



class Timing(NamedTuple):
  """Seconds per unit (a step) of several timed repeats, after warm-up.

  Attributes:
    median: median over repeats of seconds per unit.
    samples: every repeat's seconds per unit.
    units: units run per repeat.
  """
  median: float
  samples: tuple[float, ...]
  units: int

  def spread(self) -> float:
    """(max - min) / median of the repeats: how noisy the measurement was."""
    return (max(self.samples) - min(self.samples)) / self.median if self.median else 0.0

  def as_dict(self) -> dict[str, Any]:
    return {'median_s': self.median, 'samples_s': list(self.samples), 'units_per_repeat': self.units}


def time_interleaved(runs: dict[str, Callable[[], int]], *, warmup: int,
                     repeats: int) -> dict[str, Timing]:
  """Times several workloads, alternating them repeat by repeat.

  Interleaving spreads any slow phase of a shared machine over every workload, so their
  ratios stay meaningful even when absolute times drift.

  Args:
    runs: name -> `run()` that does some units of work, blocks until they are finished
      (`block_until_ready` / a host read), and returns how many units it did.
    warmup: untimed calls of each `run` first (compilation, caches, allocator).
    repeats: timed calls of each.

  Returns:
    name -> `Timing` (seconds per unit).
  """
  for run in runs.values():
    for _ in range(warmup):
      run()
  samples: dict[str, list[float]] = {k: [] for k in runs}
  units: dict[str, int] = {}
  for _ in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      n = run()
      samples[name].append((time.perf_counter() - start) / n)
      units[name] = n
  return {k: Timing(statistics.median(v), tuple(v), units[k]) for k, v in samples.items()}


@contextlib.contextmanager
def plain_convolutions() -> Iterator[None]:
  """Inside the block, models trace `lib.models.layers.conv_op` as it was before
  `lib.models.conv`: `lax.conv_general_dilated` with XLA's own gradients.

  For before/after figures only (`launch.bench --plain_conv`, `launch.bench_pgd`): it
  affects what is traced (jitted) inside the block, in this process.
  """
  from lib.models import layers  # pylint: disable=g-import-not-at-top

  def plain(x, kernel, bias, *, strides=1, padding='SAME'):
    y = jax.lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y if bias is None else y + bias

  fast, layers.conv_op = layers.conv_op, plain
  try:
    yield
  finally:
    layers.conv_op = fast


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, float]:
  """`jitted.lower(*args).compile()` and the seconds it took (tracing + XLA compilation)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def xla_flops(compiled: Any) -> float | None:
  """FLOPs of one call of a compiled program by XLA's cost analysis (per device), or None.

  `Compiled.cost_analysis()` returns a dict in current jax (0.10: keys 'flops', 'bytes
  accessed', 'transcendentals', per-operand 'utilization...'); older versions returned a list
  with one dict per device program. Both are accepted.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (some backends have none)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  flops = float(cost['flops'])
  return flops if flops > 0 else None


def matmul_peak(n: int, *, warmup: int = 1, repeats: int = 5) -> dict[str, Any]:
  """Measured float32 matmul rate: jitted [n, n] @ [n, n] at `Precision.HIGHEST`, 2n^3 FLOP."""
  a = jax.random.uniform(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.uniform(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
  compiled, _ = compile_timed(mm, a, b)
  t = time_interleaved({'mm': lambda: (compiled(a, b).block_until_ready(), 1)[1]},
                       warmup=warmup, repeats=repeats)['mm']
  flop = 2.0 * n ** 3
  return {'n': n, 'flop': flop, 'xla_flops': xla_flops(compiled), 'timing': t.as_dict(),
          'gflops': flop / t.median / 1e9, 'spread': t.spread()}


def load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def environment() -> dict[str, Any]:
  """Versions, devices and machine facts recorded with every benchmark result."""
  info = {
      'jax': jax.__version__,
      'backend': jax.default_backend(),
      'devices': [str(d) for d in jax.devices()],
      'device_count': jax.device_count(),
      'device_kind': jax.devices()[0].device_kind,
      'process_count': jax.process_count(),
      'cpu_count': os.cpu_count(),
      'python': platform.python_version(),
      'machine': platform.processor() or platform.machine(),
      'numpy': np.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'matmul_precision': str(jax.config.jax_default_matmul_precision),
      'load_average_at_start': load_average(),
      'date': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
  }
  try:
    import flax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    info['flax'], info['optax'] = flax.__version__, optax.__version__
  except ImportError:
    pass
  return info


def fmt(value: Any) -> str:
  if value is None:
    return '-'
  if isinstance(value, float):
    if value == 0 or 0.01 <= abs(value) < 1e5:
      return f'{value:.3g}' if abs(value) < 10 else f'{value:,.1f}'
    return f'{value:.3g}'
  return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured markdown table, padded so it also reads well in a terminal."""
  cells = [list(header)] + [[fmt(v) for v in row] for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  line = lambda r: '| ' + ' | '.join(c.rjust(w) for c, w in zip(r, widths)) + ' |'
  return '\n'.join([line(cells[0]), '|' + '|'.join('-' * (w + 1) + ':' for w in widths) + '|']
                   + [line(r) for r in cells[1:]])
