"""Explanation integrity: a softmax-invariant manipulation, what it does, and its detection.

Reproduces and extends Lerma & Lucas 2023, "A Vulnerability of Attribution Methods Using
Pre-Softmax Scores" (arXiv 2307.03305). Protocol (choices the paper leaves open are ours):

1. Train `num_seeds` CNNs on `shapes` as one vmapped sweep (`lib.sweep`); seed 0 is "the
   model" of the tables, all seeds serve the detection study.
2. Manipulate them (`lib.attribution.manipulate`): the paper's construction
   t = K·Σ_k A[0,0,k] at the Grad-CAM tap, and the steering construction that provably
   moves every logit-based family into a target mask M (the top-left quarter of the
   image, away from where objects usually are): 'input' (input-gradient methods, LRP)
   nested in 'channel' (Grad-CAM). |Δp| and agreement of predictions are measured (float32,
   and z + t in float64: `lib.attribution.invariance`).
3. Localisation: pointing game of every method (`c.methods`, names of
   `lib.attribution.registry`; all by default) × score (logit, probability,
   log-probability, logit difference) against the ground-truth evidence masks of `shapes`,
   honest vs manipulated.
4. Detection: `lib.attribution.audit` model-level score of every honest and every
   manipulated seed; ROC AUC against the strength K, and for the adaptive variant.

`run` checks every analysis setting against the model before the first training step
(`check_config`), `measure` returns the numbers (`Results`), and
`experiments.attribution_integrity_report.section` writes the report from them: every
sentence that states a conclusion is chosen by the numbers of the run.

Launch:
  python -m launch.run --config=experiments/attribution_integrity.py:runlocal --workdir=/tmp/ai
  python -m launch.run --config=experiments/attribution_integrity.py --workdir=/tmp/ai_full
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import attribution_integrity_report as report
from experiments import classifier
from lib import run_config, sweep, train, validate
from lib.attribution import audit as audit_lib
from lib.attribution import heatmaps as heatmaps_lib
from lib.attribution import invariance, localisation, manipulate, registry, scores
from lib.report import figures, markdown

SCORES = scores.SCORES  # ('logit', 'probability', 'log_probability', 'logit_difference')
# Both sweep strategies checkpoint the same stacked layout (lib/sweep.py), so a relaunch may
# switch strategy; see lib/run_config.py.
RESUMABLE_KEYS = ('strategy',)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The full config trains longer on 64 px scenes; `runlocal` fits 2 CPU cores."""
  variants = run_config.variants(arg, ('runlocal',))
  c = classifier.get_config('runlocal' if 'runlocal' in variants else '')
  c.model_kwargs = ml_collections.ConfigDict({'widths': (16, 32, 64), 'batch_norm': True})
  c.image_size = 32 if 'runlocal' in variants else 64
  c.num_seeds = 16
  c.strategy = 'auto'          # sweep strategy (lib/sweep.py): 'sequential' on CPU, 'vmap' on GPU
  c.tap = 'conv3'
  c.methods = ''               # comma-separated `lib.attribution.registry` names; '' = all
  c.strength = 1000.0          # K of the tables
  c.strengths = '0.01,0.1,1,10,100,1000'  # K of the detection curve
  c.adaptive_margin = 3.0      # λ of the adaptive variant (> 2: provable dominance)
  c.num_eval = 128             # images of the localisation tables
  c.num_audit = 64             # images the audit reads per model
  c.ig_steps = 50
  c.smoothgrad_samples = 25
  c.smoothgrad_stdev = 0.1
  c.occlusion_window = 4
  c.audit_occlusion_stride = 4  # the audit's reference occlusion: non-overlapping windows
  if 'runlocal' in variants:
    # Measured on seed 0 (test accuracy, same ~30 s of training on 2 cores): widths
    # (16, 32, 64) for 300 steps at learning rate 0.05 reach 0.48, at 0.2 0.70; widths
    # (8, 16, 32) for 600 steps at 0.2 reach 0.79.
    c.model_kwargs.widths = (8, 16, 32)
    c.num_steps, c.batch_size, c.num_train, c.checkpoint_every = 600, 64, 4000, 200
    c.learning_rate = 0.2
    c.num_eval, c.num_audit, c.ig_steps, c.smoothgrad_samples = 64, 16, 16, 8
  return c


def target_mask(size: int) -> np.ndarray:
  """M: the top-left quarter (side size/4) of a size x size image."""
  m = np.zeros((size, size))
  m[:size // 4, :size // 4] = 1
  return m


def detection_strengths(c: ml_collections.ConfigDict) -> list[float]:
  """K of the detection curve, from the comma-separated `c.strengths`."""
  try:
    values = [float(v) for v in str(c.strengths).split(',')]
  except ValueError:
    raise ValueError('config.strengths must be comma-separated numbers, e.g. "0.1,1,10"; got '
                     f'{c.strengths!r}.') from None
  for v in values:
    _check_strength(v, 'config.strengths')
  return values


def _check_strength(value: Any, name: str) -> None:
  validate.check_number(value, name, low=0.0)
  if value <= 0:
    raise ValueError(f'{name} must be positive; got {value!r}.')


def check_config(c: ml_collections.ConfigDict, model: Any, num_test: int) -> None:
  """Every analysis setting against the model and data, before anything trains.

  Args:
    c: the study's config.
    model: the built model (`tap_shapes`: tap name -> per-example shape).
    num_test: size of the test split.

  Raises:
    ValueError: naming the config key and what was expected.
  """
  taps = dict(model.tap_shapes)
  spatial = [name for name, shape in taps.items() if len(shape) == 3]
  if c.tap not in spatial:
    raise ValueError(f'config.tap={c.tap!r} must be a spatial tap [h, w, c] of model '
                     f'{c.model!r}; valid: {spatial} (all taps: {list(taps)}).')
  try:
    registry.parse_names(c.methods)
  except ValueError as e:
    raise ValueError(f'config.methods={c.methods!r}: {e}') from None
  _check_strength(c.strength, 'config.strength')
  detection_strengths(c)
  _check_strength(c.adaptive_margin, 'config.adaptive_margin')
  validate.check_int(c.image_size, 'config.image_size', minimum=4)
  validate.check_int(c.num_seeds, 'config.num_seeds', minimum=1)
  validate.check_int(c.occlusion_window, 'config.occlusion_window', minimum=2)
  if c.occlusion_window > c.image_size:
    raise ValueError(f'config.occlusion_window={c.occlusion_window} exceeds the image size '
                     f'config.image_size={c.image_size}.')
  validate.check_int(c.audit_occlusion_stride, 'config.audit_occlusion_stride', minimum=1)
  if c.audit_occlusion_stride > c.occlusion_window:
    raise ValueError(f'config.audit_occlusion_stride={c.audit_occlusion_stride} must not exceed '
                     f'config.occlusion_window={c.occlusion_window} (pixels left uncovered).')
  validate.check_int(c.num_eval, 'config.num_eval', minimum=1)
  if c.num_eval > num_test:
    raise ValueError(f'config.num_eval={c.num_eval} exceeds the {num_test} test images.')
  validate.check_int(c.num_audit, 'config.num_audit', minimum=1)
  if c.num_audit > c.num_eval:
    raise ValueError(f'config.num_audit={c.num_audit} must not exceed config.num_eval='
                     f'{c.num_eval} (the audit reads the first num_audit of those images).')
  validate.check_int(c.ig_steps, 'config.ig_steps', minimum=2)
  validate.check_int(c.smoothgrad_samples, 'config.smoothgrad_samples', minimum=1)
  validate.check_number(c.smoothgrad_stdev, 'config.smoothgrad_stdev', low=0.0)


def attribution_methods(c: ml_collections.ConfigDict) -> dict[str, registry.Method]:
  """name -> bound `registry.Method` for the methods `c.methods` selects."""
  return registry.build(c.methods, tap=c.tap, options={
      'integrated_gradients': {'n_steps': c.ig_steps},
      'smoothgrad': {'n_samples': c.smoothgrad_samples, 'stdev': c.smoothgrad_stdev},
      'occlusion': {'window': c.occlusion_window, 'stride': c.occlusion_window // 2},
  })


def pointing(heat: dict, masks: np.ndarray) -> dict:
  """Pointing-game accuracy in % of each heatmap set of `heat` against `masks` [B, H, W]."""
  return {k: 100 * float(localisation.pointing_game(jnp.asarray(v), jnp.asarray(masks)).mean())
          for k, v in heat.items()}


def invariance_rows(honest, models, params, x, labels) -> list[dict[str, Any]]:
  """Per manipulated model: max |Δp| (float64, float32), mean |t|, accuracies, agreement."""
  base = np.asarray(honest(params, x).logits)
  rows = []
  for name, lying in models.items():
    gaps = invariance.softmax_gaps(honest, lying, params, x)
    logits = np.asarray(lying(params, x).logits)
    rows.append({'name': name, 'float64': gaps['float64'], 'float32': gaps['float32'],
                 'mean_t': float(np.abs(logits - base)[:, 0].mean()),
                 'accuracy_honest': float((base.argmax(-1) == labels).mean()),
                 'accuracy_manipulated': float((logits.argmax(-1) == labels).mean()),
                 'same': float((logits.argmax(-1) == base.argmax(-1)).mean())})
  return rows


def detection(c, model, stacked, x, evidence, mask, key) -> list[dict[str, Any]]:
  """Audit scores of every honest and manipulated seed; ROC AUC per strength setting.

  The manipulated model takes (variables, K) as its parameters, so all fixed-K settings
  share one compiled program (and the adaptive variant a second one, the honest model a
  third); seeds are mapped with `sweep.map_seeds` (one after another on CPU, vmapped
  elsewhere).

  Returns:
    Per setting: strength, adaptive, auc, drop (largest fall of the mean pointing, points),
    pointing_honest/pointing_lying ([2]: logit saliency, Grad-CAM, %), scores_honest and
    scores_lying ([S] audit model scores).
  """
  methods = audit_lib.default_methods(c.tap, n_steps=c.ig_steps)
  references = audit_lib.default_references(window=c.occlusion_window,
                                            stride=c.audit_occlusion_stride)
  pointers = (registry.get('saliency'), methods['grad_cam'])
  k, evidence = int(mask.sum()), jnp.asarray(evidence)

  def honest(pk, x, **kwargs):
    return model.apply(pk[0], x, **kwargs)

  def lying(adaptive):
    def apply(pk, x, **kwargs):
      return manipulate.steered(model.apply, mask, tap=c.tap, strength=pk[1],
                                adaptive=adaptive)(pk[0], x, **kwargs)
    return apply

  def measured(apply):
    """pk -> (audit model score, [2] pointing (%)): one function, so one compiled program."""
    def one(pk):
      score = audit_lib.audit(apply, pk, x, methods=methods, references=references, key=key,
                              k=k).model_score
      target = jnp.argmax(model.apply(pk[0], x).logits, -1)
      point = jnp.stack([
          localisation.pointing_game(heatmaps_lib.heatmap(m, apply, pk, x, target, 'logit', None),
                                     evidence).mean() for m in pointers])
      return score, 100 * point
    return one

  num_seeds = len(jax.tree.leaves(stacked)[0])
  run = lambda fn, strength: sweep.map_seeds(
      fn, (stacked, jnp.full(num_seeds, strength, jnp.float32)), strategy=c.strategy)
  honest_scores, honest_point = run(measured(honest), 1.0)
  honest_point = honest_point.mean(0)
  programs = {False: measured(lying(False)), True: measured(lying(True))}
  settings = [(v, False) for v in detection_strengths(c)] + [(c.adaptive_margin, True)]
  curve = []
  for strength, adaptive in settings:
    lying_scores, lying_point = run(programs[adaptive], strength)
    lying_point = lying_point.mean(0)
    curve.append({'strength': float(strength), 'adaptive': adaptive,
                  'auc': audit_lib.detection_auc(honest_scores, lying_scores),
                  'drop': float((honest_point - lying_point).max()),
                  'pointing_honest': honest_point, 'pointing_lying': lying_point,
                  'scores_honest': honest_scores, 'scores_lying': lying_scores})
  return curve


class Results(NamedTuple):
  """What one run measured (`measure`); `section` turns it into the report."""
  config: ml_collections.ConfigDict
  num_test: int
  num_classes: int
  seed_accuracy: np.ndarray              # [S] test accuracy per seed
  methods: tuple[str, ...]
  supports: dict[str, tuple[str, ...]]   # method -> the scores it supports
  invariance: list[dict[str, Any]]       # `invariance_rows`
  on_evidence: dict                      # (model, method, score) -> pointing (%)
  on_target: dict                        # the same against the target mask M
  hires_vs_grad_cam: float | None        # max |HiResCAM − Grad-CAM| / max |Grad-CAM|, honest
  detection: list[dict[str, Any]]        # `detection`
  figures: dict[str, str]                # name -> path relative to the workdir
  stage_s: dict[str, float]              # wall time of each stage


def build(c: ml_collections.ConfigDict):
  """(train data, test data, model, optimizer), with the whole config checked against them."""
  train_data, test_data, model, optimizer = classifier.build(c)
  check_config(c, model, len(test_data))
  return train_data, test_data, model, optimizer


def measure(c: ml_collections.ConfigDict, workdir: str) -> Results:
  """Checks the config, trains the seeds (resumable), manipulates and measures."""
  clock, stage_s = [time.time()], {}

  def lap(stage):
    stage_s[stage] = time.time() - clock[0]
    clock[0] = time.time()
    logging.info('attribution_integrity: %s took %.0f s', stage, stage_s[stage])

  train_data, test_data, model, optimizer = build(c)
  seeds = list(range(c.seed, c.seed + c.num_seeds))
  state = sweep.fit_seeds(model=model, optimizer=optimizer, train_data=train_data, seeds=seeds,
                          num_steps=c.num_steps, batch_size=c.batch_size,
                          workdir=os.path.join(workdir, 'models'),
                          checkpoint_every=c.checkpoint_every, log_every=c.log_every,
                          strategy=c.strategy)
  stacked = jax.tree.map(jnp.asarray, train.to_host(state.variables))
  test = test_data.get(np.arange(min(len(test_data), 1000)))
  seed_accuracy = sweep.map_seeds(
      lambda v, x, y: (jnp.argmax(model.apply(v, x).logits, -1) == y).mean(), stacked,
      jnp.asarray(test['image']), jnp.asarray(test['label']), strategy=c.strategy)
  lap('training the seeds')
  params = jax.tree.map(lambda v: v[0], stacked)
  batch = test_data.get(np.arange(c.num_eval))
  x, labels, evidence = jnp.asarray(batch['image']), batch['label'], batch['mask']
  target = jnp.argmax(model.apply(params, x).logits, -1)  # explain the predicted class
  mask = target_mask(x.shape[1])
  key = jax.random.key(c.seed)

  paper = manipulate.manipulate(model.apply, construction='paper', strength=c.strength,
                                tap=c.tap)
  lying = manipulate.steered(model.apply, mask, tap=c.tap, strength=c.strength)
  adaptive = manipulate.steered(model.apply, mask, tap=c.tap, strength=c.adaptive_margin,
                                adaptive=True)
  inv = invariance_rows(model.apply, {'paper (K·Σ_k A[0,0,k])': paper, 'steering': lying,
                                      'steering, adaptive': adaptive}, params, x, labels)
  methods = attribution_methods(c)
  heat = heatmaps_lib.all_heatmaps(
      methods, {'honest': (model.apply, SCORES), 'steered': (lying, SCORES),
                'paper': (paper, ('logit',))}, params, x, target, key)
  lap('invariance and heatmaps')
  hires_gap = None
  if {'grad_cam', 'hires_cam'} <= set(methods):
    ref = heat['honest', 'grad_cam', 'logit']
    hires_gap = float(np.abs(heat['honest', 'hires_cam', 'logit'] - ref).max()
                      / max(np.abs(ref).max(), 1e-30))
  grid = figures.heatmap_grid(
      np.asarray(x[:3]), {f'{m} {i}': [heat[m, name, 'logit'][i] for name in methods]
                          for i in range(3) for m in ('honest', 'steered', 'paper')},
      list(methods), os.path.join(workdir, 'heatmaps.png'))
  curve = detection(c, model, stacked, x[:c.num_audit], evidence[:c.num_audit], mask, key)
  lap('detection')
  auc_fig = figures.line_plot(
      {'audit ROC AUC': [(d['strength'], d['auc']) for d in curve if not d['adaptive']]},
      os.path.join(workdir, 'detection_auc.png'), xlabel='strength K', ylabel='audit ROC AUC',
      logx=True, title=f'{c.num_seeds} honest vs {c.num_seeds} manipulated seeds (adaptive: '
      'at x = λ)', points={f'adaptive λ={d["strength"]:g}': (d['strength'], d['auc'])
                           for d in curve if d['adaptive']})
  rel = lambda p: os.path.relpath(p, workdir)
  return Results(c, len(test['label']), test_data.num_classes, np.asarray(seed_accuracy),
                 tuple(methods), {n: m.scores for n, m in methods.items()}, inv,
                 pointing(heat, evidence),
                 pointing(heat, np.broadcast_to(mask, evidence.shape)), hires_gap, curve,
                 {'heatmaps': rel(grid), 'detection': rel(auc_fig)}, stage_s)


def run(c: ml_collections.ConfigDict, workdir: str) -> markdown.Section:
  """Checks the config, trains, measures; returns the report section."""
  return report.section(measure(c, workdir))
