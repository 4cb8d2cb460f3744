"""The attribution, PGD and attacks benchmarks run end to end (quick settings) and both
frameworks agree; the XLA flag the launchers and benchmarks set is accepted and does what they say.

Timings are not asserted (they are measured, not tested); the maps each side produced for
the same inputs are, so the benchmark cannot silently compare different computations.
"""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_bench(name, tmp_path):
  """Runs `launch.bench --only=NAME --quick`; returns its results for NAME."""
  out = tmp_path / 'bench.json'
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='')
  run = subprocess.run([sys.executable, '-m', 'launch.bench', f'--only={name}', '--quick',
                        f'--out={out}'], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(out.read_text())['results'][name]


def test_quick_attribution_benchmark_compares_equal_maps(tmp_path):
  rows = quick_bench('attribution', tmp_path)['rows']
  assert [r[0].split(' (')[0] for r in rows] == ['integrated gradients', 'Grad-CAM',
                                                  'SmoothGrad', 'saliency']
  for name, jax_rate, torch_rate, ratio, rel_diff, *_ in rows:
    assert jax_rate > 0 and torch_rate > 0 and ratio > 0, name
    assert name.startswith('SmoothGrad') or rel_diff < 1e-4, (name, rel_diff)
  assert (tmp_path / 'bench.md').read_text().count('Captum') >= 1


@pytest.mark.slow  # a subprocess importing torch and compiling the PGD variants: ~15 s
def test_quick_pgd_benchmark_compares_equal_attacks(tmp_path):
  """torchattacks and the four JAX rows reach the same adversarial examples (up to sign flips
  of gradient entries within rounding of zero) and the same loss there."""
  rows = quick_bench('pgd', tmp_path)['rows']
  assert [r[0] for r in rows] == ['torchattacks (PyTorch)', 'JAX, lax.conv', 'JAX, conv2d VJP',
                                  'JAX, lax.conv, YNN flag', 'JAX, conv2d VJP, YNN flag']
  torch_loss = rows[0][3]
  for name, rate, ratio, loss, max_diff, differing, *_ in rows:
    assert rate > 0 and ratio > 0, name
    assert abs(loss - torch_loss) <= 1e-3 * abs(torch_loss), (name, loss, torch_loss)
    assert differing < 0.01, (name, differing, max_diff)


@pytest.mark.slow  # a subprocess compiling PGD/APGD on two models: ~20-30 s
def test_quick_attacks_benchmark_times_both_sides_on_the_same_attacks(tmp_path):
  """Every row (PGD and APGD on both networks, the ε × restarts sweep) has finite positive
  rates on both sides, the weight copy holds, and the robust accuracies agree."""
  result = quick_bench('attacks', tmp_path)
  rows = result['rows']
  assert [r[0].split(',')[0] for r in rows] == ['PGD-5', 'APGD-5', 'PGD-5', 'APGD-5',
                                                '8 ε × 2 restarts PGD-5']
  for name, jax_rate, torch_rate, ratio, acc_jax, acc_torch, logit_diff, _ in rows:
    assert all(math.isfinite(v) and v > 0 for v in (jax_rate, torch_rate, ratio)), name
    assert abs(acc_jax - acc_torch) <= 0.25, (name, acc_jax, acc_torch)
    assert logit_diff < 1e-4, (name, logit_diff)
  sweep = result['sweep']
  assert len(sweep['robust_jax']) == len(sweep['robust_torchattacks']) == 8
