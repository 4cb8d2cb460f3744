"""Random scene descriptions for the shapes data set, independent of the image size.

A scene is one class object (its kind is the label) on a textured background, plus 0-2
distractors (bars and dots, never a class kind) that keep clear of the class object and of
each other. Coordinates are normalised: (y, x) in [0, 1]^2 over the image, lengths in image
sides, so rendering the same scene at 32 or 64 pixels gives the same picture at two
resolutions. The number of random draws is fixed per scene, so scene i of a chunk does not
depend on the chunk's other scenes' contents.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lib.data._shapes_geometry import KINDS, segment_distance, segments_distance

DISTRACTOR_KINDS = ('bar', 'dot')
# Names of segmentation ids 1.. and box labels 0..: the class kinds, then the distractors.
CATEGORIES = KINDS + DISTRACTOR_KINDS
COLOURS = {
    'red': (0.9, 0.1, 0.1),
    'green': (0.1, 0.75, 0.15),
    'blue': (0.15, 0.3, 0.95),
    'yellow': (0.95, 0.9, 0.1),
    'magenta': (0.9, 0.15, 0.9),
    'cyan': (0.1, 0.9, 0.9),
    'white': (1.0, 1.0, 1.0),
    'orange': (1.0, 0.55, 0.0),
}
COLOUR_NAMES = tuple(COLOURS)
TEXTURES = ('striped', 'checkered', 'mottled')
MAX_DISTRACTORS = 2
NOISE_GRID = 5  # 'mottled' backgrounds upsample a NOISE_GRID x NOISE_GRID random grid.

_RADIUS_RANGE = (0.15, 0.25)  # Object size 2r: 30-50% of the image side.
_BAR_HALF_LENGTH = (0.09, 0.16)
_BAR_HALF_WIDTH = (0.03, 0.045)
_DOT_RADIUS = (0.05, 0.07)
_CLEARANCE = 0.04  # Minimum gap between objects, in image sides.
# Distractor positions tried per slot; a slot with none valid stays empty (about 1 in 1000).
_CANDIDATES = 16


class Scenes(NamedTuple):
  """N scene descriptions; D = MAX_DISTRACTORS slots, filled in order (slot 1 needs slot 0).

  Attributes:
    label: int64 [N], class object kind (index into KINDS).
    center: float32 [N, 2], class object centre (y, x).
    radius: float32 [N], class object radius; its outline lies within 0.95 * radius.
    angle: float32 [N], class object rotation in radians.
    colour: int64 [N], class object colour (index into COLOUR_NAMES).
    distractor_present: bool [N, D].
    distractor_kind: int64 [N, D], index into DISTRACTOR_KINDS.
    distractor_start: float32 [N, D, 2], one end (y, x) of the distractor's axis.
    distractor_end: float32 [N, D, 2], the other end (equal to start for dots).
    distractor_width: float32 [N, D], half-width of a bar or radius of a dot.
    distractor_colour: int64 [N, D], never the class object's colour.
    texture: int64 [N], background pattern (index into TEXTURES).
    background: float32 [N, 2, 3], the two low-saturation RGB colours of the pattern.
    texture_angle: float32 [N], pattern orientation in radians.
    texture_frequency: float32 [N], stripe/check cycles per image side.
    texture_phase: float32 [N], stripe phase in radians.
    noise: float32 [N, NOISE_GRID, NOISE_GRID], mottled pattern grid in [0, 1].
  """

  label: np.ndarray
  center: np.ndarray
  radius: np.ndarray
  angle: np.ndarray
  colour: np.ndarray
  distractor_present: np.ndarray
  distractor_kind: np.ndarray
  distractor_start: np.ndarray
  distractor_end: np.ndarray
  distractor_width: np.ndarray
  distractor_colour: np.ndarray
  texture: np.ndarray
  background: np.ndarray
  texture_angle: np.ndarray
  texture_frequency: np.ndarray
  texture_phase: np.ndarray
  noise: np.ndarray

  def take(self, rows: slice | np.ndarray) -> Scenes:
    """The scenes at `rows`."""
    return Scenes(*(field[rows] for field in self))

  @staticmethod
  def concatenate(parts: list[Scenes]) -> Scenes:
    """Stacks scene batches along N."""
    return Scenes(*(np.concatenate(fields) for fields in zip(*parts)))


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], shape) -> np.ndarray:
  """float32 uniform in [low, high)."""
  low, high = bounds
  return np.float32(low) + np.float32(high - low) * rng.random(shape, dtype=np.float32)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
  """Two low-saturation colours float32 [n, 2, 3] whose greys differ by 0.12-0.22."""
  grey = _uniform(rng, (0.2, 0.5), n)
  offset = _uniform(rng, (0.12, 0.22), n)
  greys = np.stack([grey, grey + offset], axis=1)
  tint = rng.normal(size=(n, 2, 3)).astype(np.float32)
  tint *= _uniform(rng, (0, 0.08), (n, 2, 1)) / np.linalg.norm(tint, axis=-1, keepdims=True)
  return np.clip(greys[..., None] + tint, 0, 1)


def _distractor_candidates(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
  """Random bars and dots, M = _CANDIDATES per slot.

  Returns:
    kind int64 [n, D, M], start and end float32 [n, D, M, 2], width float32 [n, D, M].
  """
  shape = (n, MAX_DISTRACTORS, _CANDIDATES)
  kind = rng.integers(len(DISTRACTOR_KINDS), size=shape)
  is_bar = kind == DISTRACTOR_KINDS.index('bar')
  half_length = np.where(is_bar, _uniform(rng, _BAR_HALF_LENGTH, shape), 0)
  width = np.where(is_bar, _uniform(rng, _BAR_HALF_WIDTH, shape), _uniform(rng, _DOT_RADIUS, shape))
  middle = _uniform(rng, (0, 1), shape + (2,))
  angle = _uniform(rng, (0, np.pi), shape)
  axis = half_length[..., None] * np.stack([np.sin(angle), np.cos(angle)], -1)
  return kind, middle - axis, middle + axis, width


def _pick(valid: np.ndarray, *fields: np.ndarray) -> tuple[np.ndarray, ...]:
  """First valid candidate per row: (any valid [n], then each field at that candidate)."""
  first = np.argmax(valid, axis=-1)
  rows = np.arange(len(valid))
  return (valid.any(-1),) + tuple(field[rows, first] for field in fields)


def _place_distractors(rng: np.random.Generator, n: int, center: np.ndarray, radius: np.ndarray,
                       colour: np.ndarray) -> dict[str, np.ndarray]:
  """Samples distractors that lie inside the image and keep clear of other objects.

  Args:
    rng: the source of randomness.
    n: number of scenes.
    center: float32 [n, 2], class object centres.
    radius: float32 [n], class object radii.
    colour: int64 [n], class object colours.

  Returns:
    The distractor_* fields of Scenes.
  """
  requested = rng.integers(MAX_DISTRACTORS + 1, size=n)
  kind, start, end, width = _distractor_candidates(rng, n)
  # Adding 1..len-1 modulo len picks any colour but the class object's.
  shift = 1 + rng.integers(len(COLOURS) - 1, size=(n, MAX_DISTRACTORS))
  distractor_colour = (colour[:, None] + shift) % len(COLOURS)

  inside = np.all((np.minimum(start, end) >= width[..., None]) &
                  (np.maximum(start, end) <= 1 - width[..., None]), axis=-1)
  to_object = segment_distance(center[:, None, None, 0], center[:, None, None, 1],
                               start[..., 0], start[..., 1], end[..., 0], end[..., 1])
  valid = inside & (to_object > radius[:, None, None] + width + _CLEARANCE)

  present0, kind0, start0, end0, width0 = _pick(valid[:, 0], kind[:, 0], start[:, 0], end[:, 0],
                                               width[:, 0])
  to_slot0 = segments_distance(start[:, 1], end[:, 1], start0[:, None], end0[:, None])
  valid1 = valid[:, 1] & (to_slot0 > width[:, 1] + width0[:, None] + _CLEARANCE)
  present1, kind1, start1, end1, width1 = _pick(valid1, kind[:, 1], start[:, 1], end[:, 1],
                                               width[:, 1])

  present = np.stack([present0 & (requested >= 1), present1 & present0 & (requested >= 2)], 1)
  return dict(
      distractor_present=present,
      distractor_kind=np.stack([kind0, kind1], 1),
      distractor_start=np.stack([start0, start1], 1),
      distractor_end=np.stack([end0, end1], 1),
      distractor_width=np.stack([width0, width1], 1),
      distractor_colour=distractor_colour)


def sample_scenes(rng: np.random.Generator, n: int) -> Scenes:
  """Draws `n` random scenes; labels, colours and textures are uniform and independent.

  Args:
    rng: the source of randomness; the same generator state gives the same scenes.
    n: number of scenes.

  Returns:
    Scenes with leading axis n.
  """
  label = rng.integers(len(KINDS), size=n)
  radius = _uniform(rng, _RADIUS_RANGE, n)
  center = radius[:, None] + _uniform(rng, (0, 1), (n, 2)) * (1 - 2 * radius[:, None])
  angle = _uniform(rng, (0, 2 * np.pi), n)
  colour = rng.integers(len(COLOURS), size=n)
  distractors = _place_distractors(rng, n, center, radius, colour)
  return Scenes(
      label=label, center=center, radius=radius, angle=angle, colour=colour, **distractors,
      texture=rng.integers(len(TEXTURES), size=n),
      background=_background(rng, n),
      texture_angle=_uniform(rng, (0, np.pi), n),
      texture_frequency=_uniform(rng, (3, 6), n),
      texture_phase=_uniform(rng, (0, 2 * np.pi), n),
      noise=_uniform(rng, (0, 1), (n, NOISE_GRID, NOISE_GRID)))
