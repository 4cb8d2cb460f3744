"""Benchmark (d): where convolutions lose time: one conv's forward and gradients in four contexts.

The contexts a research codebase puts a convolution in: at the top level of a jitted
function (a plain training step), under `vmap` over seeds (a `lib.sweep` step: per-seed
kernels make XLA emit grouped convolutions), inside `lax.scan` (inner fine-tuning loops,
PGD, samplers) and inside `lax.map` over seeds (a sequential sweep in one program).

Rows: the forward conv; `grad` w.r.t. the input (attacks) and w.r.t. the kernel (training),
each as XLA emits it and through `lib.models.conv.conv2d` (what `lib.models.layers.conv_op`
uses), whose custom VJP writes both as plain NHWC/HWIO forward convolutions: the input
gradient with the flipped, in/out-swapped kernel, the kernel gradient with explicitly
transposed operands (`dW[i, j, c, o] = sum_{b,h,w} x[b, h+i, w+j, c] dy[b, h, w, o]` =
conv(x^T [c, H, W, b], dy^T [h, w, b, o])). Each gradient row includes its forward pass.
The shape is the CNN's second conv (batch 32, 16x16x32 -> 64).

Optionally the whole CNN training step (`lib.train.train_step`) called once per step vs
run inside a `lax.scan`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from launch import bench_common as common
from lib.models.conv import conv2d

DN = ('NHWC', 'HWIO', 'NHWC')


def conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN)


def _ops() -> dict[str, Callable]:
  """name -> f(w, x) -> array shaped like the loop carry (w for kernel ops, x for input ops)."""
  ours = lambda x, w: conv2d(x, w, strides=1, padding='SAME')
  return {
      'forward conv': lambda w, x: conv(x, w),
      'grad wrt input (XLA)': jax.grad(lambda w, x: jnp.sum(conv(x, w) ** 2), argnums=1),
      'grad wrt input (lib.models.conv)': jax.grad(lambda w, x: jnp.sum(ours(x, w) ** 2),
                                                   argnums=1),
      'grad wrt kernel (XLA)': jax.grad(lambda w, x: jnp.sum(conv(x, w) ** 2)),
      'grad wrt kernel (lib.models.conv)': jax.grad(lambda w, x: jnp.sum(ours(x, w) ** 2)),
  }


def _contexts(f: Callable, w, x, *, seeds: int, loop: int) -> dict[str, tuple[Callable, tuple, int]]:
  """context -> (jitted fn, args, units per call); a unit is one conv-op of batch 32."""
  wn, xn = jnp.stack([w] * seeds), jnp.stack([x] * seeds)
  carry_is_w = f(w, x).shape == w.shape

  def scanned(w, x):
    def body(c, _):
      out = f(c, x) if carry_is_w else f(w, c)
      return c - 1e-6 * out.reshape(c.shape) if out.shape == c.shape else c + 1e-6 * jnp.mean(out), None
    return jax.lax.scan(body, w if carry_is_w else x, None, length=loop)[0]

  return {
      'top level': (jax.jit(f), (w, x), 1),
      f'vmap over {seeds} seeds': (jax.jit(jax.vmap(f)), (wn, xn), seeds),
      f'in lax.scan ({loop} iterations)': (jax.jit(scanned), (w, x), loop),
      f'in lax.map over {seeds} seeds': (jax.jit(lambda w, x: jax.lax.map(lambda a: f(*a), (w, x))),
                                         (wn, xn), seeds),
  }


def _train_step_rows(loop: int, warmup: int, repeats: int, log) -> dict[str, Any]:
  """The CNN training step called per step vs inside a `lax.scan` of `loop` steps."""
  from launch.bench_resnet import JaxStep  # pylint: disable=g-import-not-at-top
  from lib import train as train_lib  # pylint: disable=g-import-not-at-top
  log('[conv] compiling the CNN step and its lax.scan ...')
  step = JaxStep('cnn', 32, batch_norm=True)
  model, opt = step.model, step.optimizer
  stacked = jax.tree.map(lambda *b: jnp.stack(b), *([step.batches[0]] * loop))
  many = jax.jit(lambda s, bs, k: jax.lax.scan(
      lambda s, b: train_lib.train_step(model, opt, s, b, k), s, bs), donate_argnums=0)
  box = [jax.jit(train_lib.init_state, static_argnums=(0, 1))(model, opt, jax.random.key(0))]
  compiled, compile_s = common.compile_timed(many, box[0], stacked, step.base_key)

  def run_scan() -> int:
    box[0], metrics = compiled(box[0], stacked, step.base_key)
    jax.tree.map(np.asarray, metrics)
    return loop

  t = common.time_interleaved({'called': lambda: step.run(loop), 'scan': run_scan},
                              warmup=warmup, repeats=repeats)
  return {'called_s': t['called'].median, 'scan_s': t['scan'].median,
          'scan_over_called': t['scan'].median / t['called'].median,
          'scan_compile_s': compile_s, 'timing': {k: v.as_dict() for k, v in t.items()}}


def run(*, seeds: int = 4, loop: int = 2, warmup: int = 1, repeats: int = 2,
        train_step: bool = True, log=print) -> dict[str, Any]:
  """Runs benchmark (d); returns a JSON-able dict."""
  x = jax.random.uniform(jax.random.key(0), (32, 16, 16, 32), jnp.float32)
  w = jax.random.normal(jax.random.key(1), (3, 3, 32, 64), jnp.float32) * 0.06
  ops = _ops()
  rel_err = 0.0
  for g in ('grad wrt input', 'grad wrt kernel'):
    ref, ours = ops[f'{g} (XLA)'](w, x), ops[f'{g} (lib.models.conv)'](w, x)
    rel_err = max(rel_err, float(jnp.max(jnp.abs(ref - ours)) / jnp.max(jnp.abs(ref))))
  runs, flops, contexts = {}, {}, None
  log('[conv] compiling conv ops in 4 contexts ...')
  for name, f in ops.items():
    ctx = _contexts(f, w, x, seeds=seeds, loop=loop)
    contexts = list(ctx)
    for cname, (fn, args, units) in ctx.items():
      compiled, _ = common.compile_timed(fn, *args)
      flops[(name, cname)] = common.xla_flops(compiled)
      runs[(name, cname)] = (lambda c=compiled, a=args, u=units: (jax.block_until_ready(c(*a)), u)[1])
  log(f'[conv] timing {len(runs)} programs ...')
  t = common.time_interleaved(runs, warmup=warmup, repeats=repeats)
  rows = []
  for name in ops:
    row = {'op': name}
    for cname in contexts:
      row[cname] = {'ms_per_unit': 1e3 * t[(name, cname)].median, 'xla_flops_per_call': flops[(name, cname)],
                    'spread': t[(name, cname)].spread()}
    rows.append(row)
  header = ['op (batch 32, 16x16x32 -> 64, 3x3)'] + [f'{c} (ms)' for c in contexts]
  table_rows = [[r['op']] + [r[c]['ms_per_unit'] for c in contexts] for r in rows]
  notes = [
      'ms per conv-op on one batch of 32 (vmap/map: per seed; scan: per iteration); gradients '
      'include their forward conv; median of '
      f'{repeats} interleaved repeats after {warmup} warm-up.',
      f'lib.models.conv: the same gradients (max relative difference {rel_err:.1e}), written as '
      'plain NHWC/HWIO forward convs (flipped kernel; transposed operands for the kernel).',
  ]
  result = {'rows': rows, 'contexts': contexts, 'grad_rel_err': rel_err, 'notes': notes,
            'config': {'shape_x': [32, 16, 16, 32], 'shape_w': [3, 3, 32, 64], 'seeds': seeds,
                       'loop': loop, 'warmup': warmup, 'repeats': repeats}}
  text = common.table(header, table_rows)
  if train_step:
    ts = _train_step_rows(loop, warmup, repeats, log)
    result['train_step'] = ts
    text += '\n\n' + common.table(
        ['CNN train step (batch 32)', 'called per step (s/step)', f'in lax.scan of {loop} (s/step)', 'scan / called'],
        [['lib.train.train_step', ts['called_s'], ts['scan_s'], ts['scan_over_called']]])
  result['table'] = text
  return result
