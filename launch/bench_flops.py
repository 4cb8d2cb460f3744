"""Benchmark (c): achieved FLOP/s of training steps as a fraction of the measured matmul peak.

FLOPs per step come from XLA's cost analysis of the compiled program
(`jit(f).lower(...).compile().cost_analysis()['flops']`, per device); the peak is a jitted
n x n float32 matmul (2n^3 FLOP) timed in the same run. Step times are reused from
benchmarks (a) and (b) when they ran in the same invocation, else measured here.
"""

from __future__ import annotations

from typing import Any

from launch import bench_common as common
from launch.bench_resnet import JaxStep, RESNET18


def _own_timing(step: JaxStep, repeats: int) -> float:
  return common.time_interleaved({'s': step.run}, warmup=1, repeats=repeats)['s'].median


def run(*, peak_n: int = 4096, peak_repeats: int = 5, previous: dict[str, Any], repeats: int = 3,
        resnet_batch: int = 32, resnet_arch: dict | None = None, log=print) -> dict[str, Any]:
  """Runs benchmark (c); `previous` holds the results of (a) and (b) from this run, if any."""
  log(f'[flops] matmul peak ({peak_n}x{peak_n} float32) ...')
  peak = common.matmul_peak(peak_n, repeats=peak_repeats)
  peak_gflops = peak['gflops']
  rows = [{'name': f'matmul {peak_n}x{peak_n} (peak)', 'flops': peak['flop'], 'step_s': peak['timing']['median_s'],
           'source': '2n^3'}]
  arch = resnet_arch or RESNET18

  resnet = previous.get('resnet')
  if resnet and resnet.get('jax_flops_per_step'):
    batch = resnet['config']['batch_size']
    for r in resnet['rows']:
      rows.append({'name': f"ResNet train step, batch {batch}: {r['name']}", 'flops': resnet['jax_flops_per_step'],
                   'step_s': r['step_s'], 'source': 'XLA (JAX program)'})
  else:
    log(f'[flops] compiling and timing the JAX ResNet step (batch {resnet_batch}) ...')
    step = JaxStep('resnet18', resnet_batch, **{k: tuple(v) for k, v in arch.items()})
    rows.append({'name': f'ResNet train step, batch {resnet_batch}: JAX', 'flops': step.flops,
                 'step_s': _own_timing(step, repeats), 'source': 'XLA'})

  sweep = previous.get('sweep')
  if sweep and sweep.get('single_seed_flops_per_step'):
    b = sweep['config']['batch_size']
    rows.append({'name': f'CNN train step, batch {b}, 1 seed', 'flops': sweep['single_seed_flops_per_step'],
                 'step_s': sweep['dispatch']['step_s'], 'source': 'XLA'})
    for r in sweep['rows']:
      if r['num_seeds'] > 1 and r['sweep_flops_per_step']:
        rows.append({'name': f"CNN sweep step, {r['num_seeds']} seeds x batch {b}",
                     'flops': r['sweep_flops_per_step'], 'step_s': r['sweep_step_s'], 'source': 'XLA'})
      if r.get('big_batch_flops_per_step'):
        rows.append({'name': f"CNN step, 1 model, batch {r['num_seeds'] * b}",
                     'flops': r['big_batch_flops_per_step'],
                     'step_s': r['num_seeds'] / r['big_batch_steps_seeds_per_s'], 'source': 'XLA'})
  else:
    log('[flops] compiling and timing the JAX CNN step (batch 32) ...')
    step = JaxStep('cnn', 32, batch_norm=True)
    rows.append({'name': 'CNN train step, batch 32, 1 seed', 'flops': step.flops,
                 'step_s': _own_timing(step, 3 * repeats), 'source': 'XLA'})

  for r in rows:
    r['gflops'] = r['flops'] / r['step_s'] / 1e9 if r['flops'] else None
    r['fraction_of_peak'] = r['gflops'] / peak_gflops if r['gflops'] else None
  header = ['program', 'GFLOP/step', 'step (s)', 'GFLOP/s', 'of matmul peak']
  table_rows = [[r['name'], r['flops'] / 1e9 if r['flops'] else None, r['step_s'], r['gflops'],
                 f"{100 * r['fraction_of_peak']:.1f}%" if r['fraction_of_peak'] else '-'] for r in rows]
  notes = [
      f"peak: jitted {peak_n}x{peak_n} @ {peak_n}x{peak_n} float32 (Precision.HIGHEST), "
      f"{peak_gflops:.1f} GFLOP/s, median of {peak_repeats} (spread {100 * peak['spread']:.0f}%); "
      f"XLA counts {peak['xla_flops']:.3g} FLOP for it (2n^3 = {peak['flop']:.3g}).",
      'FLOP/step from XLA cost analysis of the JAX program (per device); the PyTorch rows divide the '
      'same count by PyTorch step time (same architecture, same arithmetic).',
  ]
  return {'table': common.table(header, table_rows), 'rows': rows, 'peak': peak, 'notes': notes,
          'config': {'peak_n': peak_n, 'peak_repeats': peak_repeats}}
