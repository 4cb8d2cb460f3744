"""Benchmark (j): PRM iterations per second, `lib.attacks.feature` vs the same attack in PyTorch.

One PRM iteration (Hu et al. 2024; PAPERS.md §3) on a CLIP image tower with random weights:
the 13 hidden states (pre-LN output and every block's, all tokens) of x + clamp(δ) against
those of x, Σ_layers mean_tokens cosine, summed over the batch, its gradient in δ, and one
AdamW step (lr 0.5, weight decay 0.01) on δ in 0–255 units (ℓ∞ ε = 8/255, native size, no
dynamic scale: both sides then run the same shapes).

  JAX      `lib.attacks.feature.feature_attack(image_encoder(clip), ..., steps=n, scale=None)`:
           one jitted program, the clean features once, then n iterations under `lax.scan`;
  PyTorch  `transformers.CLIPVisionModel` (same config; its weights copied into
           `lib.models.clip` through `clip_weights.hf_name_map`), the authors' loop: the
           clean hidden states under `no_grad`, then n iterations of forward with
           `output_hidden_states=True`, `F.cosine_similarity`, backward and
           `torch.optim.AdamW`; parameters do not require gradients on either side.

The unit is one iteration (a call's time / n, the clean forward included once per call on
both sides). Each side's loss and gradient at the same random δ (uniform in ±8 px) are
compared (`max rel Δloss`, `rel Δgrad`: the two computations agree). A breakdown at the first
batch size times the encoder's forward alone and forward + backward (the loss's gradient in
δ) on both sides, to show where the time of an iteration goes. Timings alternate the sides
repeat by repeat (`bench_common.time_interleaved`); JAX compilation is reported apart.

Where a ViT-B/16 block's time goes (2026-12-01, 2 cores at load 12-14, so CPU seconds of
the process are quoted beside wall medians; forward + backward in the block's input, batch 2,
197 tokens, float32, 15-20 interleaved repeats). The block in plain jnp (the operations of
`lib.models.transformer`, layer norms without affine): 111-120 ms CPU (wall median 236-320
ms) against 110-117 ms CPU (wall 229 ms) for `transformers`' CLIPEncoderLayer with SDPA.
Its pieces alone: MLP 45-55 ms, attention core (QKᵀ, softmax, PV) 17-19 ms (PyTorch SDPA
12.6 ms, PyTorch eager softmax 13.2 ms), q/k/v/out projections 15 ms, two layer norms 3 ms.
Variants of the core: q scaled instead of the logits 17.9 ms, an unfused exp/sum softmax
16.8 ms, `jax.nn.dot_product_attention` (xla) 22.1 ms, 'bqhc' operands 22.3 ms; of the
plain-jnp block: q scaled 93 ms against 111 ms, `dot_product_attention` 102 ms. In the
library's tower (`clip_lib.image_encoder`, ViT-B/16 width, 2 blocks, 224 px, PRM loss and
its gradient, batch 2, 14 interleaved repeats, load 12) neither carried over: 256.0 ms CPU
as it is, 255.5 ms with q scaled (identical loss and gradient), 268.6 ms with
`dot_product_attention`; none was adopted. Per CPU second the block is at parity with
PyTorch; the attention core is the one piece where SDPA is faster (~6 ms of ~115).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from launch import bench_common as common

EPS = 8 / 255
# Vision towers: OpenAI's ViT-B/16 at 224 px and a tiny one for smoke runs.
CONFIGS = {
    'vit_b16': dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072),
    'tiny': dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=128),
}


class Twin(NamedTuple):
  """One CLIP image tower in both frameworks.

  Attributes:
    net: `transformers.CLIPVisionModel`, float32, evaluation mode, no parameter gradients.
    encode: `lib.models.clip.image_encoder` of the same tower (all hidden states).
    params: its image variables, holding `net`'s weights.
    layers: the hidden-state names.
    image_size: native side.
  """
  net: Any
  encode: Callable
  params: Any
  layers: tuple[str, ...]
  image_size: int


def make_twin(config: str) -> Twin:
  """The `CONFIGS[config]` tower with seeded random weights, on both sides."""
  from launch import bench_purify  # pylint: disable=g-import-not-at-top
  torch = bench_purify._import_torch()  # pylint: disable=protected-access
  import transformers  # pylint: disable=g-import-not-at-top
  from lib.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
  from lib.models import clip_weights, weights  # pylint: disable=g-import-not-at-top
  c = CONFIGS[config]
  torch.manual_seed(0)
  net = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_act='quick_gelu', **c)).eval().requires_grad_(False)
  ours = dataclasses.replace(
      clip_lib.VIT_B16, image_size=c['image_size'], patch_size=c['patch_size'],
      vision_hidden_size=c['hidden_size'], vision_layers=c['num_hidden_layers'],
      vision_heads=c['num_attention_heads'], vision_intermediate_size=c['intermediate_size'])
  clip = clip_lib.Clip(ours)
  # transformers 5 names CLIPVisionModel's tensors without the CLIPModel prefix.
  tensors = {k if k.startswith('vision_model.') else f'vision_model.{k}': v.numpy()
             for k, v in net.state_dict().items()}
  like = {'image': clip.image.init(jax.random.key(0))}   # the projection is not in the file
  variables, report = weights.load_variables(tensors, clip_weights.hf_name_map, like,
                                             partial=True, ignore=clip_weights.HF_IGNORE)
  if report.unexpected or [m for m in report.missing if 'proj' not in m]:
    raise RuntimeError(f'weight copy incomplete: {report}')
  return Twin(net, clip_lib.image_encoder(clip), variables['image'], clip.image_hidden_states,
              c['image_size'])


def _pixel_values(torch, x):
  """[0, 1] NHWC numpy/tensor -> CLIP-normalised NCHW tensor (inside autograd)."""
  from lib.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
  mean = torch.tensor(clip_lib.CLIP_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(clip_lib.CLIP_STD).view(1, 3, 1, 1)
  return (x.permute(0, 3, 1, 2) - mean) / std


def _torch_side(twin: Twin, x: np.ndarray):
  """(prm(n) -> adversarial images, loss_and_grad(δ) -> (loss [B], grad), forward(),
  forward_backward()) in PyTorch: the authors' loop."""
  from launch import bench_purify  # pylint: disable=g-import-not-at-top
  torch = bench_purify._import_torch()  # pylint: disable=protected-access
  F = torch.nn.functional
  xt = torch.from_numpy(x)
  bound = EPS * 255

  def hidden(images):
    return twin.net(pixel_values=_pixel_values(torch, images),
                    output_hidden_states=True).hidden_states

  def loss_of(delta, clean):
    adv = torch.clamp(xt * 255 + torch.clamp(delta, -bound, bound), 0, 255) / 255
    return sum(F.cosine_similarity(h, c, dim=-1).mean(1) for h, c in zip(hidden(adv), clean))

  def prm(n: int) -> np.ndarray:
    with torch.no_grad():
      clean = hidden(xt)
    delta = torch.zeros_like(xt, requires_grad=True)
    opt = torch.optim.AdamW([delta], lr=0.5, weight_decay=0.01)
    for _ in range(n):
      loss = loss_of(delta, clean).sum()
      opt.zero_grad()
      loss.backward()
      opt.step()
    with torch.no_grad():
      return (torch.clamp(xt * 255 + torch.clamp(delta, -bound, bound), 0, 255) / 255).numpy()

  def loss_and_grad(delta0: np.ndarray):
    with torch.no_grad():
      clean = hidden(xt)
    delta = torch.from_numpy(delta0.copy()).requires_grad_(True)
    per_image = loss_of(delta, clean)
    per_image.sum().backward()
    return per_image.detach().numpy(), delta.grad.numpy()

  def forward():
    with torch.no_grad():
      return hidden(xt)[-1].numpy()

  with torch.no_grad():
    clean_for_grad = hidden(xt)

  def forward_backward():
    delta = torch.zeros_like(xt, requires_grad=True)
    loss_of(delta, clean_for_grad).sum().backward()
    return delta.grad.numpy()

  return prm, loss_and_grad, forward, forward_backward


def _jax_side(twin: Twin, x: np.ndarray):
  """The same four functions in JAX (`lib.attacks.feature`)."""
  from lib.attacks import feature  # pylint: disable=g-import-not-at-top
  xj = jnp.asarray(x)

  def prm(n: int) -> np.ndarray:
    return np.asarray(feature.feature_attack(twin.encode, twin.params, xj, eps=EPS, steps=n,
                                             scale=None).x_adv)

  @jax.jit
  def _loss_and_grad(params, delta, clean):
    def total(d):
      adv = feature.perturb(xj, d, EPS, 'linf')
      per_image = feature.feature_loss('prm', twin.encode(params, adv), clean, twin.layers)
      return per_image.sum(), per_image
    grad, per_image = jax.grad(total, has_aux=True)(delta)
    return per_image, grad

  forward_jit = jax.jit(lambda params: twin.encode(params, xj))
  clean = forward_jit(twin.params)

  def loss_and_grad(delta0: np.ndarray):
    per_image, grad = _loss_and_grad(twin.params, jnp.asarray(delta0), clean)
    return np.asarray(per_image), np.asarray(grad)

  def forward():
    return np.asarray(forward_jit(twin.params).taps[twin.layers[-1]])

  zeros = jnp.zeros_like(xj)

  def forward_backward():
    return np.asarray(_loss_and_grad(twin.params, zeros, clean)[1])

  return prm, loss_and_grad, forward, forward_backward


def _rel(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def run(*, config: str = 'vit_b16', batch_sizes: Sequence[int] = (2, 16),
        iterations: int = 2, warmup: int = 1, repeats: int = 2,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Times PRM iterations on both sides (module docstring).

  Args:
    config: a key of `CONFIGS` ('vit_b16': 224 px; 'tiny' for smoke runs).
    batch_sizes: images per attack; the breakdown runs at the first.
    iterations: PRM iterations per timed call (n).
    warmup, repeats: untimed and timed calls of each side.
    log: progress messages.

  Returns:
    {'rows', 'table', 'notes', 'breakdown', 'timing', 'config'}.
  """
  from launch import bench_purify  # pylint: disable=g-import-not-at-top
  bench_purify._import_torch()  # pylint: disable=protected-access  (OMP_WAIT_POLICY first)
  from launch import bench_torch  # pylint: disable=g-import-not-at-top
  bench_torch.torch_device()
  twin = make_twin(config)
  size = twin.image_size
  rows, breakdown, timing = [], [], {}
  for b, batch in enumerate(batch_sizes):
    rng = np.random.default_rng(batch)
    x = rng.random((batch, size, size, 3), np.float32)
    delta0 = rng.uniform(-8, 8, x.shape).astype(np.float32)
    sides = {'JAX': _jax_side(twin, x), 'PyTorch': _torch_side(twin, x)}
    checks = {k: s[1](delta0) for k, s in sides.items()}
    loss_diff = float(np.max(np.abs(checks['JAX'][0] - checks['PyTorch'][0])
                             / np.abs(checks['PyTorch'][0])))
    grad_diff = _rel(checks['JAX'][1], checks['PyTorch'][1])
    log(f'[bench prm] batch {batch}: loss {checks["PyTorch"][0]} (rel Δ {loss_diff:.2e}), '
        f'rel Δgrad {grad_diff:.2e}; compiling ...')
    t0 = time.perf_counter()
    sides['JAX'][0](iterations)   # compiles the attack (the warm-up calls reuse it)
    compile_s = time.perf_counter() - t0
    log(f'[bench prm] batch {batch}: compiled in {compile_s:.1f} s; timing {iterations} '
        f'iterations x {repeats} repeats per side ...')
    t = common.time_interleaved(
        {k: (lambda s=s: (s[0](iterations), iterations)[1]) for k, s in sides.items()},
        warmup=warmup, repeats=repeats)
    timing[f'batch {batch}'] = {k: v.as_dict() for k, v in t.items()}
    rate = {k: 1 / v.median for k, v in t.items()}
    rows.append([f'PRM iteration, batch {batch}, {size} px', rate['JAX'], rate['PyTorch'],
                 rate['JAX'] / rate['PyTorch'], rate['JAX'] * batch, loss_diff, grad_diff,
                 compile_s, max(v.spread() for v in t.values())])
    if b == 0:
      log(f'[bench prm] breakdown at batch {batch} ...')
      parts = {f'{part} {k}': (lambda s=s, i=i: (s[i](), 1)[1])
               for k, s in sides.items() for part, i in (('forward', 2), ('fwd+bwd', 3))}
      tb = common.time_interleaved(parts, warmup=1, repeats=max(repeats, 3))
      timing['breakdown'] = {k: v.as_dict() for k, v in tb.items()}
      per_iter = {k: v.median for k, v in t.items()}
      for part in ('forward', 'fwd+bwd'):
        breakdown.append([f'{part}, batch {batch}', tb[f'{part} JAX'].median,
                          tb[f'{part} PyTorch'].median,
                          tb[f'{part} PyTorch'].median / tb[f'{part} JAX'].median])
      breakdown.append([f'iteration, batch {batch}', per_iter['JAX'], per_iter['PyTorch'],
                        per_iter['PyTorch'] / per_iter['JAX']])
  header = ['workload', 'JAX it/s', 'PyTorch it/s', 'JAX / PyTorch', 'JAX images·it/s',
            'max rel Δloss', 'rel Δgrad', 'JAX compile s', 'spread']
  table = common.table(header, rows) + '\n\n' + common.table(
      ['breakdown', 'JAX s', 'PyTorch s', 'JAX speed-up (PyTorch s / JAX s)'], breakdown)
  notes = [
      f'{config}: CLIP image tower ({CONFIGS[config]}), random weights copied from '
      'transformers.CLIPVisionModel; ℓ∞ ε = 8/255, AdamW lr 0.5, wd 0.01, all 13 hidden '
      f'states (tiny: L + 1), no dynamic scale; n = {iterations} iterations per call (the '
      f'clean forward once per call on both sides); median of {repeats} interleaved repeats '
      f'after {warmup} warm-up.',
      'max rel Δloss / rel Δgrad: both sides at the same random δ (±8 px), float32.',
      'breakdown: the encoder forward alone (all hidden states) and forward + backward of '
      'the PRM loss in δ, seconds per call, at the first batch size.',
      f'load average at the end: {common.load_average()}; OMP_WAIT_POLICY='
      f'{os.environ.get("OMP_WAIT_POLICY")}.',
  ]
  return {'rows': rows, 'table': table, 'notes': notes, 'breakdown': breakdown,
          'timing': timing,
          'config': {'config': config, 'batch_sizes': list(batch_sizes),
                     'iterations': iterations, 'warmup': warmup, 'repeats': repeats}}
