"""Auto-PGD (APGD) and its targeted variant APGD-T, in ℓ∞ and ℓ2.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1 and §3. From a start x⁽⁰⁾ with step size
η⁽⁰⁾ = 2ε, each iteration k takes a projected gradient step and adds momentum
(α = 0.75; α = 1 at k = 0):

    z⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + η⁽ᵏ⁾ · s(∇f(x⁽ᵏ⁾)))
    x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α (z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))

where s is sign (ℓ∞) or ∇/‖∇‖₂ (ℓ2) and P projects onto the ε-ball around x and the
box [0, 1] (`projections`). At each checkpoint w_j (`_apgd_schedule.checkpoints`) the step
size of an example is halved, and its iterate moved back to its best point x_max (with the
gradient there), when either

  1. the loss rose in at most ρ · (w_j − w_{j−1}) of the iterations since w_{j−1}, or
  2. its step size was not halved at w_{j−1} and its best loss has not risen since.

Per-example quantities (step size, counters, best point) make every decision a `jnp.where`,
so the loop is one `lax.scan` (`lib.iterate.run`), and restarts (and APGD-T's target
classes) a `lax.scan` of runs, in one jitted program cached per (apply, static options):
ε, keys, params and inputs may be traced, so the attack vmaps over ε, keys and models. The
objective f is a per-example loss (`losses`: 'ce', 'dlr', or targeted with `target`),
maximised; a stochastic model's EOT gradient comes from `objective.loss_and_grad`, with
fresh or fixed randomness as in `pgd`.

Where the paper leaves room, the authors' code (mirrored by torchattacks' `APGD`/`APGDT`,
the parity reference) is followed:

  - random start: ℓ∞ x + ε·t/‖t‖∞ with t ~ U[−1, 1]ᵈ; ℓ2 x + ε·t/‖t‖₂ with t ~ N(0, I);
    clipped to [0, 1];
  - condition 1 uses "at most" (≤) ρ·h, and its first window compares f(x⁽¹⁾) with 0 (the
    authors' loss history starts as zeros), not with f(x⁽⁰⁾);
  - an example counts as broken when any iterate (the start included) is misclassified,
    and the attack returns its last misclassified iterate; restarts (and APGD-T's target
    classes, each a run of its own) keep the example of the first run that broke it;
    still-robust examples are returned unchanged (the clean input);
  - APGD-T's k-th run targets the class with the (k+1)-th largest clean logit, and success
    means misclassification (not reaching the target).

Every run attacks the whole batch (torchattacks shrinks it to the still-robust examples);
examples are independent, so results are the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lib import contract, iterate, validate
from lib.attacks import _apgd_schedule, _args, losses, objective, projections

Array = jax.Array

MOMENTUM = 0.75  # α of the momentum update (the paper's choice)
RANDOMNESS = ('fresh', 'fixed')


class State(NamedTuple):
  """The state of one APGD run over a batch of B examples.

  Attributes:
    i: [] int32 iteration index (0-based).
    x: [B, ...] the current iterate x⁽ᵏ⁾ (x_max after a halving).
    x_prev: [B, ...] the previous iterate x⁽ᵏ⁻¹⁾ (momentum).
    grad: [B, ...] ∇f at `x`.
    eta: [B] step sizes η⁽ᵏ⁾ (pixel units of the norm).
    x_best: [B, ...] x_max, the iterate of highest loss so far.
    loss_best: [B] f(x_max).
    grad_best: [B, ...] ∇f(x_max).
    loss_prev: [B] f of the latest iterate (0 before the first step, as the authors' code).
    increases: [B] int32 iterations since the last checkpoint whose loss rose.
    loss_best_check: [B] f(x_max) at the last checkpoint.
    halved_check: [B] bool, whether the step size was halved at the last checkpoint.
    robust: [B] bool, every iterate so far classified as y.
    x_adv: [B, ...] the last misclassified iterate (the start while there is none).
  """
  i: Array
  x: Array
  x_prev: Array
  grad: Array
  eta: Array
  x_best: Array
  loss_best: Array
  grad_best: Array
  loss_prev: Array
  increases: Array
  loss_best_check: Array
  halved_check: Array
  robust: Array
  x_adv: Array


class StepInfo(NamedTuple):
  """Per-iteration diagnostics (stacked over iterations by `iterate.run`).

  Attributes:
    loss: [B] f(x⁽ᵏ⁺¹⁾), the loss at the new iterate.
    eta: [B] the step size used for the step.
  """
  loss: Array
  eta: Array


def start_point(key: Array, x: Array, eps: float | Array, norm: str) -> Array:
  """A random point of the ε-sphere around x, clipped to [0, 1] (the authors' start).

  ℓ∞: x + ε·t/‖t‖∞, t ~ U[−1, 1]ᵈ; ℓ2: x + ε·t/(‖t‖₂ + 1e-12), t ~ N(0, I).

  Args:
    key: typed PRNG key.
    x: [B, ...] clean inputs in [0, 1].
    eps: radius (a number or a scalar array).
    norm: 'linf' or 'l2'.

  Returns:
    [B, ...] starting points, x's dtype.
  """
  if norm == 'linf':
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    scale = projections.per_example_norm(t, 'linf')
  else:
    t = jax.random.normal(key, x.shape, x.dtype)
    scale = projections.per_example_norm(t, 'l2') + jnp.asarray(1e-12, x.dtype)
  direction = t / _per_example(scale, t)
  return projections.clip_to_box(x, jnp.asarray(eps, x.dtype) * direction)


def _per_example(values: Array, like: Array) -> Array:
  return values.reshape((like.shape[0],) + (1,) * (like.ndim - 1))


def _where(mask: Array, a: Array, b: Array) -> Array:
  """Per-example select: mask [B], a and b [B, ...]."""
  return jnp.where(_per_example(mask, a), a, b)


def make_apgd(apply: contract.Apply, params: Any, x: Array, y: Array, *,
              eps: float | Array, norm: str, steps: int, loss: losses.Loss, rho: float = 0.75,
              target: Array | None = None, eot: int = 1,
              stochastic: bool = False) -> iterate.Iterative:
  """The `(init, step)` pair of one APGD run on a batch (no argument checks: see `apgd`).

  Args:
    apply, params: the model.
    x: [B, ...] clean inputs in [0, 1].
    y: [B] true labels.
    eps: radius (a number or a traced scalar).
    norm: 'linf' or 'l2'.
    steps: N_iter, which sets the checkpoints.
    loss: per-example `loss(logits, y, target) -> [B]` (maximised).
    rho: ρ of halving condition 1.
    target: [B] target classes (targeted loss), or None.
    eot: model keys averaged per gradient.
    stochastic: whether `apply` is called with the step's key (a randomised model).

  Returns:
    `Iterative(init, step)`: `init(x_start, *, key) -> State` evaluates f and ∇f at the
    start; `step(state, key) -> (State, StepInfo)` is one iteration; run it exactly
    `steps` times (`iterate.run(step, state, steps, key=k)`), as the checkpoints assume.
  """
  is_checkpoint, window = (jnp.asarray(t) for t in _apgd_schedule.tables(steps))
  dtype = x.dtype

  def evaluate(x_new, key):
    value, logits, grad = objective.loss_and_grad(
        apply, params, x_new, y, loss=loss, target=target, key=key if stochastic else None,
        eot=eot)
    return value, grad, jnp.argmax(logits, axis=-1) == y

  def init(x_start: Array, *, key: Array) -> State:
    value, grad, correct = evaluate(x_start, key)
    zeros = jnp.zeros_like(value)
    return State(
        i=jnp.zeros((), jnp.int32), x=x_start, x_prev=x_start, grad=grad,
        eta=jnp.full(value.shape, 2.0, dtype) * jnp.asarray(eps, dtype),
        x_best=x_start, loss_best=value, grad_best=grad, loss_prev=zeros,
        increases=jnp.zeros(value.shape, jnp.int32), loss_best_check=value,
        halved_check=jnp.ones(value.shape, bool), robust=correct, x_adv=x_start)

  def step(s: State, key: Array) -> tuple[State, StepInfo]:
    alpha = jnp.where(s.i == 0, jnp.ones((), dtype), jnp.asarray(MOMENTUM, dtype))
    z = projections.project_to_threat(
        x, s.x + _per_example(s.eta, x) * projections.normalize(s.grad, norm), eps, norm)
    x_new = projections.project_to_threat(
        x, s.x + alpha * (z - s.x) + (1 - alpha) * (s.x - s.x_prev), eps, norm)
    value, grad, correct = evaluate(x_new, key)

    improved = value > s.loss_best
    loss_best = jnp.where(improved, value, s.loss_best)
    x_best = _where(improved, x_new, s.x_best)
    grad_best = _where(improved, grad, s.grad_best)
    increases = s.increases + (value > s.loss_prev).astype(jnp.int32)

    # Checkpoint: conditions 1 and 2, evaluated every iteration, applied only at w_j.
    at_check = is_checkpoint[s.i]
    few_increases = increases.astype(dtype) <= jnp.asarray(rho, dtype) * window[s.i].astype(dtype)
    stalled = ~s.halved_check & (s.loss_best_check >= loss_best)
    halve = at_check & (few_increases | stalled)

    state = State(
        i=s.i + 1,
        x=_where(halve, x_best, x_new),
        x_prev=s.x,
        grad=_where(halve, grad_best, grad),
        eta=jnp.where(halve, s.eta / 2, s.eta),
        x_best=x_best, loss_best=loss_best, grad_best=grad_best, loss_prev=value,
        increases=jnp.where(at_check, 0, increases),
        loss_best_check=jnp.where(at_check, loss_best, s.loss_best_check),
        halved_check=jnp.where(at_check, halve, s.halved_check),
        robust=s.robust & correct,
        x_adv=_where(correct, s.x_adv, x_new))
    return state, StepInfo(value, s.eta)

  return iterate.Iterative(init, step)


@functools.partial(jax.jit, static_argnames=(
    'apply', 'norm', 'steps', 'loss', 'rho', 'restarts', 'n_targets', 'eot', 'stochastic',
    'randomness', 'start'))
def _attack(apply, params, x, y, eps, key, target, *, norm, steps, loss, rho, restarts,
            n_targets, eot, stochastic, randomness, start):
  """All runs (restarts × target classes) under one `lax.scan`; see `apgd`."""
  fixed = randomness == 'fixed'
  clean_key, runs_key = jax.random.split(key)
  model_key = key if fixed else clean_key
  clean = objective.over_draws(lambda k: objective.logits(apply, params, x, k),
                               model_key if stochastic else None, eot).mean(0)  # EOT mean
  robust = jnp.argmax(clean, axis=-1) == y
  targets = None if target is None else target[None]  # [runs per restart, B]
  if n_targets:  # run t targets the class of the (t + 2)-th largest clean logit
    order = jnp.argsort(clean, axis=-1)
    targets = jnp.stack([order[:, -(t + 2)] for t in range(n_targets)])

  def run(carry, r):
    robust, x_adv = carry
    start_key, init_key, steps_key = jax.random.split(jax.random.fold_in(runs_key, r), 3)
    pair = make_apgd(apply, params, x, y, eps=eps, norm=norm, steps=steps, loss=loss, rho=rho,
                     target=None if targets is None else targets[r // restarts], eot=eot,
                     stochastic=stochastic)
    step = (lambda s, _: pair.step(s, key)) if fixed else pair.step
    state = pair.init(start_point(start_key, x, eps, norm) if start else x,
                      key=key if fixed else init_key)
    final, _ = iterate.run(step, state, steps, key=steps_key)
    broken = robust & ~final.robust
    return (robust & final.robust, _where(broken, final.x_adv, x_adv)), None

  n_runs = restarts * max(n_targets, 1)
  (_, x_adv), _ = jax.lax.scan(run, (robust, x), jnp.arange(n_runs, dtype=jnp.int32))
  return x_adv


def _check(apply, params, x, y, *, eps, norm, steps, loss, restarts, rho, key, eot, target,
           random_start, randomness) -> tuple[losses.Loss, bool, int]:
  """Eager checks shared by `apgd` and `apgd_targeted`; returns (loss, stochastic, K)."""
  _args.check_norm(norm)
  _args.check_eps(eps, norm)
  _args.check_count(steps, 'steps')
  _args.check_count(restarts, 'restarts')
  _args.check_count(eot, 'eot')
  if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho < 1:
    raise ValueError(f'rho must be a number in (0, 1); got {rho!r}.')
  if not (isinstance(loss, str) or callable(loss)):
    raise ValueError(f'loss must be a name in {sorted(losses.LOSSES)} or a callable '
                     f'loss(logits, y, target) -> [B]; got {loss!r}.')
  loss_fn = objective.make_loss(loss)
  validate.check_bool(random_start, 'random_start')
  validate.check_choice(randomness, RANDOMNESS, 'randomness')
  uses = [why for why, needed in (('random_start=True draws the starting points', random_start),
                                  ("randomness='fixed' gives it to the model at every call",
                                   randomness == 'fixed')) if needed]
  _args.check_key_if_given(key, needed=bool(uses), why='; '.join(uses))
  if eot > 1 or randomness == 'fixed':
    objective.check_stochastic_call(apply, key, eot)  # the key is meant for the model
  stochastic = objective.check_model_call(apply, params, x, y, target=target, key=key)
  return loss_fn, stochastic, objective.num_classes(apply, params, x, key if stochastic else None)


def apgd(apply: contract.Apply, params: Any, x: Array, y: Array, *, eps: float | Array,
         norm: str = 'linf', steps: int = 100, loss: str | Callable[..., Array] = 'ce',
         restarts: int = 1, rho: float = 0.75, key: Array | None = None, eot: int = 1,
         target: Array | None = None, random_start: bool = True,
         randomness: str = 'fresh') -> Array:
  """APGD (Croce & Hein 2020, Algorithm 1): adversarial examples of a batch.

  Args:
    apply: `apply(params, x[, key=k])` returning logits [B, K] or `Outputs` (static for jit:
      pass the same object to reuse the compiled program).
    params: the model's parameters.
    x: [B, ...] float inputs in [0, 1].
    y: [B] integer labels in [0, K).
    eps: radius ≥ 0 of the threat model (ℓ∞: at most 1), pixel units; a traced scalar under
      `vmap`.
    norm: 'linf' or 'l2'.
    steps: iterations per run N_iter ≥ 1 (gradient evaluations: steps + 1 per run).
    loss: 'ce', 'dlr' (or another name of `losses.LOSSES`, or a callable
      `loss(logits, y, target) -> [B]`), maximised.
    restarts: runs from independent random starts ≥ 1; an example keeps the first run that
      breaks it.
    rho: ρ ∈ (0, 1) of halving condition 1.
    key: typed PRNG key for the random starts (run r uses `fold_in(key, r)`) and, when
      `apply` takes `key`, the model's randomness, split `eot` ways per call. Needed for a
      random start, `eot` > 1 or fixed randomness.
    eot: model keys averaged per gradient (Expectation over Transformation), ≥ 1.
    target: [B] target classes for a targeted loss, or None (untargeted).
    random_start: start from `start_point(...)` (the authors' choice) or from x itself.
    randomness: 'fresh' (a new model key at every step, as `lib.iterate.run` derives them)
      or 'fixed' (every model call gets `key`, so an evaluation with `key` sees the draws
      the attack saw); see `pgd`.

  Returns:
    [B, ...] adversarial examples: for each broken example the last misclassified iterate
    of the first run that broke it, the clean input otherwise.

  Raises:
    ValueError: a bad argument (named in the message): see `_args`, plus rho outside (0, 1),
      unknown loss or randomness, labels or targets out of range, a missing key.
  """
  loss_fn, stochastic, _ = _check(
      apply, params, x, y, eps=eps, norm=norm, steps=steps, loss=loss, restarts=restarts,
      rho=rho, key=key, eot=eot, target=target, random_start=random_start,
      randomness=randomness)
  return _attack(apply, params, x, y, eps, jax.random.key(0) if key is None else key,
                 None if target is None else jnp.asarray(target), norm=norm, steps=steps,
                 loss=loss_fn, rho=float(rho), restarts=restarts, n_targets=0, eot=eot,
                 stochastic=stochastic, randomness=randomness, start=random_start)


def apgd_targeted(apply: contract.Apply, params: Any, x: Array, y: Array, *,
                  eps: float | Array, norm: str = 'linf', steps: int = 100,
                  loss: str | Callable[..., Array] = 'dlr', n_target_classes: int = 9,
                  restarts: int = 1, rho: float = 0.75, key: Array | None = None,
                  eot: int = 1, random_start: bool = True, randomness: str = 'fresh') -> Array:
  """APGD-T (Croce & Hein 2020, §4): APGD with a targeted loss, one run per target class.

  Run t (t = 1..n_target_classes) targets, for each example, the class with the (t+1)-th
  largest clean logit (the t-th most likely wrong class of a correctly classified example)
  with the targeted loss (default: targeted DLR, −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2)).
  Success is misclassification, as in torchattacks' `APGDT`.

  Args:
    apply, params, x, y, eps, norm, steps, rho, key, eot, random_start, randomness: as
      `apgd`.
    loss: a targeted loss by name ('dlr', 'ce', 'margin') or callable.
    n_target_classes: target classes tried, 1 ≤ n_target_classes < K.
    restarts: random starts per target class.

  Returns:
    [B, ...] adversarial examples, as `apgd`.

  Raises:
    ValueError: as `apgd`, plus n_target_classes outside [1, K).
  """
  _args.check_count(n_target_classes, 'n_target_classes')
  loss_fn, stochastic, num_classes = _check(
      apply, params, x, y, eps=eps, norm=norm, steps=steps, loss=loss, restarts=restarts,
      rho=rho, key=key, eot=eot, target=None, random_start=random_start,
      randomness=randomness)
  if n_target_classes >= num_classes:
    raise ValueError(f'n_target_classes must be < K = {num_classes} (the model has '
                     f'{num_classes - 1} wrong classes); got {n_target_classes}.')
  return _attack(apply, params, x, y, eps, jax.random.key(0) if key is None else key, None,
                 norm=norm, steps=steps, loss=loss_fn, rho=float(rho), restarts=restarts,
                 n_targets=n_target_classes, eot=eot, stochastic=stochastic,
                 randomness=randomness, start=random_start)
