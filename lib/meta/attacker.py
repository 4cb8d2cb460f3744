"""The fine-tuning attacker of a tamper-resistance evaluation: a strong hyperparameter search.

Henderson et al. 2023, "Self-Destructing Models", §5 (the authors' `adapt.py`,
`adapt_model_evaluation` and `fine_tune_evaluation`): the attacker takes n labelled
examples of the harmful task (n ∈ {20, 50, 100, 200}), puts a re-initialised linear head on
the encoder and fine-tunes with Adam, either the head alone on the frozen encoder (a linear
probe) or everything; held-out accuracy is checked every 50 steps and the best is kept
(oracle early stopping: the strongest attacker); a search over the learning rate
(log-uniform 1e-5…1e-2), the number of steps (100…1000) and the batch size (12/24/48) picks
a setting, which is then re-run with fresh seeds (15 in the paper) and reported.

The authors search with hyperopt TPE (50 trials); here the search is a grid, run as one
vmapped program per (mode, batch size): a flat axis of R runs, each with its own traced
learning rate, key and n, so the whole grid × seeds runs at once. Steps need no runs of
their own: every run trains for the largest step count and records the held-out accuracy
every `eval_every` steps, and the best-so-far after s steps is the answer of the run that
trains for s steps (oracle early stopping makes the two identical). Batch size and
mode change shapes and the traced program, so each pair is its own compiled program;
n is a runtime value (the subset is padded to the static `max_n` and batches are drawn
from its first n rows) and `attack_search` pads the re-runs and the search to the same
number of runs, so every n, the search and the re-runs share that one program.

Per seed: a subset of n training examples (the first n of a permutation of the training
set drawn from the seed's key), a head ~ PyTorch's `nn.Linear` initialisation (bias-free,
as the authors'), and batches drawn with replacement from the subset. A run depends on
its (learning rate, key, n) alone, not on the other runs of the program or on `max_n`
(tests/meta/test_attacker.py). Run alone in a program compiled for one run, it is the
same computation but not always the same float32 rounding: on launch/bench_meta.py's
BERT-Tiny-shaped grid (4 lr × 4 seeds, n = 50, 2026-12-01) one of 16 grid cells (lr 3e-3, 50 steps) differed from
its one-run program by 0.078 held-out accuracy (5 of 64 random-label texts near the
decision boundary), while the same run alone in the grid's program equalled the grid bit
for bit. The authors evaluate after steps 51, 101, ... (`step % 50 == 0 and step != 0`);
here after 50, 100, ... steps.

Example:
    >>> result = attack_search(encoder.apply, encoder_vars, train_x, train_y, val_x, val_y,
    ...                        num_classes=2, n_train=50, key=jax.random.key(0))
    >>> result.best, result.rerun_accuracy.mean()
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib import contract, validate
from lib.meta.adam import adam_init, adam_step
from lib.meta.inner import features, linear_init

Array = jax.Array
MODES = ('probe', 'full')
LEARNING_RATES = tuple(float(x) for x in np.logspace(-5, -2, 7))
STEPS = tuple(range(100, 1001, 100))


class AttackResult(NamedTuple):
  """What the search found.

  Attributes:
    accuracy: [modes, batch sizes, learning rates, steps, search seeds] the best held-out
      accuracy of each setting and seed.
    best: the chosen setting {'mode', 'batch_size', 'learning_rate', 'steps'} (highest mean
      over search seeds; ties go to the first in grid order).
    rerun_accuracy: [num_reruns] the best held-out accuracy of the chosen setting re-run
      with fresh seeds.
    grid: {'mode', 'batch_size', 'learning_rate', 'steps'} -> the values of each axis.
  """
  accuracy: np.ndarray
  best: dict[str, Any]
  rerun_accuracy: np.ndarray
  grid: dict[str, tuple[Any, ...]]


def _take(tree: Any, idx: Array) -> Any:
  return jax.tree.map(lambda a: a[idx], tree)


def _accuracy(logits: Array, labels: Array) -> Array:
  return jnp.mean((jnp.argmax(logits, -1).astype(labels.dtype) == labels).astype(jnp.float32))


def _curve(apply: contract.Apply, encoder_params: Any, data: tuple[Any, Array, Any, Array],
           learning_rate: Array, key: Array, n_train: Array, *, num_classes: int, max_n: int,
           batch_size: int, max_steps: int, eval_every: int, mode: str) -> Array:
  """Held-out accuracy [max_steps // eval_every] of one fine-tuning run (module docstring):
  `n_train` <= `max_n` traced, the subset padded to `max_n` rows."""
  train_x, train_y, val_x, val_y = data
  subset_key, head_key, batch_key = jax.random.split(key, 3)
  idx = jax.random.permutation(subset_key, train_y.shape[0])[:max_n]
  x, y = _take(train_x, idx), train_y[idx]
  dim = jax.eval_shape(lambda: features(apply, encoder_params, x)).shape[-1]
  head = linear_init(head_key, dim, num_classes)
  if mode == 'probe':  # a frozen encoder: its features are computed once
    train_feats = features(apply, encoder_params, x)
    val_feats = features(apply, encoder_params, val_x)
    params = {'head': head}
    logits_of = lambda p, rows: train_feats[rows] @ p['head']
    val_logits = lambda p: val_feats @ p['head']
  else:
    params = {'encoder': encoder_params, 'head': head}
    logits_of = lambda p, rows: features(apply, p['encoder'], _take(x, rows)) @ p['head']
    val_logits = lambda p: features(apply, p['encoder'], val_x) @ p['head']

  def loss(p: Any, rows: Array) -> Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits_of(p, rows), y[rows]).mean()

  def train_step(carry, t):
    p, opt = carry
    rows = jax.random.randint(jax.random.fold_in(batch_key, t), (batch_size,), 0, n_train)
    return adam_step(p, jax.grad(loss)(p, rows), opt, learning_rate), None

  def chunk(carry, e):
    steps = e * eval_every + jnp.arange(eval_every, dtype=jnp.int32)
    carry, _ = jax.lax.scan(train_step, carry, steps)
    return carry, _accuracy(val_logits(carry[0]), val_y)

  _, accuracy = jax.lax.scan(chunk, (params, adam_init(params)),
                             jnp.arange(max_steps // eval_every, dtype=jnp.int32))
  return accuracy


@functools.lru_cache(maxsize=32)
def _program(apply: contract.Apply, **static: Any):
  """jit(vmap over R runs (learning rate, key, n)) of `_curve`: [R, E]."""
  curve = functools.partial(_curve, apply, **static)
  return jax.jit(jax.vmap(curve, in_axes=(None, None, 0, 0, 0)))


def _check_data(train_x: Any, train_y: Any, val_x: Any, val_y: Any, num_classes: int,
                n_train: int, max_n: int) -> None:
  validate.check_int(num_classes, 'num_classes', minimum=2)
  validate.check_int(n_train, 'n_train', minimum=1)
  validate.check_int(max_n, 'max_n', minimum=n_train)
  for name, x, y in (('train', train_x, train_y), ('val', val_x, val_y)):
    validate.check_labels(y, num_classes, f'{name}_y')
    if y.shape[0] == 0:
      raise ValueError(f'{name}_y must hold at least one example; got none.')
    for leaf in jax.tree.leaves(x):
      if leaf.shape[:1] != y.shape[:1]:
        raise ValueError(f'{name}_x leaves must have {y.shape[0]} rows (one per label in '
                         f'{name}_y); got shape {leaf.shape}.')
  if max_n > train_y.shape[0]:
    name = 'n_train' if max_n == n_train else 'max_n'
    raise ValueError(f'{name}={max_n} exceeds the {train_y.shape[0]} examples of train_y.')


def finetune_curves(apply: contract.Apply, encoder_params: Any, train_x: Any, train_y: Any,
                    val_x: Any, val_y: Any, *, num_classes: int, n_train: int,
                    learning_rates: Sequence[float], keys: Array, batch_size: int,
                    mode: str = 'full', max_steps: int = 1000, eval_every: int = 50,
                    max_n: int | None = None, num_runs: int | None = None) -> np.ndarray:
  """Held-out accuracy curves of fine-tuning runs, every learning rate × key as one program.

  Args:
    apply: the encoder, `apply(params, inputs) -> Outputs` with `features` [B, D].
    encoder_params: its parameters (what the attacker starts from).
    train_x, train_y: the attacker's pool (pytree of [N, ...] leaves, int labels [N]).
    val_x, val_y: held-out examples (pytree of [V, ...] leaves, int labels [V]).
    num_classes: classes of the attacked task.
    n_train: examples the attacker trains on (a subset of the pool per key).
    learning_rates: Adam learning rates, each > 0.
    keys: [S] typed keys, one run per key (subset, head initialisation, batches).
    batch_size: examples per step.
    mode: 'probe' (head only, frozen encoder) or 'full' (everything).
    max_steps: steps of every run, a multiple of `eval_every`.
    eval_every: steps between held-out evaluations.
    max_n: the static subset size the program is compiled for (default `n_train`): calls
      with any n_train <= max_n share one program.
    num_runs: pad the L·S runs to this many (copies of the last run, dropped): calls with
      other L·S share the program compiled for `num_runs` runs (default L·S).

  Returns:
    [L, S, max_steps // eval_every] held-out accuracy after eval_every, 2·eval_every, ...
    steps.

  Raises:
    ValueError: a bad argument (named in the message).
  """
  max_n = n_train if max_n is None else max_n
  _check_data(train_x, train_y, val_x, val_y, num_classes, n_train, max_n)
  validate.check_choice(mode, MODES, 'mode')
  validate.check_int(batch_size, 'batch_size', minimum=1)
  validate.check_int(eval_every, 'eval_every', minimum=1)
  validate.check_int(max_steps, 'max_steps', minimum=eval_every)
  if max_steps % eval_every:
    raise ValueError(f'max_steps={max_steps} must be a multiple of eval_every={eval_every}.')
  rates = _check_rates(learning_rates)
  if not jax.dtypes.issubdtype(getattr(keys, 'dtype', None), jax.dtypes.prng_key) or keys.ndim != 1:
    raise ValueError('keys must be a [S] array of typed keys (jax.random.split(key, S)); '
                     f'got {getattr(keys, "dtype", type(keys).__name__)}.')
  num_l, num_s = len(rates), keys.shape[0]
  num_runs = num_l * num_s if num_runs is None else num_runs
  validate.check_int(num_runs, 'num_runs', minimum=num_l * num_s)
  pad = jnp.full((num_runs - num_l * num_s,), num_l * num_s - 1, jnp.int32)
  rows = jnp.concatenate([jnp.arange(num_l * num_s, dtype=jnp.int32), pad])
  flat_rates, flat_keys = rates[rows // num_s], keys[rows % num_s]   # run r: (r // S, r % S)
  ns = jnp.full((num_runs,), n_train, jnp.int32)
  program = _program(apply, num_classes=num_classes, max_n=max_n, batch_size=batch_size,
                     max_steps=max_steps, eval_every=eval_every, mode=mode)
  data = (train_x, jnp.asarray(train_y), val_x, jnp.asarray(val_y))
  curves = np.asarray(program(encoder_params, data, flat_rates, flat_keys, ns))
  return curves[:num_l * num_s].reshape(num_l, num_s, -1)


def _check_rates(learning_rates: Sequence[float]) -> Array:
  if isinstance(learning_rates, (str, bytes)) or not len(learning_rates):
    raise ValueError(f'learning_rates must be a non-empty sequence; got {learning_rates!r}.')
  for i, lr in enumerate(learning_rates):
    validate.check_number(lr, f'learning_rates[{i}]')
    validate.check_positive(lr, f'learning_rates[{i}]')
  return jnp.asarray(learning_rates, jnp.float32)


def best_so_far(curves: np.ndarray, steps: Sequence[int], eval_every: int) -> np.ndarray:
  """[..., T]: for each s in `steps`, the best accuracy among evaluations at <= s steps.

  Args:
    curves: [..., E] accuracy after eval_every, 2·eval_every, ... steps.
    steps: step counts, multiples of `eval_every` in [eval_every, E · eval_every].
    eval_every: steps between evaluations.
  """
  running = np.maximum.accumulate(curves, axis=-1)
  return running[..., [s // eval_every - 1 for s in steps]]


def attack_search(apply: contract.Apply, encoder_params: Any, train_x: Any, train_y: Any,
                  val_x: Any, val_y: Any, *, num_classes: int, n_train: int, key: Array,
                  learning_rates: Sequence[float] = LEARNING_RATES,
                  batch_sizes: Sequence[int] = (12, 24, 48), steps: Sequence[int] = STEPS,
                  modes: Sequence[str] = MODES, eval_every: int = 50,
                  num_search_seeds: int = 1, num_reruns: int = 15,
                  max_n: int | None = None) -> AttackResult:
  """Grid search of the fine-tuning attack, then re-runs of the best setting (module docstring).

  Args:
    apply, encoder_params, train_x, train_y, val_x, val_y, num_classes, n_train: as in
      `finetune_curves`.
    key: typed PRNG key; search seeds and re-run seeds are derived from it (disjoint).
    learning_rates: the grid (default 7 values, log-spaced over 1e-5…1e-2).
    batch_sizes: the grid of batch sizes.
    steps: the grid of step counts, multiples of `eval_every` (default 100…1000).
    modes: subset of ('probe', 'full').
    eval_every: steps between held-out evaluations (50 in the paper).
    num_search_seeds: runs per setting during the search.
    num_reruns: runs of the chosen setting (15 in the paper).
    max_n: as in `finetune_curves`: searches at every n_train <= max_n (and their re-runs)
      share one program per (mode, batch size).

  Returns:
    `AttackResult`.

  Raises:
    ValueError: an empty grid, labels outside [0, num_classes), n_train above the pool
      size, a step count that is not a multiple of eval_every, or another bad argument.
  """
  validate.check_key(key)
  max_n = n_train if max_n is None else max_n
  _check_data(train_x, train_y, val_x, val_y, num_classes, n_train, max_n)
  _check_rates(learning_rates)
  validate.check_ints(list(batch_sizes), 'batch_sizes', minimum=1)
  validate.check_ints(list(steps), 'steps', minimum=1)
  validate.check_int(eval_every, 'eval_every', minimum=1)
  if any(s % eval_every for s in steps):
    raise ValueError(f'steps must be multiples of eval_every={eval_every}; got {list(steps)}.')
  if isinstance(modes, str) or not len(modes):
    raise ValueError(f'modes must be a non-empty sequence of {MODES}; got {modes!r}.')
  for i, mode in enumerate(modes):
    validate.check_choice(mode, MODES, f'modes[{i}]')
  validate.check_int(num_search_seeds, 'num_search_seeds', minimum=1)
  validate.check_int(num_reruns, 'num_reruns', minimum=1)
  search_key, rerun_key = jax.random.split(key)
  run = functools.partial(finetune_curves, apply, encoder_params, train_x, train_y, val_x,
                          val_y, num_classes=num_classes, n_train=n_train,
                          max_steps=max(steps), eval_every=eval_every, max_n=max_n,
                          num_runs=max(len(learning_rates) * num_search_seeds, num_reruns))
  search_keys = jax.random.split(search_key, num_search_seeds)
  accuracy = np.stack([np.stack([
      best_so_far(run(learning_rates=learning_rates, keys=search_keys, batch_size=b,
                      mode=mode), steps, eval_every).transpose(0, 2, 1)   # [L, T, S]
      for b in batch_sizes]) for mode in modes])
  m, b, l, t = np.unravel_index(np.argmax(accuracy.mean(-1)), accuracy.shape[:-1])
  best = {'mode': modes[m], 'batch_size': int(batch_sizes[b]),
          'learning_rate': float(learning_rates[l]), 'steps': int(steps[t])}
  reruns = run(learning_rates=[best['learning_rate']],
               keys=jax.random.split(rerun_key, num_reruns), batch_size=best['batch_size'],
               mode=best['mode'])[0]
  grid = {'mode': tuple(modes), 'batch_size': tuple(batch_sizes),
          'learning_rate': tuple(learning_rates), 'steps': tuple(steps)}
  return AttackResult(accuracy, best, best_so_far(reruns, [best['steps']], eval_every)[:, 0],
                      grid)
