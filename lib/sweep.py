"""Seed sweeps: N seeds of any training `(init, step)` pair as one program, resumable.

`run_seeds(init=, step=, batch_fn=, seeds=, ...)` trains one state per seed:

    state_i = init(init_key_i)              # or init(init_key_i, hyper_i) with `hyper`
    state_i, metrics_i = step(state_i, batch_fn(t, seeds[i]), base_key_i)   # t = 0, 1, ...

where `(init_key_i, base_key_i) = split(key(seeds[i]))`, exactly as `lib.train.fit` derives
them, so seed i of a sweep reproduces `fit(seed=seeds[i])`. `fit_seeds` is `run_seeds` over
the classification pair of `lib.train`; a contrastive or meta-learning step sweeps the same
way.

**One checkpoint layout for both strategies.** The sweep checkpoints the stacked state, every
leaf with a leading seed axis [N, ...], in `workdir/checkpoints` at the same steps, and logs
per-seed metrics ([N] lists) in `workdir/metrics.jsonl`, whatever the strategy:

  * 'vmap': the running state is that stacked state, sharded over a 1-D device `Mesh` with
    axis 'seed' (`NamedSharding(mesh, P('seed'))`); one `jit(vmap(step))` advances every seed.
  * 'sequential': the running state is one state per seed of this process, on its first
    device; each step runs the seeds one after another through one compiled single-seed step
    (the interleaving changes nothing: seeds are independent). At checkpoints the states are
    stacked into the sharded layout above; on restore they are unstacked from it.

So a sweep started with one strategy and relaunched with the other continues from its
newest checkpoint (tested): start sequentially on CPU, finish with vmap on GPU.

'sequential' exists because of a measured XLA:CPU weakness: under `vmap`, per-seed kernels
turn every convolution into a grouped convolution, whose kernel gradient XLA:CPU runs about
14x slower per seed than the plain one (`python -m launch.bench --only=conv`); a vmapped CNN
sweep ran at 0.12x the throughput of sequential seeds on 2 CPU cores. 'auto' picks
'sequential' on CPU and 'vmap' on GPU/TPU, where batching seeds is the point. The two
strategies agree to float rounding (XLA compiles the batched program differently).

Compiled programs are cached per `(init, step)` pair (and mesh), so sweeping the same pair
twice in a process compiles once; pass the same function objects to benefit.

`map_seeds(fn, stacked, *args)` evaluates any function of one seed's variables on every seed
with the same strategy choice (one compiled program either way).

Multi-host: call `jax.distributed.initialize()` in launch code first (never here); the mesh
then spans every process's devices, each process builds only the batches of the seeds its
own devices hold (`jax.make_array_from_process_local_data`), and orbax checkpoints the
sharded state collectively. Array-valued hyperparameters (a learning rate per seed, `hyper`)
vmap the same way.

Example (a classifier's seeds with a learning rate each, as `fit_seeds` builds them):

    >>> init, step = classification_pair(model, optimizer)
    >>> batch_fn = lambda t, seed: train.numeric_fields(
    ...     data.batch_at(dataset, t, batch_size=64, seed=seed))
    >>> state = run_seeds(init=init, step=step, batch_fn=batch_fn, seeds=range(8),
    ...                   num_steps=1000, workdir='/tmp/sweep',
    ...                   hyper=np.linspace(0.01, 0.1, 8, dtype=np.float32))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lib import data as data_lib
from lib import train
from lib import validate

AXIS = 'seed'
STRATEGIES = ('auto', 'vmap', 'sequential')
Batch = Mapping[str, Any]


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


def _call_init(init: Callable[..., Any], key: jax.Array, hyper: Any) -> Any:
  return init(key) if hyper is None else init(key, hyper)


@functools.lru_cache(maxsize=8)
def _vmapped(init: Callable[..., Any], step: Callable[..., Any], sharded: NamedSharding):
  """(init_all(seeds, hyper), base_keys(seeds), step_all(states, batches, keys)), jitted."""
  # Keys are derived inside jit from the (replicated) seed list, so every process can build
  # arrays sharded over devices it does not own.
  init_all = jax.jit(lambda seeds, hyper: jax.vmap(functools.partial(_call_init, init))(
      seed_keys(seeds)[0], hyper), out_shardings=sharded)
  base_keys = jax.jit(lambda seeds: seed_keys(seeds)[1], out_shardings=sharded)
  step_all = jax.jit(jax.vmap(step), out_shardings=sharded, donate_argnums=0)
  return init_all, base_keys, step_all


@functools.lru_cache(maxsize=8)
def _single(init: Callable[..., Any], step: Callable[..., Any]):
  """(init_one(key, hyper), step_one(state, batch, key)), jitted for one seed."""
  return (jax.jit(functools.partial(_call_init, init)),
          jax.jit(step, donate_argnums=0))


def _local_rows(x: jax.Array, local: slice) -> np.ndarray:
  """This process's rows `local` of a global array sharded over its leading axis."""
  rows = np.empty((local.stop - local.start, *x.shape[1:]), x.dtype)
  for shard in x.addressable_shards:
    start = (shard.index[0].start or 0) - local.start
    rows[start:start + shard.data.shape[0]] = np.asarray(shard.data)
  return rows


def _stacked_layout(abstract: Callable[[], Any], sharded: NamedSharding, n: int,
                    local: slice) -> train.Layout:
  """Per-seed states of this process <-> the stacked [N, ...] sharded checkpoint."""
  device = jax.local_devices()[0]

  def save(states: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jax.make_array_from_process_local_data(
        sharded, np.stack([np.asarray(x) for x in xs]), (n, *np.shape(xs[0]))), *states)

  def load(tree: Any) -> tuple[Any, ...]:
    rows = jax.tree.map(lambda x: _local_rows(x, local), tree)
    return tuple(jax.tree.map(lambda r: jax.device_put(r[i], device), rows)
                 for i in range(local.stop - local.start))

  return train.Layout(abstract, save, load)


def run_seeds(*, init: Callable[..., Any], step: Callable[..., tuple[Any, dict]],
              batch_fn: Callable[[int, int], Batch], seeds: Sequence[int], num_steps: int,
              workdir: str, hyper: Any = None, mesh: Mesh | None = None,
              checkpoint_every: int = 100, log_every: int = 10, strategy: str = 'auto',
              progress: bool = True) -> Any:
  """Trains one state per seed with the pair `(init, step)`, resuming from `workdir`.

  Args:
    init: `init(key)`, or `init(key, hyper_i)` when `hyper` is given -> state (pure).
    step: `step(state, batch, key) -> (state, metrics)` (pure); `key` is the seed's run key
      (derive the step's randomness from it and the state's step counter); `metrics['loss']`
      must stay finite.
    batch_fn: `batch_fn(t, seed) -> dict of numpy arrays`, the batch of step t for `seed`;
      it must depend on (t, seed) alone for exact resumption.
    seeds: ints >= 0, as many as a positive multiple of the mesh size.
    num_steps: total steps per seed.
    workdir: checkpoints (stacked state) and metrics (per-seed arrays).
    hyper: optional pytree of per-seed hyperparameters, leaves with a leading axis N.
    mesh: a 1-D mesh with axis 'seed' (default `seed_mesh()`).
    checkpoint_every, log_every: intervals in steps.
    strategy: 'vmap', 'sequential' or 'auto' (see the module docstring).
    progress: report progress.

  Returns:
    The final states stacked, every leaf [N, ...] and sharded over the mesh.
  """
  seeds = list(seeds)
  validate.check_ints(seeds, 'seeds', minimum=0)
  validate.check_bool(progress, 'progress')
  strategy = _resolve_strategy(strategy)
  mesh = mesh if mesh is not None else seed_mesh()
  n, n_dev = len(seeds), mesh.devices.size
  if n % n_dev:
    raise ValueError(f'seeds must hold a positive multiple of the {n_dev} devices in the mesh; '
                     f'got {n} seeds.')
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(hyper)}
  if sizes - {n}:
    raise ValueError(f'hyper must hold one value per seed ({n}) in every leaf; got leading '
                     f'sizes {sorted(map(str, sizes))}.')
  sharded = NamedSharding(mesh, P(AXIS))
  local = local_seed_slice(n, mesh)
  local_seeds = seeds[local]
  seed_array = np.asarray(seeds, np.uint32)
  init_all, base_keys_of, step_all = _vmapped(init, step, sharded)
  abstract = lambda: jax.tree.map(  # eval_shape keeps no shardings through a closure
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharded),
      jax.eval_shape(init_all, seed_array, hyper))
  loop = dict(num_steps=num_steps, workdir=workdir, checkpoint_every=checkpoint_every,
              log_every=log_every, progress=progress)
  if strategy == 'vmap':
    base_keys = base_keys_of(seed_array)

    def global_batch(t: int) -> dict[str, jax.Array]:
      per_seed = [batch_fn(t, s) for s in local_seeds]
      return jax.tree.map(lambda *v: jax.make_array_from_process_local_data(
          sharded, np.stack(v), (n, *np.shape(v[0]))), *per_seed)

    same = lambda tree: tree
    return train.run_loop(init=lambda: init_all(seed_array, hyper),
                          step_fn=lambda s, b: step_all(s, b, base_keys),
                          batch_fn=global_batch, layout=train.Layout(abstract, same, same),
                          **loop)

  init_one, step_one = _single(init, step)
  keys = [jax.random.split(jax.random.key(s)) for s in local_seeds]
  hyper_of = lambda i: jax.tree.map(lambda h: h[local.start + i], hyper)
  layout = _stacked_layout(abstract, sharded, n, local)

  def step_each(states: tuple[Any, ...], batches: tuple[Batch, ...]):
    out = [step_one(s, b, k[1]) for s, b, k in zip(states, batches, keys)]
    return tuple(s for s, _ in out), jax.tree.map(lambda *m: jnp.stack(m), *(m for _, m in out))

  states = train.run_loop(
      init=lambda: tuple(init_one(k[0], hyper_of(i)) for i, k in enumerate(keys)),
      step_fn=step_each,
      batch_fn=lambda t: tuple(jax.tree.map(jnp.asarray, batch_fn(t, s)) for s in local_seeds),
      layout=layout, **loop)
  return layout.save(states)


@functools.lru_cache(maxsize=8)
def classification_pair(model: Any, optimizer: optax.GradientTransformation,
                        options: tuple[tuple[str, Any], ...] = ()):
  """The `(init, step)` pair of `lib.train`'s supervised step, one object per arguments.

  Args:
    model, optimizer: as in `lib.train.train_step`.
    options: `train_step`'s keyword options as sorted `(name, value)` pairs.

  Returns:
    `init(key, learning_rate=None) -> TrainState` and `step(state, batch, key)`; the same
    objects for the same arguments, so the sweep's compiled programs are reused.
  """
  def init(key: jax.Array, learning_rate: jax.Array | None = None) -> train.TrainState:
    state = train.init_state(model, optimizer, key)
    if learning_rate is None:
      return state
    return state._replace(opt_state=train.set_learning_rate(state.opt_state, learning_rate))

  step = functools.partial(train.train_step, model, optimizer, **dict(options))
  return init, step


def fit_seeds(*, model: Any, optimizer: optax.GradientTransformation, train_data: Any,
              seeds: Sequence[int], num_steps: int, batch_size: int, workdir: str,
              learning_rates: Sequence[float] | None = None, mesh: Mesh | None = None,
              checkpoint_every: int = 100, log_every: int = 10,
              step_options: Mapping[str, Any] | None = None, strategy: str = 'auto',
              progress: bool = True) -> train.TrainState:
  """Trains `len(seeds)` copies of `model` as one sweep (`run_seeds` of `lib.train`'s step).

  Args:
    model, optimizer: what to train and how (shared by every seed).
    train_data: a `lib.data` dataset (every numeric field of its batches reaches the step).
    seeds: ints >= 0, as many as a positive multiple of the mesh size.
    num_steps, batch_size: the schedule (batch size per seed).
    workdir: checkpoints and metrics (metrics hold per-seed arrays).
    learning_rates: optional finite peak learning rate > 0 per seed (overrides the
      optimizer's).
    mesh: a 1-D mesh with axis 'seed' (default `seed_mesh()`).
    checkpoint_every, log_every: intervals in steps.
    step_options: keyword options of `lib.train.train_step` ('loss_fn', 'flip', 'pad').
    strategy: 'vmap', 'sequential' or 'auto' (see the module docstring); both use one
      checkpoint layout, so a relaunch may switch.
    progress: report progress.

  Returns:
    The final `TrainState`, every leaf with a leading seed axis, sharded over the mesh.
  """
  validate.check_int(batch_size, 'batch_size', minimum=1)
  options = dict(step_options or {})
  train.check_step_options(options)
  hyper = None
  if learning_rates is not None:
    learning_rates = list(learning_rates)
    if len(learning_rates) != len(list(seeds)):
      raise ValueError(f'learning_rates must hold one value per seed ({len(list(seeds))}); '
                       f'got {len(learning_rates)}.')
    for i, lr in enumerate(learning_rates):
      validate.check_number(lr, f'learning_rates[{i}]', low=0.0)
      validate.check_positive(lr, f'learning_rates[{i}]')
    hyper = np.asarray(learning_rates, np.float32)
  init, step = classification_pair(model, optimizer, tuple(sorted(options.items())))
  batch_fn = lambda t, seed: train.numeric_fields(
      data_lib.batch_at(train_data, t, batch_size=batch_size, seed=seed))
  return run_seeds(init=init, step=step, batch_fn=batch_fn, seeds=seeds, num_steps=num_steps,
                   workdir=workdir, hyper=hyper, mesh=mesh, checkpoint_every=checkpoint_every,
                   log_every=log_every, strategy=strategy, progress=progress)


@functools.lru_cache(maxsize=32)
def _per_seed_program(fn: Callable[..., Any], num_args: int, strategy: str) -> Callable[..., Any]:
  """The jitted program of `map_seeds` for `fn`, cached so repeated calls reuse its compile."""
  if strategy == 'vmap':
    return jax.jit(jax.vmap(fn, in_axes=(0,) + (None,) * num_args))
  return jax.jit(fn)


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
  program = _per_seed_program(fn, len(args), strategy)
  if strategy == 'vmap':
    return jax.tree.map(np.asarray, program(stacked, *args))
  outs = [jax.tree.map(np.asarray, program(jax.tree.map(lambda v: v[i], stacked), *args))
          for i in range(sizes.pop())]
  return jax.tree.map(lambda *xs: np.stack(xs), *outs)
