"""The purification benchmark (`launch.bench --only=purify --quick`) runs end to end: both
sides compute the same gradient through the sampler, the timings are finite, and per-step
checkpointing keeps JAX's memory below the stored-activations program's.

Timings are not asserted beyond being finite and positive (they are measured, not tested).
Slow: `./launch/test.sh -m slow tests/test_bench_purify.py`.
"""

from __future__ import annotations

import math

import pytest

from tests.test_bench import quick_bench


@pytest.mark.slow  # four JAX compiles of a UNet gradient through the sampler: 1-3 min on 2 cores
def test_quick_purify_benchmark_compares_equal_gradients_and_memory(tmp_path):
  result = quick_bench('purify', tmp_path)
  rows = result['rows']
  assert [(r[1], r[2]) for r in rows] == [(2, 'no'), (4, 'no'), (2, 'yes'), (4, 'yes')]
  memory = {}
  for name, steps, checkpoint, jax_s, torch_s, ratio, jax_mb, torch_mb, *_, rel_diff, _, _ in rows:
    assert all(math.isfinite(v) and v > 0 for v in (jax_s, torch_s, ratio, jax_mb, torch_mb)), name
    assert rel_diff < 1e-4, (name, steps, checkpoint, rel_diff)
    memory[steps, checkpoint] = jax_mb, torch_mb
  # At the larger N, checkpointing each step stores less on both sides.
  assert memory[4, 'yes'][0] < memory[4, 'no'][0]
  assert memory[4, 'yes'][1] < memory[4, 'no'][1]
  # Without checkpointing memory grows with N on both sides; with it JAX's stays nearly flat.
  slopes = {s['checkpoint']: s for s in result['slopes_mb_per_step']}
  assert slopes[False]['jax'] > 0 and slopes[False]['torch'] > 0
  assert slopes[True]['jax'] < 0.1 * slopes[False]['jax']
