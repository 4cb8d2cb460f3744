"""Adversarial robustness of the main job's classifier: attacks, ε curves, evaluation checks.

Protocol:

1. Train the classifier of `experiments/classifier.py` (same config and code) in
   `workdir/model`, or in `classifier_workdir` when given (resumable).
2. On the first `num_eval` test images: clean accuracy, and robust accuracy against every
   attack of `attacks` (FGSM, PGD, APGD-CE, APGD-T, Square, the AutoAttack-style ensemble;
   `lib.attacks`) at every radius of `linf_eps` (in units of 1/255) and `l2_eps`. Each
   attack is one compiled program for all radii (ε is a traced argument, looped in Python).
3. The sanity checks of the evaluation (`lib.attacks.checks.check_evaluation`) at the ℓ∞
   radius `main_eps` for the honest model and for two planted gradient-masking variants
   (wrappers of its apply): quantised input round(4x)/4 (zero gradients) and a saturated
   softmax (logits × `saturation_scale`: the CE gradient underflows).
4. The ensemble's robust accuracy on each planted variant at `main_eps`: does it still break
   them? And the adaptive attack each masking calls for (Athalye et al. 2018; Carlini et al.
   2019), on every model: PGD through the quantiser with BPDA (identity backward) and PGD
   with the margin loss (which does not saturate).

`experiments.robustness_report.section` writes the report from the numbers (`Results`).

Variants: the classifier's (`runlocal`: 2 CPU cores, about 2.5 minutes including training on
a quiet machine; '' full scale; `digits`, `cifar10`, `wrn` pick the data and model).

Launch:
  python -m launch.run --config=experiments/robustness.py:runlocal --workdir=/tmp/rob
  python -m launch.run --config=experiments/robustness.py --workdir=/tmp/rob_full
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import classifier
from experiments import robustness_report as report
from lib import contract, run_config, validate
from lib.attacks import apgd, bpda, checks, ensemble, evaluate, pgd, square
from lib.report import markdown

ATTACKS = ('fgsm', 'pgd', 'apgd_ce', 'apgd_t', 'square', 'ensemble')
NORMS = ('linf', 'l2')
PLANTED = ('quantised', 'saturated')
QUANTISATION_LEVELS = 4.0  # the quantised variant sees round(4x)/4


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The classifier's config for `arg` (its variants: runlocal, digits, cifar10, wrn) plus the
  attack settings; see the module docstring."""
  c = classifier.get_config(arg)
  runlocal = 'runlocal' in arg.split(',')
  c.num_eval = 64 if runlocal else 1000   # test images attacked
  c.attacks = ','.join(ATTACKS)           # comma-separated names of ATTACKS
  c.linf_eps = '1,2,4,8'                  # ℓ∞ radii in units of 1/255
  c.l2_eps = '0.1,0.25,0.5'               # ℓ2 radii (pixel units)
  c.main_eps = 4                          # ℓ∞ radius of the checks and planted models (/255)
  c.pgd_steps = 10 if runlocal else 50   # also the PGD of the checks
  c.apgd_steps = 20 if runlocal else 100  # APGD-CE, APGD-T, and inside the ensemble
  c.n_target_classes = 3 if runlocal else 9
  c.square_queries = 200 if runlocal else 5000  # also in the checks and the ensemble
  c.saturation_scale = 1e4
  c.attack_seed = 0
  # A folder where this very classifier config (every key of experiments/classifier.py)
  # trains; the main job sets the classifier study's folder when the keys agree, so the
  # model trains once. '' = train in workdir/model.
  c.classifier_workdir = ''
  return c


def radii(c: ml_collections.ConfigDict, norm: str) -> list[float]:
  """The radii of `norm` in pixel units, from the comma-separated `c.linf_eps` / `c.l2_eps`."""
  name = f'config.{norm}_eps'
  try:
    values = [float(v) for v in str(c[f'{norm}_eps']).split(',')]
  except ValueError:
    raise ValueError(f'{name} must be comma-separated numbers, e.g. "1,2,4"; got '
                     f'{c[f"{norm}_eps"]!r}.') from None
  for v in values:
    validate.check_number(v, name, low=0.0, high=255.0 if norm == 'linf' else None)
  return [v / 255 for v in values] if norm == 'linf' else values


def attack_names(c: ml_collections.ConfigDict) -> list[str]:
  """The attacks `c.attacks` names, in its order."""
  return run_config.names(c.attacks, ATTACKS, 'config.attacks')


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks every field of `c` before anything is built (the classifier's fields included).

  Raises:
    ValueError: naming the config key and what was expected.
  """
  classifier.validate_config(c)
  attack_names(c)
  for norm in NORMS:
    radii(c, norm)
  validate.check_number(c.main_eps, 'config.main_eps', low=0.0, high=255.0)
  validate.check_positive(c.main_eps, 'config.main_eps')
  for name in ('num_eval', 'pgd_steps', 'apgd_steps', 'n_target_classes', 'square_queries'):
    validate.check_int(c[name], f'config.{name}', minimum=1)
  validate.check_int(c.attack_seed, 'config.attack_seed', minimum=0)
  if not isinstance(c.classifier_workdir, str):
    raise ValueError(f'config.classifier_workdir must be a folder path or ""; got '
                     f'{c.classifier_workdir!r}.')
  validate.check_number(c.saturation_scale, 'config.saturation_scale', low=1.0)


def check_against_data(c: ml_collections.ConfigDict, num_test: int, num_classes: int) -> None:
  """The settings that depend on the data set, checked before training."""
  if c.num_eval > num_test:
    raise ValueError(f'config.num_eval={c.num_eval} exceeds the {num_test} test images.')
  if c.n_target_classes >= num_classes:
    raise ValueError(f'config.n_target_classes={c.n_target_classes} must be below the '
                     f'{num_classes} classes of {c.dataset!r}.')


def _quantise(x: jax.Array, levels: jax.Array) -> jax.Array:
  return jnp.round(x * levels) / jnp.maximum(levels, 1.0)


def masked_model(apply: Callable[..., Any], *, through_bpda: bool = False
                 ) -> Callable[..., jax.Array]:
  """`masked(params, x) -> logits` with params = (variables, logit scale, input levels).

  Scale 1 and 0 levels is the honest model; levels L > 0 quantise the input to round(L x)/L
  (zero input gradients), a large scale saturates the softmax (vanishing CE gradients). All
  three models share one function, so each attack compiles once for all of them.
  `through_bpda=True` gives the same forward function with the quantiser's backward pass
  replaced by the identity (`lib.attacks.bpda`): the adaptive attacker's view of it.
  """
  quantise = bpda.bpda(_quantise) if through_bpda else _quantise

  def masked(params, x):
    variables, scale, levels = params
    x = jnp.where(levels > 0, quantise(x, levels), x)
    return contract.as_outputs(apply(variables, x)).logits * scale

  return masked


def planted_params(variables: Any, scale: float) -> dict[str, tuple[Any, jax.Array, jax.Array]]:
  """name -> params of `masked_model`: the honest model and the two planted variants."""
  settings = {'honest': (1.0, 0.0), 'quantised': (1.0, QUANTISATION_LEVELS),
              'saturated': (scale, 0.0)}
  return {name: (variables, jnp.float32(s), jnp.float32(levels))
          for name, (s, levels) in settings.items()}


def attack(name: str, apply, params, x, y, *, eps: float, norm: str, key: jax.Array,
           c: ml_collections.ConfigDict) -> jax.Array:
  """Adversarial examples of attack `name` (one of ATTACKS) at radius `eps`."""
  if name == 'fgsm':
    return pgd.fgsm(apply, params, x, y, eps=eps, norm=norm)
  if name == 'pgd':
    return pgd.pgd(apply, params, x, y, eps=eps, norm=norm, steps=c.pgd_steps,
                   random_start=True, key=key)
  if name == 'apgd_ce':
    return apgd.apgd(apply, params, x, y, eps=eps, norm=norm, steps=c.apgd_steps, key=key)
  if name == 'apgd_t':
    return apgd.apgd_targeted(apply, params, x, y, eps=eps, norm=norm, steps=c.apgd_steps,
                              n_target_classes=c.n_target_classes, key=key)
  if name == 'square':
    return square.square(apply, params, x, y, eps=eps, norm=norm, n_queries=c.square_queries,
                         key=key)[0]
  return run_ensemble(apply, params, x, y, eps=eps, norm=norm, key=key, c=c).x_adv


def run_ensemble(apply, params, x, y, *, eps: float, norm: str, key: jax.Array,
                 c: ml_collections.ConfigDict) -> ensemble.EnsembleResult:
  """The standard ensemble with the study's APGD steps, target classes and Square budget."""
  return ensemble.ensemble(apply, params, x, y, eps=eps, norm=norm, key=key,
                           steps=c.apgd_steps, n_target_classes=c.n_target_classes,
                           n_queries=c.square_queries)


def accuracy(apply, params, x, y) -> float:
  """Accuracy of the deterministic `apply` on `x`."""
  return float(evaluate.robust_accuracy(apply, params, x, y).mean)


def curves(c, apply, params, x, y, key) -> dict[str, dict[str, list[tuple[float, float]]]]:
  """norm -> attack -> [(ε, robust accuracy)] over the configured radii."""
  out = {}
  for n, norm in enumerate(NORMS):
    out[norm] = {}
    for a, name in enumerate(attack_names(c)):
      out[norm][name] = []
      for e, eps in enumerate(radii(c, norm)):
        k = jax.random.fold_in(key, 100 * (10 * n + a) + e)
        x_adv = attack(name, apply, params, x, y, eps=eps, norm=norm, key=k, c=c)
        out[norm][name].append((eps, accuracy(apply, params, x_adv, y)))
  return out


class Results(NamedTuple):
  """The numbers of one run (what the report is written from).

  Attributes:
    clean: clean accuracy of the honest model on the evaluated images.
    curves: norm -> attack -> [(ε, robust accuracy)].
    reports: model name -> `checks.Report` at the ℓ∞ radius main_eps / 255.
    planted: model name -> the ensemble's accuracy after each stage (`EnsembleResult.accuracy`)
      at main_eps / 255.
    adaptive: model name -> adaptive attack (ADAPTIVE) -> accuracy at main_eps / 255.
  """
  clean: float
  curves: dict[str, dict[str, list[tuple[float, float]]]]
  reports: dict[str, checks.Report]
  planted: dict[str, dict[str, float]]
  adaptive: dict[str, dict[str, float]]


ADAPTIVE = ('PGD + BPDA', 'PGD, margin loss')


def adaptive_attacks(c, apply, models, x, y, key) -> dict[str, dict[str, float]]:
  """model name -> {attack in ADAPTIVE: accuracy}: PGD (the checks' steps, random start) at
  main_eps through the BPDA view of the quantiser, and with the margin loss, each evaluated
  on the model itself (the forward function is the same)."""
  eps, masked = c.main_eps / 255, masked_model(apply)
  through_bpda = masked_model(apply, through_bpda=True)
  out = {}
  for name, params in models.items():
    common = dict(eps=eps, steps=c.pgd_steps, random_start=True, key=key)
    out[name] = {
        'PGD + BPDA': accuracy(masked, params, pgd.pgd(through_bpda, params, x, y, **common), y),
        'PGD, margin loss': accuracy(
            masked, params, pgd.pgd(masked, params, x, y, loss='margin', **common), y)}
  return out


def measure(c: ml_collections.ConfigDict, apply, params, x, y) -> Results:
  """Every number of the study for the trained model's `apply` and `params` on (x, y)."""
  key = jax.random.key(c.attack_seed)
  masked = masked_model(apply)
  models = planted_params(params, c.saturation_scale)
  eps = c.main_eps / 255
  honest = models['honest']
  start = time.time()
  sweep = curves(c, masked, honest, x, y, jax.random.fold_in(key, 3))
  logging.info('robustness: ε sweep of %d attacks in %.0f s', len(attack_names(c)),
               time.time() - start)
  start = time.time()
  reports = {name: checks.check_evaluation(
      masked, p, x, y, eps=eps, key=jax.random.fold_in(key, 1), steps=c.pgd_steps,
      square_queries=c.square_queries) for name, p in models.items()}
  planted = {name: run_ensemble(masked, models[name], x, y, eps=eps, norm='linf',
                                key=jax.random.fold_in(key, 2), c=c).accuracy
             for name in ('honest', *PLANTED)}
  adaptive = adaptive_attacks(c, apply, models, x, y, jax.random.fold_in(key, 4))
  logging.info('robustness: checks and planted models in %.0f s', time.time() - start)
  return Results(accuracy(masked, honest, x, y), sweep, reports, planted, adaptive)


def run(c: ml_collections.ConfigDict, workdir: str) -> markdown.Section:
  """Trains the classifier (resuming), attacks it, checks the evaluation; returns the section."""
  validate_config(c)
  built = classifier.build(c)
  _, test_data, model, _ = built
  check_against_data(c, len(test_data), test_data.num_classes)
  state = classifier.fit(c, built, c.classifier_workdir or os.path.join(workdir, 'model'))
  os.makedirs(workdir, exist_ok=True)   # the figures' folder, also when the model lives elsewhere
  batch = test_data.get(np.arange(c.num_eval))
  x, y = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  results = measure(c, model.apply, state.variables, x, y)
  return report.section(c, results, workdir)
