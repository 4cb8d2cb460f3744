"""Inherited vulnerability (issue 11): attacks computed on the open foundation alone, measured
on every downstream target built on it (Hu et al. 2024, "As Firm As Their Foundations", PRM).

**Protocol.** The targets are `experiments.foundation_targets`' (zero-shot, linear probe,
full fine-tune, MaskCLIP, dense head, patch-text boxes, box head, captioner, VQA), built by
its `build` on the same folders (`config.targets_workdir`; '' builds them in
`workdir/targets`), so nothing retrains. The first `attack.num_images` test scenes are
attacked once per (attack, ε) on the foundation's image tower alone (`lib.attacks.feature`),
and the same adversarial images are given to every target (`foundation_targets.evaluate`):

  PRM            Σ over the image tower's hidden states of mean-over-tokens cosine to the
                 clean features, minimised; AdamW lr 0.5 on δ in 0-255 units, dynamic scale
                 r ~ U[0.5, 1) with PyTorch's bicubic kernel (the authors' code)
  noise          random signs of the same ℓ∞ norm
  PGD zero-shot  `lib.attacks.pgd` (random start) on the zero-shot classifier: the white-box
                 baseline (it sees the text prompts, which the feature attacks never do)
  embedding      cosine of the final image embedding, minimised
  NRD            per-layer feature MSE, maximised (random start: its gradient at δ = 0 is 0)
  DR             per-layer feature std, minimised (Lu et al. 2020)
  DR (authors)   the PRM code's DR, whose sign increases the std

Every feature attack runs `attack.steps` AdamW steps (the paper: 250; runlocal: fewer,
the same for all) at ℓ∞ ε ∈ `attack.eps` (in 1/255), one compiled program per loss with ε
traced. Each matrix cell is (clean metric, attacked metric, relative drop
(clean − attacked) / clean).

Beyond the paper:
  - which layers matter: PRM on the early / middle / late thirds of the hidden states and
    on all of them (`lib.attacks.feature.layer_sets`), at `attack.layers_eps`;
  - a FARE-defended foundation (Schlarmann et al. 2024): the image tower fine-tuned
    (`lib.train.run_loop`, resumable in `workdir/fare`) so that its outputs on ℓ∞-PGD images
    (inner PGD maximising the same distance, random start) stay close to the original
    tower's clean outputs. FARE's distance is on the image embedding; here it is the
    squared distance of the image embedding plus the mean one of the last block's patch
    tokens, since half the targets read those. The targets are then measured with the
    defended tower in place of the foundation's, heads frozen as they are (as FARE plugs its
    encoder into LLaVA); the fine-tuned target too gets the defended tower in place of its
    own fine-tuned one, keeping its head (what a deployer who swaps the encoder without
    fine-tuning again gets). PRM is recomputed on the defended tower (the attacker has the
    open defended weights); PRM from the original tower is shown too;
  - a deployment-side defence: random resizing and padding before the encoder (Xie et al.
    2018): each image is shrunk by s ~ U[`deploy.min_scale`, 1] and placed at a random
    offset on a black canvas of the same size (`jax.image.scale_and_translate`; ground-truth
    maps and boxes move with it). PRM is attacked through it with EOT (Athalye et al. 2018):
    `deploy.eot` placements per image drawn fresh at every step (`ResizePadEncoder`, a
    stochastic encoder of `lib.attacks.feature`; clean and perturbed image under the same
    placement; no dynamic scale), and plain PRM is shown through it too; the evaluation's
    placements come from another key (fold_in(key(deploy.seed), 0) against the attack's
    fold_in(..., 1)), so no attack saw them;
  - `lib.attacks.checks.check_evaluation` on the white-box baseline (PGD on zero-shot).

A column whose clean metric does not beat its trivial baseline (the targets section's) by
more than 0.01 is marked † and left out of every mean and conclusion: nothing was learned
there for an attack to take away.

Adversarial images are cached in `workdir/adversarial/<name>.npz`, stamped with a digest
of the attacked parameters, the clean scenes, the attack's settings (and the zero-shot
class rows for PGD): a relaunch recomputes nothing that is
still valid, and FARE resumes from its checkpoints, so a finished run re-runs in the time
of its evaluations.

`experiments.foundation_transfer_report.section` writes the report from the numbers.

Variants: `runlocal` (the runlocal foundation and targets; 128 scenes, 40 AdamW steps for
every feature attack instead of the paper's 250, FARE 150 steps) and '' (OpenAI's ViT-B/16,
500 scenes, 250 steps). Runlocal, the targets already trained: 147 s wall on 2 quiet cores
(2026-12-01, EOT over placements drawn once: 202 CPU-seconds, 12.7 of them PRM with EOT).
With fresh placements at every step (the clean features recomputed at each step), two runs
at load 5-14 (2026-12-01): 207 and 218 CPU-seconds, 14.3 and 16.0 of them PRM with EOT (537
and 348 s wall; the first: targets resumed 15, evaluating the targets 57, feature attacks
58, PGD and noise 9, FARE 25, checks 27, figures 2); no quiet-core wall time was measured.
A relaunch recomputes no attack and no training (the report's timing table shows each
run's).

Launch:
  python -m launch.run --config=experiments/foundation_transfer.py:runlocal --workdir=/tmp/fx
  python -m launch.run --config=experiments/foundation_transfer.py --workdir=/tmp/fx_full \\
      --config.targets_workdir=/tmp/ft_full
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import foundation
from experiments import foundation_targets as ft
from experiments import foundation_transfer_report as report
from experiments.foundation_targets_report import ON_PAR
from lib import contract, downstream, iterate, run_config, train, validate
from lib.attacks import checks as checks_lib
from lib.attacks import feature, pgd
from lib import data as data_lib
from lib.data import ArrayDataset
from lib.models import clip as clip_lib
from lib.models import vit
from lib.report import markdown

Array = jax.Array
# name -> `lib.attacks.feature` loss of the feature attacks of the matrix.
FEATURE_LOSSES = {'PRM': 'prm', 'embedding': 'embedding', 'NRD': 'nrd', 'DR': 'dr',
                  'DR (authors)': 'dr_authors'}
ATTACKS = ('PRM', 'noise', 'PGD zero-shot', 'embedding', 'NRD', 'DR', 'DR (authors)')
LAYER_SETS = ('early', 'middle', 'late', 'all')
# Only evaluation reads these (see lib/run_config.py).
RESUMABLE_KEYS = (*(f'num_eval.{m}' for m in ft.METRICS), 'num_figure')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The targets' config for `arg` ('runlocal' or '') plus the attacks and defences."""
  c = ft.get_config(arg)
  runlocal = 'runlocal' in arg.split(',')
  pick = (lambda small, big: small) if runlocal else (lambda small, big: big)
  c.targets_workdir = ''     # '' = build the targets in workdir/targets
  c.attack = ml_collections.ConfigDict(dict(
      num_images=pick(128, 500),    # test scenes attacked (the first ones)
      eps=(4, 8, 16),               # ℓ∞ radii in 1/255
      steps=pick(40, 250),          # AdamW steps of every feature attack
      lr=0.5, weight_decay=0.01,    # AdamW on δ in 0-255 units (the authors')
      scale=(0.5, 1.0),             # dynamic scale's ratio range
      pgd_steps=pick(10, 20),       # PGD on the zero-shot classifier
      layers_eps=8,                 # ε (1/255) of the layer study, the FARE and deploy rows
      seed=2023))
  c.fare = ml_collections.ConfigDict(dict(
      num_steps=pick(150, 2000), batch_size=pick(64, 128), learning_rate=pick(1e-4, 1e-5),
      weight_decay=1e-4, warmup_steps=pick(10, 100), eps=4, pgd_steps=pick(5, 10), seed=0))
  c.deploy = ml_collections.ConfigDict(dict(min_scale=0.75, eot=pick(4, 8), seed=1))
  c.checks = ml_collections.ConfigDict(dict(num_images=pick(32, 128), square_queries=pick(50,
                                                                                         1000)))
  return c


def _check_fields(node: Any, key: str, fields: Sequence[str]) -> None:
  if not isinstance(node, ml_collections.ConfigDict) or set(node) != set(fields):
    got = sorted(node) if isinstance(node, ml_collections.ConfigDict) else node
    raise ValueError(f'config.{key} must have the fields {sorted(fields)}; got {got}.')


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks every field of `c` (the targets' and the foundation's too) before any work.

  Raises:
    ValueError: naming `config.<key>` and what was expected.
  """
  ft.validate_config(c)
  if not isinstance(c.targets_workdir, str):
    raise ValueError(f'config.targets_workdir must be a folder (str, \'\' = workdir/targets); '
                     f'got {c.targets_workdir!r}.')
  if not c.clip_path and c.model.vision_layers < 2:
    raise ValueError(f'config.model.vision_layers={c.model.vision_layers} must be at least 2: '
                     'the layer study splits the hidden states (embedding + one per block) in '
                     'early / middle / late thirds.')
  a = c.attack
  _check_fields(a, 'attack', ('num_images', 'eps', 'steps', 'lr', 'weight_decay', 'scale',
                              'pgd_steps', 'layers_eps', 'seed'))
  validate.check_int(a.num_images, 'config.attack.num_images', minimum=1)
  if a.num_images > c.num_test:
    raise ValueError(f'config.attack.num_images={a.num_images} exceeds config.num_test='
                     f'{c.num_test} (the test scenes generated).')
  if (isinstance(a.eps, str) or not isinstance(a.eps, Sequence) or not a.eps
      or len(set(a.eps)) != len(a.eps)):
    raise ValueError(f'config.attack.eps must be a non-empty tuple of distinct radii in 1/255; '
                     f'got {a.eps!r}.')
  for i, e in enumerate(a.eps):
    validate.check_number(e, f'config.attack.eps[{i}]', low=0.0, high=255.0)
    validate.check_positive(e, f'config.attack.eps[{i}]')
  if a.layers_eps not in a.eps:
    raise ValueError(f'config.attack.layers_eps={a.layers_eps!r} must be one of config.attack.'
                     f'eps={tuple(a.eps)} (the layer study reuses that PRM row).')
  for name in ('steps', 'pgd_steps'):
    validate.check_int(a[name], f'config.attack.{name}', minimum=1)
  validate.check_positive(a.lr, 'config.attack.lr')
  validate.check_number(a.weight_decay, 'config.attack.weight_decay', low=0.0)
  validate.check_int(a.seed, 'config.attack.seed', minimum=0)
  if (isinstance(a.scale, str) or not isinstance(a.scale, Sequence) or len(a.scale) != 2
      or not all(isinstance(s, (int, float)) for s in a.scale)
      or not 0 < a.scale[0] <= a.scale[1] <= 1):
    raise ValueError(f'config.attack.scale must be (lo, hi) with 0 < lo <= hi <= 1; got '
                     f'{a.scale!r}.')
  if c.image_size * a.scale[0] < c.model.patch_size:
    raise ValueError(f'config.attack.scale={tuple(a.scale)} shrinks {c.image_size}-px images '
                     f'below one {c.model.patch_size}-px patch.')
  f = c.fare
  _check_fields(f, 'fare', ('num_steps', 'batch_size', 'learning_rate', 'weight_decay',
                            'warmup_steps', 'eps', 'pgd_steps', 'seed'))
  for name, low in (('num_steps', 1), ('batch_size', 1), ('pgd_steps', 1), ('warmup_steps', 0),
                    ('seed', 0)):
    validate.check_int(f[name], f'config.fare.{name}', minimum=low)
  if f.batch_size > c.num_train:
    raise ValueError(f'config.fare.batch_size={f.batch_size} exceeds config.num_train='
                     f'{c.num_train}.')
  validate.check_positive(f.learning_rate, 'config.fare.learning_rate')
  validate.check_number(f.weight_decay, 'config.fare.weight_decay', low=0.0)
  validate.check_number(f.eps, 'config.fare.eps', low=0.0, high=255.0)
  validate.check_positive(f.eps, 'config.fare.eps')
  d = c.deploy
  _check_fields(d, 'deploy', ('min_scale', 'eot', 'seed'))
  validate.check_number(d.min_scale, 'config.deploy.min_scale', low=0.0, high=1.0)
  validate.check_positive(d.min_scale, 'config.deploy.min_scale')
  validate.check_int(d.eot, 'config.deploy.eot', minimum=1)
  validate.check_int(d.seed, 'config.deploy.seed', minimum=0)
  k = c.checks
  _check_fields(k, 'checks', ('num_images', 'square_queries'))
  validate.check_int(k.num_images, 'config.checks.num_images', minimum=2)
  if k.num_images > a.num_images:
    raise ValueError(f'config.checks.num_images={k.num_images} exceeds config.attack.'
                     f'num_images={a.num_images}.')
  validate.check_int(k.square_queries, 'config.checks.square_queries', minimum=1)


# ---------------------------------------------------------------------------------------
# The white-box baseline's model.

@dataclasses.dataclass(frozen=True)
class ZeroShot:
  """The zero-shot classifier as a `lib.attacks` model: `apply((image_params, classes), x)`
  -> logits [B, K] = 100 cos(embedding(x), classes) (CLIP §3.1.4).

  Attributes:
    encode: the foundation's `encode` (`lib.downstream` interface).
  """
  encode: downstream.Encode

  def __call__(self, params: tuple[Any, Array], x: Array) -> Array:
    image_params, classes = params
    return downstream.zero_shot_logits(self.encode(image_params, x)[1], classes)


# ---------------------------------------------------------------------------------------
# FARE (Schlarmann et al. 2024).

class FareState(NamedTuple):
  """FARE's training state: step (int32 scalar), image-tower variables, optax state."""
  step: Array
  params: Any
  opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class FareOutputs:
  """What FARE keeps close, as one vector per image: `apply(params, x) -> [B, E + N·D]`, the
  image embedding [B, E] then the N patch tokens [B, N, D] scaled by 1/√N, so that the
  squared distance of two vectors is ‖e − e₀‖² + mean over patches ‖t − t₀‖². A
  `lib.attacks` model whose "logits" are this vector (the loss is `squared_distance`).

  Attributes:
    encode: the foundation's `encode` (`lib.downstream` interface).
  """
  encode: downstream.Encode

  def __call__(self, params: Any, x: Array) -> Array:
    tokens, embedding = self.encode(params, x)
    tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
    scaled = tokens.reshape(tokens.shape[0], -1) / jnp.sqrt(float(tokens.shape[1]))
    return jnp.concatenate([embedding, scaled], -1)


def squared_distance(z: Array, target: Array, _: Any = None) -> Array:
  """[B] squared distances of `FareOutputs` vectors (a `lib.attacks` loss: target = labels)."""
  return jnp.sum(jnp.square(z - target), -1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=6)
def _fare_step(encode: downstream.Encode, optimizer: optax.GradientTransformation,
               pgd_steps: int, seed: int, eps: Array, original: Any, state: FareState,
               batch: dict[str, Array]) -> tuple[FareState, dict[str, Array]]:
  """One FARE step: inner ℓ∞ PGD (random start, α = 2.5 ε / steps) maximising the distance
  to the original tower's clean outputs, then a step of the tower on that distance."""
  x, outputs = batch['image'], FareOutputs(encode)
  target = jax.lax.stop_gradient(outputs(original, x))
  key = jax.random.fold_in(jax.random.key(seed), state.step)
  attack = pgd.make_pgd(outputs, state.params, x, target, eps=eps, norm='linf',
                        step_size=pgd.STEP_SIZE_FACTOR * eps / pgd_steps,
                        loss=squared_distance)
  start_key, run_key = jax.random.split(key)
  final, _ = iterate.run(attack.step, attack.init(start_key), pgd_steps, key=run_key)
  x_adv = jax.lax.stop_gradient(final.x_adv)

  def objective(params):
    return squared_distance(outputs(params, x_adv), target).mean()

  loss, grads = jax.value_and_grad(objective)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return FareState(state.step + 1, params, opt_state), {
      'loss': loss, 'clean_distance': squared_distance(outputs(params, x), target).mean()}


def fare(c: ml_collections.ConfigDict, f: foundation.Foundation, train_split: ArrayDataset,
         workdir: str, *, progress: bool = True) -> Any:
  """The FARE-defended image-tower variables, trained (resuming) in `workdir/fare`."""
  h = c.fare
  folder = os.path.join(workdir, 'fare')
  record = {'foundation': ft.foundation_config(c).to_dict(), 'foundation_steps': f.steps,
            'fare': h.to_dict()}
  run_config.prepare_workdir(folder, record, resumable=run_config.RESUMABLE)
  optimizer = foundation.adamw_optimizer(h.learning_rate, h.num_steps, h.warmup_steps,
                                         h.weight_decay)
  original = f.variables['image']
  eps = jnp.float32(h.eps / 255)
  device = jax.local_devices()[0]
  init = lambda: jax.device_put(FareState(jnp.zeros((), jnp.int32),
                                          jax.tree.map(jnp.copy, original),
                                          optimizer.init(original)), device)
  batch_fn = lambda i: {'image': jnp.asarray(data_lib.batch_at(
      train_split, i, batch_size=h.batch_size, seed=h.seed)['image'])}
  state = train.run_loop(
      init=init, step_fn=lambda s, b: _fare_step(f.encode, optimizer, h.pgd_steps, h.seed, eps,
                                                 original, s, b),
      batch_fn=batch_fn, num_steps=h.num_steps, workdir=folder,
      checkpoint_every=c.checkpoint_every, log_every=c.log_every, progress=progress)
  return state.params


# ---------------------------------------------------------------------------------------
# The deployment-side defence: random resizing and padding (Xie et al. 2018).

class Placement(NamedTuple):
  """Where random resizing and padding puts each image: scale s [B] in (0, 1] and offset
  [B, 2] (rows, columns) in output pixels; pixel (i, j) shows input ((i + ½ − oᵢ)/s − ½, ...)."""
  scale: Array
  offset: Array


def draw_placement(key: Array, n: int, size: tuple[int, int], min_scale: float) -> Placement:
  """s ~ U[min_scale, 1], offset ~ U[0, (1 − s)·size] per image (pixels)."""
  scale_key, offset_key = jax.random.split(key)
  s = jax.random.uniform(scale_key, (n,), jnp.float32, min_scale, 1.0)
  room = (1.0 - s)[:, None] * jnp.asarray(size, jnp.float32)
  return Placement(s, jax.random.uniform(offset_key, (n, 2), jnp.float32) * room)


def resize_pad(images: Array, placement: Placement) -> Array:
  """[B, H, W, C] images shrunk by s and placed at the offset on a black canvas [B, H, W, C]
  (`jax.image.scale_and_translate`, bilinear with antialiasing)."""
  def one(image, s, offset):
    return jax.image.scale_and_translate(image, image.shape, (0, 1), jnp.stack([s, s]), offset,
                                         method='linear', antialias=True)
  return jax.vmap(one)(images, placement.scale, placement.offset)


def resize_pad_split(split: ArrayDataset, placement: Placement) -> ArrayDataset:
  """`split` with images, segmentation maps (nearest source pixel; outside: background 0),
  masks and boxes moved as `resize_pad` moves the images."""
  arrays = dict(split.arrays)
  images = jnp.asarray(arrays['image'], jnp.float32)
  if split.arrays['image'].dtype == np.uint8:
    images = images / 255
  arrays['image'] = np.asarray(resize_pad(images, placement))
  n, h, w = arrays['segmentation'].shape
  s = np.asarray(placement.scale)[:, None]
  offset = np.asarray(placement.offset)
  rows = np.floor((np.arange(h)[None] + 0.5 - offset[:, :1]) / s).astype(np.int64)   # [n, h]
  cols = np.floor((np.arange(w)[None] + 0.5 - offset[:, 1:]) / s).astype(np.int64)   # [n, w]
  inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
  batch = np.arange(n)[:, None, None]
  for key in ('segmentation', 'mask'):
    moved = arrays[key][batch, np.clip(rows, 0, h - 1)[:, :, None],
                        np.clip(cols, 0, w - 1)[:, None, :]]
    arrays[key] = np.where(inside, moved, 0).astype(arrays[key].dtype)
  shift = (offset / np.array([h, w], np.float32))[:, None, :]          # [n, 1, 2]
  boxes = arrays['boxes'] * s[:, :, None]
  arrays['boxes'] = (boxes + np.concatenate([shift, shift], -1)).astype(np.float32)
  return dataclasses.replace(split, arrays=arrays)


@dataclasses.dataclass(frozen=True)
class ResizePadEncoder:
  """An image encoder behind random resizing and padding, as a stochastic encoder for
  `lib.attacks.feature` (`stochastic=True`): `apply(params, images, *, key)` draws one
  placement per image from `key` (`draw_placement`), applies it (`resize_pad`) and encodes
  the result, so an attack given a fresh key every step sees fresh placements (EOT).

  Attributes:
    encoder: `encoder(params, images) -> Outputs` with the hidden states as taps.
    min_scale: the smallest scale s of the placements.
  """
  encoder: Callable[..., contract.Outputs]
  min_scale: float

  def __call__(self, params: Any, images: Array, *, key: Array) -> contract.Outputs:
    placement = draw_placement(key, images.shape[0], images.shape[1:3], self.min_scale)
    return contract.as_outputs(self.encoder(params, resize_pad(images, placement)))


# ---------------------------------------------------------------------------------------
# The study.

class Cell(NamedTuple):
  """One target under one condition.

  Attributes:
    target, method, metric: the target's row (`foundation_targets.Row`).
    clean: its metric on the clean scenes (under the condition's encoder and defence).
    attacked: its metric on the attacked scenes.
    baseline: the metric of the target's trivial predictor on the same scenes.
  """
  target: str
  method: str
  metric: str
  clean: float
  attacked: float
  baseline: float

  @property
  def measurable(self) -> bool:
    """Whether the clean metric beats the trivial baseline by more than
    `foundation_targets_report.ON_PAR`: else a drop means nothing (nothing was learned)."""
    return self.clean - self.baseline > ON_PAR

  @property
  def drop(self) -> float:
    """Relative drop (clean − attacked) / clean; NaN when clean is 0."""
    return (self.clean - self.attacked) / self.clean if self.clean else float('nan')


class Results(NamedTuple):
  """The numbers of one run (what the report is written from).

  Attributes:
    matrix: (attack, ε in 1/255) -> [Cell] over every target column.
    layers: layer set -> [Cell] (PRM at `attack.layers_eps`).
    layer_names: layer set -> its hidden-state names.
    fare: condition -> [Cell] ('original tower', 'FARE tower: PRM on FARE', 'FARE tower:
      PRM on original'); clean is the condition's tower on clean scenes.
    deploy: condition -> [Cell] ('no defence: PRM', 'resize-pad: PRM', 'resize-pad: PRM
      with EOT'); clean is with the condition's defence.
    checks: `lib.attacks.checks.Report` of PGD on the zero-shot classifier.
    eps: ε (1/255) of the layer study, the defences and the checks (`attack.layers_eps`).
    examples: name -> [n, H, W, 3] images of the first figure scenes ('clean', attacks).
    figures: name -> `foundation_targets.FigureData` ('clean', 'PRM').
    timings: stage -> (wall, CPU) seconds.
    fare_steps: FARE's training steps.
  """
  matrix: dict[tuple[str, int], list[Cell]]
  layers: dict[str, list[Cell]]
  layer_names: dict[str, tuple[str, ...]]
  fare: dict[str, list[Cell]]
  deploy: dict[str, list[Cell]]
  checks: checks_lib.Report
  eps: int
  examples: dict[str, np.ndarray]
  figures: dict[str, ft.FigureData]
  timings: dict[str, tuple[float, float]]
  fare_steps: int


# The matrix's columns: (target, method, metric) of `foundation_targets.evaluate`'s rows.
COLUMNS = (('classification', 'zero-shot (prompts)', 'accuracy'),
           ('classification', 'linear probe', 'accuracy'),
           ('classification', 'full fine-tune', 'accuracy'),
           ('segmentation', 'MaskCLIP (training-free)', 'mIoU'),
           ('segmentation', 'dense head, frozen tokens', 'mIoU'),
           ('detection', 'patch-text boxes (training-free)', 'mAP'),
           ('detection', 'box head, frozen tokens', 'mAP'),
           ('captioning', 'decoder on frozen tokens', 'CIDEr'),
           ('vqa', 'attention head on frozen tokens', 'VQA accuracy'))


def cells(clean: list[ft.Row], attacked: list[ft.Row]) -> list[Cell]:
  """The `COLUMNS` of two evaluations side by side."""
  index = lambda rows: {(r.target, r.method, r.metric): r for r in rows}
  a, b = index(clean), index(attacked)
  return [Cell(*col, a[col].value, b[col].value, a[col].baseline) for col in COLUMNS]


def _digest(tree: Any, settings: Any) -> str:
  """sha1 of the arrays of `tree` and the JSON of `settings` (a cache stamp)."""
  h = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode())
  for leaf in jax.tree.leaves(tree):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


def _cached(folder: str, name: str, stamp: str, fn: Callable[[], Any]) -> np.ndarray:
  """`fn()` as float32 numpy, stored in `folder/<name>.npz` with `stamp`; a stored array of
  the same stamp is returned instead of recomputing."""
  path = os.path.join(folder, name.replace(' ', '_').replace('/', '_') + '.npz')
  if os.path.isfile(path):
    with np.load(path) as stored:
      if str(stored['stamp']) == stamp:
        return stored['x_adv']
  x_adv = np.asarray(fn(), np.float32)
  os.makedirs(folder, exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, x_adv=x_adv, stamp=np.asarray(stamp))
  os.replace(tmp, path)
  return x_adv


def with_images(split: ArrayDataset, images: np.ndarray) -> ArrayDataset:
  """`split` with its images replaced (float [N, H, W, 3] in [0, 1])."""
  return dataclasses.replace(split, arrays={**split.arrays, 'image': np.asarray(images)})


class _Attacker:
  """Runs and caches the attacks on one set of scenes (one compiled program per attack)."""

  def __init__(self, c, f, test, folder):
    self.c, self.f, self.folder = c, f, folder
    self.x = jnp.asarray(test.arrays['image'], jnp.float32) / 255
    self.y = jnp.asarray(test.arrays['label'])
    self.encoder = clip_lib.image_encoder(f.clip)
    self.key = jax.random.key(c.attack.seed)
    self.settings = c.attack.to_dict()
    self._stamps = {}

  def _stamp(self, params, name):
    tag = id(params)
    if tag not in self._stamps:
      self._stamps[tag] = _digest((params, self.x), self.settings)
    return hashlib.sha1((self._stamps[tag] + name).encode()).hexdigest()

  def feature(self, params, name, loss, eps, layers=None, *, prefix=''):
    """A `lib.attacks.feature` attack on `params` at ε (1/255)."""
    a = self.c.attack
    run = lambda: feature.feature_attack(
        self.encoder, params, self.x, loss=loss, layers=layers, eps=jnp.float32(eps / 255),
        steps=a.steps, lr=a.lr, weight_decay=a.weight_decay, scale=tuple(a.scale),
        patch_size=self.f.clip.config.patch_size, resize=vit.resize_bicubic,
        start='random' if loss == 'nrd' else 'zero',
        key=jax.random.fold_in(self.key, eps)).x_adv
    return _cached(self.folder, f'{prefix}{name}_{eps}', self._stamp(params, f'{name}{eps}'), run)

  def other(self, params, name, eps):
    """Noise of the same norm, or PGD on the zero-shot classifier, at ε (1/255)."""
    key = jax.random.fold_in(jax.random.fold_in(self.key, eps), ATTACKS.index(name))
    if name == 'noise':
      run = lambda: feature.random_noise(self.x, eps=jnp.float32(eps / 255), key=key)
    else:
      run = lambda: pgd.pgd(ZeroShot(self.f.encode), (params, self.f.class_embeddings), self.x,
                            self.y, eps=jnp.float32(eps / 255), steps=self.c.attack.pgd_steps,
                            random_start=True, key=key)
    text = _digest(self.f.class_embeddings, None) if name == 'PGD zero-shot' else ''
    return _cached(self.folder, f'{name}_{eps}', self._stamp(params, f'{name}{eps}{text}'), run)

  def eot(self, params, eps):
    """PRM through random resizing and padding, EOT over `deploy.eot` fresh placements per
    image at every step (no dynamic scale), at ε (1/255). Its keys come from
    fold_in(key(deploy.seed), 1); the evaluation's placements from fold_in(..., 0)."""
    a, d = self.c.attack, self.c.deploy
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(d.seed), 1), eps)
    run = lambda: feature.feature_attack(
        ResizePadEncoder(self.encoder, float(d.min_scale)), params, self.x, loss='prm',
        eps=jnp.float32(eps / 255), steps=a.steps, lr=a.lr, weight_decay=a.weight_decay,
        scale=None, stochastic=True, eot=d.eot, key=key).x_adv
    return _cached(self.folder, f'PRM_EOT_{eps}',
                   self._stamp(params, f'eot-fresh{eps}{json.dumps(d.to_dict(), sort_keys=True)}'),
                   run)


class Stages:
  """Wall and CPU seconds (this process, all threads) summed per stage; each call to
  `stage(name, fn)` runs `fn` and adds its time to `name`."""

  def __init__(self):
    self.seconds: dict[str, tuple[float, float]] = {}

  def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
    start, cpu = time.time(), time.process_time()
    out = fn()
    wall, used = self.seconds.get(name, (0.0, 0.0))
    self.seconds[name] = (wall + time.time() - start, used + time.process_time() - cpu)
    return out


def targets_folder(c: ml_collections.ConfigDict, workdir: str) -> str:
  """Where the targets live: `config.targets_workdir`, or `workdir/targets`."""
  return os.path.expanduser(c.targets_workdir) if c.targets_workdir else os.path.join(
      workdir, 'targets')


def measure(c: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> Results:
  """Builds (or resumes) the targets and FARE, runs every attack, measures every target."""
  timer = Stages()
  targets = timer('targets (build or resume)', lambda: ft.build(
      c, targets_folder(c, workdir), progress=progress))
  f = targets.foundation
  test = ft.first(foundation.load_split(c, 'test'), c.attack.num_images)
  attacker = _Attacker(c, f, test, os.path.join(workdir, 'adversarial'))
  image = f.variables['image']
  evaluate = lambda split, params=None: ft.evaluate(c, targets, split,
                                                    image_params=params).rows
  clean = timer('evaluate the targets', lambda: evaluate(test))

  matrix, adversarial = {}, {}
  for eps in c.attack.eps:
    for name in ATTACKS:
      x_adv = timer('attacks: ' + ('feature' if name in FEATURE_LOSSES else name), lambda: (
          attacker.feature(image, name, FEATURE_LOSSES[name], eps) if name in FEATURE_LOSSES
          else attacker.other(image, name, eps)))
      adversarial[name, eps] = x_adv
      rows = timer('evaluate the targets', lambda: evaluate(with_images(test, x_adv)))
      matrix[name, eps] = cells(clean, rows)

  eps = c.attack.layers_eps
  layer_names = feature.layer_sets(f.clip.image_hidden_states)
  layers = {'all': matrix['PRM', eps]}
  for part in LAYER_SETS[:-1]:
    x_adv = timer('attacks: feature', lambda: attacker.feature(
        image, f'PRM-{part}', 'prm', eps, layer_names[part]))
    layers[part] = cells(clean, timer('evaluate the targets',
                                      lambda: evaluate(with_images(test, x_adv))))
  layers = {k: layers[k] for k in LAYER_SETS}

  defended = timer('FARE: train', lambda: fare(c, f, targets.train, workdir, progress=progress))
  clean_fare = timer('evaluate the targets', lambda: evaluate(test, defended))
  x_fare = timer('attacks: feature', lambda: attacker.feature(defended, 'PRM', 'prm', eps,
                                                                 prefix='fare_'))
  fare_cells = {
      'original tower': matrix['PRM', eps],
      'FARE tower: PRM on FARE': cells(clean_fare, timer('evaluate the targets', lambda: evaluate(
          with_images(test, x_fare), defended))),
      'FARE tower: PRM on original': cells(clean_fare, timer(
          'evaluate the targets', lambda: evaluate(
              with_images(test, adversarial['PRM', eps]), defended)))}

  d = c.deploy
  placement = draw_placement(jax.random.fold_in(jax.random.key(d.seed), 0), len(test),
                             (c.image_size, c.image_size), d.min_scale)
  x_eot = timer('attacks: PRM with EOT', lambda: attacker.eot(image, eps))
  moved = lambda images: resize_pad_split(with_images(test, images), placement)
  clean_moved = timer('evaluate the targets', lambda: evaluate(
      moved(np.asarray(attacker.x))))
  deploy = {'no defence: PRM': matrix['PRM', eps],
            'resize-pad: PRM': cells(clean_moved, timer('evaluate the targets', lambda:
                                                        evaluate(moved(adversarial['PRM', eps])))),
            'resize-pad: PRM with EOT': cells(clean_moved, timer(
                'evaluate the targets', lambda: evaluate(moved(x_eot))))}

  k = c.checks
  checks = timer('checks: PGD zero-shot', lambda: checks_lib.check_evaluation(
      ZeroShot(f.encode), (image, f.class_embeddings), attacker.x[:k.num_images],
      attacker.y[:k.num_images], eps=eps / 255, key=jax.random.fold_in(attacker.key, 7),
      steps=c.attack.pgd_steps, square_queries=k.square_queries))

  n = c.num_figure
  examples = {'clean': np.asarray(attacker.x[:n])}
  examples.update({f'{name} {e}/255': adversarial[name, e][:n]
                   for name, e in (('PRM', eps), ('PRM', max(c.attack.eps)), ('noise', eps),
                                   ('PGD zero-shot', eps))})
  figures = timer('figure predictions', lambda: {
      'clean': ft.figure_data(c, targets, test),
      'PRM': ft.figure_data(c, targets, with_images(test, adversarial['PRM', eps]))})
  return Results(matrix, layers, layer_names, fare_cells, deploy, checks, eps, examples,
                 figures, timer.seconds, c.fare.num_steps)


def run(c: ml_collections.ConfigDict, workdir: str) -> markdown.Section:
  """Validates `c`, runs the study (resuming), returns the report section."""
  validate_config(c)
  results = measure(c, workdir)
  return report.section(c, results, workdir)
