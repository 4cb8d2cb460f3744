"""Benchmark (a): N seeds as one vmapped program (`lib.sweep`) vs the same seeds one after another.

What is timed is the compute program of the training loop, not its I/O: every step runs the
jitted step on batches already on the device and then reads the step's metrics back to the
host (as `lib.train.run_loop` does for its NaN check, so no step overlaps the next), with no
checkpointing, no logging and no host-side batch building.

  * sweep: `jit(vmap(train_step))` over a seed axis sharded over a 1-D 'seed' mesh of all
    devices, built exactly as `lib.sweep.fit_seeds` builds it (same keys, init, shardings,
    donation). One call advances all N seeds.
  * sequential: one jitted single-seed `train_step` (as `lib.train.fit` builds it), run for
    seed 0's steps, then seed 1's, ... One compiled program serves every seed (`fit` closes
    over its key and so compiles once per run; compilation is excluded either way and
    reported separately). Its cost per seed-step does not depend on N, so for large N only
    the first `seq_seeds` seeds are run and the throughput is extrapolated (marked `*`).
  * diagnostics: a jitted no-op with the step's arguments (what one call costs outside its
    compute: the most a sweep can save by calling once), and one model at batch 32*N ("big batch":
    the same FLOPs as the sweep through dense instead of vmapped convolutions: what batching
    the convolutions could give at best).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from launch import bench_common as common
from lib import sweep as sweep_lib
from lib import train as train_lib
from lib.models import get_model

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def make_cnn():
  """The benchmarked model and optimizer (and their description for the report)."""
  model = get_model('cnn', input_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, batch_norm=True)
  optimizer = train_lib.make_optimizer(name='sgd', learning_rate=0.1, num_steps=10_000,
                                       momentum=0.9, weight_decay=5e-4)
  desc = ("get_model('cnn', input_shape=(32, 32, 3), num_classes=10, batch_norm=True) "
          '[widths (32, 64, 128)]; make_optimizer(sgd, lr 0.1 cosine/10k, Nesterov momentum '
          '0.9, wd 5e-4); train_step without augmentation; float32')
  return model, optimizer, desc


def host_batches(num_seeds: int, batch_size: int, count: int, source: str) -> list[dict[str, np.ndarray]]:
  """`count` batches {'image': [N, B, 32, 32, 3], 'label': [N, B]} as numpy arrays.

  Args:
    source: 'synthetic' (uniform pixels, uniform labels) or 'shapes' (`lib.data`'s embedded
      shapes set at 32x32, each seed's batches from `batch_at` as the training loop reads them).
  """
  if source == 'shapes':
    from lib import data as data_lib  # pylint: disable=g-import-not-at-top
    ds = data_lib.get_dataset('shapes', 'train', image_size=IMAGE_SHAPE[0])
    if tuple(ds.image_shape) != IMAGE_SHAPE or ds.num_classes > NUM_CLASSES:
      raise ValueError(f'shapes data gave images {ds.image_shape} and {ds.num_classes} classes; '
                       f'the benchmark needs {IMAGE_SHAPE} and at most {NUM_CLASSES}.')
    out = []
    for step in range(count):
      per_seed = [data_lib.batch_at(ds, step, batch_size=batch_size, seed=s) for s in range(num_seeds)]
      out.append({k: np.stack([b[k] for b in per_seed]) for k in ('image', 'label')})
    return out
  rng = np.random.default_rng(0)
  return [{'image': rng.random((num_seeds, batch_size, *IMAGE_SHAPE), np.float32),
           'label': rng.integers(0, NUM_CLASSES, (num_seeds, batch_size)).astype(np.int32)}
          for _ in range(count)]


def _to_host(metrics: Any) -> Any:
  return jax.tree.map(np.asarray, metrics)


class SingleSeed:
  """The single-seed step program (compiled once) and helpers to run seeds through it."""

  def __init__(self, model, optimizer, batch_size: int):
    self.model, self.optimizer = model, optimizer
    self.init = jax.jit(train_lib.init_state, static_argnums=(0, 1))
    step = lambda s, b, k: train_lib.train_step(model, optimizer, s, b, k)
    self.jitted = jax.jit(step, donate_argnums=0)
    state = self.init(model, optimizer, jax.random.key(0))
    batch = {'image': jnp.zeros((batch_size, *IMAGE_SHAPE), jnp.float32),
             'label': jnp.zeros((batch_size,), jnp.int32)}
    self.compiled, self.compile_s = common.compile_timed(self.jitted, state, batch, jax.random.key(1))
    self.flops = common.xla_flops(self.compiled)

  def new_state(self, init_key):
    return self.init(self.model, self.optimizer, init_key)


def sequential_runner(single: SingleSeed, init_keys, base_keys, batches, *, seeds: int,
                      steps: int) -> Callable[[], int]:
  """`run()` training `seeds` seeds for `steps` steps each, one seed after the other."""
  states = [single.new_state(init_keys[i]) for i in range(seeds)]
  dev = [[{k: jax.device_put(v[i]) for k, v in b.items()} for b in batches] for i in range(seeds)]

  def run() -> int:
    for i in range(seeds):
      state = states[i]
      for t in range(steps):
        state, metrics = single.compiled(state, dev[i][t % len(batches)], base_keys[i])
        _to_host(metrics)
      states[i] = state
    return seeds * steps

  return run


def noop_runner(single: SingleSeed, init_key, base_key, batch, *, steps: int) -> Callable[[], int]:
  """`run()` calling a jitted no-op with the step's arguments and outputs: pure dispatch cost.

  The no-op takes the same (donated) state pytree, batch and key and returns the state and a
  scalar 'loss' that the host reads, so its time is what one step pays outside its compute.
  """
  noop = jax.jit(lambda s, b, k: (s, {'loss': jnp.zeros((), jnp.float32)}), donate_argnums=0)
  box = [single.new_state(init_key)]

  def run() -> int:
    for _ in range(steps):
      box[0], metrics = noop(box[0], batch, base_key)
      _to_host(metrics)
    return steps

  return run


def sweep_runner(model, optimizer, seeds: Sequence[int], batches, *, steps: int):
  """`run()` doing `steps` steps of the N-seed vmapped program, built as `fit_seeds` builds it."""
  mesh = sweep_lib.seed_mesh()
  sharded = NamedSharding(mesh, P(sweep_lib.AXIS))
  init_keys, base_keys = sweep_lib.seed_keys(seeds)
  init_keys, base_keys = jax.device_put((init_keys, base_keys), sharded)
  init = jax.jit(jax.vmap(lambda k: train_lib.init_state(model, optimizer, k)), out_shardings=sharded)
  step = jax.jit(jax.vmap(lambda s, b, k: train_lib.train_step(model, optimizer, s, b, k)),
                 out_shardings=sharded, donate_argnums=0)
  dev = [jax.device_put(b, sharded) for b in batches]
  box = [init(init_keys)]
  compiled, compile_s = common.compile_timed(step, box[0], dev[0], base_keys)

  def run() -> int:
    for t in range(steps):
      box[0], metrics = compiled(box[0], dev[t % len(dev)], base_keys)
      _to_host(metrics)
    return len(seeds) * steps

  return run, compile_s, common.xla_flops(compiled), mesh.devices.size


def big_batch_runner(model, optimizer, batches, *, steps: int):
  """`run()` doing `steps` steps of ONE model on the N seeds' batches concatenated (B*N)."""
  flat = [{k: jnp.asarray(v.reshape(-1, *v.shape[2:])) for k, v in b.items()} for b in batches]
  single = SingleSeed(model, optimizer, flat[0]['label'].shape[0])
  box = [single.new_state(jax.random.key(0))]
  n = batches[0]['label'].shape[0]

  def run() -> int:
    for t in range(steps):
      box[0], metrics = single.compiled(box[0], flat[t % len(flat)], jax.random.key(1))
      _to_host(metrics)
    return n * steps

  return run, single.compile_s, single.flops


def run(*, num_seeds: Sequence[int], batch_size: int = 32, data: str = 'synthetic',
        sweep_steps: dict[int, int], seq_seeds: int = 4, seq_steps: int = 3, dispatch_steps: int = 5,
        repeats: int = 3, big_batch: bool = True, budget_s: float = 120.0, log=print) -> dict[str, Any]:
  """Runs benchmark (a); returns a JSON-able dict (rows, config, notes)."""
  model, optimizer, desc = make_cnn()
  n_dev = jax.device_count()
  num_batches = 2
  log(f'[sweep] compiling the single-seed step ({desc}) ...')
  single = SingleSeed(model, optimizer, batch_size)
  single_flops = single.flops
  rows, results = [], {}

  # Dispatch overhead of the single-seed step: the step vs a no-op with the same arguments.
  one = host_batches(1, batch_size, num_batches, data)
  init_keys1, base_keys1 = sweep_lib.seed_keys([0])
  dev_batch = {k: jax.device_put(v[0]) for k, v in one[0].items()}
  t = common.time_interleaved(
      {'step': sequential_runner(single, init_keys1, base_keys1, one, seeds=1, steps=dispatch_steps),
       'noop': noop_runner(single, init_keys1[0], base_keys1[0], dev_batch, steps=10 * dispatch_steps)},
      warmup=1, repeats=repeats)
  dispatch = {
      'step_s': t['step'].median, 'noop_s': t['noop'].median,
      'fraction': t['noop'].median / t['step'].median,
      'timing': {k: v.as_dict() for k, v in t.items()},
  }
  log(f'[sweep] single-seed step {t["step"].median * 1e3:.1f} ms; a no-op call with the same '
      f'arguments {t["noop"].median * 1e3:.2f} ms')

  for n in num_seeds:
    if n % n_dev:
      log(f'[sweep] skipping N={n}: not a multiple of the {n_dev} devices')
      continue
    seeds = list(range(n))
    batches = host_batches(n, batch_size, num_batches, data)
    steps = sweep_steps.get(n, 1)
    log(f'[sweep] N={n}: compiling the sweep program ...')
    sweep_run, sweep_compile, sweep_flops, _ = sweep_runner(model, optimizer, seeds, batches, steps=steps)
    runs = {'sweep': sweep_run}
    m = min(n, seq_seeds)
    init_keys, base_keys = sweep_lib.seed_keys(seeds[:m])
    runs['sequential'] = sequential_runner(single, init_keys, base_keys, batches, seeds=m, steps=seq_steps)
    bb_compile = bb_flops = None
    if big_batch and n > 1:
      log(f'[sweep] N={n}: compiling the big-batch ({n * batch_size}) reference ...')
      runs['big_batch'], bb_compile, bb_flops = big_batch_runner(model, optimizer, batches, steps=steps)
    warmup_n, repeats_n = 1, repeats
    if rows:  # keep the largest N within budget_s: fewer repeats when one step is long
      est = rows[-1]['sweep_step_s'] / rows[-1]['num_seeds'] * n * steps
      if est * (1 + repeats) > budget_s:
        warmup_n, repeats_n = (1, 2) if 3 * est <= budget_s else (0, 1)
        log(f'[sweep] N={n}: ~{est:.0f} s per timed sweep call expected; warm-up {warmup_n}, '
            f'{repeats_n} repeat(s)')
    log(f'[sweep] N={n}: timing ...')
    t = common.time_interleaved(runs, warmup=warmup_n, repeats=repeats_n)
    sweep_tp = 1 / t['sweep'].median
    seq_tp = 1 / t['sequential'].median
    bb_tp = 1 / t['big_batch'].median if 'big_batch' in t else None
    row = {
        'num_seeds': n, 'sweep_steps_seeds_per_s': sweep_tp, 'sequential_steps_seeds_per_s': seq_tp,
        'sequential_seeds_run': m, 'sequential_extrapolated': m < n, 'ratio': sweep_tp / seq_tp,
        'big_batch_steps_seeds_per_s': bb_tp,
        'sweep_step_s': t['sweep'].median * n, 'sweep_compile_s': sweep_compile,
        'sequential_compile_s': single.compile_s, 'big_batch_compile_s': bb_compile,
        'sweep_flops_per_step': sweep_flops, 'big_batch_flops_per_step': bb_flops,
        'sweep_gflops': sweep_flops * sweep_tp / n / 1e9 if sweep_flops else None,
        'sequential_gflops': single_flops * seq_tp / 1e9 if single_flops else None,
        'big_batch_gflops': bb_flops * bb_tp / n / 1e9 if bb_flops and bb_tp else None,
        'timing': {k: v.as_dict() for k, v in t.items()}, 'warmup': warmup_n, 'repeats': repeats_n,
        'max_spread': max(v.spread() for v in t.values()),
    }
    results[n] = row
    log(f'[sweep] N={n}: sweep {sweep_tp:.1f}, sequential {seq_tp:.1f} steps*seeds/s '
        f'(x{sweep_tp / seq_tp:.2f})' + (f', big batch {bb_tp:.1f}' if bb_tp else ''))
    rows.append(row)

  header = ['N seeds', 'sweep (steps·seeds/s)', 'sequential (steps·seeds/s)', 'sweep/seq',
            'big batch (steps·seeds/s)', 'sweep GFLOP/s', 'seq GFLOP/s', 'big-batch GFLOP/s',
            'sweep step (s)', 'compile sweep (s)', 'spread', 'warm-up+repeats']
  table_rows = [[r['num_seeds'], r['sweep_steps_seeds_per_s'],
                 common.fmt(r['sequential_steps_seeds_per_s']) + ('*' if r['sequential_extrapolated'] else ''),
                 r['ratio'], r['big_batch_steps_seeds_per_s'], r['sweep_gflops'],
                 r['sequential_gflops'], r['big_batch_gflops'], r['sweep_step_s'],
                 r['sweep_compile_s'], f"{100 * r['max_spread']:.0f}%" if r['repeats'] > 1 else '-',
                 f"{r['warmup']}+{r['repeats']}"] for r in rows]
  notes = [
      f'model: {desc}; batch {batch_size} per seed of 32x32x3 {data} images.',
      f'{n_dev} {jax.default_backend()} device(s); seed axis sharded over a 1-D mesh of all of them.',
      'Timed: the compute program of the loop (jitted step on device-resident batches + host read '
      'of the metrics every step, as run_loop does); no checkpoint/log I/O, no host batch building; '
      f'compilation excluded (single-seed compile {single.compile_s:.1f} s, paid once per `fit` run).',
      f'sequential: one compiled single-seed program run seed after seed; * = extrapolated from '
      f'{seq_seeds} seeds x {seq_steps} steps (its cost per seed-step does not depend on N).',
      'big batch: one model at batch 32*N, the FLOPs of the sweep through dense convolutions.',
      f"dispatch: the single-seed step takes {dispatch['step_s'] * 1e3:.1f} ms; a jitted no-op with "
      f"the same arguments (state donated, scalar read back) {dispatch['noop_s'] * 1e3:.2f} ms "
      f"({100 * dispatch['fraction']:.1f}% of the step): what running seeds one call each can lose.",
      f'median of {repeats} interleaved repeats after 1 warm-up (fewer where one sweep call would '
      f'push an N past {budget_s:.0f} s; see warm-up+repeats); spread = (max-min)/median of the '
      'noisiest column.',
  ]
  return {'table': common.table(header, table_rows), 'rows': rows, 'dispatch': dispatch,
          'single_seed_flops_per_step': single_flops, 'notes': notes,
          'config': {'model': desc, 'batch_size': batch_size, 'data': data, 'num_seeds': list(num_seeds),
                     'sweep_steps_per_repeat': {str(k): v for k, v in sweep_steps.items()},
                     'sequential_seeds_run': seq_seeds, 'budget_s_per_n': budget_s, 'sequential_steps_per_seed': seq_steps,
                     'dispatch_steps': dispatch_steps, 'repeats': repeats, 'warmup': 1,
                     'device_count': n_dev}}
