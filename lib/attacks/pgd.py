"""FGSM and PGD in ℓ∞ and ℓ2, with restarts, targets, EOT and stochastic models.

PGD (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks",
Eq. 2) ascends the attack loss from x⁰ = x (or a random point of the ε-ball):

    x^{t+1} = clip_[0,1](x + Π_ε(x^t + α · normalize(∇_x L(x^t)) − x))

with normalize = sign in ℓ∞ and ∇/‖∇‖₂ in ℓ2; FGSM (Goodfellow et al. 2015, "Explaining
and harnessing adversarial examples") is one step of size ε. The arithmetic is that of
torchattacks' `FGSM`, `PGD` and `PGDL2` (see `projections`), including their random starts
(ℓ∞: uniform in the ε-cube; ℓ2: a Gaussian direction scaled to a radius r·ε, r ~ U(0, 1)),
so without a random start the adversarial examples agree to float32 rounding. Returned is
the last iterate of each restart, as torchattacks does.

Restarts keep each example's worst case, AutoAttack-style: the first restart whose
example succeeds (misclassified; classified as `target` when targeted) is kept; an example
no restart breaks keeps the restart with the highest final loss. For a stochastic model
success and loss are scored (EOT mean of `eot` draws) with `key` under fixed randomness and
with a draw none of the steps used under fresh randomness.

Randomness. `key` feeds the random start (restart r uses `fold_in(key, r)`) and, when
`apply` takes a `key` keyword, the model (a randomised defence), averaged over `eot` draws
per step (EOT; `objective.loss_and_grad`):

  randomness='fresh'  step i of restart r calls the model with a new key (`lib.iterate.run`'s
                      `fold_in`), the attack of Athalye et al. 2018 against an unknown draw;
  randomness='fixed'  every step calls the model with `key` itself (split into `eot` keys),
                      so that `evaluate.robust_accuracy(..., key=key, draws=eot)` evaluates
                      the very draws the attack saw (Liu & Wei 2025's fixed randomness).

Both are the same `make_pgd` step, called with the step's key or with `key` every time;
which of the two keys a step takes is a traced choice, so fresh and fixed randomness run on
one compiled program. Everything runs as one jitted program, cached per (apply, static
options): repeated calls compile once, and ε, the step size, keys, params and inputs may be
traced, so the attack vmaps over ε, keys and models.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lib import contract, iterate, validate
from lib.attacks import _args, evaluate, losses, objective, projections

Array = jax.Array
Loss = str | Callable[..., Array]
RANDOMNESS = ('fresh', 'fixed')
# Madry et al.'s step size for PGD: 2.5 ε / steps (reaches the boundary from any start).
STEP_SIZE_FACTOR = 2.5


class State(NamedTuple):
  """PGD's state: the current adversarial examples x^t [B, ...] in the threat model."""
  x_adv: Array


def random_start(key: Array, x: Array, eps: float | Array, norm: str) -> Array:
  """A random point of the threat model around `x`, as torchattacks' PGD / PGDL2.

  ℓ∞: x + U(−ε, ε)^d; ℓ2: x + r·ε·g/‖g‖₂ with g ~ N(0, I), r ~ U(0, 1) per example; then
  clipped to [0, 1].

  Args:
    key: typed PRNG key.
    x: [B, ...] clean inputs in [0, 1].
    eps: radius (number or scalar array).
    norm: 'linf' or 'l2'.

  Returns:
    [B, ...] starting points.
  """
  eps = jnp.asarray(eps, x.dtype)
  if _args.check_norm(norm) == 'linf':
    delta = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  else:
    direction_key, radius_key = jax.random.split(key)
    g = jax.random.normal(direction_key, x.shape, x.dtype)
    r = jax.random.uniform(radius_key, (x.shape[0],), x.dtype)
    scale = r / projections.per_example_norm(g, 'l2') * eps
    delta = g * scale.reshape((-1,) + (1,) * (x.ndim - 1))
  return projections.clip_to_box(x, delta)


def make_pgd(apply: contract.Apply, params: Any, x: Array, y: Array, *, eps: float | Array,
             norm: str, step_size: float | Array, loss: Callable[..., Array],
             target: Array | None = None, stochastic: bool = False,
             eot: int = 1) -> iterate.Iterative:
  """PGD as an `(init, step)` pair (lib.iterate's convention).

  `init(key=None) -> State` starts at x (no key) or at `random_start(key, ...)`.
  `step(state, key) -> (State, loss [B])` takes one ascent step and projects; `key` is the
  model's key of this step (ignored unless `stochastic`), `loss` the loss before the step.
  Run it with `iterate.run(step, state, steps, key=k)` for fresh randomness, or with
  `lambda s, _: step(s, k)` in place of `step` for fixed randomness.

  Args:
    apply, params: the model.
    x: [B, ...] clean inputs in [0, 1].
    y: [B] labels.
    eps: radius of the threat model.
    norm: 'linf' or 'l2'.
    step_size: α, in the units of `eps`.
    loss: `loss(logits, y, target) -> [B]`, maximised.
    target: [B] target classes (targeted attack) or None.
    stochastic: whether `apply` is called with the step's key.
    eot: model draws averaged per step (needs `stochastic`).
  """
  direction_scale = jnp.asarray(step_size, x.dtype)

  def init(key: Array | None = None) -> State:
    return State(x if key is None else random_start(key, x, eps, norm))

  def step(state: State, key: Array) -> tuple[State, Array]:
    value, _, grad = objective.loss_and_grad(apply, params, state.x_adv, y, loss=loss,
                                             target=target, key=key if stochastic else None,
                                             eot=eot)
    moved = state.x_adv + direction_scale * projections.normalize(grad, norm)
    return State(projections.project_to_threat(x, moved, eps, norm)), value

  return iterate.Iterative(init, step)


def _final_score(apply, params, x_adv, y, *, loss, target, key, eot):
  """Per-example (success [B], loss [B]) of one restart's result (EOT mean over draws)."""
  def one(k):
    z = objective.logits(apply, params, x_adv, k)
    return loss(z, y, target), z

  value, z = jax.tree.map(lambda a: a.mean(0), objective.over_draws(one, key, eot))
  return evaluate.succeeded(z, y, target), value


def _either(fixed: Array, key: Array, other: Array) -> Array:
  """`key` where the traced bool `fixed` holds, else `other` (typed keys, one program)."""
  data = jnp.where(fixed, jax.random.key_data(key), jax.random.key_data(other))
  return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


@functools.partial(jax.jit, static_argnames=('apply', 'norm', 'steps', 'use_random_start',
                                             'restarts', 'loss', 'stochastic', 'eot'))
def _pgd(apply, params, x, y, eps, step_size, target, key, fixed, *, norm, steps,
         use_random_start, restarts, loss, stochastic, eot):
  loss_fn = objective.make_loss(loss)
  eps = jnp.asarray(eps, x.dtype)
  alpha = STEP_SIZE_FACTOR * eps / steps if step_size is None else step_size
  attack = make_pgd(apply, params, x, y, eps=eps, norm=norm, step_size=alpha, loss=loss_fn,
                    target=target, stochastic=stochastic, eot=eot)
  # Keys: restart r draws its start and its fresh model keys from fold_in(key, r).
  base = jax.random.key(0) if key is None else key

  def restart(best, r):
    start_key, run_key = jax.random.split(jax.random.fold_in(base, r))
    state = attack.init(start_key if use_random_start else None)
    # Fixed randomness: `key` at every step and in the score; fresh: the step's own key, and
    # a draw none of the steps used for the score.
    step = lambda s, k: attack.step(s, _either(fixed, base, k))
    eval_key = _either(fixed, base, iterate.step_key(run_key, steps))
    final, _ = iterate.run(step, state, steps, key=run_key)
    success, value = _final_score(apply, params, final.x_adv, y, loss=loss_fn, target=target,
                                  key=eval_key if stochastic else None, eot=eot)
    best_x, best_value, best_success = best
    take = ~best_success & (success | (value > best_value))
    pick = take.reshape((-1,) + (1,) * (x.ndim - 1))
    return (jnp.where(pick, final.x_adv, best_x), jnp.where(take, value, best_value),
            best_success | success), None

  none_yet = (x, jnp.full(y.shape, -jnp.inf, x.dtype), jnp.zeros(y.shape, bool))
  (x_adv, _, _), _ = jax.lax.scan(restart, none_yet, jnp.arange(restarts, dtype=jnp.uint32))
  return x_adv


def pgd(apply: contract.Apply, params: Any, x: Array, y: Array, *, eps: float | Array,
        norm: str = 'linf', steps: int = 10, step_size: float | Array | None = None,
        random_start: bool = False, restarts: int = 1, loss: Loss = 'ce',
        target: Array | None = None, key: Array | None = None, eot: int = 1,
        randomness: str = 'fresh') -> Array:
  """Projected gradient descent (ascent of the loss) in ℓ∞ or ℓ2; see the module docstring.

  Args:
    apply: `apply(params, x[, key=k])` returning logits [B, K] or `Outputs` (static for jit:
      pass the same object to reuse the compiled program).
    params: the model's parameters (any pytree).
    x: [B, ...] clean inputs in [0, 1].
    y: [B] int labels in [0, K).
    eps: radius ε ≥ 0 (pixel units; ℓ∞ at most 1); may be traced (vmap over ε).
    norm: 'linf' or 'l2'.
    steps: iterations (≥ 1).
    step_size: α (> 0), default 2.5 ε / steps (Madry et al.); torchattacks' defaults are
      2/255 for ε = 8/255 (ℓ∞) and 0.2 for ε = 1 (ℓ2).
    random_start: start from `random_start(...)` instead of x (needs `key`).
    restarts: independent runs (≥ 1; > 1 needs `key`); each example keeps its worst case.
    loss: 'ce', 'margin', 'dlr' (`losses.LOSSES`) or `loss(logits, y, target) -> [B]`
      (static for jit, like `apply`).
    target: [B] target classes for a targeted attack (the loss is then targeted), or None.
    key: typed PRNG key for the random start, restarts and, if `apply` takes `key`, the model.
    eot: model draws averaged per gradient (≥ 1; > 1 needs `key` and an `apply` with `key`).
    randomness: 'fresh' (a new model key every step) or 'fixed' (`key` at every step).

  Returns:
    [B, ...] adversarial examples in [0, 1] within ε of x.

  Raises:
    ValueError: any bad argument (named in the message), before anything is traced.
  """
  stochastic = _check(apply, params, x, y, eps=eps, norm=norm, steps=steps,
                      step_size=step_size, random_start=random_start, restarts=restarts,
                      loss=loss, target=target, key=key, eot=eot, randomness=randomness)
  return _pgd(apply, params, x, y, eps, step_size, target, key,
              jnp.asarray(randomness == 'fixed'), norm=norm, steps=steps,
              use_random_start=random_start, restarts=restarts, loss=loss,
              stochastic=stochastic, eot=eot)


def fgsm(apply: contract.Apply, params: Any, x: Array, y: Array, *, eps: float | Array,
         norm: str = 'linf', loss: Loss = 'ce', target: Array | None = None,
         key: Array | None = None, eot: int = 1) -> Array:
  """The fast gradient sign method: one step of size ε (`pgd(steps=1, step_size=eps)`).

  In ℓ∞ this is torchattacks' `FGSM` (clip(x + ε·sign ∇, 0, 1)); in ℓ2 the fast gradient
  method x + ε ∇/‖∇‖₂. Arguments as `pgd`.
  """
  return pgd(apply, params, x, y, eps=eps, norm=norm, steps=1, step_size=eps, loss=loss,
             target=target, key=key, eot=eot)


def _check(apply, params, x, y, *, eps, norm, steps, step_size, random_start, restarts, loss,
           target, key, eot, randomness) -> bool:
  """Validates `pgd`'s arguments; returns whether the model is called with a key."""
  _args.check_norm(norm)
  _args.check_eps(eps, norm)
  _args.check_count(steps, 'steps')
  _args.check_count(restarts, 'restarts')
  _args.check_count(eot, 'eot')
  validate.check_bool(random_start, 'random_start')
  validate.check_choice(randomness, RANDOMNESS, 'randomness')
  if step_size is not None:
    _args.check_eps(step_size, 'l2', name='step_size')
  if isinstance(loss, str):
    objective.make_loss(loss)
  elif not callable(loss):
    raise ValueError(f'loss must be a name in {sorted(losses.LOSSES)} or a callable '
                     f'loss(logits, y, target) -> [B]; got {loss!r}.')
  uses = [why for why, needed in (('random_start=True draws the starting point', random_start),
                                  (f'restarts={restarts} differ only by their random draws',
                                   restarts > 1),
                                  ("randomness='fixed' gives it to the model at every step",
                                   randomness == 'fixed')) if needed]
  _args.check_key_if_given(key, needed=bool(uses), why='; '.join(uses))
  if eot > 1 or randomness == 'fixed' or not (random_start or restarts > 1):
    objective.check_stochastic_call(apply, key, eot)  # the key is meant for the model
  return objective.check_model_call(apply, params, x, y, target=target, key=key)
