"""The attacker's objective: per-example loss of a model's logits, its input gradient, EOT.

Every attack differentiates the same thing: for inputs x [B, ...],

    L(x) = loss(logits(apply(params, x, key=k)), y, target)        [B]

and ascends Σ_b L_b (examples are independent, so the gradient of the sum is each
example's own gradient). A stochastic model (a randomised defence) takes its randomness
from the model `key`: with `eot=n` the gradient is the mean over n keys split from the
step's key (Expectation over Transformation, Athalye et al. 2018, "Synthesizing robust
adversarial examples"), vmapped. "Fresh randomness" is a new key every step (derived with
`fold_in(key, step)` by `lib.iterate.run`); "fixed randomness" passes the same key to the
attack and to the evaluation. A deterministic model is called without a key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lib import contract, validate
from lib.attacks import _args, losses

Array = jax.Array


def make_loss(loss: str | Callable[..., Array]) -> Callable[..., Array]:
  """A loss by name (`losses.LOSSES`) or a callable `loss(logits, y, target=None) -> [B]`."""
  return losses.get_loss(loss) if isinstance(loss, str) else loss


def check_stochastic_call(apply: contract.Apply, key: Array | None, eot: int) -> None:
  """EOT needs a key; a key needs an `apply` that takes one (ValueError otherwise)."""
  if eot > 1 and key is None:
    raise ValueError(f'eot={eot} averages over model randomness and needs key, a typed PRNG '
                     'key (jax.random.key(seed)).')
  if key is not None:
    contract.require_keywords(apply, ('key',), needed_by='an attack given key')


def logits(apply: contract.Apply, params: Any, x: Array, key: Array | None) -> Array:
  """The logits of `apply(params, x)` (with `key=key` when given)."""
  out = apply(params, x) if key is None else apply(params, x, key=key)
  return contract.as_outputs(out).logits


def loss_and_grad(apply: contract.Apply, params: Any, x: Array, y: Array, *,
                  loss: Callable[..., Array], target: Array | None = None,
                  key: Array | None = None, eot: int = 1) -> tuple[Array, Array, Array]:
  """Per-example loss, logits and input gradient, averaged over `eot` model keys.

  Args:
    apply, params: the model.
    x: [B, ...] inputs.
    y: [B] true labels.
    loss: `loss(logits, y, target) -> [B]` (see `make_loss`).
    target: [B] target classes of a targeted attack, or None.
    key: the model's key for this step (None: deterministic model).
    eot: number of model keys to average over (split from `key`).

  Returns:
    `(loss [B], logits [B, K], grad like x)`, each the mean over the EOT draws.
  """
  def one(k):
    def total(x):
      z = logits(apply, params, x, k)
      per_example = loss(z, y, target)
      return per_example.sum(), (per_example, z)
    grad, (value, z) = jax.grad(total, has_aux=True)(x)
    return value, z, grad

  return jax.tree.map(lambda a: a.mean(0), over_draws(one, key, eot))


def over_draws(fn: Callable[[Array | None], Any], key: Array | None, draws: int) -> Any:
  """`fn(k)` for each of `draws` model keys, stacked on a new leading axis [draws, ...].

  The keys are `key` itself when `draws == 1` (None for a deterministic model) and
  `jax.random.split(key, draws)` otherwise (vmapped): the one convention of EOT gradients,
  EOT scores and multi-draw evaluation, so that a fixed-randomness attack and its evaluation
  see the same draws.
  """
  if draws == 1:
    return jax.tree.map(lambda a: a[None], fn(key))
  return jax.vmap(fn)(jax.random.split(key, draws))


# jit's trace cache makes repeated shape queries free (no re-trace of `apply`).
_logits_jit = jax.jit(logits, static_argnums=0)


def num_classes(apply: contract.Apply, params: Any, x: Array, key: Array | None) -> int:
  """K, the number of logits `apply` returns for `x` [B, ...] (by shape inference only).

  Traced once per (apply, shapes); later calls hit jit's cache. A stochastic model called
  without a key raises its own ValueError here, before any attack is traced.
  """
  return int(_logits_jit.eval_shape(apply, params, x, key).shape[-1])


def check_model_call(apply: contract.Apply, params: Any, x: Array, y: Array, *,
                     target: Array | None, key: Array | None) -> bool:
  """Checks the batch, labels and targets against the model; True when the model takes `key`.

  A key reaches the model only when `apply` accepts a `key` keyword (or any keyword);
  otherwise it serves the attack's own randomness (random starts, restarts).

  Raises:
    ValueError: inputs outside [0, 1], labels or targets outside [0, K).
  """
  accepted = contract.accepted_keywords(apply)
  stochastic = key is not None and (accepted is None or 'key' in accepted)
  _args.check_batch(x, y)
  classes = num_classes(apply, params, x, key if stochastic else None)
  validate.check_labels(y, classes, 'y')
  if target is not None:
    validate.check_labels(target, classes, 'target', batch=x.shape[0])
  return stochastic


def predictions(apply: contract.Apply, params: Any, x: Array, key: Array | None) -> Array:
  """[B] argmax class of one call."""
  return jnp.argmax(logits(apply, params, x, key), axis=-1)
