"""Sanity checks of a robustness evaluation: one call, a pass / warn / fail report.

Automates the checklists of Carlini et al. 2019 ("On evaluating adversarial robustness",
§5–6), Tramèr et al. 2020 ("On adaptive attacks to adversarial example defenses") and
AutoAttack's flags (Croce & Hein 2020) for PGD with a random start (`pgd.pgd`) at radius ε:

  eps_monotone       robust accuracy does not rise with ε (0.25ε, 0.5ε, ε, 2ε by default);
  unbounded_eps      at an unbounded radius (ℓ∞ 1, ℓ2 √d) the attack fools (almost) every
                     example, else something blocks it (a bug, masked gradients);
  more_steps         doubling the steps ...
  more_restarts      ... or the restarts changes robust accuracy by at most the noise:
                     else the attack had not converged;
  beaten_by_square   per example, no other attack breaks what PGD could not: Square
  beaten_by_transfer (score-based), transfer from a surrogate model (optional), random
  beaten_by_noise    noise of norm ε (ℓ∞: ε·random signs; the best of 4 draws);
  gradients          the share of examples whose input gradient of the attack loss is zero,
                     vanishing (ℓ2 norm < `Thresholds.vanishing`) or non-finite;
  stochastic         whether two calls (two model keys, or the same call twice for an
                     `apply` without `key`) give different logits: then the attack needs
                     EOT (`eot` > 1: else 'warn') and the evaluation several draws
                     (`eval_draws` = 1: 'fail');
  saturation         the share of inputs whose largest softmax probability is exactly 1 in
                     float32, where the CE gradient vanishes: 'fail' with the CE loss
                     (use 'margin' or 'dlr'), at most 'warn' with those.

Noise and thresholds. An evaluation on B examples resolves accuracy to 1/B, so a change
counts as noise up to `max(Thresholds.tolerance, 1/B)` (one point, or one example of a small
batch): eps_monotone fails when accuracy rises by more; more_steps/more_restarts warn above it
and fail above twice it; a beaten_by_* check warns when the other attack breaks examples
within the noise and fails above it. unbounded_eps fails below `Thresholds.unbounded_success`
(0.99: every example of a batch under 100). gradients and saturation warn when any example is
affected and fail when more than `Thresholds.share` (0.1) are.

Robust accuracy is over `eval_draws` model draws, an example counting as robust only when
every draw classifies it correctly (`evaluate.robust_accuracy`'s `worst`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from lib import contract, validate
from lib.attacks import _args, _check_runs, losses
from lib.attacks._check_runs import Setup

Array = jax.Array
VERDICTS = ('pass', 'warn', 'fail')


class Check(NamedTuple):
  """One check's outcome.

  Attributes:
    name: the check (see the module docstring).
    verdict: 'pass', 'warn' or 'fail'.
    value: the measured number(s).
    explanation: one line saying what was measured and what it means.
  """
  name: str
  verdict: str
  value: tuple[float, ...]
  explanation: str


class Report(NamedTuple):
  """The checks of one evaluation, with its clean and robust accuracy (at ε).

  Attributes:
    checks: the `Check`s, in the module docstring's order (absent ones skipped).
    clean_accuracy: accuracy on the clean inputs (under every evaluation draw).
    robust_accuracy: accuracy under the white-box attack at ε.
  """
  checks: tuple[Check, ...]
  clean_accuracy: float
  robust_accuracy: float

  @property
  def verdict(self) -> str:
    """The worst verdict of all checks."""
    return max((c.verdict for c in self.checks), key=VERDICTS.index, default='pass')

  def verdicts(self) -> dict[str, str]:
    """Check name -> verdict."""
    return {c.name: c.verdict for c in self.checks}

  def to_rows(self) -> list[list[str]]:
    """[check, verdict, value, explanation] per check, as strings (a table's rows)."""
    return [[c.name, c.verdict, ', '.join(f'{v:.4g}' for v in c.value), c.explanation]
            for c in self.checks]

  def format(self) -> str:
    """The report as a markdown table, headed by clean and robust accuracy."""
    lines = [f'clean accuracy {self.clean_accuracy:.3f}, robust accuracy '
             f'{self.robust_accuracy:.3f}; overall: {self.verdict}', '',
             '| check | verdict | value | explanation |', '|---|---|---|---|']
    lines += ['| ' + ' | '.join(cell.replace('|', r'\|') for cell in row) + ' |'
              for row in self.to_rows()]
    return '\n'.join(lines)


class Thresholds(NamedTuple):
  """Where the checks draw their lines (see the module docstring).

  Attributes:
    tolerance: robust-accuracy change counted as noise (at least 1/B is used).
    unbounded_success: attack success needed at an unbounded radius.
    share: share of examples with bad gradients / saturated softmax above which a check fails.
    vanishing: input-gradient ℓ2 norm below which a gradient counts as vanishing.
  """
  tolerance: float = 0.01
  unbounded_success: float = 0.99
  share: float = 0.1
  vanishing: float = 1e-10


def check_evaluation(apply: contract.Apply, params: Any, x: Array, y: Array, *,
                     eps: float, key: Array, norm: str = 'linf', steps: int = 10,
                     restarts: int = 1, loss: str = 'ce', eot: int = 1, eval_draws: int = 1,
                     eps_scales: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
                     square_queries: int | None = 100,
                     surrogate: tuple[contract.Apply, Any] | None = None,
                     thresholds: Thresholds = Thresholds()) -> Report:
  """Runs every check of the module docstring on a PGD evaluation at radius `eps`.

  Args:
    apply, params: the model (`apply(params, x[, key=k])` -> logits or `Outputs`).
    x: [B, ...] clean inputs in [0, 1] (images [B, H, W, C] when Square runs).
    y: [B] int labels.
    eps: the threat model's radius (ℓ∞ at most 1).
    key: typed PRNG key (random starts, Square, noise; the model's draws).
    norm: 'linf' or 'l2'.
    steps, restarts, loss, eot: the white-box PGD under test (`pgd.pgd`'s arguments).
    eval_draws: model draws of the evaluation (`evaluate.robust_accuracy`'s `draws`; > 1
      needs an `apply` with a `key` keyword).
    eps_scales: multiples of `eps` for eps_monotone (positive; ℓ∞ radii capped at 1).
    square_queries: Square's query budget, or None to skip beaten_by_square.
    surrogate: `(apply, params)` of a model to transfer PGD from, or None.
    thresholds: `Thresholds`.

  Returns:
    A `Report`.

  Raises:
    ValueError: any bad argument (named in the message).
  """
  _check_arguments(apply, x, y, eps=eps, key=key, norm=norm, loss=loss, eval_draws=eval_draws,
                   eps_scales=eps_scales, square_queries=square_queries, surrogate=surrogate,
                   thresholds=thresholds)
  model_key = jax.random.fold_in(key, 1) if _check_runs.takes_key(apply) else None
  setup = Setup(apply, params, x, y, norm, loss, eot, eval_draws, key, model_key)
  noise = max(thresholds.tolerance, 1 / x.shape[0])
  base = _check_runs.robust(setup, _check_runs.white_box(setup, eps, steps=steps,
                                                         restarts=restarts))
  robust_accuracy = float(base.mean())
  checks = [*_eps_checks(setup, eps, eps_scales, steps, restarts, noise, thresholds),
            *_convergence_checks(setup, eps, steps, restarts, robust_accuracy, noise),
            *_beaten_checks(setup, eps, base, square_queries, surrogate, steps, noise),
            _gradient_check(setup, thresholds), _stochastic_check(setup),
            _saturation_check(setup, thresholds)]
  return Report(tuple(checks), float(_check_runs.robust(setup, x).mean()), robust_accuracy)


def _check_arguments(apply, x, y, *, eps, key, norm, loss, eval_draws, eps_scales, square_queries,
                     surrogate, thresholds) -> None:
  """Validates what `pgd`/`robust_accuracy` do not see before the first attack runs."""
  _args.check_norm(norm)
  _args.check_eps(eps, norm)
  validate.check_positive(eps, 'eps')
  validate.check_key(key)
  validate.check_choice(loss, sorted(losses.LOSSES), 'loss')
  _args.check_count(eval_draws, 'eval_draws')
  if eval_draws > 1 and not _check_runs.takes_key(apply):
    raise ValueError(f'eval_draws={eval_draws} evaluates several model draws, but apply takes '
                     'no key keyword (a deterministic model needs eval_draws=1).')
  if isinstance(eps_scales, (str, bytes)) or not isinstance(eps_scales, Sequence) or not eps_scales:
    raise ValueError(f'eps_scales must be a non-empty sequence of positive numbers; got '
                     f'{eps_scales!r}.')
  for i, scale in enumerate(eps_scales):
    validate.check_positive(scale, f'eps_scales[{i}]')
  if square_queries is not None:
    _args.check_count(square_queries, 'square_queries')
  if surrogate is not None and (not isinstance(surrogate, tuple) or len(surrogate) != 2
                                or not callable(surrogate[0])):
    raise ValueError(f'surrogate must be a pair (apply, params) with a callable apply; got '
                     f'{type(surrogate).__name__}.')
  _check_thresholds(thresholds)
  _args.check_batch(x, y)


def _check_thresholds(thresholds: Any) -> None:
  if not isinstance(thresholds, Thresholds):
    raise ValueError(f'thresholds must be a Thresholds; got {type(thresholds).__name__}.')
  for name in ('tolerance', 'unbounded_success', 'share'):
    validate.check_number(getattr(thresholds, name), f'thresholds.{name}', low=0.0, high=1.0)
  validate.check_positive(thresholds.vanishing, 'thresholds.vanishing')


def _graded(value: float, warn_above: float, fail_above: float) -> str:
  """'pass' up to `warn_above`, 'warn' up to `fail_above`, 'fail' beyond."""
  return 'pass' if value <= warn_above else 'warn' if value <= fail_above else 'fail'


def _eps_checks(setup: Setup, eps: float, eps_scales: Sequence[float], steps: int,
                restarts: int, noise: float, thresholds: Thresholds) -> list[Check]:
  """eps_monotone and unbounded_eps."""
  cap = _check_runs.unbounded_eps(setup.x, setup.norm)
  radii = sorted({min(float(s) * eps, cap) for s in eps_scales})
  accuracy = [_accuracy(setup, r, steps, restarts) for r in radii]
  rise = max([b - a for a, b in zip(accuracy, accuracy[1:])], default=0.0)
  monotone = Check('eps_monotone', 'fail' if rise > noise else 'pass', tuple(accuracy),
                   f'robust accuracy at ε = {", ".join(f"{r:.3g}" for r in radii)}; largest '
                   f'rise {rise:.3f} (noise {noise:.3f})')
  success = 1 - _accuracy(setup, cap, steps, restarts)
  unbounded = Check('unbounded_eps', 'pass' if success >= thresholds.unbounded_success
                    else 'fail', (success,),
                    f'attack success at ε = {cap:.4g} (unbounded); needs ≥ '
                    f'{thresholds.unbounded_success:g}, else the attack is blocked')
  return [monotone, unbounded]


def _accuracy(setup: Setup, eps: float, steps: int, restarts: int) -> float:
  x_adv = _check_runs.white_box(setup, eps, steps=steps, restarts=restarts)
  return float(_check_runs.robust(setup, x_adv).mean())


def _convergence_checks(setup: Setup, eps: float, steps: int, restarts: int, base: float,
                        noise: float) -> list[Check]:
  """more_steps and more_restarts: the change of robust accuracy when doubling either."""
  checks = []
  for name, more_steps, more_restarts in (('more_steps', 2 * steps, restarts),
                                          ('more_restarts', steps, 2 * restarts)):
    change = abs(_accuracy(setup, eps, more_steps, more_restarts) - base)
    checks.append(Check(name, _graded(change, noise, 2 * noise), (change,),
                        f'change of robust accuracy with steps={more_steps}, restarts='
                        f'{more_restarts}; the attack has not converged above {noise:.3f}'))
  return checks


def _beaten_checks(setup: Setup, eps: float, base: np.ndarray, square_queries: int | None,
                   surrogate: tuple[contract.Apply, Any] | None, steps: int,
                   noise: float) -> list[Check]:
  """beaten_by_*: the share of examples PGD left robust that another attack breaks."""
  others = []
  if square_queries is not None:
    others.append(('square', f'Square with {square_queries} queries',
                   _check_runs.robust(setup, _check_runs.square_points(setup, eps,
                                                                       square_queries))))
  if surrogate is not None:
    others.append(('transfer', 'PGD transferred from the surrogate',
                   _check_runs.robust(setup, _check_runs.transfer_points(setup, surrogate, eps,
                                                                         steps=steps))))
  others.append(('noise', f'random noise of norm ε ({_check_runs.NOISE_DRAWS} draws)',
                 _check_runs.noise_robust(setup, eps)))
  checks = []
  for name, what, robust in others:
    share = float((base & ~robust).mean())
    verdict = 'pass' if share == 0 else 'warn' if share <= noise else 'fail'
    checks.append(Check(f'beaten_by_{name}', verdict, (share,),
                        f'share of examples robust to PGD but broken by {what}'))
  return checks


def _gradient_check(setup: Setup, thresholds: Thresholds) -> Check:
  """gradients: zero, vanishing and non-finite input gradients at the clean inputs."""
  norms, finite = _check_runs.gradient_norms(setup)
  zero = finite & (norms == 0)
  vanishing = finite & (norms > 0) & (norms < thresholds.vanishing)
  shares = (float(zero.mean()), float(vanishing.mean()), float((~finite).mean()))
  return Check('gradients', _graded(sum(shares), 0.0, thresholds.share), shares,
               f'shares of zero, vanishing (< {thresholds.vanishing:g}) and non-finite '
               f'{setup.loss} gradients: masked gradients mislead gradient attacks')


def _stochastic_check(setup: Setup) -> Check:
  """stochastic: outputs that change across calls need EOT and a multi-draw evaluation."""
  change = _check_runs.output_change(setup)
  if change == 0:
    verdict, advice = 'pass', 'deterministic'
  elif setup.draws == 1:
    verdict, advice = 'fail', 'stochastic but evaluated with one draw: set eval_draws > 1'
  elif setup.eot == 1:
    verdict, advice = 'warn', 'stochastic but attacked without EOT: set eot > 1'
  else:
    verdict, advice = 'pass', f'stochastic; EOT {setup.eot}, {setup.draws} evaluation draws'
  return Check('stochastic', verdict, (change,), f'largest logit change across calls: {advice}')


def _saturation_check(setup: Setup, thresholds: Thresholds) -> Check:
  """saturation: softmax probabilities of exactly 1 in float32 (vanishing CE gradients)."""
  share = float((_check_runs.top_probability(setup) == 1.0).mean())
  verdict = _graded(share, 0.0, thresholds.share if setup.loss == 'ce' else 1.0)
  return Check('saturation', verdict, (share,),
               'share of inputs with a softmax probability of exactly 1: CE gradients vanish '
               'there; attack with the margin or DLR loss')
