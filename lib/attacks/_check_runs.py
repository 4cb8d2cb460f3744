"""The measurements behind `checks.check_evaluation`: attack runs and per-example outcomes.

A `Setup` holds the evaluation under test (model, batch, threat model, attack options,
keys); every function here measures one thing on it with the library's attacks
(`pgd`, `square`) and `evaluate.robust_accuracy`, and returns host numbers (numpy).
An example counts as robust when every evaluation draw classifies it correctly.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lib import contract
from lib.attacks import evaluate, objective, pgd, projections, square

Array = jax.Array
# Random perturbations of norm ε tried per example by the noise baseline.
NOISE_DRAWS = 4


class Setup(NamedTuple):
  """The evaluation under test.

  Attributes:
    apply, params: the model.
    x: [B, ...] clean inputs in [0, 1].
    y: [B] labels.
    norm: 'linf' or 'l2'.
    loss: the white-box attack's loss name.
    eot: model draws per attack gradient.
    draws: model draws per evaluation (`eval_draws`).
    key: the attacks' key (random starts; the model's key inside `pgd`).
    model_key: the evaluation's model key, or None for an `apply` without a `key` keyword.
  """
  apply: contract.Apply
  params: Any
  x: Array
  y: Array
  norm: str
  loss: str
  eot: int
  draws: int
  key: Array
  model_key: Array | None


def takes_key(apply: contract.Apply) -> bool:
  """Whether `apply` accepts a `key` keyword (the model may be stochastic)."""
  accepted = contract.accepted_keywords(apply)
  return accepted is None or 'key' in accepted


def robust(setup: Setup, x_adv: Array) -> np.ndarray:
  """[B] bool: `x_adv` is classified correctly under every evaluation draw."""
  result = evaluate.robust_accuracy(setup.apply, setup.params, x_adv, setup.y,
                                    key=setup.model_key, draws=setup.draws)
  return np.asarray(result.correct).all(axis=0)


def white_box(setup: Setup, eps: float, *, steps: int, restarts: int) -> Array:
  """PGD with a random start (the white-box attack under test) at radius `eps`."""
  return pgd.pgd(setup.apply, setup.params, setup.x, setup.y, eps=eps, norm=setup.norm,
                 steps=steps, random_start=True, restarts=restarts, loss=setup.loss,
                 key=setup.key, eot=setup.eot)


def unbounded_eps(x: Array, norm: str) -> float:
  """A radius that reaches every point of [0, 1]^d: 1 in ℓ∞, √d in ℓ2."""
  return 1.0 if norm == 'linf' else float(np.sqrt(np.prod(x.shape[1:])))


def square_points(setup: Setup, eps: float, n_queries: int) -> Array:
  """Square attack (margin loss) under the evaluation's model draw (fixed randomness)."""
  model_key = None if setup.model_key is None else _first_draw(setup.model_key, setup.draws)
  x_adv, _ = square.square(setup.apply, setup.params, setup.x, setup.y, eps=eps,
                           norm=setup.norm, n_queries=n_queries,
                           key=jax.random.fold_in(setup.key, 2), model_key=model_key)
  return x_adv


def _first_draw(key: Array, draws: int) -> Array:
  """The evaluation's first model key (`objective.over_draws`' convention)."""
  return key if draws == 1 else jax.random.split(key, draws)[0]


def transfer_points(setup: Setup, surrogate: tuple[contract.Apply, Any], eps: float, *,
                    steps: int) -> Array:
  """PGD run on the surrogate model, to be evaluated on the model under test."""
  apply, params = surrogate
  return pgd.pgd(apply, params, setup.x, setup.y, eps=eps, norm=setup.norm, steps=steps,
                 random_start=True, loss=setup.loss, key=jax.random.fold_in(setup.key, 3))


@functools.partial(jax.jit, static_argnames=('norm',))
def noise_points(key: Array, x: Array, eps: float | Array, norm: str) -> Array:
  """x plus noise of norm ε (ℓ∞: ε times random signs; ℓ2: an ε-long Gaussian direction)."""
  eps = jnp.asarray(eps, x.dtype)
  if norm == 'linf':
    delta = eps * jax.random.rademacher(key, x.shape, x.dtype)
  else:
    g = jax.random.normal(key, x.shape, x.dtype)
    scale = eps / jnp.maximum(projections.per_example_norm(g, 'l2'), 1e-12)
    delta = g * scale.reshape((-1,) + (1,) * (x.ndim - 1))
  return projections.clip_to_box(x, delta)


def noise_robust(setup: Setup, eps: float) -> np.ndarray:
  """[B] bool: none of `NOISE_DRAWS` random perturbations of norm ε fools the model."""
  keys = jax.random.split(jax.random.fold_in(setup.key, 4), NOISE_DRAWS)
  return np.all([robust(setup, noise_points(k, setup.x, eps, setup.norm)) for k in keys], 0)


@functools.partial(jax.jit, static_argnums=0, static_argnames=('loss',))
def _loss_grad(apply, params, x, y, key, *, loss):
  return objective.loss_and_grad(apply, params, x, y, loss=objective.make_loss(loss),
                                 key=key)[2]


def gradient_norms(setup: Setup) -> tuple[np.ndarray, np.ndarray]:
  """([B] ℓ2 norm, [B] all-finite) of the attack loss's input gradient at the clean inputs."""
  g = _loss_grad(setup.apply, setup.params, setup.x, setup.y, _first_key(setup),
                 loss=setup.loss)
  flat = np.asarray(g, np.float64).reshape(g.shape[0], -1)
  finite = np.isfinite(flat).all(axis=1)
  return np.linalg.norm(np.where(np.isfinite(flat), flat, 0.0), axis=1), finite


def _first_key(setup: Setup) -> Array | None:
  """The model key of the evaluation's first draw (None for an `apply` without `key`)."""
  return None if setup.model_key is None else _first_draw(setup.model_key, setup.draws)


_logits = jax.jit(objective.logits, static_argnums=0)


def top_probability(setup: Setup) -> np.ndarray:
  """[B] largest softmax probability (float32) at the clean inputs."""
  z = _logits(setup.apply, setup.params, setup.x, _first_key(setup))
  return np.asarray(jax.nn.softmax(z.astype(jnp.float32), axis=-1).max(axis=-1))


def output_change(setup: Setup) -> float:
  """Largest |Δ logit| between two calls (two model keys when `apply` takes one)."""
  if setup.model_key is None:
    first = second = None
  else:
    first, second = jax.random.split(jax.random.fold_in(setup.key, 5))
  a = _logits(setup.apply, setup.params, setup.x, first)
  b = _logits(setup.apply, setup.params, setup.x, second)
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
