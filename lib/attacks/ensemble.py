"""An attack ensemble in the spirit of AutoAttack: attacks in sequence, per-example worst case.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", §5. Each attack runs; an example it fools that every earlier attack
left correct takes that attack's adversarial example; the result is robust only where every
attack failed. Versions:

* 'standard' (deterministic models): APGD-CE, APGD-T (targeted DLR over the top
  `n_target_classes` other classes), Square (`n_queries`). AutoAttack's FAB-T is not
  included: on the models AutoAttack reports it adds almost nothing after APGD-T.
* 'rand' (randomised defences, the model's randomness is its `key`): APGD-CE and APGD-DLR
  with EOT over `eot` model keys per gradient (20 in AutoAttack), and an evaluation over
  `draws` model keys in which an example counts as robust only if every draw classifies
  it correctly (one draw overstates the robustness of a randomised defence).

Every attack runs on the whole batch (one compiled program per attack, whatever the
number of examples still robust; AutoAttack and torchattacks shrink the batch instead,
which saves compute but compiles per size); the worst case is taken per example after each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lib import contract, validate
from lib.attacks import _args, apgd, evaluate, square

Array = jax.Array
VERSIONS = ('standard', 'rand')


class EnsembleResult(NamedTuple):
  """What `ensemble` returns.

  Attributes:
    x_adv: [B, ...] for each example the adversarial example of the first attack that fooled
      it, else the clean input.
    robust: [B] bool, True where no attack fooled the example (on every evaluation draw).
    accuracy: ordered name -> robust accuracy after that stage ('clean' first, then each
      attack cumulatively), host floats.
  """
  x_adv: Array
  robust: Array
  accuracy: dict[str, float]


def _attacks(version: str, *, eps, norm: str, steps: int, n_target_classes: int,
             n_queries: int, eot: int) -> list[tuple[str, Callable[..., Array]]]:
  """(name, attack(apply, params, x, y, key) -> x_adv) for `version`, in order."""
  if version == 'standard':
    return [
        ('APGD-CE', lambda f, p, x, y, k: apgd.apgd(f, p, x, y, eps=eps, norm=norm, steps=steps,
                                                    loss='ce', key=k)),
        ('APGD-T', lambda f, p, x, y, k: apgd.apgd_targeted(
            f, p, x, y, eps=eps, norm=norm, steps=steps, n_target_classes=n_target_classes,
            key=k)),
        ('Square', lambda f, p, x, y, k: square.square(f, p, x, y, eps=eps, norm=norm,
                                                       n_queries=n_queries, key=k)[0]),
    ]
  return [
      (f'APGD-CE (EOT {eot})', lambda f, p, x, y, k: apgd.apgd(
          f, p, x, y, eps=eps, norm=norm, steps=steps, loss='ce', key=k, eot=eot)),
      (f'APGD-DLR (EOT {eot})', lambda f, p, x, y, k: apgd.apgd(
          f, p, x, y, eps=eps, norm=norm, steps=steps, loss='dlr', key=k, eot=eot)),
  ]


def ensemble(apply: contract.Apply, params: Any, x: Array, y: Array, *, eps: float,
             key: Array, norm: str = 'linf', version: str = 'standard', steps: int = 100,
             n_target_classes: int = 9, n_queries: int = 5000, eot: int = 20,
             draws: int = 10) -> EnsembleResult:
  """Runs the ensemble of `version` and keeps each example's worst case.

  Args:
    apply, params: the model; for 'rand', `apply` takes `key=` (its randomness).
    x: [B, H, W, C] images in [0, 1].
    y: [B] int labels.
    eps: radius ε (ℓ∞ at most 1).
    key: typed PRNG key; attack i uses `fold_in(key, i)`, the evaluation draws another.
    norm: 'linf' or 'l2'.
    version: 'standard' or 'rand' (see the module docstring).
    steps: APGD iterations (100 in AutoAttack).
    n_target_classes: APGD-T target classes (9 in AutoAttack; fewer than the class count).
    n_queries: Square's query budget (5000 in AutoAttack).
    eot: 'rand': model keys averaged per gradient (20 in AutoAttack).
    draws: 'rand': evaluation draws per example (worst case over them).

  Returns:
    `EnsembleResult(x_adv, robust, accuracy)`.

  Raises:
    ValueError: an unknown version, bad counts, ε or inputs (each attack checks its own).
  """
  validate.check_choice(version, VERSIONS, 'version')
  _args.check_norm(norm)
  _args.check_eps(eps, norm)
  _args.check_key_if_given(key, needed=True, why='the ensemble draws random starts and searches')
  for name, value in (('steps', steps), ('n_target_classes', n_target_classes),
                      ('n_queries', n_queries), ('eot', eot), ('draws', draws)):
    _args.check_count(value, name)
  _args.check_batch(x, y)
  stochastic = version == 'rand'
  if stochastic:
    contract.require_keywords(apply, ('key',), needed_by="ensemble(version='rand')")
  eval_key = jax.random.fold_in(key, len(VERSIONS) + 100) if stochastic else None
  eval_draws = draws if stochastic else 1

  def correct(images: Array) -> Array:
    """[B] bool: classified correctly on every evaluation draw."""
    result = evaluate.robust_accuracy(apply, params, images, y, key=eval_key, draws=eval_draws)
    return jnp.all(result.correct, axis=0)

  robust = correct(x)
  x_adv = jnp.asarray(x)
  accuracy = {'clean': float(np.mean(robust))}
  attacks = _attacks(version, eps=eps, norm=norm, steps=steps,
                     n_target_classes=n_target_classes, n_queries=n_queries, eot=eot)
  for i, (name, attack) in enumerate(attacks):
    candidate = attack(apply, params, x, y, jax.random.fold_in(key, i))
    fooled = robust & ~correct(candidate)
    x_adv = jnp.where(fooled.reshape(-1, *([1] * (x.ndim - 1))), candidate, x_adv)
    robust = robust & ~fooled
    accuracy[name] = float(np.mean(robust))
  return EnsembleResult(x_adv, robust, accuracy)
