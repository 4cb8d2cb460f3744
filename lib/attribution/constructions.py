"""The terms t(x) of the softmax-invariant manipulation: one small function per construction.

Lerma & Lucas 2023, "A Vulnerability of Attribution Methods Using Pre-Softmax Scores"
(arXiv 2307.03305). `lib.attribution.manipulate` adds t(x) = K·s(x) to every logit; this
module computes the unit term s(x) [B] of each construction (K = strength, A = the tap
[B, h, w, c], M = the mask [H, W] in {0, 1}, M̄ = M broadcast over the C input channels):

* `paper_unit`:   s = Σ_k A[0, 0, k] (the paper's proof of concept).
* `channel_unit`: s = Σ_ij C_ij, C = M_tap (M averaged over each tap cell) carried by an
  extra channel c + 1 of the tap, ignored downstream (steers Grad-CAM and HiResCAM to M).
* `input_unit`:   s = ⟨M̄, x⟩ (steers the input-gradient family and LRP to M).

and the per-input strengths of the adaptive variant (`input_scale`, `channel_scale`): the
sup-norm of the honest map the steering must dominate. What each construction does to each
attribution method, and why, is in the `lib.attribution.manipulate` docstring.

Every s is computed by `steer`, a dense layer of unit weights named `STEER_LAYER` that goes
through `lib.contract.apply_linear`, so LRP rules see t as one more linear layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lib import contract

Array = jax.Array
# inner(x, perturb) -> contract.Outputs: the wrapped model at fixed params, without rules.
Inner = Callable[[Array, Mapping[str, Array]], contract.Outputs]

# The name under which layer rules see the steering layer (`fnmatch` patterns match it).
STEER_LAYER = 'manipulation/steer'


def steer(u: Array, rules: contract.Rules | None) -> Array:
  """s = Σ_f u_f per example ([B, F] -> [B]) as a dense layer of unit weights, via a rule."""
  kernel = jnp.ones((u.shape[1], 1), u.dtype)
  return contract.apply_linear(rules, STEER_LAYER, contract.dense, u, kernel, None)[:, 0]


def _area_weights(size: int, cells: int) -> np.ndarray:
  """[cells, size]: the fraction of each of `cells` equal intervals of [0, size) in each unit."""
  edges = np.arange(cells + 1) * size / cells
  lo, hi = edges[:-1, None], edges[1:, None]
  pos = np.arange(size)[None, :]
  overlap = np.clip(np.minimum(hi, pos + 1) - np.maximum(lo, pos), 0, None)
  return overlap / (size / cells)


def mask_at_tap(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """The fraction of each tap cell inside `mask`: [H, W] -> [h, w] (exact area average).

  Tap cell (i, j) covers input rows [i·H/h, (i+1)·H/h) and columns likewise (the grid of a
  strided network with 'SAME' padding).

  Example:
    >>> mask_at_tap(np.eye(4), (2, 2))
    array([[0.5, 0. ],
           [0. , 0.5]])
  """
  rows = _area_weights(mask.shape[0], shape[0])
  cols = _area_weights(mask.shape[1], shape[1])
  return rows @ mask @ cols.T


def paper_unit(outputs: contract.Outputs, tap: str, rules: contract.Rules | None) -> Array:
  """s = Σ_k A[0, 0, k]: [B] from the tap [B, h, w, c] of the model's outputs."""
  return steer(outputs.taps[tap][:, 0, 0, :], rules)


def channel_unit(outputs: contract.Outputs, tap: str, mask: np.ndarray, extra: Array | None,
                 rules: contract.Rules | None) -> tuple[Array, dict[str, Array]]:
  """s = Σ_ij C_ij with the carrier C = M_tap (+ `extra`, a perturbation of the carrier).

  Returns:
    (s [B], the taps with `tap` augmented to [B, h, w, c + 1], C as the last channel).
  """
  act = outputs.taps[tap]
  carrier = jnp.broadcast_to(jnp.asarray(mask_at_tap(mask, act.shape[1:3]), act.dtype),
                             act.shape[:3])
  if extra is not None:
    carrier = carrier + extra
  taps = {**outputs.taps, tap: jnp.concatenate([act, carrier[..., None]], axis=-1)}
  return steer(carrier.reshape(len(act), -1), rules), taps


def input_unit(x: Array, mask: np.ndarray, rules: contract.Rules | None) -> Array:
  """s = ⟨M̄, x⟩: [B] from inputs [B, H, W, C] and the mask [H, W]."""
  weights = jnp.asarray(mask, x.dtype)[None, :, :, None]
  return steer((weights * x).reshape(len(x), -1), rules)


def input_scale(inner: Inner, x: Array, perturb: Mapping[str, Array]) -> Array:
  """‖∂z_ŷ/∂x‖_∞ per example [B]: the honest saliency of the top class (adaptive 'input')."""
  def top_logit(z):
    return inner(z, perturb).logits.max(-1).sum()
  return jnp.abs(jax.grad(top_logit)(x)).max(axis=(1, 2, 3))


def channel_scale(inner: Inner, x: Array, perturb: Mapping[str, Array], tap: str,
                  tap_aval: Any) -> Array:
  """max_ij |Σ_k w_k A_k| per example [B]: the honest pre-ReLU Grad-CAM of the top class."""
  def top_logit_at_tap(delta):
    outputs = inner(x, {**perturb, tap: perturb.get(tap, 0) + delta})
    return outputs.logits.max(-1).sum(), outputs.taps[tap]
  grad, act = jax.grad(top_logit_at_tap, has_aux=True)(
      jnp.zeros(tap_aval.shape, tap_aval.dtype))
  cam = jnp.einsum('bhwc,bc->bhw', act, grad.mean(axis=(1, 2)))
  return jnp.abs(cam).max(axis=(1, 2))
