"""Signed distances of the shapes scenes' objects, vectorised over pixels and images.

Class objects are described in their own frame: coordinates (u, v) in units of the object's
radius, centred on the object and rotated with it. Every kind fits inside the disc of
radius 0.95, so an object of radius r centred at least r from the borders lies fully inside
the image. Distances are exact or close to exact near the outline, which is all that
antialiasing needs: coverage = clip(1/2 - distance in pixels, 0, 1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Shape kinds of the class object, in class-index order.
KINDS = ('circle', 'square', 'triangle', 'cross', 'star', 'ring', 'crescent', 'diamond')

_TRIANGLE_NORMALS = np.array([[np.cos(a), np.sin(a)] for a in np.deg2rad([90, 210, 330])],
                             np.float32)


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  return np.hypot(u, v) - 0.9


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  return np.maximum(np.abs(u), np.abs(v)) - 0.66


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Equilateral, circumradius 0.95 (inradius 0.475)."""
  return np.maximum.reduce([u * nu + v * nv for nu, nv in _TRIANGLE_NORMALS]) - 0.475


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """A plus sign: two arms of half-length 0.9 and half-width 0.25."""
  au, av = np.abs(u), np.abs(v)
  return np.minimum(np.maximum(au - 0.9, av - 0.25), np.maximum(au - 0.25, av - 0.9))


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Five points: the radius goes linearly from 0.95 at a tip to 0.35 between tips."""
  phase = np.mod(np.arctan2(v, u) * (5 / (2 * np.pi)), 1)
  outline = 0.35 + 0.6 * np.abs(2 * phase - 1)
  return 0.5 * (np.hypot(u, v) - outline)  # 0.5: radial distance overstates the normal one.


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Annulus from radius 0.5 to 0.95."""
  return np.abs(np.hypot(u, v) - 0.725) - 0.225


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Disc of radius 0.92 minus a disc of radius 0.7 shifted by 0.42 along u."""
  return np.maximum(np.hypot(u, v) - 0.92, 0.7 - np.hypot(u - 0.42, v))


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Rhombus with half-diagonals 0.95 (along u) and 0.45 (along v)."""
  a, b = 0.95, 0.45
  return (np.abs(u) / a + np.abs(v) / b - 1) * (a * b / np.hypot(a, b))


_DISTANCES: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _circle, _square, _triangle, _cross, _star, _ring, _crescent, _diamond)


def kind_distance(kinds: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Signed distance to the outline of each image's class object (negative inside).

  Args:
    kinds: int [N], index into KINDS per image.
    u: float32 [N, H, W], pixel coordinates in the object's frame (radius units).
    v: float32 [N, H, W], the other coordinate.

  Returns:
    float32 [N, H, W] in radius units.
  """
  distance = np.empty_like(u)
  for kind, fn in enumerate(_DISTANCES):
    chosen = kinds == kind
    if chosen.any():
      distance[chosen] = fn(u[chosen], v[chosen])
  return distance


def segment_distance(py: np.ndarray, px: np.ndarray, ay: np.ndarray, ax: np.ndarray,
                     by: np.ndarray, bx: np.ndarray) -> np.ndarray:
  """Distance from points p to segments [a, b] (a == b allowed), all arrays broadcasting."""
  ey, ex = by - ay, bx - ax
  length2 = np.maximum(ey * ey + ex * ex, 1e-12)
  t = np.clip(((py - ay) * ey + (px - ax) * ex) / length2, 0, 1)
  return np.hypot(py - ay - t * ey, px - ax - t * ex)


def segments_distance(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
  """Distance between segments [a, b] and [c, d], points given as [..., 2] (y, x) arrays."""
  def point_to(p, start, end):
    return segment_distance(p[..., 0], p[..., 1], start[..., 0], start[..., 1], end[..., 0],
                            end[..., 1])

  def turn(p, q, r):  # Sign of the turn p -> q -> r.
    return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) -
                   (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

  crossing = (turn(a, b, c) * turn(a, b, d) < 0) & (turn(c, d, a) * turn(c, d, b) < 0)
  ends = np.minimum(np.minimum(point_to(a, c, d), point_to(b, c, d)),
                    np.minimum(point_to(c, a, b), point_to(d, a, b)))
  return np.where(crossing, 0, ends)


def coverage(distance_px: np.ndarray) -> np.ndarray:
  """Antialiased pixel coverage in [0, 1] from a signed distance in pixels."""
  return np.clip(0.5 - distance_px, 0, 1)
