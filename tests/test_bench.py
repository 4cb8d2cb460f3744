"""The attribution and PGD benchmarks run end to end (quick settings) and both frameworks agree;
the XLA flag the launchers and benchmarks set is accepted and does what they say.

Timings are not asserted (they are measured, not tested); the maps each side produced for
the same inputs are, so the benchmark cannot silently compare different computations.
"""

import json
import os
import subprocess
import sys

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


def test_ynn_flag_is_accepted_and_gives_xla_its_own_convolutions():
  """The XLA flag the launchers, the tests and the benchmarks set (one spelling everywhere)
  is accepted by this jaxlib (an unknown flag aborts the process) and takes a lone
  convolution out of YNNPACK."""
  from launch.bench_common import YNN_FLAG
  for path in ('launch/_env.sh', 'tests/conftest.py'):
    with open(os.path.join(ROOT, path)) as f:
      assert YNN_FLAG in f.read(), path
  code = ('import jax, jax.numpy as jnp\n'
          'conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", '
          'dimension_numbers=("NHWC", "HWIO", "NHWC"))\n'
          'x, w = jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 64))\n'
          'print(jax.jit(conv).lower(x, w).compile().as_text().count("__ynn_fusion"))\n')
  counts = {}
  for flags in ('', YNN_FLAG):
    run = subprocess.run([sys.executable, '-c', code], env=dict(os.environ, XLA_FLAGS=flags),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    counts[flags] = int(run.stdout.split()[-1])
  assert counts == {'': 1, YNN_FLAG: 0}, counts
