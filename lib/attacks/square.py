"""Square attack: score-based black-box random search in ℓ∞ and ℓ2 (no gradients).

Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search" (ECCV), Algorithm 1, with the loss L maximised
(`lib.attacks.losses`; the paper minimises the negated margin):

    x̂ ← init(x)                                   (query 1)
    for i = 0, …, N − 2:                            (queries 2 … N)
      x_new ← proposal(x, x̂, s_i)                  (in the ε-ball and [0, 1])
      if L(f(x_new)) > L(f(x̂)) or x_new succeeds: x̂ ← x_new

An example succeeds when its margin (`losses.margin`, targeted when `target` is given) is
> 0; from then on it is frozen (`jnp.where` on the fixed batch) and spends no more queries.
The square side s_i follows the paper's schedule (`_square_proposals.side`: the share p of
pixels a square covers starts at `p_init` and is halved at fixed fractions of N). The
initialisations and proposals (ℓ∞ vertical stripes and vertex squares; ℓ2 a centred grid of
η squares and mass moved between two windows) are in `_square_proposals`.

One query is one `step(state, key) -> state` of `lib.iterate.run`; a restart runs
init + N − 1 steps; restarts run under `lax.scan` and attack only the examples no earlier
restart fooled. The whole attack is one jitted program, vmappable over `key` and `eps`.

A stochastic model (a randomised defence) takes its randomness from `model_key`, kept apart
from the search's `key`: with randomness='fixed' every query (and the clean evaluation) sees
the draw `model_key`, the one `evaluate.robust_accuracy(..., key=model_key)` then uses
(Liu & Wei 2025's fixed randomness); with randomness='fresh' query t of restart r sees
`fold_in(fold_in(model_key, r), t)`, so the search compares losses measured under different
draws and its acceptances are noisy (AutoAttack's Square does not support that case, #56).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lib import contract, iterate, validate
from lib.attacks import _args, _square_proposals, losses, objective

Array = jax.Array
RANDOMNESS = ('fixed', 'fresh')


class SearchState(NamedTuple):
  """State of one restart of the search (per example unless noted).

  Attributes:
    x_best: [B, H, W, C] best point so far, in the ε-ball and [0, 1].
    loss: [B] loss L at `x_best` (never decreases while the example is searched).
    success: [B] bool, the margin at `x_best` is > 0 (the example is frozen).
    queries: [B] int32 model queries spent on the example (over all restarts so far).
    t: int32 scalar, queries made in this restart (0 before its initialisation).
    restart: int32 scalar, index of this restart.
  """
  x_best: Array
  loss: Array
  success: Array
  queries: Array
  t: Array
  restart: Array


def search(apply: contract.Apply, params: Any, x: Array, y: Array, *, eps: float | Array,
           norm: str, n_queries: int, p_init: float, loss: str | Callable[..., Array] = 'margin',
           target: Array | None = None, model_key: Array | None = None,
           randomness: str = 'fixed') -> tuple[Callable[[], SearchState], iterate.Iterative]:
  """The search as pure pieces: a start at the clean inputs and an (init, step) pair.

  `start()` evaluates the clean inputs (x̂ = x; one query, not counted). `init(best, key=,
  restart=)` begins a restart from `best`: examples not yet fooled move to a fresh
  initialisation (one query), fooled ones stay frozen. `step(state, key)` is one query, with
  aux the [B] loss at x̂ after it. Arguments as in `square` (unchecked here).

  Returns:
    `(start, iterate.Iterative(init, step))`.
  """
  eps = jnp.asarray(eps, x.dtype)
  loss_fn = objective.make_loss(loss)
  _, h, w, _ = x.shape
  side = functools.partial(_square_proposals.side, n_queries=n_queries, p_init=p_init,
                           height=h, width=w, norm=norm)

  def query_key(restart, t):
    if model_key is None or randomness == 'fixed':
      return model_key
    return jax.random.fold_in(jax.random.fold_in(model_key, restart), t)

  def evaluate(points, key):
    z = objective.logits(apply, params, points, key)
    return loss_fn(z, y, target), losses.margin(z, y, target) > 0

  def start():
    value, success = evaluate(x, model_key)
    zero = jnp.zeros((), jnp.int32)
    return SearchState(x, value, success, jnp.zeros(x.shape[0], jnp.int32), zero, zero)

  def update(state, points):
    value, success = evaluate(points, query_key(state.restart, state.t))
    active = ~state.success
    accept = active & ((value > state.loss) | success)
    return SearchState(
        x_best=jnp.where(accept[:, None, None, None], points, state.x_best),
        loss=jnp.where(accept, value, state.loss),
        success=state.success | (active & success),
        queries=state.queries + active.astype(jnp.int32),
        t=state.t + 1, restart=state.restart)

  def init(best, *, key, restart):
    fresh = _square_proposals.INIT[norm](key, x, eps)
    begin = best._replace(loss=jnp.where(best.success, best.loss, -jnp.inf),
                          t=jnp.zeros((), jnp.int32), restart=jnp.asarray(restart, jnp.int32))
    return update(begin, fresh)

  def step(state, key):
    points = _square_proposals.PROPOSAL[norm](key, x, state.x_best, eps, side(state.t - 1))
    state = update(state, points)
    return state, state.loss

  return start, iterate.Iterative(init, step)


def _keep_better(best: SearchState, run: SearchState) -> SearchState:
  """Per example, the restart's point where it succeeds or has a higher loss."""
  take = run.success | (run.loss > best.loss)
  return run._replace(x_best=jnp.where(take[:, None, None, None], run.x_best, best.x_best),
                      loss=jnp.where(take, run.loss, best.loss))


@functools.partial(jax.jit, static_argnames=('apply', 'norm', 'n_queries', 'p_init', 'restarts',
                                             'loss', 'randomness'))
def _square(apply, params, x, y, target, eps, key, model_key, *, norm, n_queries, p_init,
            restarts, loss, randomness):
  start, (init, step) = search(apply, params, x, y, eps=eps, norm=norm, n_queries=n_queries,
                               p_init=p_init, loss=loss, target=target, model_key=model_key,
                               randomness=randomness)

  def one_restart(best, r):
    restart_key = jax.random.fold_in(key, r)
    state = init(best, key=iterate.step_key(restart_key, 0), restart=r)
    state, _ = iterate.run(step, state, n_queries - 1, key=restart_key, start=1)
    return _keep_better(best, state), None

  best, _ = jax.lax.scan(one_restart, start(), jnp.arange(restarts, dtype=jnp.int32))
  return best.x_best, best.queries


def _check_p_init(p_init: Any) -> None:
  validate.check_number(p_init, 'p_init', low=0.0, high=1.0)
  if p_init == 0:
    raise ValueError(f'p_init must be in (0, 1]; got {p_init!r}.')


def square(apply: contract.Apply, params: Any, x: Array, y: Array, *, eps: float | Array,
           norm: str = 'linf', n_queries: int = 5000, p_init: float = 0.8, restarts: int = 1,
           loss: str = 'margin', target: Array | None = None, key: Array | None = None,
           model_key: Array | None = None, randomness: str = 'fixed') -> tuple[Array, Array]:
  """Square attack (Andriushchenko et al. 2020), ℓ∞ or ℓ2, untargeted or targeted.

  Score-based: only the model's logits are used. Per restart each example spends at most
  `n_queries` queries (the initialisation and N − 1 proposals); examples already fooled (at
  the clean input or by an earlier restart) spend none. The clean evaluation that finds
  them is one model call not counted as a query (as in the reference implementations).

  Args:
    apply: `apply(params, x, **kw)` -> logits [B, K] or `contract.Outputs`.
    params: the model's parameters.
    x: [B, H, W, C] float images in [0, 1].
    y: [B] int true labels.
    eps: radius ε ≥ 0 in pixel units (ℓ∞: ≤ 1); a Python number or a scalar array (vmap it).
    norm: 'linf' or 'l2'.
    n_queries: query budget N ≥ 1 per example and restart (the paper's code's `n_iters`;
      torchattacks' `Square(n_queries=N − 1)` makes the same number of queries).
    p_init: share of the pixels the first squares cover, in (0, 1] (0.8 in the paper).
    restarts: number of runs ≥ 1; each attacks the examples no earlier run fooled.
    loss: the maximised loss, a name in `losses.LOSSES` ('margin' is the paper's).
    target: [B] int target classes (targeted attack: success when the target has the
      largest logit), or None (untargeted: success when y no longer has it).
    key: typed PRNG key for the random search (required).
    model_key: typed PRNG key of a stochastic model (passed as `apply(..., key=)`), or None
      for a deterministic one.
    randomness: 'fixed' (every query uses `model_key`) or 'fresh' (each query its own key
      derived from it); see the module docstring.

  Returns:
    `(x_adv, queries)`: [B, H, W, C] adversarial images in the ε-ball around x and [0, 1]
    (for an example never fooled, the point of highest loss found, or x itself), and [B]
    int32 queries spent per example over all restarts.

  Raises:
    ValueError: on any invalid argument (named in the message).

  Example:
    >>> x_adv, queries = square(model.apply, variables, x, y, eps=8 / 255, n_queries=1000,
    ...                         key=jax.random.key(0))
  """
  norm = _args.check_norm(norm)
  _args.check_eps(eps, norm)
  _args.check_count(n_queries, 'n_queries')
  _args.check_count(restarts, 'restarts')
  _check_p_init(p_init)
  validate.check_choice(loss, sorted(losses.LOSSES), 'loss')
  validate.check_choice(randomness, RANDOMNESS, 'randomness')
  _args.check_key_if_given(key, needed=True, why='the Square attack samples its squares from it')
  if randomness == 'fresh' and model_key is None:
    raise ValueError("model_key must be a typed PRNG key with randomness='fresh' (a new model "
                     'draw per query needs a stochastic model and its key).')
  if model_key is not None:
    validate.check_key(model_key, 'model_key')
  objective.check_stochastic_call(apply, model_key, 1)
  _args.check_batch(x, y)
  if x.ndim != 4:
    raise ValueError(f'x must be images [B, H, W, C]; got shape {tuple(x.shape)}.')
  num_classes = objective.num_classes(apply, params, x, model_key)
  validate.check_labels(y, num_classes, 'y', batch=x.shape[0])
  if target is not None:
    validate.check_labels(target, num_classes, 'target', batch=x.shape[0])
  return _square(apply, params, jnp.asarray(x), jnp.asarray(y), None if target is None else
                 jnp.asarray(target), eps, key, model_key, norm=norm, n_queries=n_queries,
                 p_init=float(p_init), restarts=restarts, loss=loss, randomness=randomness)
