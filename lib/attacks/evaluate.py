"""Robust accuracy, for deterministic models and over several draws of a stochastic one.

A randomised defence (a diffusion purifier, random input noise) classifies the same input
differently from one model key to the next. One draw per input overstates its robustness
(an attack that fools it half of the time counts as failed half of the time), which is why
AutoAttack's `rand` evaluation of DiffPure-like defences misleads (PAPERS.md §2; Carlini et
al. 2019, "On evaluating adversarial robustness"). `robust_accuracy` therefore
classifies every input under `draws` model keys and reports

  mean    the fraction of (input, draw) pairs classified correctly (the expected accuracy
          of one call), and
  worst   the fraction of inputs classified correctly under every draw (an input counts as
          robust only if no draw is fooled).

Keys follow `objective.loss_and_grad`'s EOT convention: `draws=1` calls the model with `key`
itself, `draws=n` with `jax.random.split(key, n)`. So "fixed randomness" (Liu & Wei 2025:
the attack and the evaluation see the same noise) is `pgd(..., key=k, randomness='fixed',
eot=n)` followed by `robust_accuracy(..., key=k, draws=n)`; "fresh randomness" evaluates
with a key the attack never used.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lib import contract, validate
from lib.attacks import _args, objective

Array = jax.Array


class RobustAccuracy(NamedTuple):
  """Accuracy on (adversarial) inputs over one or several model draws.

  Attributes:
    mean: scalar, fraction of (input, draw) pairs classified correctly.
    worst: scalar, fraction of inputs classified correctly under every draw (equals `mean`
      for one draw).
    correct: [draws, B] bool, whether draw d classifies input b correctly.
  """
  mean: Array
  worst: Array
  correct: Array


def succeeded(logits: Array, y: Array, target: Array | None = None) -> Array:
  """[B] bool: the attack's goal is met (prediction ≠ y, or = target when targeted).

  Args:
    logits: [B, K].
    y: [B] true labels.
    target: [B] target classes, or None (untargeted).
  """
  pred = jnp.argmax(logits, axis=-1)
  return pred != y if target is None else pred == target


@functools.partial(jax.jit, static_argnames=('apply', 'draws'))
def _robust_accuracy(apply: contract.Apply, params: Any, x: Array, y: Array, key: Array | None, *,
             draws: int) -> RobustAccuracy:
  def one(k):
    return ~succeeded(objective.logits(apply, params, x, k), y)

  correct = objective.over_draws(one, key, draws)
  return RobustAccuracy(jnp.mean(correct, dtype=jnp.float32),
                        jnp.mean(jnp.all(correct, axis=0), dtype=jnp.float32), correct)


def robust_accuracy(apply: contract.Apply, params: Any, x_adv: Array, y: Array, *,
                    key: Array | None = None, draws: int = 1) -> RobustAccuracy:
  """Accuracy of `apply` on `x_adv` over `draws` model keys (see the module docstring).

  Pure and jit-compiled per (apply, draws); it vmaps over ε (a batch of `x_adv`), keys and
  params, and returns arrays (no host synchronisation).

  Args:
    apply: `apply(params, x, key=...)` returning logits or `Outputs`.
    params: the model's parameters.
    x_adv: [B, ...] inputs in [0, 1].
    y: [B] int labels.
    key: the model's typed PRNG key (None: a deterministic model, called without a key).
    draws: number of model keys (≥ 1; > 1 needs `key`).

  Returns:
    `RobustAccuracy(mean, worst, correct [draws, B])`.

  Raises:
    ValueError: bad inputs or labels, draws < 1, draws > 1 without a key, a key for an
      `apply` that takes none.
  """
  _args.check_count(draws, 'draws')
  _args.check_key_if_given(key, needed=draws > 1, why=f'draws={draws} evaluates {draws} model '
                           'draws split from it')
  if key is not None:
    contract.require_keywords(apply, ('key',), needed_by='robust_accuracy given key')
  _args.check_batch(x_adv, y, name_x='x_adv')
  validate.check_labels(y, objective.num_classes(apply, params, x_adv, key), 'y')
  return _robust_accuracy(apply, params, x_adv, y, key, draws=draws)
