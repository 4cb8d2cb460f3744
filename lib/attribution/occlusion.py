"""Occlusion: the drop in score when a sliding window of the input is replaced by a baseline.

Zeiler & Fergus, ECCV 2014, "Visualizing and Understanding Convolutional Networks", §4.2,
with Captum's `Occlusion` semantics: window r (all channels of an h_w × w_w patch at
stride (s_h, s_w), windows clipped at the border) gives Δ_r = S_t(x) - S_t(x with window r
set to the baseline), and each pixel receives the mean Δ_r over the windows covering it:

  A_hw = Σ_r Δ_r M_r[h, w] / Σ_r M_r[h, w].

Window r = (i, j) starts at (i·s_h, j·s_w), i < ceil((H - h_w)/s_h) + 1 and likewise for j, so
every pixel is covered. Masks are separable, M_r[h, w] = R_i[h]·C_j[w], so the sum is one
contraction over (i, j). All windows run in one jitted program, folded into the model's
batch dimension a chunk at a time.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate
from lib.attribution import scores as scores_lib

Array = jax.Array


def _window_masks(size: int, window: int, stride: int) -> np.ndarray:
  """[n, size] 0/1 masks of the windows along one axis (Captum's positions, clipped)."""
  starts = stride * np.arange(math.ceil((size - window) / stride) + 1)
  pos = np.arange(size)
  return ((pos >= starts[:, None]) & (pos < starts[:, None] + window)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=('apply', 'score', 'window', 'stride',
                                             'windows_per_chunk'))
def _occlusion(apply, params, x, target, baseline, *, score, window, stride, windows_per_chunk):
  rows = jnp.asarray(_window_masks(x.shape[1], window[0], stride[0]), x.dtype)  # [I, H]
  cols = jnp.asarray(_window_masks(x.shape[2], window[1], stride[1]), x.dtype)  # [J, W]
  baseline = jnp.broadcast_to(baseline, x.shape).astype(x.dtype)
  score_of = lambda z: scores_lib.target_scores(scores_lib.logits_of(apply(params, z)), target,
                                                score)

  def occluded_score(ij):
    mask = (rows[ij[0]][:, None] * cols[ij[1]][None, :])[None, :, :, None]
    return score_of(x + mask * (baseline - x))

  grid = jnp.stack(jnp.meshgrid(jnp.arange(len(rows)), jnp.arange(len(cols)), indexing='ij'))
  occluded = jax.lax.map(occluded_score, grid.reshape(2, -1).T,
                         batch_size=windows_per_chunk or len(rows) * len(cols))
  drops = (score_of(x) - occluded).reshape(len(rows), len(cols), -1)  # [I, J, B]
  total = jnp.einsum('ijb,ih,jw->bhw', drops, rows, cols)
  counts = rows.sum(0)[:, None] * cols.sum(0)[None, :]
  return jnp.broadcast_to((total / counts)[..., None], x.shape)


def _pair(value: Any, name: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
    raise ValueError(f'{name} must be a positive int or a pair (height, width) of them; '
                     f'got {value!r}.')
  return int(pair[0]), int(pair[1])


def occlusion(apply: scores_lib.Apply, params: Any, x: Array, target: Array, *,
              score: str = 'logit', key: Array | None = None,
              window: int | tuple[int, int] = (4, 4), stride: int | tuple[int, int] = (2, 2),
              baseline: Array | float = 0.0, internal_batch_size: int | None = 1024) -> Array:
  """Mean score drop of the occluding windows that cover each pixel.

  Zeiler & Fergus 2014, §4.2, as Captum's `Occlusion(...).attribute(x,
  sliding_window_shapes=(C, *window), strides=(C, *stride), baselines=baseline)`.

  Args:
    apply: `apply(params, x)` -> logits [B, K] or an object with `.logits`.
    params: the model's parameters.
    x: [B, H, W, C] float inputs.
    target: [B] int classes to explain.
    score: what is compared, one of `scores.SCORES` (Δ = S_t(x) - S_t(occluded)).
    key: unused (deterministic method); accepted so all methods share one signature.
    window: (h_w, w_w) window size in pixels (covers all channels), or one int for both.
    stride: (s_h, s_w) step between windows, each <= the window size, or one int.
    baseline: value the window is set to: a scalar, [H, W, C] or [B, H, W, C].
    internal_batch_size: at most this many model rows per forward pass: windows are run
      max(1, internal_batch_size // B) at a time; None runs all windows in one batch.

  Returns:
    [B, H, W, C] attributions (equal across channels).

  Example:
    >>> maps = occlusion(model.apply, variables, x, labels, window=8, stride=4,
    ...                  score='probability')
  """
  del key
  scores_lib.check_inputs(apply, params, x, target, score)
  window, stride = _pair(window, 'window'), _pair(stride, 'stride')
  for axis, size, w, s in zip(('height', 'width'), x.shape[1:3], window, stride):
    if w > size:
      raise ValueError(f'window {window} exceeds the input {axis} {size}.')
    if s > w and w < size:
      raise ValueError(f'stride {stride} must not exceed window {window} (pixels would be '
                       'left uncovered).')
  scores_lib.check_baseline(baseline, x)
  if internal_batch_size is not None:
    validate.check_positive(internal_batch_size, 'internal_batch_size')
  windows_per_chunk = (None if internal_batch_size is None
                       else max(1, internal_batch_size // len(x)))
  return _occlusion(apply, params, x, target, baseline, score=score, window=window,
                    stride=stride, windows_per_chunk=windows_per_chunk)
