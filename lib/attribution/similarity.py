"""Structural similarity of heatmaps (Wang et al. 2004) and the Gaussian filter it uses.

`ssim(h1, h2)` compares two heatmaps `[B, H, W]` as images, each min-max normalised to
[0, 1], with scikit-image's window (11 × 11 Gaussian, σ = 1.5) and constants: one value per
example, `[B]`. Pure and jitted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lib.attribution.ranking import _check_pair

Array = jax.Array

# SSIM constants (Wang et al. 2004): 11 x 11 Gaussian window with sigma 1.5
# (radius 5 = int(3.5 * 1.5 + 0.5), the window scikit-image derives), K1, K2, data range 1.
_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03



def gaussian_filter(images: Array, *, sigma: float, radius: int, padding: str = 'valid') -> Array:
  """Separable Gaussian filter over the last two axes (no validation: callers validate).

  The window has 2 * radius + 1 taps exp(-d^2 / (2 sigma^2)), normalised to sum 1, as
  `scipy.ndimage.gaussian_filter(..., truncate=radius / sigma)`.

  Args:
    images: [N, H, W].
    sigma: standard deviation in pixels.
    radius: half-width of the window in pixels (static).
    padding: 'valid' (output [N, H - 2r, W - 2r], no border effects) or 'edge' (output
      [N, H, W], borders extended by repeating the edge pixel).

  Returns:
    The filtered images.
  """
  taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2.0 * sigma**2))
  taps = jnp.asarray(taps / taps.sum(), images.dtype)
  if padding == 'edge':
    images = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius)), mode='edge')
  x = images[..., None]
  for kernel in (taps.reshape(-1, 1, 1, 1), taps.reshape(1, -1, 1, 1)):
    x = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     precision=jax.lax.Precision.HIGHEST)
  return x[..., 0]


def _unit_range(heatmaps: Array) -> Array:
  """Min-max normalises each [H, W] map to [0, 1]; a constant map becomes all zeros."""
  lo = heatmaps.min(axis=(-2, -1), keepdims=True)
  span = heatmaps.max(axis=(-2, -1), keepdims=True) - lo
  return (heatmaps - lo) / jnp.where(span > 0, span, 1)


@jax.jit
def _ssim(heatmaps1: Array, heatmaps2: Array) -> Array:
  x, y = _unit_range(heatmaps1), _unit_range(heatmaps2)
  stats = gaussian_filter(jnp.concatenate([x, y, x * x, y * y, x * y]), sigma=_SSIM_SIGMA,
                          radius=_SSIM_RADIUS)
  mx, my, mxx, myy, mxy = jnp.split(stats, 5)
  vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
  c1, c2 = _SSIM_K1**2, _SSIM_K2**2  # data range 1
  index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  return index.mean(axis=(-2, -1))


def ssim(heatmaps1: Array, heatmaps2: Array) -> Array:
  """Mean structural similarity of two heatmaps (Wang et al. 2004, Eq. 13, Gaussian-weighted).

  Each map is first min-max normalised to [0, 1] on its own ((h - min) / (max - min); a
  constant map becomes zeros), so the data range is 1 and the index ignores the maps'
  scales and offsets. Local statistics use an 11 x 11 Gaussian window with sigma 1.5 and
  population (co)variances; K1 = 0.01, K2 = 0.03; the index is averaged over the window
  positions that lie inside the map (no padding). This matches
  `skimage.metrics.structural_similarity(u1, u2, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)` on the normalised maps u1, u2. Adebayo et al.
  2018 compare |maps| this way; take absolute values (or `localisation.to_heatmap`) first if
  the sign should not matter.

  Args:
    heatmaps1: [B, H, W] maps, H, W >= 11.
    heatmaps2: [B, H, W] maps, same shape.

  Returns:
    [B] similarity in [-1, 1]; 1 for maps equal up to a positive affine change.

  Example:
    >>> h = jax.random.uniform(jax.random.key(0), (2, 16, 16))
    >>> jnp.round(ssim(h, 3 * h + 1), 4)
    Array([1., 1.], dtype=float32)
  """
  _check_pair(heatmaps1, heatmaps2, ('heatmaps1', 'heatmaps2'), ndim=3)
  if min(heatmaps1.shape[1:]) < 2 * _SSIM_RADIUS + 1:
    raise ValueError(f'heatmaps1 must be at least {2 * _SSIM_RADIUS + 1} x {2 * _SSIM_RADIUS + 1} '
                     f'(the SSIM window); got shape {tuple(heatmaps1.shape)}.')
  return _ssim(heatmaps1, heatmaps2)
