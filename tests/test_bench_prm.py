"""The PRM benchmark (`launch.bench --only=prm --quick`) runs end to end on a tiny CLIP
image tower: both sides compute the same loss and gradient at the same δ, and every rate is
finite and positive (timings are measured, not tested).

Slow: `./launch/test.sh -m slow tests/test_bench_prm.py`.
"""

from __future__ import annotations

import math

import pytest

from tests.test_bench import quick_bench


@pytest.mark.slow  # a subprocess that imports torch and transformers and compiles: ~30-60 s
def test_quick_prm_benchmark_times_both_sides_on_the_same_loss(tmp_path):
  result = quick_bench('prm', tmp_path)
  [row] = result['rows']
  name, jax_rate, torch_rate, ratio, _, loss_diff, grad_diff, compile_s, _ = row
  assert name.startswith('PRM iteration, batch 2')
  assert all(math.isfinite(v) and v > 0 for v in (jax_rate, torch_rate, ratio, compile_s))
  assert loss_diff < 1e-5 and grad_diff < 1e-4, (loss_diff, grad_diff)
  assert [r[0].split(',')[0] for r in result['breakdown']] == ['forward', 'fwd+bwd',
                                                               'iteration']
