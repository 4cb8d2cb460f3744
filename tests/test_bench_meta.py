"""The MLAC benchmark (`launch.bench --only=meta --quick`) runs end to end: the vmapped
attacker grid equals its sequential runs, JAX and PyTorch (torch.func) compute the same
meta-step loss, and per-step checkpointing does not raise JAX's memory.

Timings are not asserted beyond being finite and positive (they are measured, not tested).
"""

from __future__ import annotations

import math

import pytest

from tests.test_bench import quick_bench


@pytest.mark.slow  # a subprocess compiling two second-order meta-steps: 6-7 min on 2 shared cores
def test_quick_meta_benchmark_compares_equal_computations(tmp_path):
  result = quick_bench('meta', tmp_path)
  (grid,) = result['grid']['rows']
  _, runs, vmapped_s, sequential_s, ratio, acc_diff, same_program_diff = grid
  assert runs == 4 and acc_diff == 0.0 and same_program_diff == 0.0
  assert all(math.isfinite(v) and v > 0 for v in (vmapped_s, sequential_s, ratio))
  rows = result['rows']
  assert [(r[0], r[1]) for r in rows] == [(2, 'no'), (2, 'yes')]
  memory = {}
  for k, checkpoint, jax_s, torch_s, ratio, jax_mb, torch_mb, rel_diff, _ in rows:
    assert math.isfinite(jax_s) and jax_s > 0 and jax_mb > 0
    if checkpoint == 'no':
      assert torch_s > 0 and ratio > 0 and torch_mb > 0
      assert rel_diff < 1e-4, (k, rel_diff)
    memory[k, checkpoint] = jax_mb
  assert memory[2, 'yes'] <= memory[2, 'no']
