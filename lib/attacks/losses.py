"""Attack losses: per-example objectives the attacker maximises, untargeted or targeted.

Each loss maps logits [B, K] and labels [B] (and, targeted, target classes [B]) to [B]
values; attacks ascend their sum (examples are independent). Conventions follow
torchattacks / AutoAttack so results are comparable:

| name | untargeted (y = true class) | targeted (t = target class) |
| --- | --- | --- |
| 'ce' | CE(z, y) = logsumexp(z) − z_y | −CE(z, t) |
| 'margin' | max_{j≠y} z_j − z_y (Carlini & Wagner 2017, f₆ without κ) | z_t − max_{j≠t} z_j |
| 'dlr' | −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12) | −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12) |

z_π1 ≥ z_π2 ≥ ... are the sorted logits. DLR (Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", Eq. 5 and its
targeted form) is invariant to shifting and rescaling the logits, so a saturated softmax
(probabilities exactly 1 in float32, zero cross-entropy gradient) does not mask it. The
targeted DLR needs K ≥ 4 classes, the untargeted one K ≥ 3.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Loss = Callable[..., Array]


def _pick(z: Array, labels: Array) -> Array:
  return jnp.take_along_axis(z, labels[:, None].astype(jnp.int32), axis=1)[:, 0]


def _max_other(z: Array, labels: Array) -> Array:
  """max_{j ≠ labels} z_j per row."""
  mask = jax.nn.one_hot(labels, z.shape[-1], dtype=bool)
  return jnp.max(jnp.where(mask, -jnp.inf, z), axis=-1)


def ce(logits: Array, labels: Array, target: Array | None = None) -> Array:
  """Cross-entropy of the true class (untargeted) or minus that of `target` (targeted)."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -_pick(logp, labels) if target is None else _pick(logp, target)


def margin(logits: Array, labels: Array, target: Array | None = None) -> Array:
  """Carlini-Wagner margin: > 0 exactly when the attack succeeds."""
  if target is None:
    return _max_other(logits, labels) - _pick(logits, labels)
  return _pick(logits, target) - _max_other(logits, target)


def dlr(logits: Array, labels: Array, target: Array | None = None) -> Array:
  """Difference of logits ratio (Croce & Hein 2020), untargeted or targeted."""
  z = jnp.sort(logits, axis=-1)
  zy = _pick(logits, labels)
  if target is None:
    return -(zy - _max_other(logits, labels)) / (z[:, -1] - z[:, -3] + 1e-12)
  return -(zy - _pick(logits, target)) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)


LOSSES: dict[str, Loss] = {'ce': ce, 'margin': margin, 'dlr': dlr}


def get_loss(name: str) -> Loss:
  """The loss called `name` (one of `LOSSES`).

  Raises:
    ValueError: unknown name.
  """
  if name not in LOSSES:
    raise ValueError(f'loss={name!r} is not valid; expected one of {sorted(LOSSES)}.')
  return LOSSES[name]
