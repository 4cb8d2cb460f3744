"""Benchmark (e): attribution methods, `lib.attribution` vs Captum, same model and batch.

One SmallCNN (3 conv stages with ReLU and 2x2 max pooling, global average pooling, a dense
head; no batch norm) built in PyTorch (`launch.bench_torch.SmallCNN`, evaluation mode) and
copied into `lib.models` 'cnn', so both frameworks explain the same function; float32 on
both sides, NHWC for JAX and NCHW for PyTorch. The methods, with the settings a user would
pick in Captum:

  integrated gradients  50 Gauss-Legendre nodes (Captum's default rule), zero baseline,
                        all path steps in one batch (Captum's `internal_batch_size=None`);
  Grad-CAM              at the last conv stage, upsampled bilinearly to the input
                        (`LayerGradCam` + `LayerAttribution.interpolate`);
  SmoothGrad            25 noisy copies of saliency, σ = 0.1, all copies in one batch
                        (`NoiseTunnel(Saliency)`, `nt_samples_batch_size=None`);
  saliency              one gradient (the floor of every method).

Each call explains the same batch for its targets and blocks until the maps are on the
host. On a GPU, PyTorch runs on CUDA too (TF32 off on both sides). Before timing, the maps of the two frameworks are compared (SmoothGrad on its own
noise draws, so only its shape is compared). Timed in alternation (`time_interleaved`) so
that a busy machine slows both alike; compilation is reported separately.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from launch import bench_common as common
from lib import models
from lib.attribution import gradcam, gradients, integrated_gradients, smoothgrad

NUM_CLASSES = 10


def _methods(ig_steps: int, sg_samples: int, stdev: float) -> dict[str, tuple[Callable, Callable]]:
  """name -> (ours(apply, params, x, target, key), captum(net, x, target))."""
  from captum import attr  # pylint: disable=g-import-not-at-top
  from captum.attr import LayerAttribution  # pylint: disable=g-import-not-at-top

  def captum_cam(net, x, target):
    cam = attr.LayerGradCam(net, net.relu3).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam, x.shape[2:], interpolate_mode='bilinear')[:, 0]

  return {
      f'integrated gradients ({ig_steps} steps)': (
          lambda apply, p, x, t, k: integrated_gradients.integrated_gradients(
              apply, p, x, t, n_steps=ig_steps, method='gausslegendre'),
          lambda net, x, t: attr.IntegratedGradients(net).attribute(
              x, target=t, n_steps=ig_steps, method='gausslegendre')),
      'Grad-CAM': (
          lambda apply, p, x, t, k: gradcam.grad_cam(apply, p, x, t, tap='conv3'),
          captum_cam),
      f'SmoothGrad ({sg_samples} samples)': (
          lambda apply, p, x, t, k: smoothgrad.smoothgrad(
              gradients.saliency, apply, p, x, t, key=k, n_samples=sg_samples, stdev=stdev),
          lambda net, x, t: attr.NoiseTunnel(attr.Saliency(net)).attribute(
              x, target=t, nt_type='smoothgrad', nt_samples=sg_samples, stdevs=stdev,
              abs=False)),
      'saliency': (
          lambda apply, p, x, t, k: gradients.saliency(apply, p, x, t),
          lambda net, x, t: attr.Saliency(net).attribute(x, target=t, abs=False)),
  }


def _run_jax(method, apply, params, x, target, key) -> int:
  """One timed unit: the maps of the batch, on the host."""
  np.asarray(method(apply, params, x, target, key))
  return 1


def _run_captum(method, net, x, target) -> int:
  """One timed unit: the maps of the batch, on the host."""
  method(net, x, target).detach().cpu().numpy()
  return 1


def run(*, batch_size: int, image_size: int, widths: tuple[int, ...], ig_steps: int,
        sg_samples: int, warmup: int, repeats: int, log: Callable[[str], None],
        stdev: float = 0.1) -> dict[str, Any]:
  """Times every method in both frameworks; returns {'rows', 'table', 'notes', 'setup'}."""
  import torch  # pylint: disable=g-import-not-at-top
  from launch import bench_torch  # pylint: disable=g-import-not-at-top
  device = bench_torch.torch_device()
  torch.manual_seed(0)
  net = bench_torch.SmallCNN(3, widths, NUM_CLASSES).eval()
  model = models.get_model('cnn', input_shape=(image_size, image_size, 3),
                           num_classes=NUM_CLASSES, widths=widths, batch_norm=False)
  params = jax.tree.map(jnp.asarray, bench_torch.copy_small_cnn(net, model))
  rng = np.random.default_rng(0)
  x_np = rng.random((batch_size, image_size, image_size, 3), np.float32)
  target_np = rng.integers(0, NUM_CLASSES, batch_size)
  x, target, key = jnp.asarray(x_np), jnp.asarray(target_np), jax.random.key(0)
  net = net.to(device)
  x_torch = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(device)
  target_torch = torch.from_numpy(target_np).to(device)

  rows, runs, checks, compile_s = [], {}, {}, {}
  for name, (ours, theirs) in _methods(ig_steps, sg_samples, stdev).items():
    start = time.perf_counter()
    mine = np.asarray(ours(model.apply, params, x, target, key))
    compile_s[name] = time.perf_counter() - start
    ref = theirs(net, x_torch, target_torch).detach().cpu().numpy()
    ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref
    checks[name] = (float(np.linalg.norm(mine - ref) / np.linalg.norm(ref))
                    if not name.startswith('SmoothGrad') else None)
    runs[f'jax {name}'] = functools.partial(_run_jax, ours, model.apply, params, x, target, key)
    runs[f'captum {name}'] = functools.partial(_run_captum, theirs, net, x_torch, target_torch)
    log(f'[bench attribution] {name}: first JAX call (compile) {compile_s[name]:.1f} s, '
        f'relative difference to Captum {common.fmt(checks[name])}')
  timings = common.time_interleaved(runs, warmup=warmup, repeats=repeats)
  for name in checks:
    jx, tc = timings[f'jax {name}'], timings[f'captum {name}']
    rows.append([name, batch_size / jx.median, batch_size / tc.median, tc.median / jx.median,
                 checks[name], compile_s[name], max(jx.spread(), tc.spread())])
  header = ['method', 'JAX images/s', 'Captum images/s', 'JAX / Captum', 'rel. diff. of maps',
            'JAX first call (s)', 'spread']
  notes = [f'SmallCNN widths {widths}, {image_size}x{image_size}x3, batch {batch_size}, '
           f'float32; {repeats} interleaved repeats after {warmup} warm-up; torch '
           f'{torch.__version__} on {device}' + (f' with {torch.get_num_threads()} threads.'
                                                 if device == 'cpu' else '.'),
           'JAX / Captum > 1: this codebase is faster. "rel. diff." = ||ours - Captum|| / '
           '||Captum|| on the same inputs (SmoothGrad draws different noise: not compared).']
  return {'rows': rows, 'table': common.table(header, rows), 'notes': notes,
          'setup': {'batch_size': batch_size, 'image_size': image_size, 'widths': widths,
                    'ig_steps': ig_steps, 'sg_samples': sg_samples, 'stdev': stdev},
          'timings': {k: v.as_dict() for k, v in timings.items()}}

