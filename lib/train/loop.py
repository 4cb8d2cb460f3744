"""The resumable training loop, generic over any state pytree and step function.

`run_loop` restores the newest readable orbax checkpoint in the workdir (into an abstract
target: `jax.eval_shape` of `init`, nothing materialised), steps, logs JSON lines and
TensorBoard, evaluates and checkpoints. Batches are a function of the step alone
(`lib.data.batch_at`), so a run killed at any moment and relaunched ends with the same
state and metrics, bit for bit, as an uninterrupted one.

The host waits for the device only at log, evaluation and checkpoint steps: between them
the loop dispatches steps ahead and folds each step's loss into a device-side "all finite"
flag, which it reads at those steps; a NaN or Inf stops the run with `NonFiniteLossError`
(naming the steps and the last good checkpoint) before anything non-finite is saved.

A state that is checkpointed in another form than it runs in (a sequential seed sweep
runs per-seed states and saves them stacked, see `lib.sweep`) passes a `Layout`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lib import validate
from lib.checkpoint import Checkpointer
from lib.report.writer import MetricWriter
from lib.train.progress import Progress

Batch = Mapping[str, Any]


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss becomes NaN or Inf."""


class Layout(NamedTuple):
  """How a running state is checkpointed.

  Attributes:
    abstract: `() -> pytree of jax.ShapeDtypeStruct` (with shardings) of the saved tree.
    save: running state -> the tree to save.
    load: restored tree -> running state.
  """
  abstract: Callable[[], Any]
  save: Callable[[Any], Any]
  load: Callable[[Any], Any]


def to_host(tree: Any) -> Any:
  """Numpy copy of a pytree of (possibly multi-process sharded) arrays."""
  if jax.process_count() > 1:
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)


def abstract_state(init: Callable[[], Any]) -> Any:
  """`jax.eval_shape(init)`, leaves without a sharding placed on the first local device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(
      lambda s: s if s.sharding is not None else jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                       sharding=device),
      jax.eval_shape(init))


def same_layout(init: Callable[[], Any]) -> Layout:
  """The default `Layout`: the running state is saved as it is."""
  identity = lambda tree: tree
  return Layout(lambda: abstract_state(init), identity, identity)


def _placed(state: Any, layout: Layout) -> Any:
  """A fresh state committed where a restored one lands (`layout.abstract()`'s shardings), so
  a jitted step compiles once for both (jit specialises on committed vs uncommitted inputs).
  A layout whose saved tree differs from the running state leaves the state as it is."""
  abstract = layout.abstract()
  if jax.tree.structure(abstract) != jax.tree.structure(state):
    return state
  return jax.device_put(state, jax.tree.map(lambda s: s.sharding, abstract))


@jax.jit
def _all_finite(flag: jax.Array, loss: jax.Array) -> jax.Array:
  return flag & jnp.all(jnp.isfinite(loss))


def _restore(ckpt: Checkpointer, layout: Layout, num_steps: int,
             workdir: str) -> tuple[int, Any] | None:
  """(step, running state) of the newest readable checkpoint, or None."""
  steps = ckpt.steps()
  if not steps:
    return None
  if steps[-1] > num_steps:
    raise ValueError(f'num_steps={num_steps} is below the step of the newest checkpoint in '
                     f'{workdir} ({steps[-1]}): that run went further. Use a new workdir, or '
                     f'num_steps >= {steps[-1]} to continue it.')
  restored = ckpt.restore_latest(layout.abstract())
  if restored is None:
    return None
  step, tree = restored
  logging.info('resumed from step %d of %d in %s', step, num_steps, workdir)
  return step, layout.load(tree)


def run_loop(*, init: Callable[[], Any], step_fn: Callable[[Any, Batch], tuple[Any, dict]],
             batch_fn: Callable[[int], Batch], num_steps: int, workdir: str,
             checkpoint_every: int, log_every: int,
             eval_fn: Callable[[Any], Mapping[str, Any]] | None = None,
             eval_every: int | None = None, progress: bool = True,
             layout: Layout | None = None) -> Any:
  """Runs `step_fn` from the newest checkpoint in `workdir` to `num_steps`.

  Args:
    init: builds the initial state; traced with `jax.eval_shape` for the restore target.
    step_fn: `(state, batch) -> (state, metrics)`, typically jitted; `metrics['loss']` (any
      shape) must stay finite.
    batch_fn: `step -> batch`; must depend on the step alone for exact resumption.
    num_steps: total number of steps (at least the step of any checkpoint in `workdir`).
    workdir: checkpoints in `workdir/checkpoints`, metrics in `workdir/metrics.jsonl`.
    checkpoint_every, log_every, eval_every: intervals in steps (the last step always logs,
      evaluates and checkpoints).
    eval_fn: `state -> metrics`, run every `eval_every` steps.
    progress: report progress (a bar on a terminal, log lines otherwise; process 0 only).
    layout: how the state is checkpointed (default: as it is, see `Layout`).

  Returns:
    The final state.

  Raises:
    ValueError: a bad interval, or `workdir` holds a checkpoint beyond `num_steps`.
    NonFiniteLossError: the loss became NaN or Inf; the last good checkpoint is kept.
  """
  for name, value in (('num_steps', num_steps), ('checkpoint_every', checkpoint_every),
                      ('log_every', log_every)):
    validate.check_int(value, name, minimum=1)
  if eval_every is not None:
    validate.check_int(eval_every, 'eval_every', minimum=1)
  layout = layout or same_layout(init)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  closing = [ckpt]
  try:
    restored = _restore(ckpt, layout, num_steps, workdir)
    start, state = restored if restored is not None else (0, _placed(init(), layout))
    writer = MetricWriter(workdir, resume_step=start if restored is not None else None)
    bar = Progress(total=num_steps, initial=start, enabled=progress,
                   name=os.path.basename(workdir.rstrip('/')))
    closing += [writer, bar]
    finite, checked = np.bool_(True), start
    for step in range(start, num_steps):
      state, metrics = step_fn(state, batch_fn(step))
      finite = _all_finite(finite, metrics['loss'])
      done = step + 1
      last = done == num_steps
      log = done % log_every == 0 or last
      evaluate = eval_fn is not None and (last or bool(eval_every and done % eval_every == 0))
      save = done % checkpoint_every == 0 or last
      if log or evaluate or save:
        if not np.all(to_host(finite[None])):  # every process's seeds
          good = ckpt.steps()
          raise NonFiniteLossError(
              f'training loss became NaN or Inf between steps {checked + 1} and {done}; '
              f'stopping. The last good checkpoint is step {good[-1] if good else None} in '
              f'{ckpt.directory}. Lower the learning rate or check the data.')
        checked = done
      loss = None
      if log:
        host = to_host(metrics)
        writer.write(done, host)
        loss = float(np.mean(host['loss']))
      bar.update(done, loss)
      if evaluate:
        writer.write(done, eval_fn(state))
      if save:
        ckpt.save(done, layout.save(state))
  finally:
    for resource in reversed(closing):
      resource.close()
  return state
