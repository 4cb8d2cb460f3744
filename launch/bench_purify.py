"""Benchmark (h): one full-gradient attack step through DiffPure, JAX vs PyTorch, against the
number of reverse steps, with and without per-step checkpointing.

The unit is what one PGD step on a purified classifier computes (Lee & Kim 2023's exact
gradient; PAPERS.md §2): ∇ₓ Σ_b CE(f(purify(x; ω))_b, y_b) for a batch of images x in [0, 1],
through DiffPure's sampler (Nie et al. 2022): forward-diffuse to t* = 0.1 with the discrete
ᾱ, then N Euler–Maruyama steps of the reverse VP-SDE to t = 1e-5 with a diffusers-layout
UNet as ε-model, and the small CNN f on (u + 1) / 2.

  JAX      `lib.attacks.objective.loss_and_grad` on `lib.diffusion.PurifiedClassifier`
           (sampler 'sde', `num_steps` N, `remat` True or False: each step under
           `jax.checkpoint`), one jitted program;
  PyTorch  the same sampler in plain torch around `diffusers.UNet2DModel` (the same
           weights, saved with `save_pretrained(safe_serialization=True)` and loaded with
           `lib.models.unet_weights.load_diffusers_unet`), the same forward noise and
           Brownian increments (drawn by JAX from the same key and handed over), and
           `bench_torch.SmallCNN` with the classifier's weights; autograd through all N
           steps, each step under `torch.utils.checkpoint` (non-reentrant) or not. Parameters
           do not require gradients on either side: the attack needs ∇ₓ only.

Memory:
  JAX      exact, from the compiled program (`Compiled.memory_analysis()`):
           temp_size_in_bytes + output_size_in_bytes, i.e. what one call allocates beyond
           its arguments (weights, images, labels, key), which exist before it.
  PyTorch  the peak of the bytes PyTorch's CPU allocator holds during one call, above what
           it held before, from `torch.profiler` with `profile_memory=True`: every tensor
           allocation and free is an event; their running sum in time order peaks at the
           figure reported (on GPU: `torch.cuda.max_memory_allocated` above the allocation
           before the call): tensors only, no allocator slack or library scratch space
           outside the allocator; one profiled call per configuration, untimed. Validated
           against PAPERS.md §5: 190 / 372 / 735 MB for 1 / 2 / 4 UNet steps at batch 4.
  Both exclude the arguments; JAX's figure counts every buffer XLA assigns (loop state
  included), PyTorch's every tensor its allocator hands out.
  MB/step is the slope of memory against N (least squares over the N of one UNet, batch
  and checkpointing setting), the PyTorch anchor being about 187 MB per step for the
  DDPM CIFAR-10 UNet at batch 4 without checkpointing and about 20 MB with (PAPERS.md §5).

Time: seconds per call (one gradient), the four configurations of each N alternated repeat
by repeat (`bench_common.time_interleaved`); JAX compilation is reported apart.

On CPU PyTorch's OpenMP threads spin while they wait; on a machine shared with other jobs a
spinning thread that is descheduled stalls every parallel region (a UNet forward ran 12×
slower on 2 threads than on 1 at load average 8 on 2 cores; 1.3× with passive waiting).
Unless the environment sets it, `OMP_WAIT_POLICY=PASSIVE` is set before this module first
imports torch (it must precede OpenMP's start; recorded in the results); if torch was
already imported, it stays as it was.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from launch import bench_common as common
from lib import models
from lib.attacks import objective
from lib.diffusion import PurifiedClassifier, PurifierConfig, PurifierParams, samplers
from lib.models import unet, unet_weights
from lib.models.unet_config import DDPM_CIFAR10, UNetConfig

T_STAR, T_MIN, NUM_CLASSES = 0.1, 1e-5, 10
CLASSIFIER_WIDTHS = (16, 32, 64)
# The UNets a sweep can name. 'ddpm-cifar10-32/4' keeps google/ddpm-cifar10-32's layout at a
# quarter of its widths (1/16 of its FLOPs); 'tiny' is for smoke runs.
UNETS = {
    'ddpm-cifar10-32': DDPM_CIFAR10,
    'ddpm-cifar10-32/4': dataclasses.replace(DDPM_CIFAR10, block_out_channels=(32, 64, 64, 64)),
    'tiny': UNetConfig(sample_size=16, block_out_channels=(8, 16, 16), layers_per_block=1,
                       norm_num_groups=4, attention_head_dim=None, downsample_padding=0,
                       down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'),
                       up_block_types=('UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
                       flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6),
}
# PAPERS.md §5: PyTorch backprop through the DDPM CIFAR-10 UNet at batch 4 on CPU.
ANCHOR_MB_PER_STEP = {False: 187.0, True: 20.0}
ANCHOR_BATCH = 4
MB = 1e6


class Problem(NamedTuple):
  """One UNet and classifier on both sides, a batch and a noise key.

  Attributes:
    name: the UNet's name (a key of `UNETS`).
    config: its `UNetConfig`.
    unet: the diffusers `UNet2DModel` (evaluation mode, no gradients for parameters).
    classifier: the `bench_torch.SmallCNN` (likewise).
    params: `PurifierParams` of the JAX side, holding the same weights.
    x: [B, H, W, C] float32 images in [0, 1].
    y: [B] int32 labels.
    key: the purifier's noise key ω.
  """
  name: str
  config: UNetConfig
  unet: Any
  classifier: Any
  params: Any
  x: np.ndarray
  y: np.ndarray
  key: jax.Array


def _import_torch():
  """torch, with `OMP_WAIT_POLICY=PASSIVE` unless set or torch is loaded (module docstring)."""
  if 'torch' not in sys.modules:
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
  import torch  # pylint: disable=g-import-not-at-top
  return torch


_DENOISERS: dict[Callable, Callable] = {}


def _denoiser(unet_apply: Callable) -> Callable:
  """`denoiser(variables, x, labels) -> ε̂` of a `lib.models` UNet's `apply` (cached: one
  function object per model, so the purifier's programs are shared)."""
  return _DENOISERS.setdefault(unet_apply, lambda v, x, t: unet_apply(v, {'x': x, 't': t}).features)


def make_problem(name: str, batch_size: int) -> Problem:
  """The `Problem` of UNet `name` at `batch_size` (seeded: the same every call).

  The diffusers UNet keeps its own random initialisation; its weights reach the JAX side
  through a safetensors folder (`save_pretrained`, `load_diffusers_unet`).

  Args:
    name: a key of `UNETS`.
    batch_size: images in the batch.
  """
  torch = _import_torch()
  from diffusers import UNet2DModel  # pylint: disable=g-import-not-at-top
  from launch import bench_torch  # pylint: disable=g-import-not-at-top
  config = UNETS[name]
  torch.manual_seed(0)
  unet = UNet2DModel(**dataclasses.asdict(config)).eval().requires_grad_(False)
  with tempfile.TemporaryDirectory() as folder:
    unet.save_pretrained(folder, safe_serialization=True)
    unet_variables = unet_weights.load_diffusers_unet(folder)
  image = config.input_shape
  classifier = bench_torch.SmallCNN(image[2], CLASSIFIER_WIDTHS, NUM_CLASSES).eval()
  clf_model = models.get_model('cnn', input_shape=image, num_classes=NUM_CLASSES,
                               widths=CLASSIFIER_WIDTHS, batch_norm=False)
  clf_variables = bench_torch.copy_small_cnn(classifier, clf_model)
  classifier.requires_grad_(False)
  rng = np.random.default_rng(0)
  x = rng.random((batch_size, *image), np.float32)
  y = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
  return Problem(name, config, unet, classifier, PurifierParams(unet_variables, clf_variables),
                 x, y, jax.random.key(0))


def _purified_classifier(p: Problem, steps: int, remat: bool):
  """The JAX model: `PurifiedClassifier` of `p`'s UNet and CNN, N steps, remat or not."""
  unet_apply = unet.unet_model(p.config).apply
  clf = models.get_model('cnn', input_shape=p.config.input_shape, num_classes=NUM_CLASSES,
                         widths=CLASSIFIER_WIDTHS, batch_norm=False)
  config = PurifierConfig(t_star=T_STAR, sampler='sde', num_steps=steps, t_min=T_MIN, remat=remat)
  return PurifiedClassifier(_denoiser(unet_apply), clf.apply, config)


def jax_gradient(p: Problem, steps: int, remat: bool) -> tuple[Callable[[], np.ndarray], dict]:
  """The JAX unit, compiled: (`run() -> ∇ₓ` [B, H, W, C], {'compile_s', memory fields})."""
  model = _purified_classifier(p, steps, remat)
  ce = objective.make_loss('ce')

  def grad(params, x, y, key):
    return objective.loss_and_grad(model, params, x, y, loss=ce, key=key)[2]

  args = (p.params, jnp.asarray(p.x), jnp.asarray(p.y), p.key)
  compiled, compile_s = common.compile_timed(jax.jit(grad), *args)
  mem = compiled.memory_analysis()
  info = {'compile_s': compile_s, 'temp_bytes': int(mem.temp_size_in_bytes),
          'output_bytes': int(mem.output_size_in_bytes),
          'argument_bytes': int(mem.argument_size_in_bytes),
          'alias_bytes': int(mem.alias_size_in_bytes)}
  info['bytes'] = info['temp_bytes'] + info['output_bytes']
  return lambda: np.asarray(compiled(*args)), info


def sampler_noise(p: Problem, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """The JAX purifier's draws under `p.key`: forward noise e [B, H, W, C] and Brownian
  increments dw [N, B, H, W, C] (dw_i = √h_i · N(0, I) from `fold_in(run_key, i)`)."""
  noise_key, run_key = jax.random.split(p.key)
  shape = p.x.shape
  e = jax.random.normal(noise_key, shape, jnp.float32)
  _, hs = _grid(steps)
  dws = jnp.stack([jnp.asarray(hs[i]) ** 0.5 * jax.random.normal(
      jax.random.fold_in(run_key, i), shape, jnp.float32) for i in range(steps)])
  return np.asarray(e), np.asarray(dws)


def _grid(steps: int) -> tuple[np.ndarray, np.ndarray]:
  """float32 times t_i and steps h_i of the reverse SDE (as `lib.diffusion.samplers`)."""
  times = samplers.continuous_times(T_STAR, steps, T_MIN)
  return times[:-1].astype(np.float32), (times[:-1] - times[1:]).astype(np.float32)


def torch_gradient(p: Problem, steps: int, checkpoint: bool) -> Callable[[], np.ndarray]:
  """The PyTorch unit: `run() -> ∇ₓ` [B, H, W, C] (NHWC numpy), autograd through N steps."""
  torch = _import_torch()
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  from torch.utils import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
  config = PurifierConfig(t_star=T_STAR, sampler='sde', num_steps=steps, t_min=T_MIN)
  schedule = config.schedule
  a = float(schedule.alpha_bar_at(config.start_index))
  ts, hs = _grid(steps)
  # Per-step float32 scalars, computed by the JAX schedule as the JAX sampler does.
  beta = np.asarray(schedule.beta(ts))
  std = np.asarray(schedule.marginal_std(ts))
  labels = np.asarray(schedule.label(ts))
  e, dws = sampler_noise(p, steps)
  device = next(p.unet.parameters()).device
  nchw = lambda v: torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, -1, -3))).to(device)
  e_t, dws_t, y_t = nchw(e), nchw(dws), torch.from_numpy(p.y).long().to(device)
  batch = p.x.shape[0]

  def step(u, i):
    b, h = float(beta[i]), float(hs[i])
    eps = p.unet(u, torch.full((batch,), float(labels[i]), device=device)).sample
    drift = 0.5 * b * u + b * (-eps / float(std[i]))
    return u + h * drift + b ** 0.5 * dws_t[i]

  def run() -> np.ndarray:
    x = nchw(p.x).requires_grad_(True)
    u = a ** 0.5 * (2 * x - 1) + (1 - a) ** 0.5 * e_t
    for i in range(steps):
      u = (ckpt.checkpoint(step, u, i, use_reentrant=False, preserve_rng_state=False)
           if checkpoint else step(u, i))
    loss = F.cross_entropy(p.classifier((u + 1) / 2), y_t, reduction='sum')
    (grad,) = torch.autograd.grad(loss, x)
    return grad.permute(0, 2, 3, 1).cpu().numpy()

  return run


def torch_peak_bytes(run: Callable[[], Any]) -> int:
  """Peak bytes PyTorch's allocator holds during `run()` above what it held before.

  On CPU: the allocator's running total (`total_allocated`) at every allocation and free
  that `torch.profiler` records with `profile_memory=True` (its event tree), highest value
  minus the value before the first event; on GPU `torch.cuda.max_memory_allocated` minus
  the allocation before the call.
  """
  torch = _import_torch()
  if torch.cuda.is_available() and jax.default_backend() == 'gpu':
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)
  from torch import profiler  # pylint: disable=g-import-not-at-top
  from torch._C._profiler import _EventType  # pylint: disable=g-import-not-at-top
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
    run()
  allocations, nodes = [], list(prof.profiler.kineto_results.experimental_event_tree())
  while nodes:
    node = nodes.pop()
    nodes.extend(node.children)
    if node.tag == _EventType.Allocation and str(node.extra_fields.device) == 'cpu':
      allocations.append(node)
  if not allocations:
    return 0
  allocations.sort(key=lambda n: n.start_time_ns)
  first = allocations[0].extra_fields
  before = first.total_allocated - first.alloc_size
  return int(max(n.extra_fields.total_allocated for n in allocations) - before)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _slope(steps: Sequence[int], values: Sequence[float]) -> float | None:
  """Least-squares slope of `values` against `steps` (None with fewer than two steps)."""
  return float(np.polyfit(steps, values, 1)[0]) if len(steps) > 1 else None


def run(*, sweeps: Sequence[tuple[str, int, Sequence[int]]] = (
            ('ddpm-cifar10-32/4', 1, (10, 50, 100)), ('ddpm-cifar10-32', 1, (2, 10))),
        warmup: int = 0, repeats: int = 2,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Times and measures every row (module docstring); returns {'rows', 'table', 'notes', ...}.

  Args:
    sweeps: (UNet name in `UNETS`, batch size, numbers of reverse steps N) per sweep.
    warmup: untimed calls of each side per N before the timed ones (JAX compiles ahead).
    repeats: timed calls of each side per N, alternated.
    log: progress messages.
  """
  _import_torch()  # before bench_torch imports it
  from launch import bench_torch  # pylint: disable=g-import-not-at-top
  device = bench_torch.torch_device()
  rows, results = [], []
  for index, (name, batch, all_steps) in enumerate(sweeps):
    p = make_problem(name, batch)
    p = p._replace(unet=p.unet.to(device), classifier=p.classifier.to(device))
    for steps in all_steps:
      log(f'[bench purify] {name}, batch {batch}, N = {steps}: compiling ...')
      sides, info = {}, {}
      for remat in (False, True):
        sides[('JAX', remat)], info[remat] = jax_gradient(p, steps, remat)
        sides[('PyTorch', remat)] = torch_gradient(p, steps, remat)
      log(f'[bench purify] {name}, batch {batch}, N = {steps}: timing ...')
      last: dict[tuple[str, bool], np.ndarray] = {}

      def call(side, last=last, sides=sides):
        last[side] = sides[side]()
        return 1

      t = common.time_interleaved({side: lambda s=side: call(s) for side in sides},
                                  warmup=warmup, repeats=repeats)
      for remat in (False, True):
        torch_bytes = torch_peak_bytes(sides[('PyTorch', remat)])
        results.append({
            'sweep': index, 'unet': name, 'batch': batch, 'steps': steps, 'checkpoint': remat,
            'jax': {**info[remat], 'timing': t[('JAX', remat)].as_dict()},
            'torch': {'bytes': torch_bytes, 'timing': t[('PyTorch', remat)].as_dict()},
            'grad_rel_diff': _relative(last[('JAX', remat)], last[('PyTorch', remat)]),
            'spread': max(t[('JAX', remat)].spread(), t[('PyTorch', remat)].spread())})
  slopes = {}
  for name, batch, _ in sweeps:
    for remat in (False, True):
      group = [r for r in results
               if (r['unet'], r['batch'], r['checkpoint']) == (name, batch, remat)]
      steps = [r['steps'] for r in group]
      slopes[(name, batch, remat)] = {
          side: _slope(steps, [r[side]['bytes'] / MB for r in group]) for side in ('jax', 'torch')}
  for r in sorted(results, key=lambda r: (r['sweep'], r['checkpoint'], r['steps'])):
    s = slopes[(r['unet'], r['batch'], r['checkpoint'])]
    jax_s, torch_s = r['jax']['timing']['median_s'], r['torch']['timing']['median_s']
    rows.append([f'{r["unet"]}, batch {r["batch"]}', r['steps'],
                 'yes' if r['checkpoint'] else 'no',
                 jax_s, torch_s, torch_s / jax_s, r['jax']['bytes'] / MB, r['torch']['bytes'] / MB,
                 s['jax'], s['torch'], r['grad_rel_diff'], r['jax']['compile_s'], r['spread']])
  header = ['UNet, batch', 'N', 'checkpoint', 'JAX s/call', 'PyTorch s/call', 'PyTorch / JAX',
            'JAX MB', 'PyTorch MB', 'JAX MB/step', 'PyTorch MB/step', 'grad rel. diff',
            'JAX compile s', 'spread']
  return {'rows': rows, 'table': common.table(header, rows),
          'notes': _notes(slopes, warmup, repeats),
          'results': results,
          'slopes_mb_per_step': [{'unet': k[0], 'batch': k[1], 'checkpoint': k[2], **v}
                                 for k, v in slopes.items()],
          'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY'),
          'config': {'sweeps': [list(s) for s in sweeps], 't_star': T_STAR, 't_min': T_MIN,
                     'classifier_widths': CLASSIFIER_WIDTHS, 'warmup': warmup, 'repeats': repeats,
                     'unets': {k: dataclasses.asdict(v) for k, v in UNETS.items()}}}


def _notes(slopes: dict, warmup: int, repeats: int) -> list[str]:
  notes = [
      f'One call: ∇ₓ of the summed cross-entropy of a small CNN '
      f'({"/".join(map(str, CLASSIFIER_WIDTHS))}) '
      f'on DiffPure-purified images (t* = {T_STAR}, N Euler–Maruyama steps of the reverse VP-SDE '
      f'to {T_MIN}), same UNet and CNN weights, noise and Brownian increments on both sides, '
      f'float32; JAX remat / PyTorch torch.utils.checkpoint per step as marked. Median of '
      f'{repeats} alternated repeats after {warmup} warm-up; JAX compiled ahead (compile s).',
      'JAX MB: temp + output bytes of the compiled program (exact; arguments excluded). '
      'PyTorch MB: peak of the allocator\'s total during one profiled call above its total '
      'before (torch.profiler, profile_memory=True; weights and inputs excluded). MB/step: '
      'least-squares slope over N of the rows of one UNet, batch and checkpoint setting.',
      f'OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY")} for PyTorch\'s OpenMP threads '
      '(module docstring).',
  ]
  for (name, batch, remat), s in slopes.items():
    if s['torch'] is None:
      continue
    anchor = ANCHOR_MB_PER_STEP[remat] * batch / ANCHOR_BATCH if name == 'ddpm-cifar10-32' else None
    text = (f'{name}, batch {batch}, {"with" if remat else "without"} checkpointing: '
            f'JAX {s["jax"]:.3g} MB/step, PyTorch {s["torch"]:.3g} MB/step')
    if anchor is not None:
      text += (f' (PAPERS.md §5 anchor, PyTorch at batch {ANCHOR_BATCH} scaled to batch {batch}: '
               f'{anchor:.3g} MB/step)')
    notes.append(text + '.')
  return notes
