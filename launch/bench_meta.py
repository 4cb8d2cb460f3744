"""Benchmark (i): MLAC's costs (Henderson et al. 2023; issue 12 "Speed and memory").

Three measurements on one small BERT (`lib.models.bert`, dropout off) and random token ids:

  grid     the attacker's grid × seeds (`lib.meta.attacker.finetune_curves`, full fine-tune,
           L learning rates × S seeds) as one vmapped program against the same L·S runs one
           after another (the same function at L = S = 1, compiled once, called L·S times):
           seconds per call and the ratio; the largest held-out accuracy difference against
           those runs and against each run alone in the grid's program (padded to L·S runs).
  meta     one MLAC outer step (`lib.meta.mlac.make_mlac(...).step`, jitted: forward, the K
           inner Adam steps, second-order meta-gradient of the defender and of the
           adversary, both outer Adam updates) against K = 1, 4, 16, ..., with and without
           per-step `jax.checkpoint`: s/step and memory from the compiled program
           (`Compiled.memory_analysis()`: temp + output bytes, i.e. what one call allocates
           beyond its arguments, as launch/bench_purify.py).
  torch    the same outer step in PyTorch with `torch.func` on `transformers.BertModel`
           with the same config and weights (saved with `save_pretrained` and loaded here
           with `lib.models.load_bert`): `functional_call` for every forward, `torch.func.grad`
           for the inner gradients (a graph kept for the second order), the K Adam steps
           unrolled, `torch.func.vjp` of (defender loss, adversary loss) pulled twice as
           `mlac_grads` does; no checkpointing (torch.utils.checkpoint does not compose with
           torch.func transforms). Memory: the allocator's peak during one call above its
           level before (`bench_purify.torch_peak_bytes`).

The unit compared across frameworks uses the plain harmful CE (`calibrate=False`: the
calibration's FISTA solve has no torch.func twin here) and one inner batch size, so both
sides compute the same function: the defender loss of both sides is compared (relative
difference in the table) and the defender's meta-gradient norm.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from launch import bench_common as common
from lib.meta import attacker
from lib.meta.mlac import MLACOptions, make_mlac
from lib.models import bert, bert_weights

NUM_DESIRED, NUM_HARMFUL = 28, 2
MB = 1e6


def _import_torch():
  from launch import bench_purify  # pylint: disable=g-import-not-at-top
  return bench_purify._import_torch()  # pylint: disable=protected-access


def make_encoder(config: bert.BertConfig, max_len: int) -> tuple[Any, Any, Any]:
  """(torch BertModel (eval, seeded), JAX PureModel, JAX variables with the same weights)."""
  torch = _import_torch()
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf = transformers.BertConfig(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
      intermediate_size=config.intermediate_size,
      max_position_embeddings=config.max_position_embeddings, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, attn_implementation='eager')
  # 'eager': PyTorch's fused CPU attention has no second derivative.
  net = transformers.BertModel(hf).eval()
  with tempfile.TemporaryDirectory() as folder:
    net.save_pretrained(folder, safe_serialization=True)
    ckpt = bert_weights.load_bert(folder, max_len=max_len)
  return net, ckpt.model, ckpt.variables


def _tokens(rng: np.random.Generator, shape: tuple[int, ...], vocab: int,
            max_len: int) -> dict[str, np.ndarray]:
  """Random ids [..., T] in [5, vocab) with [CLS] = 2 first and a random length >= 4."""
  ids = rng.integers(5, vocab, (*shape, max_len)).astype(np.int32)
  ids[..., 0] = 2
  lengths = rng.integers(4, max_len + 1, shape)
  mask = (np.arange(max_len) < lengths[..., None]).astype(np.int32)
  return {'input_ids': ids * mask, 'attention_mask': mask}


# ----------------------------------------------------------------------------- (i) grid


def grid_rows(model, variables, *, rates: Sequence[float], seeds: int, n_train: int,
              batch_size: int, steps: int, eval_every: int, max_len: int, warmup: int,
              repeats: int) -> tuple[list, dict]:
  """Vmapped grid × seeds vs sequential runs: ([row], info)."""
  rng = np.random.default_rng(1)
  vocab = model.inputs.vocab_size
  pool, val = _tokens(rng, (4 * n_train,), vocab, max_len), _tokens(rng, (64,), vocab, max_len)
  pool_y, val_y = (rng.integers(0, 2, 4 * n_train).astype(np.int32),
                   rng.integers(0, 2, 64).astype(np.int32))
  keys = jax.random.split(jax.random.key(0), seeds)
  run = lambda lrs, ks, **kw: attacker.finetune_curves(
      model.apply, variables, pool, pool_y, val, val_y, num_classes=2, n_train=n_train,
      learning_rates=lrs, keys=ks, batch_size=batch_size, mode='full', max_steps=steps,
      eval_every=eval_every, **kw)
  grid = run(rates, keys)   # compiles both programs before timing
  one = np.stack([np.stack([run([r], keys[s:s + 1])[0, 0] for s in range(seeds)])
                  for r in rates])
  # Each run alone again, in the grid's own program (padded to its L·S runs).
  same = np.stack([np.stack([run([r], keys[s:s + 1], num_runs=len(rates) * seeds)[0, 0]
                             for s in range(seeds)]) for r in rates])

  def vmapped() -> int:
    run(rates, keys)
    return 1

  def sequential() -> int:
    for r in rates:
      for s in range(seeds):
        run([r], keys[s:s + 1])
    return 1

  t = common.time_interleaved({'vmapped': vmapped, 'sequential': sequential},
                              warmup=warmup, repeats=repeats)
  runs = len(rates) * seeds
  vm, seq = t['vmapped'].median, t['sequential'].median
  row = [f'{len(rates)} lr × {seeds} seeds, {steps} steps, batch {batch_size}', runs, vm, seq,
         seq / vm, float(np.max(np.abs(grid - one))), float(np.max(np.abs(grid - same)))]
  return [row], {'vmapped': t['vmapped'].as_dict(), 'sequential': t['sequential'].as_dict(),
                 'spread': max(t['vmapped'].spread(), t['sequential'].spread())}


# ----------------------------------------------------------------------------- (ii) meta step


def meta_batch(k: int, *, outer: int, inner: int, vocab: int, max_len: int) -> dict[str, Any]:
  rng = np.random.default_rng(k)
  return {'inputs': _tokens(rng, (outer,), vocab, max_len),
          'desired': rng.integers(0, NUM_DESIRED, outer).astype(np.int32),
          'harmful': rng.integers(0, NUM_HARMFUL, outer).astype(np.int32),
          'inner_inputs': _tokens(rng, (1, k, inner), vocab, max_len),
          'inner_harmful': rng.integers(0, NUM_HARMFUL, (1, k, inner)).astype(np.int32)}


def options(k: int, inner: int, checkpoint: bool) -> MLACOptions:
  """The benchmarked MLAC: plain harmful CE, one inner batch size (module docstring)."""
  return MLACOptions(num_steps=k, batch_sizes=(inner,), calibrate=False, checkpoint=checkpoint)


def jax_meta_step(model, variables, batch, opts: MLACOptions) -> tuple[Callable, dict, Any]:
  """The compiled JAX outer step: (run() -> loss, {'compile_s', 'bytes', 'loss',
  'grad_norm'}, the initial `MLACState` the step is timed from)."""
  dim = jax.eval_shape(lambda: model.apply(
      variables, {k: v[:1] for k, v in batch['inputs'].items()}).features).shape[-1]
  mlac = make_mlac(model.apply, feature_dim=dim, num_desired=NUM_DESIRED,
                   num_harmful=NUM_HARMFUL, options=opts)
  state = mlac.init(variables, key=jax.random.key(1))
  key = jax.random.key(2)
  batch = jax.tree.map(jnp.asarray, batch)
  step = jax.jit(lambda s, b: mlac.step(s, b, key))
  compiled, compile_s = common.compile_timed(step, state, batch)
  mem = compiled.memory_analysis()
  _, metrics = compiled(state, batch)
  info = {'compile_s': compile_s,
          'bytes': int(mem.temp_size_in_bytes) + int(mem.output_size_in_bytes),
          'loss': float(metrics['loss']), 'grad_norm': float(metrics['grad_norm'])}
  return lambda: float(compiled(state, batch)[1]['loss']), info, state


def torch_meta_step(net, state, batch, opts: MLACOptions) -> Callable[[], float]:
  """The same outer step in PyTorch with torch.func (module docstring): `run() -> loss`."""
  torch = _import_torch()
  from torch.func import functional_call, grad, vjp  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  t = lambda a: torch.from_numpy(np.asarray(a).copy())
  names = dict(net.named_parameters())
  enc = {n: p.detach().clone() for n, p in names.items()}
  desired_head = t(state.params['head'])
  adversary = {'head': t(state.adversary['head']), 'lr': t(state.adversary['lr'])}
  long = lambda d: {k: t(v).long() for k, v in d.items()}
  x, y_d, y_h = long(batch['inputs']), t(batch['desired']).long(), t(batch['harmful']).long()
  inner_x = {k: t(v[0]).long() for k, v in batch['inner_inputs'].items()}
  inner_y = t(batch['inner_harmful'][0]).long()

  def feats(params, tokens):
    return functional_call(net, params, (), {'input_ids': tokens['input_ids'],
                                             'attention_mask': tokens['attention_mask']}
                           ).pooler_output

  def safe_sqrt(v):
    pos = v > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, v, torch.ones_like(v))),
                       torch.zeros_like(v))

  def adam(p, g, m, v, count, lr, b1=0.9, b2=0.999, eps=1e-8):
    m = {k: b1 * m[k] + (1 - b1) * g[k] for k in p}
    v = {k: b2 * v[k] + (1 - b2) * g[k] * g[k] for k in p}
    step = lr / (1 - b1 ** count)
    p = {k: p[k] - step * m[k] / (safe_sqrt(v[k]) / (1 - b2 ** count) ** 0.5 + eps) for k in p}
    return p, m, v

  def losses(params, adv):
    f = feats(params['encoder'], x)
    desired = F.cross_entropy(f @ params['head'], y_d)
    p = {**params['encoder'], '__head__': adv['head']}
    m = {k: torch.zeros_like(a) for k, a in p.items()}
    v = {k: torch.zeros_like(a) for k, a in p.items()}
    harm = [F.cross_entropy(f @ adv['head'], y_h)]
    for k in range(opts.num_steps):
      tokens = {n: a[k] for n, a in inner_x.items()}

      def inner(q, tokens=tokens, k=k):
        enc_q = {n: a for n, a in q.items() if n != '__head__'}
        return F.cross_entropy(feats(enc_q, tokens) @ q['__head__'], inner_y[k])

      g = grad(inner)(p)
      norm = torch.sqrt(1e-8 + sum((a * a).sum() for a in g.values()))
      scale = torch.where(norm > opts.inner_clip, opts.inner_clip / norm.detach(),
                          torch.ones_like(norm))
      g = {n: a * scale for n, a in g.items()}
      p, m, v = adam(p, g, m, v, float(k + 1), adv['lr'])
      enc_p = {n: a for n, a in p.items() if n != '__head__'}
      harm.append(F.cross_entropy(feats(enc_p, x) @ p['__head__'], y_h))
    harmful = torch.stack(harm).mean()
    return desired - harmful, harmful

  def clip(g, max_norm):
    norm = torch.sqrt(sum((a * a).sum() for a in jax.tree.leaves(g)))
    s = torch.clamp(max_norm / norm, max=1.0)
    return jax.tree.map(lambda a: a * s, g)

  outer_m = jax.tree.map(torch.zeros_like, {'encoder': enc, 'head': desired_head})
  outer_v = jax.tree.map(torch.zeros_like, outer_m)

  def run() -> float:
    params = {'encoder': enc, 'head': desired_head}
    (loss, adv_loss), pull = vjp(losses, params, adversary)
    g_params = pull((torch.ones_like(loss), torch.zeros_like(adv_loss)))[0]
    g_adv = pull((torch.zeros_like(loss), torch.ones_like(adv_loss)))[1]
    flat = lambda d: {'/'.join(map(str, k)): a for k, a in
                      jax.tree_util.tree_flatten_with_path(d)[0]}
    with torch.no_grad():
      g_params, g_adv = clip(g_params, opts.clip), clip(g_adv, opts.clip)
      fp, fg = flat(params), flat(g_params)
      mm, vv = flat(outer_m), flat(outer_v)
      adam(fp, fg, mm, vv, 1.0, opts.outer_lr)
      fa, fga = flat(adversary), flat(g_adv)
      adam(fa, fga, {k: torch.zeros_like(a) for k, a in fa.items()},
           {k: torch.zeros_like(a) for k, a in fa.items()}, 1.0, opts.adversary_lr)
    return float(loss)

  return run


def meta_rows(net, model, variables, *, ks: Sequence[int], outer: int, inner: int,
              max_len: int, torch_max_k: int, warmup: int, repeats: int,
              log: Callable[[str], None]) -> tuple[list, list]:
  rows, results = [], []
  from launch import bench_purify  # pylint: disable=g-import-not-at-top
  vocab = model.inputs.vocab_size
  for k in ks:
    log(f'[bench meta] K = {k}: compiling ...')
    batch = meta_batch(k, outer=outer, inner=inner, vocab=vocab, max_len=max_len)
    sides, info = {}, {}
    for remat in (False, True):
      sides[('JAX', remat)], info[remat], state = jax_meta_step(model, variables, batch,
                                                                options(k, inner, remat))
    torch_run = None
    if k <= torch_max_k:
      torch_run = torch_meta_step(net, state, batch, options(k, inner, False))
      sides[('PyTorch', False)] = torch_run
    log(f'[bench meta] K = {k}: timing ...')
    t = common.time_interleaved({s: lambda f=f: (f(), 1)[1] for s, f in sides.items()},
                                warmup=warmup, repeats=repeats)
    torch_loss = torch_run() if torch_run else None
    torch_bytes = bench_purify.torch_peak_bytes(torch_run) if torch_run else None
    for remat in (False, True):
      jax_s = t[('JAX', remat)].median
      torch_s = None if remat or torch_run is None else t[('PyTorch', False)].median
      rel = (None if remat or torch_loss is None else
             abs(torch_loss - info[remat]['loss']) / abs(info[remat]['loss']))
      rows.append([k, 'yes' if remat else 'no', jax_s, torch_s,
                   None if torch_s is None else torch_s / jax_s, info[remat]['bytes'] / MB,
                   None if remat or torch_bytes is None else torch_bytes / MB, rel,
                   info[remat]['compile_s']])
      log(f'[bench meta] row {rows[-1]}')
      results.append({'k': k, 'checkpoint': remat, 'jax': {**info[remat],
                      'timing': t[('JAX', remat)].as_dict()},
                      'torch': None if torch_s is None else {
                          'bytes': torch_bytes, 'loss': torch_loss,
                          'timing': t[('PyTorch', False)].as_dict()}})
  return rows, results


# BERT-Tiny's shape (google/bert_uncased_L-2_H-128_A-2) with the study's offline vocabulary
# size instead of 30,522 (the inner Adam steps touch every embedding row).
TINY = dict(vocab_size=2000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=512)


def run(*, model: dict[str, int] | None = None, max_len: int = 32, ks: Sequence[int] = (1, 4, 16, 64), outer: int = 8, inner: int = 12,
        torch_max_k: int = 64, grid_rates: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3),
        grid_seeds: int = 4, grid_steps: int = 50, grid_eval_every: int = 25,
        grid_n: int = 50, grid_batch: int = 12, warmup: int = 1, repeats: int = 2,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the grid, meta and PyTorch measurements (module docstring).

  Args:
    model: `BertConfig` fields (default `TINY`); max_len: tokens per text.
    ks: inner steps K of the meta-step rows; outer, inner: outer and inner batch sizes.
    torch_max_k: the largest K also run in PyTorch.
    grid_*: the attacker grid (learning rates, seeds, steps, evaluation interval, n, batch).
    warmup, repeats: untimed and timed calls per configuration.
    log: progress messages.

  Returns:
    {'table', 'notes', 'rows' (meta-step rows), 'grid', 'results', 'config'}.
  """
  config = bert.BertConfig(**(model or TINY), max_position_embeddings=max_len,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  net, model, variables = make_encoder(config, max_len)
  log('[bench meta] grid × seeds: compiling and timing ...')
  grid_row, grid_info = grid_rows(
      model, variables, rates=grid_rates, seeds=grid_seeds, n_train=grid_n,
      batch_size=grid_batch, steps=grid_steps, eval_every=grid_eval_every, max_len=max_len,
      warmup=warmup, repeats=repeats)
  log(f'[bench meta] grid row {grid_row[0]}')
  rows, results = meta_rows(net, model, variables, ks=ks, outer=outer, inner=inner,
                            max_len=max_len, torch_max_k=torch_max_k, warmup=warmup,
                            repeats=repeats, log=log)
  grid_table = common.table(['attacker grid', 'runs', 'vmapped s', 'sequential s',
                             'sequential / vmapped', 'max |acc diff|',
                             'max |acc diff|, same program'], grid_row)
  meta_table = common.table(['K', 'checkpoint', 'JAX s/step', 'PyTorch s/step',
                             'PyTorch / JAX', 'JAX MB', 'PyTorch MB', 'loss rel. diff',
                             'JAX compile s'], rows)
  params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables))
  slope = lambda remat: float(np.polyfit([r[0] for r in rows if r[1] == remat],
                                         [r[5] for r in rows if r[1] == remat], 1)[0])
  notes = [
      f'BERT {config.num_hidden_layers} layers × {config.hidden_size}, vocabulary '
      f'{config.vocab_size} ({params:,} parameters), max_len {max_len}, dropout off, '
      f'float32. Median of {repeats} alternated repeats after {warmup} warm-up; compilation '
      'excluded (reported).',
      f'Grid: full fine-tune, n = {grid_n}, held-out accuracy every {grid_eval_every} steps '
      'on 64 texts; "sequential" calls the L = S = 1 program once per (lr, seed); max |acc '
      'diff| compares the two (0: the same runs); "same program" runs each (lr, seed) alone '
      'in the grid\'s program (padded to L·S runs). A run is the same computation in both '
      'programs, but XLA compiles the L = S = 1 program differently (float32 rounding): on '
      'this BERT-Tiny shape at lr 3e-3, 1 of 16 cells differed by 0.078 (5 of 64 random-label held-out '
      'texts) after 50 steps, while the same run alone in the grid\'s program equalled the '
      'grid bit for bit (2026-12-01).',
      f'Meta step: outer batch {outer}, inner batch {inner}, one adversary, plain harmful CE, '
      'second order; JAX MB = temp + output bytes of the compiled step; PyTorch MB = '
      'allocator peak above its level before the call (no checkpointing on that side).',
  ]
  if len(ks) > 1:
    notes.append(f'JAX memory growth per inner step (least-squares slope over K): '
                 f'{slope("no"):.3g} MB without checkpointing, {slope("yes"):.3g} MB with.')
  return {'rows': rows, 'grid': {'rows': grid_row, **grid_info},
          'table': grid_table + '\n\n' + meta_table, 'notes': notes, 'results': results,
          'config': {'bert': str(config), 'max_len': max_len, 'ks': list(ks), 'outer': outer,
                     'inner': inner, 'warmup': warmup, 'repeats': repeats},
          'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY')}
