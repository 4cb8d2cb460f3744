"""The attribution benchmark runs end to end (quick settings) and both frameworks agree.

Timings are not asserted (they are measured, not tested); the maps each side produced for
the same inputs are, so the benchmark cannot silently compare different computations.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_attribution_benchmark_compares_equal_maps(tmp_path):
  out = tmp_path / 'bench.json'
  env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS='')
  run = subprocess.run([sys.executable, '-m', 'launch.bench', '--only=attribution', '--quick',
                        f'--out={out}'], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = json.loads(out.read_text())['results']['attribution']['rows']
  assert [r[0].split(' (')[0] for r in rows] == ['integrated gradients', 'Grad-CAM',
                                                  'SmoothGrad', 'saliency']
  for name, jax_rate, torch_rate, ratio, rel_diff, *_ in rows:
    assert jax_rate > 0 and torch_rate > 0 and ratio > 0, name
    assert name.startswith('SmoothGrad') or rel_diff < 1e-4, (name, rel_diff)
  assert (tmp_path / 'bench.md').read_text().count('Captum') >= 1
