r"""Benchmarks: `python -m launch.bench [--only=sweep,...,attacks,purify] [--quick]`.

  (a) sweep:  N seeds of the small CNN as one vmapped program (`lib.sweep`) vs the same seeds
              trained one after another, N = 1, 4, 16, 64 (steps*seeds/s and their ratio).
  (b) resnet: ResNet-18 (CIFAR stem) training steps/s, this codebase (JAX) vs the same
              network in plain PyTorch, timed alternately in one run.
  (c) flops:  achieved FLOP/s of those steps (XLA cost analysis / step time) as a fraction
              of a matmul peak measured in the same run.
  (d) conv:   one convolution's forward, input gradient and kernel gradient at the top
              level, under vmap over seeds, inside lax.scan and lax.map (where (a) loses
              its time), XLA's own gradients vs `lib.models.conv`'s.
  (e) attribution: integrated gradients (50 steps), Grad-CAM, SmoothGrad (25 samples) and
              saliency, `lib.attribution` vs Captum on the same CNN and batch (images/s).
  (f) pgd:    PGD-20 on the 3-conv CNN (batch 128), torchattacks vs JAX with XLA's own
              convolution gradients or `lib.models.conv`, each without and with the
              YNNPACK flag of launch/_env.sh (images/s).
  (g) attacks: `lib.attacks` PGD-20 and APGD-100 vs torchattacks on the small CNN and
              ResNet-18 (images/s, same weights), and robust accuracy at 8 ε × 5 restarts as
              one vmapped JAX program vs torchattacks' loops (launch/bench_attacks.py).
  (h) purify: one full-gradient attack step through DiffPure's reverse SDE (UNet ε-model)
              against the number of steps N, with and without per-step checkpointing, vs
              the same sampler in PyTorch around diffusers' UNet2DModel: s/call and memory
              (JAX: compiled memory analysis; PyTorch: profiler allocator peak), MB per step
              (launch/bench_purify.py).
  (i) meta:   MLAC (Henderson et al. 2023) on a BERT-Tiny-shaped encoder: the attacker's
              grid × seeds as one vmapped program vs the same runs one after another; one
              second-order MLAC outer step against K = 1, 4, 16, 64 inner steps, with and
              without per-step checkpointing (s/step, compiled memory), and the same step
              in PyTorch with torch.func on transformers.BertModel (launch/bench_meta.py).
  (j) prm:    PRM iterations/s (Hu et al. 2024) on a random ViT-B/16 CLIP image tower at
              224 px, batch 2 and 16: `lib.attacks.feature` vs the same loss, layers and
              AdamW on transformers.CLIPVisionModel, with a forward / backward breakdown
              (launch/bench_prm.py).

XLA runs with launch/_env.sh's flag (`--noynn_flag` for XLA's defaults). `--plain_conv` runs
every benchmark with the models' convolutions as they were before
`lib.models.conv` (`lax.conv_general_dilated` and XLA's own gradients), for before/after
figures; (f) always shows both.

Every timing excludes compilation (reported separately), blocks until results are ready
(each step's metrics are read back to the host, as the training loop does), and is the
median of several interleaved repeats after warm-up. Everything is float32; on GPU, JAX
runs with `jax_default_matmul_precision='highest'` and PyTorch with TF32 off.

Tables are printed; the results (with configuration and environment) go to `--out`
(default workdirs/bench/bench.json) and a markdown snippet for the README beside it
(bench.md). `--quick` is a smoke run (smaller configurations, < 1 min on 2 CPU cores).
The same command runs on GPU; several devices shard the seed axis (N must be a multiple
of the device count; other N are skipped).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

from absl import app, flags

_ONLY = flags.DEFINE_list('only', ['sweep', 'resnet', 'flops', 'conv', 'attribution', 'pgd',
                                   'attacks', 'purify', 'meta', 'prm'],
                          'Benchmarks to run.')
_QUICK = flags.DEFINE_bool('quick', False, 'Smoke run: small configurations, few repeats.')
_OUT = flags.DEFINE_string('out', 'workdirs/bench/bench.json', 'JSON results path (bench.md beside it).')
_DATA = flags.DEFINE_enum('data', 'synthetic', ['synthetic', 'shapes'],
                          'Sweep batches: uniform synthetic or lib.data shapes at 32x32.')
_SEEDS = flags.DEFINE_list('seeds', None, 'Sweep sizes N (default 1,4,16,64; quick 2).')
_RESNET_BATCH = flags.DEFINE_integer('resnet_batch', 32, 'ResNet batch size.')
_REPEATS = flags.DEFINE_integer('repeats', None, 'Timed repeats (default per benchmark).')
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', False, 'Also time torch.compile (slow to compile on CPU).')
_PRECISION = flags.DEFINE_string('matmul_precision', 'highest', 'jax_default_matmul_precision.')
_YNN = flags.DEFINE_bool('ynn_flag', True, 'Run with launch/_env.sh\'s XLA flag (XLA\'s own CPU '
                         'convolutions instead of YNNPACK\'s) unless XLA_FLAGS sets it already.')
_PLAIN_CONV = flags.DEFINE_bool('plain_conv', False, 'Trace convolutions as before lib.models.conv '
                                "(lax.conv_general_dilated, XLA's own gradients): 'before' figures.")

BENCHMARKS = ('sweep', 'resnet', 'flops', 'conv', 'attribution', 'pgd', 'attacks', 'purify',
              'meta', 'prm')


def _settings(quick: bool) -> dict:
  if quick:
    return {
        'sweep': dict(num_seeds=(2,), sweep_steps={2: 1}, seq_seeds=1, seq_steps=2,
                      dispatch_steps=1, repeats=2, big_batch=False),
        'resnet': dict(batch_size=8, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), warmup=1,
                       repeats=2, channels_last=False),
        'flops': dict(peak_n=1024, peak_repeats=3, repeats=2, resnet_batch=8,
                      resnet_arch={'widths': (16, 32, 64, 128), 'blocks': (1, 1, 1, 1)}),
        'conv': dict(seeds=2, loop=2, warmup=0, repeats=1, train_step=False),
        'attribution': dict(batch_size=4, image_size=16, widths=(8, 16, 32), ig_steps=8,
                            sg_samples=4, warmup=1, repeats=2),
        'pgd': dict(batch_size=16, steps=5, warmup=0, repeats=1),
        'attacks': dict(batch_size=8, resnet_batch=4, pgd_steps=5, apgd_steps=5, sweep_batch=4,
                        sweep_steps=5, restarts=2, warmup=1, repeats=1,
                        resnet_arch={'widths': (8, 16, 32, 64), 'blocks': (1, 1, 1, 1)}),
        'purify': dict(sweeps=(('tiny', 2, (2, 4)),), warmup=1, repeats=2),
        'meta': dict(model=dict(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32),
                     max_len=16, ks=(2,), outer=4, inner=4, torch_max_k=2,
                     grid_rates=(1e-3, 1e-2), grid_seeds=2, grid_steps=10, grid_eval_every=5,
                     grid_n=8, grid_batch=4, warmup=1, repeats=2),
        'prm': dict(config='tiny', batch_sizes=(2,), iterations=2, warmup=1, repeats=1),
    }
  return {
      'sweep': dict(num_seeds=(1, 4, 16, 64), sweep_steps={1: 10, 4: 4, 16: 2, 64: 1}, seq_seeds=4,
                    seq_steps=3, dispatch_steps=5, repeats=3, big_batch=True, budget_s=120.0),
      'resnet': dict(batch_size=32, warmup=1, repeats=3, channels_last=True),
      'flops': dict(peak_n=4096, peak_repeats=3, repeats=3, resnet_batch=32),
      'conv': dict(seeds=4, loop=2, warmup=1, repeats=2, train_step=True),
      'attribution': dict(batch_size=32, image_size=32, widths=(16, 32, 64), ig_steps=50,
                          sg_samples=25, warmup=1, repeats=5),
      'pgd': dict(batch_size=128, steps=20, warmup=1, repeats=3),
      # ResNet-18 at batch 128 with APGD-100 would take many minutes per call on 2 CPU cores.
      'attacks': dict(batch_size=128, resnet_batch=8, pgd_steps=20, apgd_steps=100,
                      sweep_batch=16, sweep_steps=20, restarts=5, warmup=1, repeats=2),
      # (UNet, batch, N): the N sweep on the DDPM CIFAR-10 UNet at 1/4 width (1/16 of its
      # FLOPs) and the full UNet at N = 2, 10 (its MB/step against PAPERS.md's anchor), batch
      # 1: every N alone takes about 0.6 s per step for the four sides on 2 shared cores.
      'purify': dict(sweeps=(('ddpm-cifar10-32/4', 1, (10, 50, 100)),
                             ('ddpm-cifar10-32', 1, (2, 10))), warmup=0, repeats=2),
      # BERT-Tiny's shape, vocabulary 2000, max_len 32; K = 64 in PyTorch unrolls 64
      # second-order inner steps (tens of seconds per step on 2 shared cores).
      'meta': dict(ks=(1, 4, 16, 64), outer=8, inner=12, torch_max_k=64, warmup=0, repeats=2),
      # ViT-B/16 at 224 px: a batch-16 iteration takes tens of seconds per side on 2 cores.
      'prm': dict(config='vit_b16', batch_sizes=(2, 16), iterations=2, warmup=1, repeats=2),
  }


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def main(argv):
  del argv
  unknown = set(_ONLY.value) - set(BENCHMARKS)
  if unknown:
    raise app.UsageError(f'--only takes {",".join(BENCHMARKS)}; got {sorted(unknown)}.')
  from launch import xla_setup  # pylint: disable=g-import-not-at-top
  # No JAX backend has started yet, so XLA still reads a flag added here.
  if _YNN.value:
    xla_setup.add_project_flags()
  import jax  # pylint: disable=g-import-not-at-top
  from launch import bench_common as common  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_default_matmul_precision', _PRECISION.value)
  from launch import bench_attacks, bench_attribution, bench_conv, bench_flops, bench_meta, bench_pgd, bench_prm, bench_purify, bench_resnet, bench_sweep  # pylint: disable=g-import-not-at-top

  settings = _settings(_QUICK.value)
  if _SEEDS.value:
    settings['sweep']['num_seeds'] = tuple(int(n) for n in _SEEDS.value)
    settings['sweep']['sweep_steps'] = {n: settings['sweep']['sweep_steps'].get(n, 1)
                                        for n in settings['sweep']['num_seeds']}
  if _REPEATS.value:
    for name in BENCHMARKS:
      settings[name]['repeats'] = _REPEATS.value
  if not _QUICK.value:
    settings['resnet']['batch_size'] = settings['flops']['resnet_batch'] = _RESNET_BATCH.value
  settings['resnet']['torch_compile'] = _TORCH_COMPILE.value

  env = common.environment()
  _log(f'[bench] {env["backend"]}: {env["device_count"]} device(s) {env["device_kind"]}, '
       f'{env["cpu_count"]} CPU cores, load average {env["load_average_at_start"]}')
  start = time.perf_counter()
  results: dict = {}
  titles = {'sweep': '(a) Seed sweep vs sequential seeds (small CNN)',
            'resnet': '(b) ResNet-18 training step: JAX vs PyTorch',
            'flops': '(c) Achieved FLOP/s vs measured matmul peak',
            'conv': '(d) One convolution at top level, under vmap, in loops',
            'attribution': '(e) Attribution methods: lib.attribution vs Captum',
            'pgd': '(f) PGD on the 3-conv CNN: torchattacks vs JAX by convolution path and XLA flag',
            'attacks': '(g) lib.attacks PGD/APGD vs torchattacks, and an ε × restarts sweep',
            'purify': '(h) Gradient through DiffPure vs reverse steps: time and memory, JAX vs PyTorch',
            'meta': '(i) MLAC: attacker grid vmapped vs sequential; meta-step time and memory vs K, JAX vs PyTorch torch.func',
            'prm': '(j) PRM feature attack on ViT-B/16: iterations/s, JAX vs PyTorch transformers'}
  env['plain_conv'] = _PLAIN_CONV.value
  with common.plain_convolutions() if _PLAIN_CONV.value else contextlib.nullcontext():
    for name in BENCHMARKS:
      if name not in _ONLY.value:
        continue
      t0 = time.perf_counter()
      if name == 'sweep':
        results[name] = bench_sweep.run(data=_DATA.value, log=_log, **settings['sweep'])
      elif name == 'resnet':
        results[name] = bench_resnet.run(log=_log, **settings['resnet'])
      elif name == 'flops':
        results[name] = bench_flops.run(previous=results, log=_log, **settings['flops'])
      elif name == 'conv':
        results[name] = bench_conv.run(log=_log, **settings['conv'])
      elif name == 'pgd':
        results[name] = bench_pgd.run(log=_log, **settings['pgd'])
      elif name == 'attacks':
        results[name] = bench_attacks.run(log=_log, **settings['attacks'])
      elif name == 'purify':
        results[name] = bench_purify.run(log=_log, **settings['purify'])
      elif name == 'meta':
        results[name] = bench_meta.run(log=_log, **settings['meta'])
      elif name == 'prm':
        results[name] = bench_prm.run(log=_log, **settings['prm'])
      else:
        results[name] = bench_attribution.run(log=_log, **settings['attribution'])
      results[name]['wall_s'] = time.perf_counter() - t0
      print(f'\n## {titles[name]}\n\n{results[name]["table"]}\n')
      for note in results[name]['notes']:
        print(f'- {note}')
      print(flush=True)

  env['load_average_at_end'] = common.load_average()
  env['total_wall_s'] = time.perf_counter() - start
  env['quick'] = _QUICK.value
  env['command'] = ' '.join(['python -m launch.bench'] + sys.argv[1:])
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump({'environment': env, 'settings': _jsonable(settings), 'results': results}, f,
              indent=1, default=str)
  md_path = os.path.splitext(_OUT.value)[0] + '.md'
  with open(md_path, 'w') as f:
    f.write(_markdown(env, results, titles))
  if _busy(env):
    print('[bench] warning: the load average exceeded the core count; absolute rates are '
          'depressed, ratios (interleaved repeats) remain comparable.')
  print(f'[bench] {env["total_wall_s"]:.0f} s; load average {env["load_average_at_start"]} -> '
        f'{env["load_average_at_end"]}; wrote {_OUT.value} and {md_path}')


def _busy(env: dict) -> bool:
  load = env.get('load_average_at_start') or [0.0]
  return env['backend'] == 'cpu' and load[0] > (env['cpu_count'] or 1)


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  return obj


def _markdown(env: dict, results: dict, titles: dict) -> str:
  head = (f'Benchmarks (`{env["command"]}`, {env["date"]}): jax {env["jax"]} on '
          f'{env["device_count"]} {env["backend"]} device(s) ({env["device_kind"]}), '
          f'{env["cpu_count"]} CPU cores, float32. Load average {env["load_average_at_start"]} '
          f'at start, {env["load_average_at_end"]} at end.\n')
  if env.get('plain_conv'):
    head += ('\nConvolutions traced as before `lib.models.conv` (`--plain_conv`): '
             "`lax.conv_general_dilated` with XLA's own gradients.\n")
  if _busy(env):
    head += ('\n**The machine was shared** (load average above the core count): absolute rates '
             'are low; ratios come from interleaved repeats and stay comparable.\n')
  parts = [head]
  for name, res in results.items():
    parts.append(f'### {titles[name]}\n\n{res["table"]}\n\n' + '\n'.join(f'- {n}' for n in res['notes']) + '\n')
  return '\n'.join(parts)


if __name__ == '__main__':
  app.run(main)
