"""The Square attack's sampling distributions: square sides, initialisations, proposals.

Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search" (ECCV), Algorithm 2 (ℓ∞) and Algorithm 3 (ℓ2). Images
are [B, H, W, C] in [0, 1]; ν = x̂ − x is the perturbation of the current best point x̂, in
the ε-ball. A proposal rewrites one s×s window of ν per example (ℓ2: and clears a second
one), at a position drawn uniformly per example from the key; every proposal lies in the
ε-ball and in [0, 1] by construction. The side s is one scalar per iteration (`side`).

Where torchattacks' `Square` (a port of AutoAttack's) departs from the paper, this follows
the paper and the authors' code: corners are drawn from {0, …, H − s} (torchattacks: up to
H − s − 1, so its squares never reach the last row and column), and an ℓ2 window's budget
is per channel (torchattacks sums ‖ν_W1∪W2‖² over channels, then rescales ν to ε). Both make
it weaker (about 3 points more robust accuracy on 16×16 images, tests/attacks/test_square.py).
Windows and the transposition of η are drawn per example (torchattacks: one per iteration
for the whole batch; the distribution each example sees is the same).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lib.attacks import projections

Array = jax.Array

# Iterations (per 10 000 queries) after which p is halved: the paper's schedule (§4, its
# code's `p_selection`), stretched or shrunk to the query budget.
HALVING_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# The ℓ2 initialisation tiles a centred GRID × GRID grid of squares of side min(H, W) // GRID.
GRID = 5


def _side_for(p: float, height: int, width: int, norm: str) -> int:
  """s = round(√(p·H·W)) (the square covers a share p of the pixels); ℓ2: odd and ≥ 3."""
  s = round(math.sqrt(p * height * width))
  if norm == 'l2':
    s = max(s, 3)
    s += 1 - s % 2
  return max(min(s, height, width), 1)


def side(i: Array, *, n_queries: int, p_init: float, height: int, width: int,
         norm: str) -> Array:
  """Side of the squares of proposal i (0-based) of a run of `n_queries` queries.

  p_i = p_init / 2^k(i), where k(i) counts the points of `HALVING_POINTS` below
  ⌊10 000 · i / n_queries⌋; s_i = round(√(p_i·H·W)) ≥ 1 (ℓ2: odd, ≥ 3), at most min(H, W).

  Args:
    i: int32 scalar, the number of proposals made before this one (may be traced).
    n_queries: the query budget the schedule is stretched to.
    p_init: share of the pixels the first squares cover, in (0, 1].
    height, width: image size in pixels.
    norm: 'linf' or 'l2'.

  Returns:
    int32 scalar side in pixels.
  """
  # ⌊10 000·i / n⌋ > t  ⇔  i ≥ ⌈(t + 1)·n / 10 000⌉, exact in integers.
  starts = np.array([-(-(t + 1) * n_queries // 10_000) for t in HALVING_POINTS], np.int32)
  sides = np.array([_side_for(p_init / 2**k, height, width, norm)
                    for k in range(len(HALVING_POINTS) + 1)], np.int32)
  halvings = jnp.sum(i >= jnp.asarray(starts), dtype=jnp.int32)
  return jnp.asarray(sides)[halvings]


def _corners(key: Array, s: Array, batch: int, height: int, width: int) -> tuple[Array, Array]:
  """[B] top-left corners, uniform over the (H − s + 1)(W − s + 1) positions of an s×s window."""
  k_row, k_col = jax.random.split(key)
  rows = jax.random.randint(k_row, (batch,), 0, height - s + 1, dtype=jnp.int32)
  cols = jax.random.randint(k_col, (batch,), 0, width - s + 1, dtype=jnp.int32)
  return rows, cols


def _offsets(rows: Array, cols: Array, height: int, width: int) -> tuple[Array, Array]:
  """Pixel coordinates relative to per-example corners: ([B, H, 1], [B, 1, W])."""
  a = jnp.arange(height, dtype=jnp.int32)[None, :, None] - rows[:, None, None]
  b = jnp.arange(width, dtype=jnp.int32)[None, None, :] - cols[:, None, None]
  return a, b


def _window(key: Array, s: Array, batch: int, height: int,
            width: int) -> tuple[Array, Array, Array]:
  """A random s×s window per example: (mask [B, H, W], row offsets [B, H, 1], col [B, 1, W])."""
  a, b = _offsets(*_corners(key, s, batch, height, width), height, width)
  return (a >= 0) & (a < s) & (b >= 0) & (b < s), a, b


def _unit(v: Array, axes: tuple[int, ...]) -> Array:
  """v / ‖v‖₂ over `axes` (0 where v = 0)."""
  n = jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))
  return jnp.where(n > 0, v / jnp.where(n > 0, n, 1), 0)


def eta(s: Array, size: int, dtype: jnp.dtype) -> Array:
  """The ℓ2 square pattern η of side s (paper, Eq. 2), on a [size, size] canvas.

  Each half of the square (top ⌊s/2⌋ rows, bottom s − ⌊s/2⌋) holds concentric rectangles
  around its centre: cell (r, c) at Chebyshev distance d from the centre gets
  Σ_{m=d+1}^{⌊s/2⌋+1} 1/m². Each half has unit ℓ2 norm, the bottom one negated, and the
  whole pattern unit ℓ2 norm; cells beyond s are 0.

  Args:
    s: int32 scalar side, 1 ≤ s ≤ size (may be traced).
    size: static side of the canvas.
    dtype: float dtype of the result.

  Returns:
    [size, size] pattern.
  """
  r = jnp.arange(size, dtype=jnp.int32)[:, None]
  c = jnp.arange(size, dtype=jnp.int32)[None, :]
  top = s // 2
  m = jnp.arange(1, size + 2, dtype=dtype)
  tail = jnp.concatenate([jnp.zeros(1, dtype), jnp.cumsum(1 / (m * m))])  # tail[n] = Σ_{m≤n} 1/m²
  reach = tail[s // 2 + 1]
  col_d = jnp.abs(c - s // 2)
  d_top = jnp.maximum(jnp.abs(r - top // 2), col_d)
  d_bottom = jnp.maximum(jnp.abs(r - top - (s - top) // 2), col_d)
  in_cols = c < s
  upper = jnp.where((r < top) & in_cols, reach - tail[jnp.minimum(d_top, size)], 0)
  lower = jnp.where((r >= top) & (r < s) & in_cols, reach - tail[jnp.minimum(d_bottom, size)], 0)
  return _unit(_unit(upper, (0, 1)) - _unit(lower, (0, 1)), (0, 1))


def _paint(pattern: Array, a: Array, b: Array, flip: Array) -> Array:
  """pattern[a, b] (or pattern[b, a] where `flip`), for offsets inside the canvas."""
  last = pattern.shape[0] - 1
  a, b = jnp.clip(a, 0, last), jnp.clip(b, 0, last)
  return pattern[jnp.where(flip, b, a), jnp.where(flip, a, b)]


def linf_init(key: Array, x: Array, eps: Array) -> Array:
  """Vertical stripes: x̂ = clip(x + ε·σ, 0, 1), σ = ±1 per (example, column, channel).

  Args:
    key: the initialisation's key.
    x: [B, H, W, C] clean images.
    eps: ε ≥ 0 scalar.

  Returns:
    [B, H, W, C] starting points.
  """
  b, _, w, c = x.shape
  stripes = jax.random.rademacher(key, (b, 1, w, c), x.dtype)
  return jnp.clip(x + eps * stripes, 0, 1)


def l2_init(key: Array, x: Array, eps: Array) -> Array:
  """A centred GRID × GRID grid of ±η squares of side min(H, W) // 5, scaled to ‖ν‖₂ = ε.

  Each square gets its own sign per channel and is transposed with probability 1/2. (The
  authors' code tiles H // s squares per side: the same 5 for H = 16, 32 or 224.)

  Args:
    key: the initialisation's key.
    x: [B, H, W, C] clean images.
    eps: ε ≥ 0 scalar.

  Returns:
    [B, H, W, C] starting points clip(x + ν, 0, 1).
  """
  b, h, w, c = x.shape
  s = max(min(h, w) // GRID, 1)
  k_sign, k_flip = jax.random.split(key)
  signs = jax.random.rademacher(k_sign, (b, GRID, GRID, c), x.dtype)
  flips = jax.random.bernoulli(k_flip, 0.5, (b, GRID, GRID))
  rows = jnp.arange(h, dtype=jnp.int32) - (h - GRID * s) // 2
  cols = jnp.arange(w, dtype=jnp.int32) - (w - GRID * s) // 2
  in_grid = (((rows >= 0) & (rows < GRID * s))[:, None]
             & ((cols >= 0) & (cols < GRID * s))[None, :])
  tile_r = jnp.clip(rows // s, 0, GRID - 1)[:, None]
  tile_c = jnp.clip(cols // s, 0, GRID - 1)[None, :]
  values = _paint(eta(jnp.int32(s), s, x.dtype), (rows % s)[None, :, None],
                  (cols % s)[None, None, :], flips[:, tile_r, tile_c])
  delta = jnp.where(in_grid[None, :, :, None], values[..., None] * signs[:, tile_r, tile_c], 0)
  return jnp.clip(x + eps * _unit(delta, (1, 2, 3)), 0, 1)


def linf_proposal(key: Array, x: Array, x_best: Array, eps: Array, s: Array) -> Array:
  """Algorithm 2: one s×s window of ν set to a vertex ±ε per channel; x_new clipped to [0, 1].

  The paper adds ±2ε to x̂ on the window and projects onto the ball, which lands on the
  same vertex x + ε·σ.

  Args:
    key: the proposal's key.
    x: [B, H, W, C] clean images.
    x_best: [B, H, W, C] current best points (in the ball and [0, 1]).
    eps: ε ≥ 0 scalar.
    s: int32 scalar side.

  Returns:
    [B, H, W, C] proposals.
  """
  b, h, w, c = x.shape
  k_window, k_sign = jax.random.split(key)
  inside, _, _ = _window(k_window, s, b, h, w)
  sign = jax.random.rademacher(k_sign, (b, 1, 1, c), x.dtype)
  return jnp.clip(jnp.where(inside[..., None], x + eps * sign, x_best), 0, 1)


def l2_proposal(key: Array, x: Array, x_best: Array, eps: Array, s: Array) -> Array:
  """Algorithm 3: mass of ν moved from window W2 (cleared) into window W1 (a new ±η square).

  Per channel i, with ν = x̂ − x, ε_u² = max(ε² − ‖ν‖₂², 0) the unused budget and ρ_i = ±1:

      ν_W1,i ← ε_i · u / ‖u‖,  u = ρ_i η + ν_W1,i / ‖ν_W1,i‖,  ε_i² = ‖ν_W1∪W2,i‖² + ε_u² / C
      ν_W2∖W1,i ← 0

  so ‖ν‖₂ becomes ε exactly (a projection onto the ball removes float rounding); then
  x_new = clip(x + ν, 0, 1). η is transposed with probability 1/2 per example.

  Args:
    key: the proposal's key.
    x: [B, H, W, C] clean images.
    x_best: [B, H, W, C] current best points (in the ball and [0, 1]).
    eps: ε ≥ 0 scalar.
    s: int32 scalar side.

  Returns:
    [B, H, W, C] proposals.
  """
  b, h, w, c = x.shape
  k_w1, k_w2, k_sign, k_flip = jax.random.split(key, 4)
  in_1, a, col = _window(k_w1, s, b, h, w)
  in_2, _, _ = _window(k_w2, s, b, h, w)
  in_1, in_2 = in_1[..., None], in_2[..., None]
  flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1))
  pattern = _paint(eta(s, max(h, w), x.dtype), a, col, flip)[..., None]
  rho = jax.random.rademacher(k_sign, (b, 1, 1, c), x.dtype)
  nu = x_best - x
  squared = lambda v, axes: jnp.sum(v * v, axis=axes, keepdims=True)
  unused = jnp.maximum(eps * eps - squared(nu, (1, 2, 3)), 0)
  budget = jnp.sqrt(squared(jnp.where(in_1 | in_2, nu, 0), (1, 2)) + unused / c)
  u = rho * pattern + _unit(jnp.where(in_1, nu, 0), (1, 2))
  new = jnp.where(in_1, budget * _unit(jnp.where(in_1, u, 0), (1, 2)), jnp.where(in_2, 0, nu))
  return projections.clip_to_box(x, projections.project(new, eps, 'l2'))


INIT = {'linf': linf_init, 'l2': l2_init}
PROPOSAL = {'linf': linf_proposal, 'l2': l2_proposal}
