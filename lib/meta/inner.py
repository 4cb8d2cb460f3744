"""The simulated fine-tuning attack of MLAC as an `(init, step)` pair (differentiable, K steps).

Henderson et al. 2023, "Self-Destructing Models", §4 (the authors' `adapt.py`,
`fine_tuning_train_maml`): an adversary puts a linear head on the encoder's pooled
features and fine-tunes *all* parameters (encoder and head) with Adam on the harmful
cross-entropy for K steps; after every step the harmful logits of the adapted model on
the outer batch are recorded. Each inner gradient is clipped to global norm 100 with the
norm detached (`lib.meta.adam.clip_by_norm`), and the learning rate is a (meta-learned)
array, so the whole trajectory is differentiable in the encoder, the head initialisation
and the learning rate: second-order meta-gradients by default, first-order ones
(`first_order=True`: the inner gradients are constants, as in first-order MAML) on request.

**Batch sizes with static shapes.** The authors draw one batch size from {12, 24, 48} per
outer step (`random.choice` before the inner loop) and use it for every inner step. Here
step k receives a block of the maximum size M (`inputs` leaves [K, M, ...]) and a traced
`batch_size` <= M: the loss is the mean over the first `batch_size` examples (a mask), so
every batch size runs through the same compiled program, and a `vmap` over simulated
adversaries can give each its own size. The masked rows cost compute, not correctness
(examples are independent in the encoders used here: no batch statistics).

**Memory.** `checkpoint=True` wraps the step in `jax.checkpoint`: the backward pass stores
only each step's carry (parameters and Adam moments) and recomputes the step's activations
and its inner gradient, instead of storing them for all K steps. Memory still grows
linearly in K, by 3x the parameters per step (tests/meta/test_mlac.py measures it: on an
MLP, 1.8 MB at K = 4 and 4.2 MB at K = 16, against 4.4 MB and 15.1 MB without).

Example:
    >>> attack = make_finetune_attack(apply, inputs, labels, outer_x, learning_rate=3e-4,
    ...                               batch_size=24)
    >>> state = attack.init(encoder_params, head)
    >>> final, (logits, norms) = iterate.run(attack.step, state, K, key=key)  # [K, B, C], [K]
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lib import contract, iterate
from lib.meta.adam import AdamState, adam_init, adam_step, clip_by_norm

Array = jax.Array
# The authors' inner clip adds 1e-8 inside the square root of the gradient norm.
NORM_OFFSET = 1e-8


def features(apply: contract.Apply, params: Any, inputs: Any) -> Array:
  """The pooled features [B, D] of `apply(params, inputs)` (`Outputs.features`).

  Raises:
    ValueError: `apply` returns no features (an encoder must offer them).
  """
  out = contract.as_outputs(apply(params, inputs))
  if out.features is None:
    raise ValueError('apply must return Outputs with features [B, D] (an encoder, e.g. '
                     'bert_model(config, num_classes=None)); got features=None.')
  return out.features


def linear_init(key: Array, feature_dim: int, num_classes: int,
                dtype: Any = jnp.float32) -> Array:
  """A bias-free head [D, C] ~ U(±1/sqrt(D)): PyTorch's `nn.Linear` default initialisation."""
  bound = 1.0 / math.sqrt(feature_dim)
  return jax.random.uniform(key, (feature_dim, num_classes), dtype, -bound, bound)


def head_logits(apply: contract.Apply, params: Any, inputs: Any) -> Array:
  """`features(encoder) @ head` [B, C] for params {'encoder', 'head' [D, C]} (bias-free head)."""
  return features(apply, params['encoder'], inputs) @ params['head']


def masked_ce(logits: Array, labels: Array, batch_size: Array | int) -> Array:
  """Mean cross-entropy over the first `batch_size` of the B rows of `logits` [B, C]."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  mask = (jnp.arange(ce.shape[0], dtype=jnp.int32) < batch_size).astype(ce.dtype)
  return jnp.sum(ce * mask) / jnp.sum(mask)


class AttackState(NamedTuple):
  """The adversary's fine-tuning state.

  Attributes:
    params: {'encoder': encoder params, 'head': [D, C]}.
    adam: Adam state of `params`.
    k: int32 number of steps taken (selects step k's block of the inner data).
  """
  params: Any
  adam: AdamState
  k: Array


def make_finetune_attack(apply: contract.Apply, inputs: Any, labels: Array, outer_inputs: Any,
                         *, learning_rate: Array | float, batch_size: Array | int,
                         clip_norm: float = 100.0, first_order: bool = False,
                         num_steps: Array | int | None = None) -> iterate.Iterative:
  """K differentiable Adam steps of a fine-tuning adversary on the harmful task.

  Args:
    apply: the encoder, `apply(params, inputs) -> Outputs` with `features` [B, D].
    inputs: the inner data: a pytree whose leaves are [K, M, ...] (step k uses block k).
    labels: [K, M] int harmful labels.
    outer_inputs: pytree of [B, ...] leaves: the batch whose logits are recorded.
    learning_rate: the inner learning rate (scalar, may be traced and differentiated).
    batch_size: examples used per step (scalar in [1, M], may be traced): the first ones.
    clip_norm: the inner gradient's global-norm clip (the norm is not differentiated).
    first_order: stop gradients through the inner gradients (first-order meta-gradient).
    num_steps: the steps that act (may be traced): step k >= num_steps leaves the
      parameters and Adam state unchanged (gradient norm 0), so one program of K_max
      steps runs any K <= K_max; None: every step acts.

  Returns:
    `Iterative(init, step)`: `init(encoder_params, head) -> AttackState`;
    `step(state, key) -> (state, (outer logits [B, C] after the step, gradient norm))`.
    The key is unused (the data are given), kept for `lib.iterate.run`.
  """
  def loss(params: Any, x: Any, y: Array) -> Array:
    return masked_ce(head_logits(apply, params, x), y, batch_size)

  def init(encoder_params: Any, head: Array) -> AttackState:
    params = {'encoder': encoder_params, 'head': head}
    return AttackState(params, adam_init(params), jnp.zeros((), jnp.int32))

  def step(state: AttackState, key: Array) -> tuple[AttackState, tuple[Array, Array]]:
    del key
    x = jax.tree.map(lambda a: a[state.k], inputs)
    grads = jax.grad(loss)(state.params, x, labels[state.k])
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    grads, norm = clip_by_norm(grads, clip_norm, offset=NORM_OFFSET)
    params, adam = adam_step(state.params, grads, state.adam, learning_rate)
    if num_steps is not None:   # a no-op step keeps the old values (and their gradients)
      active = state.k < num_steps
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
      params, adam = keep(params, state.params), keep(adam, state.adam)
      norm = jnp.where(active, norm, jnp.zeros_like(norm))
    return AttackState(params, adam, state.k + 1), (head_logits(apply, params, outer_inputs), norm)

  return iterate.Iterative(init, step)


def attack_trajectory(apply: contract.Apply, encoder_params: Any, head: Array, inputs: Any,
                      labels: Array, outer_inputs: Any, *, learning_rate: Array | float,
                      batch_size: Array | int, key: Array, clip_norm: float = 100.0,
                      first_order: bool = False, checkpoint: bool = True,
                      num_steps: Array | int | None = None) -> tuple[Array, Array, Any]:
  """Runs `make_finetune_attack` for K = `labels.shape[0]` steps under `lax.scan`.

  Args:
    apply, inputs, labels, outer_inputs, learning_rate, batch_size, clip_norm, first_order,
      num_steps: as in `make_finetune_attack` (K_max = `labels.shape[0]` steps are run).
    encoder_params: the encoder's parameters (the defender's, differentiated through).
    head: [D, C] the adversary's head initialisation.
    key: typed PRNG key (for `lib.iterate.run`; the steps draw nothing).
    checkpoint: recompute each step in the backward pass (`jax.checkpoint`).

  Returns:
    `(logits [K, B, C] of the outer batch after steps 1..K, gradient norms [K] (before
    clipping, differentiable), the adapted params {'encoder', 'head'})`.
  """
  attack = make_finetune_attack(apply, inputs, labels, outer_inputs,
                                learning_rate=learning_rate, batch_size=batch_size,
                                clip_norm=clip_norm, first_order=first_order,
                                num_steps=num_steps)
  step = jax.checkpoint(attack.step, prevent_cse=False) if checkpoint else attack.step
  final, (logits, norms) = iterate.run(step, attack.init(encoder_params, head),
                                       labels.shape[0], key=key)
  return logits, norms, final.params
