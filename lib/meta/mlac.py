"""MLAC: meta-learned adversarial censoring (Henderson et al. 2023, "Self-Destructing Models").

The defender's parameters θ = {'encoder', 'head' [D, C_d]} are trained on

    L(θ) = w_d · CE(head(f_θ(x)), y_d) − w_h · mean_{a, k} CE_cal(Z_{a,k}, y_h)          (2)
         [+ w_g · mean_a mean(‖g_{a,1}‖, ..., ‖g_{a,K}‖, ‖∇ CE(Z_{a,K}, y_h)‖)]

where Z_{a,k} [B, C_h] are the harmful logits on the outer batch x of simulated adversary
a after k = 0..K steps of fine-tuning (`lib.meta.inner`: Adam on the harmful loss over the
encoder and an adversarial head, batch size drawn from {12, 24, 48}, clip 100), and CE_cal
is the calibrated cross-entropy of `lib.meta.calibrate` (the best bounded linear re-mapping
of Z; `calibrate=False` gives the plain CE, the authors' `l_bad_adapted` variant). The
adversary's own parameters φ = {'head' [D, C_h] initialisation, 'lr' inner learning rate}
are meta-learned to *minimise* the mean plain harmful CE over a and k (the authors'
`train.py`: the adversarial parameters get the gradient of `bad_adapted_loss` only, Adam
1e-4, clip 10, lr clamped to [1e-6, 1e-2]); θ gets Adam 1e-5 with clip 10.

One function with options covers the paper's baselines: K = 0 is adversarial censoring
(AC: the harmful loss of the base encoder under the adversarial head), `harmful_weight=0`
is "desired only" (fine-tuned on the desired task), and `num_adversaries` > 1 simulates
several adversaries per outer step as one `vmap` (beyond the paper's one).

Read closely, the authors' code differs from the paper's description in one place this
module makes an option: for BERT, `GoodBadBERT.with_linear_reset(linear)` ignores its
argument, so the adversarial head is a *fresh random* head every outer step and the
meta-learned head initialisation is unused (it is used for their MLP models).
`learned_head=True` is the paper's description; `learned_head=False` the BERT code path
(a head drawn from the step's key, PyTorch's `nn.Linear` initialisation). Their bios config
(`bios.yaml`) also turns on a gradient-norm penalty (`l_bad_adapted_grad=1`, with
`minimize_all_inner_grad_norms`): the bracket in (2), the mean of the K inner gradient
norms (before clipping, differentiated) and of the norm of the adapted model's harmful
gradient on the outer batch; `grad_norm_weight` w_g (default 0, the paper's objective).
Not implemented: dropout in the inner and outer forward passes, gradient accumulation.

The outer step is an `(init, step)` pair over `MLACState`; the step's randomness is
`fold_in(key, state.step)`, so `lib.train.run_loop` resumes it exactly:

    >>> mlac = make_mlac(encoder.apply, feature_dim=128, num_desired=28, num_harmful=2)
    >>> step = jax.jit(lambda s, b: mlac.step(s, b, key))
    >>> state = run_loop(init=lambda: mlac.init(encoder_vars, key=init_key), step_fn=step,
    ...                  batch_fn=lambda t: mlac_batch(t), num_steps=50_000, ...)

Batch (`check_batch`): 'inputs' (pytree of [B, ...] leaves), 'desired' [B], 'harmful' [B]
int labels of the outer batch, and for K > 0 with a harmful term 'inner_inputs' (leaves
[A, K, M, ...]) and 'inner_harmful' [A, K, M], with M = max(batch_sizes): adversary a's
block for step k, of which it uses its drawn batch size.

**One program for many meta models.** `num_steps` and `num_adversaries` are the static
K_max and A_max of the compiled step; the batch may carry the model's own K and A as
values: 'num_steps' (int32 scalar K <= K_max: inner steps k >= K are no-ops and (2)
averages over k = 0..K only; K = 0 is AC) and 'adversary_weights' ([A_max] float, >= 0:
the weighted mean over adversaries replaces the plain mean; [1, 0, ...] is one adversary).
So AC, every K of a sweep and the multi-adversary model run through one compiled
second-order step (the no-op steps and zero-weight adversaries cost compute, not
correctness). Without them the batch means K = K_max and equal weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib import contract, iterate, validate
from lib.meta.adam import AdamState, adam_init, adam_step, clip_by_norm, global_norm
from lib.meta.calibrate import calibrated_ce
from lib.meta.inner import NORM_OFFSET, attack_trajectory, features, head_logits, linear_init

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MLACOptions:
  """What the outer objective (2) and its update do (defaults: the authors' bios MLAC).

  Attributes:
    num_steps: K inner fine-tuning steps, >= 0 (0: adversarial censoring, AC).
    desired_weight: w_d >= 0 of the desired CE.
    harmful_weight: w_h >= 0 of the harmful term (0: "desired only", no adversary is run).
    grad_norm_weight: w_g >= 0 of the authors' gradient-norm penalty (bracket of (2)).
    calibrate: the calibrated harmful CE (the paper's MLAC); False: the plain CE.
    num_adversaries: A simulated adversaries per outer step (one `vmap`).
    batch_sizes: inner batch sizes, one drawn per adversary and outer step.
    learned_head: meta-learn the adversarial head initialisation (paper); False: a fresh
      random head each outer step (the authors' BERT code path).
    learned_lr: meta-learn the inner learning rate; False: `init_lr` throughout.
    init_lr: initial inner learning rate.
    lr_bounds: (low, high) clamp of the learned inner learning rate.
    inner_clip: global-norm clip of every inner gradient (norm detached).
    first_order: first-order meta-gradient (no second derivatives through the inner steps).
    checkpoint: `jax.checkpoint` every inner step: the backward pass keeps one carry
      (parameters and Adam moments, 3x the parameters) per step instead of the step's
      activations and inner backward pass (measured: 4.4x less growth per step).
    calibration_iters: FISTA iterations of the calibration solve.
    outer_lr: Adam learning rate of the defender.
    adversary_lr: Adam learning rate of the adversary's meta-parameters.
    clip: global-norm clip of each outer gradient (defender's, adversary's).
  """
  num_steps: int = 16
  desired_weight: float = 1.0
  harmful_weight: float = 1.0
  grad_norm_weight: float = 0.0
  calibrate: bool = True
  num_adversaries: int = 1
  batch_sizes: tuple[int, ...] = (12, 24, 48)
  learned_head: bool = True
  learned_lr: bool = True
  init_lr: float = 3e-4
  lr_bounds: tuple[float, float] = (1e-6, 1e-2)
  inner_clip: float = 100.0
  first_order: bool = False
  checkpoint: bool = True
  calibration_iters: int = 500
  outer_lr: float = 1e-5
  adversary_lr: float = 1e-4
  clip: float = 10.0

  def __post_init__(self):
    validate.check_int(self.num_steps, 'num_steps', minimum=0)
    validate.check_int(self.num_adversaries, 'num_adversaries', minimum=1)
    validate.check_int(self.calibration_iters, 'calibration_iters', minimum=1)
    validate.check_ints(list(self.batch_sizes), 'batch_sizes', minimum=1)
    for name in ('calibrate', 'learned_head', 'learned_lr', 'first_order', 'checkpoint'):
      validate.check_bool(getattr(self, name), name)
    for name in ('desired_weight', 'harmful_weight', 'grad_norm_weight'):
      validate.check_number(getattr(self, name), name, low=0.0)
    for name in ('init_lr', 'inner_clip', 'outer_lr', 'adversary_lr', 'clip'):
      validate.check_number(getattr(self, name), name)
      validate.check_positive(getattr(self, name), name)
    low, high = self.lr_bounds
    validate.check_number(low, 'lr_bounds[0]', low=0.0)
    validate.check_number(high, 'lr_bounds[1]', low=low)
    if not low <= self.init_lr <= high:
      raise ValueError(f'init_lr={self.init_lr} must lie in lr_bounds={self.lr_bounds}.')

  @property
  def adversarial(self) -> bool:
    """Whether a harmful term, hence the simulated adversaries, is on."""
    return self.harmful_weight > 0 or self.grad_norm_weight > 0

  @property
  def max_batch(self) -> int:
    """M: the size of every inner block."""
    return max(self.batch_sizes)


class MLACState(NamedTuple):
  """The outer training state.

  Attributes:
    step: int32 outer steps taken.
    params: θ = {'encoder': ..., 'head': [D, C_d]}.
    adversary: φ = {'head': [D, C_h], 'lr': scalar}.
    opt: Adam state of θ.
    adversary_opt: Adam state of φ.
  """
  step: Array
  params: Any
  adversary: Any
  opt: AdamState
  adversary_opt: AdamState


def check_batch(batch: Mapping[str, Any], options: MLACOptions, *, num_desired: int,
                num_harmful: int) -> None:
  """Raises ValueError naming the field unless `batch` fits `options` (module docstring)."""
  for name in ('inputs', 'desired', 'harmful'):
    if name not in batch:
      raise ValueError(f'batch must hold {name!r}; got keys {sorted(batch)}.')
  size = batch['desired'].shape[0] if hasattr(batch['desired'], 'shape') else None
  validate.check_labels(batch['desired'], num_desired, "batch['desired']")
  validate.check_labels(batch['harmful'], num_harmful, "batch['harmful']", batch=size)
  for leaf in jax.tree.leaves(batch['inputs']):
    if leaf.shape[:1] != (size,):
      raise ValueError(f"batch['inputs'] leaves must be [B={size}, ...]; got {leaf.shape}.")
  if 'num_steps' in batch:
    k = batch['num_steps']
    if getattr(k, 'shape', ()) != () or (validate.is_concrete(k) and not (
        np.issubdtype(np.asarray(k).dtype, np.integer) and 0 <= int(k) <= options.num_steps)):
      raise ValueError(f"batch['num_steps'] must be an int scalar in [0, num_steps="
                       f'{options.num_steps}]; got {k!r}.')
  if 'adversary_weights' in batch:
    w = batch['adversary_weights']
    if getattr(w, 'shape', None) != (options.num_adversaries,) or (validate.is_concrete(w) and (
        np.any(np.asarray(w) < 0) or not np.sum(np.asarray(w)) > 0)):
      raise ValueError(f"batch['adversary_weights'] must be [num_adversaries="
                       f'{options.num_adversaries}] non-negative weights with a positive '
                       f'sum; got {w!r}.')
  if not (options.adversarial and options.num_steps):
    return
  shape = (options.num_adversaries, options.num_steps, options.max_batch)
  for name in ('inner_inputs', 'inner_harmful'):
    if name not in batch:
      raise ValueError(f'batch must hold {name!r} when num_steps > 0; got keys {sorted(batch)}.')
    for leaf in jax.tree.leaves(batch[name]):
      if tuple(leaf.shape[:3]) != shape:
        raise ValueError(f'batch[{name!r}] leaves must be [A, K, M, ...] = {shape} '
                         f'(num_adversaries, num_steps, max(batch_sizes)); got {leaf.shape}.')
  labels = batch['inner_harmful']
  validate.check_labels(np.reshape(labels, -1) if validate.is_concrete(labels)
                        else labels.reshape(-1), num_harmful, "batch['inner_harmful']")


def _ce(logits: Array, labels: Array) -> Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _accuracy(logits: Array, labels: Array) -> Array:
  return jnp.mean((jnp.argmax(logits, -1).astype(labels.dtype) == labels).astype(jnp.float32))


def harmful_logits(apply: contract.Apply, options: MLACOptions, params: Any, adversary: Any,
                   batch: Mapping[str, Any], base_features: Array, *,
                   key: Array) -> tuple[Array, Array]:
  """The harmful logits of every simulated adversary after k = 0..K steps.

  Args:
    apply, options: the encoder and the options.
    params: θ; adversary: φ (see `MLACState`).
    batch: as in `check_batch`.
    base_features: [B, D] the features of θ's encoder on the outer batch.
    key: the outer step's key; adversary a uses `split(key, A)[a]` (head draw, batch size).

  Returns:
    `(logits [A, K+1, B, C_h], gradient norms [A, K] (inner steps), or [A, K+1] with the
    adapted model's last one when `grad_norm_weight` > 0)`; with a runtime
    `batch['num_steps']` the entries after its steps repeat the last acting step's logits
    and have norm 0.
  """
  sizes = jnp.asarray(options.batch_sizes, jnp.int32)
  k = options.num_steps

  def one(key_a: Array, inner_inputs: Any, inner_labels: Array) -> tuple[Array, Array]:
    head_key, size_key = jax.random.split(key_a)
    head = adversary['head']
    if not options.learned_head:
      head = linear_init(head_key, *head.shape, dtype=base_features.dtype)
    lr = adversary['lr'] if options.learned_lr else options.init_lr
    batch_size = sizes[jax.random.randint(size_key, (), 0, len(options.batch_sizes))]
    logits0 = (base_features @ head)[None]
    logits, norms = logits0, jnp.zeros((0,), base_features.dtype)
    adapted = {'encoder': params['encoder'], 'head': head}
    if k:
      logits, norms, adapted = attack_trajectory(
          apply, params['encoder'], head, inner_inputs, inner_labels, batch['inputs'],
          learning_rate=lr, batch_size=batch_size, key=key_a, clip_norm=options.inner_clip,
          first_order=options.first_order, checkpoint=options.checkpoint,
          num_steps=batch.get('num_steps'))
      logits = jnp.concatenate([logits0, logits])
    if options.grad_norm_weight:  # the authors' last_grad_norm: the adapted model's gradient
      grads = jax.grad(lambda q: _ce(head_logits(apply, q, batch['inputs']),
                                     batch['harmful']))(adapted)
      norms = jnp.concatenate([norms, global_norm(grads, offset=NORM_OFFSET)[None]])
    return logits, norms

  keys = jax.random.split(key, options.num_adversaries)
  if k == 0:
    return jax.vmap(lambda key_a: one(key_a, None, None))(keys)
  return jax.vmap(one)(keys, batch['inner_inputs'], batch['inner_harmful'])


def mlac_losses(apply: contract.Apply, options: MLACOptions, params: Any, adversary: Any,
                batch: Mapping[str, Any], *, key: Array) -> tuple[tuple[Array, Array], dict]:
  """The defender's loss (2) and the adversary's meta-loss, with metrics.

  Args:
    apply: the encoder, `apply(params, inputs) -> Outputs` with `features` [B, D].
    options: `MLACOptions`.
    params: θ = {'encoder', 'head' [D, C_d]}.
    adversary: φ = {'head' [D, C_h], 'lr'}.
    batch: as in `check_batch`.
    key: the outer step's typed key.

  Returns:
    `((defender loss, adversary loss), metrics)`: the adversary loss is the mean plain
    harmful CE over adversaries and steps (0 without a harmful term).
  """
  feats = features(apply, params['encoder'], batch['inputs'])
  desired_logits = feats @ params['head']
  desired_ce = _ce(desired_logits, batch['desired'])
  metrics = {'desired_ce': desired_ce,
             'desired_acc': _accuracy(desired_logits, batch['desired'])}
  loss = options.desired_weight * desired_ce
  adversary_loss = jnp.zeros((), desired_ce.dtype)
  if options.adversarial:
    logits, norms = harmful_logits(apply, options, params, adversary, batch, feats, key=key)
    labels = batch['harmful']
    plain = jax.vmap(jax.vmap(lambda z: _ce(z, labels)))(logits)                 # [A, K+1]
    if options.calibrate:
      cal = lambda z: calibrated_ce(z, labels, num_iters=options.calibration_iters)
      harmful = jax.vmap(jax.vmap(cal))(logits)
    else:
      harmful = plain
    # Weights over adversaries [A] and steps [K+1] (module docstring: runtime K and A).
    weights = batch.get('adversary_weights', jnp.ones((logits.shape[0],), harmful.dtype))
    weights = jnp.asarray(weights, harmful.dtype) / jnp.sum(weights)
    k_max = logits.shape[1] - 1
    k = batch.get('num_steps', k_max)
    acting = (jnp.arange(k_max + 1) <= k).astype(harmful.dtype)                  # [K+1]
    mean = lambda v, m: (jnp.sum(weights[:, None] * m * v)                      # over a, k
                         / jnp.maximum(jnp.sum(m), 1))   # no acting norm (K = 0): 0
    loss = loss - options.harmful_weight * mean(harmful, acting)
    # Norms: of the acting inner steps, then the adapted model's (grad_norm_weight > 0).
    norm_mask = jnp.concatenate([(jnp.arange(k_max) < k).astype(harmful.dtype),
                                 jnp.ones((norms.shape[1] - k_max,), harmful.dtype)])
    if options.grad_norm_weight:
      loss = loss + options.grad_norm_weight * mean(norms, norm_mask)
    adversary_loss = mean(plain, acting)
    accuracy = jax.vmap(jax.vmap(lambda z: _accuracy(z, labels)))(logits)
    over_a = lambda v: jnp.sum(weights[:, None].astype(v.dtype) * v, 0)
    metrics.update(harmful_ce=mean(harmful, acting), harmful_ce_steps=over_a(harmful),
                   harmful_acc_steps=over_a(accuracy), adversary_loss=adversary_loss)
    if norms.shape[-1]:
      metrics['inner_grad_norm'] = mean(norms, norm_mask)
  metrics['loss'] = loss
  return (loss, adversary_loss), metrics


def mlac_grads(apply: contract.Apply, options: MLACOptions, params: Any, adversary: Any,
               batch: Mapping[str, Any], *, key: Array) -> tuple[Any, Any, dict]:
  """Gradients of the defender's loss in θ and of the adversary's meta-loss in φ.

  One forward pass, two pulls of its VJP (each objective has its own parameters, as in
  the authors' `train.py`). Second order unless `options.first_order`.

  Args:
    apply, options, params, adversary, batch, key: as in `mlac_losses`.

  Returns:
    `(dL/dθ, dL_adv/dφ, metrics)`; dL_adv/dφ is zero without a harmful term.
  """
  fn = lambda p, a: mlac_losses(apply, options, p, a, batch, key=key)
  (loss, adversary_loss), pull, metrics = jax.vjp(fn, params, adversary, has_aux=True)
  one, zero = jnp.ones_like(loss), jnp.zeros_like(loss)
  grads = pull((one, zero))[0]
  if options.adversarial and (options.learned_head or options.learned_lr):
    adversary_grads = pull((zero, jnp.ones_like(adversary_loss)))[1]
  else:
    adversary_grads = jax.tree.map(jnp.zeros_like, adversary)
  return grads, adversary_grads, metrics


def make_mlac(apply: contract.Apply, *, feature_dim: int, num_desired: int, num_harmful: int,
              options: MLACOptions = MLACOptions()) -> iterate.Iterative:
  """The MLAC outer training step as an `(init, step)` pair (module docstring).

  Args:
    apply: the encoder, `apply(params, inputs) -> Outputs` with `features` [B, D].
    feature_dim: D.
    num_desired: C_d, classes of the desired task.
    num_harmful: C_h, classes of the harmful task.
    options: `MLACOptions`.

  Returns:
    `Iterative(init, step)`: `init(encoder_params, *, key) -> MLACState` (heads from PyTorch's
    linear initialisation, lr = `init_lr`); `step(state, batch, key) -> (state, metrics)`,
    pure (jit it), its randomness `fold_in(key, state.step)`; metrics hold 'loss' and the
    terms of (2), the harmful CE and accuracy per inner step, the inner learning rate and
    the outer gradient norm.

  Raises:
    ValueError: a bad dimension or options that are not `MLACOptions`.
  """
  for name, value in (('feature_dim', feature_dim), ('num_desired', num_desired),
                      ('num_harmful', num_harmful)):
    validate.check_int(value, name, minimum=1)
  if not isinstance(options, MLACOptions):
    raise ValueError(f'options must be MLACOptions; got {type(options).__name__}.')
  learns_adversary = options.adversarial and (options.learned_head or options.learned_lr)

  def init(encoder_params: Any, *, key: Array) -> MLACState:
    head_key, adversary_key = jax.random.split(key)
    params = {'encoder': encoder_params, 'head': linear_init(head_key, feature_dim, num_desired)}
    adversary = {'head': linear_init(adversary_key, feature_dim, num_harmful),
                 'lr': jnp.asarray(options.init_lr, jnp.float32)}
    return MLACState(jnp.zeros((), jnp.int32), params, adversary, adam_init(params),
                     adam_init(adversary))

  def step(state: MLACState, batch: Mapping[str, Any], key: Array) -> tuple[MLACState, dict]:
    check_batch(batch, options, num_desired=num_desired, num_harmful=num_harmful)
    step_key = jax.random.fold_in(key, state.step)
    grads, adversary_grads, metrics = mlac_grads(apply, options, state.params,
                                                 state.adversary, batch, key=step_key)
    grads, metrics['grad_norm'] = clip_by_norm(grads, options.clip)
    params, opt = adam_step(state.params, grads, state.opt, options.outer_lr)
    adversary, adversary_opt = state.adversary, state.adversary_opt
    if learns_adversary:
      adversary_grads, _ = clip_by_norm(adversary_grads, options.clip)
      adversary, adversary_opt = adam_step(adversary, adversary_grads, adversary_opt,
                                           options.adversary_lr)
      adversary = dict(adversary, lr=jnp.clip(adversary['lr'], *options.lr_bounds))
    metrics['inner_lr'] = adversary['lr']
    return MLACState(state.step + 1, params, adversary, opt, adversary_opt), metrics

  return iterate.Iterative(init, step)
