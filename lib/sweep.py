"""Seed sweeps: N seeds of one training config as one jitted, vmapped, sharded program.

Every leaf of the sweep's `TrainState` has a leading seed axis of size N, sharded over a
1-D device `Mesh` with axis name 'seed' (`NamedSharding(mesh, P('seed'))`). With strategy
'vmap', one `jit` of `vmap(train_step)` advances all seeds at once. Seed i is initialised,
fed and augmented exactly as `lib.train.fit(seed=seeds[i])` would be, so a sweep
reproduces N separate runs.

Strategy 'sequential' trains each device's seeds one after another with one shared
compiled step and assembles the same sharded result. It exists because of a measured
XLA:CPU weakness: under `vmap`, per-seed kernels turn every convolution into a grouped
convolution, whose kernel gradient XLA:CPU runs about 14x slower per seed than the plain
one (`python -m launch.bench --only=conv`); a vmapped CNN sweep ran at 0.12x the
throughput of sequential seeds on 2 CPU cores. 'auto' picks 'sequential' on CPU and
'vmap' on GPU/TPU, where batching seeds is the point.

`map_seeds(fn, stacked, *args)` evaluates any function of one seed's variables on every seed
with the same strategy choice (one compiled program either way).

Multi-host: call `jax.distributed.initialize()` in launch code first (never here); the mesh
then spans every process's devices, each process builds only the batches of the seeds its
own devices hold (`jax.make_array_from_process_local_data`), and orbax checkpoints the
sharded state collectively. Array-valued hyperparameters (a learning rate per seed) vmap
the same way.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lib import data as data_lib
from lib import validate
from lib.models import PureModel
from lib.train import TrainState, fit, init_state, run_loop, set_learning_rate, train_step

AXIS = 'seed'
STRATEGIES = ('auto', 'vmap', 'sequential')


def _resolve_strategy(strategy: str) -> str:
  """A checked strategy, with 'auto' made 'sequential' on CPU and 'vmap' elsewhere."""
  validate.check_choice(strategy, STRATEGIES, 'strategy')
  if strategy == 'auto':
    return 'sequential' if jax.default_backend() == 'cpu' else 'vmap'
  return strategy


def seed_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named 'seed' over `devices` (default: all devices of all processes)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def local_seed_slice(num_seeds: int, mesh: Mesh) -> slice:
  """The contiguous range of seed indices whose shards live on this process's devices."""
  index_map = NamedSharding(mesh, P(AXIS)).addressable_devices_indices_map((num_seeds,))
  ranges = {(idx[0].start or 0, num_seeds if idx[0].stop is None else idx[0].stop)
            for idx in index_map.values()}
  lo, hi = min(a for a, _ in ranges), max(b for _, b in ranges)
  if hi - lo != sum(b - a for a, b in ranges):
    raise ValueError('this process holds a non-contiguous range of seeds; order the mesh '
                     'devices by process (the default jax.devices() order does).')
  return slice(lo, hi)


def seed_keys(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Per-seed (init_key, base_key), each [N], derived as in `lib.train.fit`."""
  keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s)))(jnp.asarray(seeds, jnp.uint32))
  return keys[:, 0], keys[:, 1]


def fit_seeds(*, model: PureModel, optimizer: optax.GradientTransformation, train_data: Any,
              seeds: Sequence[int], num_steps: int, batch_size: int, workdir: str,
              learning_rates: Sequence[float] | None = None, mesh: Mesh | None = None,
              checkpoint_every: int = 100, log_every: int = 10,
              step_options: Mapping[str, Any] | None = None, strategy: str = 'auto',
              progress: bool = True) -> TrainState:
  """Trains `len(seeds)` copies of `model` as one program.

  Args:
    model, optimizer: what to train and how (shared by every seed).
    train_data: a `lib.data` dataset.
    seeds: one int per run; its number must be a multiple of the mesh size.
    num_steps, batch_size: the schedule (batch size per seed).
    workdir: checkpoints and metrics (metrics hold per-seed arrays).
    learning_rates: optional peak learning rate per seed (overrides the optimizer's).
    mesh: a 1-D mesh with axis 'seed' (default `seed_mesh()`).
    checkpoint_every, log_every: intervals in steps.
    step_options: keyword options of `lib.train.train_step`.
    strategy: 'vmap', 'sequential' or 'auto' (see the module docstring). 'sequential'
      checkpoints each seed in `workdir/seed_<seed>`.
    progress: show a progress bar.

  Returns:
    The final `TrainState`, every leaf with a leading seed axis, sharded over the mesh.
  """
  seeds = [int(s) for s in seeds]
  mesh = mesh if mesh is not None else seed_mesh()
  n, n_dev = len(seeds), mesh.devices.size
  if n == 0 or n % n_dev:
    raise ValueError(f'seeds must hold a positive multiple of the {n_dev} devices in the mesh; '
                     f'got {n} seeds.')
  if learning_rates is not None and len(learning_rates) != n:
    raise ValueError(f'learning_rates must hold one value per seed ({n}); got {len(learning_rates)}.')
  validate.check_positive(batch_size, 'batch_size')
  strategy = _resolve_strategy(strategy)
  sharded = NamedSharding(mesh, P(AXIS))
  local = local_seed_slice(n, mesh)
  if strategy == 'sequential':
    states = [fit(model=model, optimizer=optimizer, train_data=train_data, num_steps=num_steps,
                  batch_size=batch_size, seed=seeds[i], workdir=os.path.join(workdir, f'seed_{seeds[i]}'),
                  checkpoint_every=checkpoint_every, log_every=log_every,
                  step_options=step_options, progress=progress,
                  learning_rate=None if learning_rates is None else learning_rates[i])
              for i in range(local.start, local.stop)]
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)
    return jax.tree.map(
        lambda v: jax.make_array_from_process_local_data(sharded, v, (n, *v.shape[1:])), stacked)
  # Keys are derived inside jit from the (replicated) seed list, so every process can build
  # arrays sharded over devices it does not own.
  seed_array = np.asarray(seeds, np.uint32)
  base_keys = jax.jit(lambda s: seed_keys(s)[1], out_shardings=sharded)(seed_array)
  lrs = None if learning_rates is None else np.asarray(learning_rates, np.float32)

  @functools.partial(jax.jit, out_shardings=sharded)
  def init(seed_array, lrs):
    state = jax.vmap(lambda k: init_state(model, optimizer, k))(seed_keys(seed_array)[0])
    if lrs is not None:
      state = state._replace(opt_state=jax.vmap(set_learning_rate)(state.opt_state, lrs))
    return state

  options = dict(step_options or {})
  step = jax.jit(jax.vmap(lambda s, b, k: train_step(model, optimizer, s, b, k, **options)),
                 out_shardings=sharded, donate_argnums=0)

  local_seeds = seeds[local]

  def batch_fn(i: int) -> dict[str, jax.Array]:
    per_seed = [data_lib.batch_at(train_data, i, batch_size=batch_size, seed=s) for s in local_seeds]
    stacked = {k: np.stack([b[k] for b in per_seed]) for k in ('image', 'label')}
    return {k: jax.make_array_from_process_local_data(sharded, v, (n, *v.shape[1:]))
            for k, v in stacked.items()}

  return run_loop(init=lambda: init(seed_array, lrs),
                  step_fn=lambda s, b: step(s, b, base_keys), batch_fn=batch_fn,
                  num_steps=num_steps, workdir=workdir, checkpoint_every=checkpoint_every,
                  log_every=log_every, progress=progress)


def map_seeds(fn: Callable[..., Any], stacked: Any, *args: Any, strategy: str = 'auto') -> Any:
  """`fn(tree_i, *args)` for every slice i of a pytree with a leading seed axis, stacked.

  For evaluating a sweep's results (accuracy, attributions, an audit) seed by seed with one
  compiled program: 'vmap' runs `jit(vmap(fn))`; 'sequential' runs `jit(fn)` on one seed
  after another (compiled once: the slices share shapes); 'auto' picks 'sequential' on CPU
  and 'vmap' elsewhere, for the reason given in the module docstring (per-seed
  convolution kernels under vmap or `lax.map` are several times slower on XLA:CPU).

  Args:
    fn: `fn(tree, *args) -> pytree of arrays`, traceable; `args` are shared by every seed.
    stacked: pytree whose leaves all have the same leading size N >= 1 (e.g.
      `train.to_host(state.variables)` of `fit_seeds`, or a tuple (variables, per-seed K)).
    *args: further arguments, the same for every seed.
    strategy: 'auto', 'vmap' or 'sequential'.

  Returns:
    `fn`'s outputs with a leading axis N, as host numpy arrays.

  Example:
    >>> accuracy = map_seeds(lambda v, x, y: (model.apply(v, x).logits.argmax(-1) == y).mean(),
    ...                      variables, images, labels)          # [N]
  """
  strategy = _resolve_strategy(strategy)
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(stacked)}
  if len(sizes) != 1 or None in sizes or 0 in sizes:
    raise ValueError('stacked must be a pytree whose leaves share a leading seed axis of size '
                     f'N >= 1; got leading sizes {sorted(map(str, sizes))}.')
  if strategy == 'vmap':
    return jax.tree.map(np.asarray, jax.jit(jax.vmap(fn, in_axes=(0,) + (None,) * len(args)))(
        stacked, *args))
  one = jax.jit(fn)
  outs = [jax.tree.map(np.asarray, one(jax.tree.map(lambda v: v[i], stacked), *args))
          for i in range(sizes.pop())]
  return jax.tree.map(lambda *xs: np.stack(xs), *outs)
