"""Renders shapes scenes to images and dense annotations, vectorised over a batch.

Drawing order: background, distractor slots, then the class object, each layer blended
with its antialiased coverage. A pixel belongs to a layer when the layer covers at least
half of it; since distractors keep clear of the class object, the class object's evidence
mask is exactly its visible pixels and equals `segmentation == label + 1`.

For speed, each layer is evaluated only in a square window around it (the same size for
the whole batch, at a per-image position) and blended into channel-first planes through
flat indices; only the background is computed over whole images.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lib.data import _image_ops
from lib.data._shapes_geometry import KINDS, coverage, kind_distance, segment_distance
from lib.data._shapes_scene import COLOURS, MAX_DISTRACTORS, TEXTURES, Scenes

_PALETTE = np.array(list(COLOURS.values()), np.float32)
_OBJECT_EXTENT = 0.95  # Class objects lie within 0.95 * radius of their centre.


def _striped(scenes: Scenes, y: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Soft stripes along texture_angle."""
  cos, sin = (f(scenes.texture_angle)[:, None, None] for f in (np.cos, np.sin))
  wave = 2 * np.pi * scenes.texture_frequency[:, None, None] * (y * cos + x * sin)
  return np.clip(0.5 + 1.5 * np.sin(wave + scenes.texture_phase[:, None, None]), 0, 1)


def _checkered(scenes: Scenes, y: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Soft checkerboard rotated by texture_angle."""
  cos, sin = (f(scenes.texture_angle)[:, None, None] for f in (np.cos, np.sin))
  cycles = 2 * np.pi * scenes.texture_frequency[:, None, None]
  product = np.sin(cycles * (y * cos + x * sin)) * np.sin(cycles * (x * cos - y * sin))
  return np.clip(0.5 + 3 * product, 0, 1)


def _mottled(scenes: Scenes, y: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Smooth noise: the scene's random grid, bilinearly upsampled."""
  return _image_ops.resize_bilinear(scenes.noise, y.shape[1], x.shape[2])


_PATTERNS = {'striped': _striped, 'checkered': _checkered, 'mottled': _mottled}


def _background(scenes: Scenes, size: int) -> np.ndarray:
  """Channel-first RGB float32 [3, n, S, S]: each pattern between its two colours."""
  coords = (np.arange(size, dtype=np.float32) + 0.5) / size
  y, x = coords[None, :, None], coords[None, None, :]
  pattern = np.empty((len(scenes.label), size, size), np.float32)
  for texture, name in enumerate(TEXTURES):
    chosen = scenes.texture == texture
    if chosen.any():
      pattern[chosen] = _PATTERNS[name](scenes.take(chosen), y, x)
  planes = np.empty((3,) + pattern.shape, np.float32)
  for plane, low, high in zip(planes, scenes.background[:, 0].T, scenes.background[:, 1].T):
    np.multiply(pattern, (high - low)[:, None, None], out=plane)
    plane += low[:, None, None]
  return planes


class _Window(NamedTuple):
  """A width x width pixel window per image.

  Attributes:
    y: float32 [n, width, 1], normalised row coordinates of the window's pixel centres.
    x: float32 [n, 1, width], column coordinates.
    corner: int64 [n, 2], (row, column) of the window's top-left pixel.
    flat: int64 [n, width, width], indices of the window's pixels in a flat [n, S, S] array.
  """

  y: np.ndarray
  x: np.ndarray
  corner: np.ndarray
  flat: np.ndarray


def _window(center: np.ndarray, extent: float, size: int) -> _Window:
  """Windows that contain every pixel within `extent` (+ 1 pixel) of `center` [n, 2]."""
  width = min(size, int(np.ceil(2 * extent * size)) + 4)
  corner = np.clip(np.round(center * size - width / 2), 0, size - width).astype(np.int64)
  rows, cols = (corner[:, axis, None] + np.arange(width) for axis in (0, 1))
  image = np.arange(len(center))[:, None, None] * size
  return _Window(y=((rows + 0.5) / size).astype(np.float32)[:, :, None],
                 x=((cols + 0.5) / size).astype(np.float32)[:, None, :],
                 corner=corner, flat=(image + rows[:, :, None]) * size + cols[:, None, :])


def _object_layer(scenes: Scenes, size: int) -> tuple[_Window, np.ndarray]:
  """The class objects' window and coverage float32 [n, w, w]."""
  window = _window(scenes.center, _OBJECT_EXTENT * float(scenes.radius.max()), size)
  dy, dx = window.y - scenes.center[:, 0, None, None], window.x - scenes.center[:, 1, None, None]
  cos, sin = (f(scenes.angle)[:, None, None] for f in (np.cos, np.sin))
  radius = scenes.radius[:, None, None]
  u, v = (dx * cos + dy * sin) / radius, (dy * cos - dx * sin) / radius
  return window, coverage(kind_distance(scenes.label, u, v) * (radius * size))


def _distractor_layer(scenes: Scenes, slot: int, size: int) -> tuple[_Window, np.ndarray]:
  """Distractor `slot`'s window and coverage float32 [n, w, w] (zero where it is absent)."""
  start, end = scenes.distractor_start[:, slot], scenes.distractor_end[:, slot]
  width = scenes.distractor_width[:, slot]
  extent = np.linalg.norm(end - start, axis=-1) / 2 + width
  window = _window((start + end) / 2, float(extent.max()), size)
  start, end = start[:, :, None, None], end[:, :, None, None]
  distance = segment_distance(window.y, window.x, start[:, 0], start[:, 1], end[:, 0], end[:, 1])
  distance -= width[:, None, None]
  return window, coverage(distance * size) * scenes.distractor_present[:, slot, None, None]


def _box(window: _Window, visible: np.ndarray, size: int) -> np.ndarray:
  """Tight box float32 [n, 4] (y0, x0, y1, x1) in [0, 1] of window masks bool [n, w, w]."""
  rows, cols = visible.any(2), visible.any(1)
  first = np.stack([np.argmax(rows, 1), np.argmax(cols, 1)], 1)
  end = rows.shape[1] - np.stack([np.argmax(rows[:, ::-1], 1), np.argmax(cols[:, ::-1], 1)], 1)
  return np.concatenate([window.corner + first, window.corner + end], 1).astype(np.float32) / size


def render(scenes: Scenes, size: int) -> dict[str, np.ndarray]:
  """Draws scenes at `size` x `size` pixels.

  Args:
    scenes: n scene descriptions.
    size: image side S in pixels.

  Returns:
    'image' uint8 [n, S, S, 3]; 'mask' bool [n, S, S] (visible class object);
    'segmentation' uint8 [n, S, S] (0 background, i + 1 for CATEGORIES[i]);
    'boxes' float32 [n, 1 + MAX_DISTRACTORS, 4] and 'box_labels' int8 [n, 1 + MAX_DISTRACTORS]
    (index into CATEGORIES): the class object first, then the distractors, padded with
    -1 and zero boxes.
  """
  n = len(scenes.label)
  planes = _background(scenes, size).reshape(3, -1)
  segmentation = np.zeros(n * size * size, np.uint8)
  distractor_categories = np.where(scenes.distractor_present,
                                   len(KINDS) + scenes.distractor_kind, -1)
  layers = [(*_distractor_layer(scenes, slot, size), scenes.distractor_colour[:, slot],
             distractor_categories[:, slot]) for slot in range(MAX_DISTRACTORS)]
  layers.append((*_object_layer(scenes, size), scenes.colour, scenes.label))

  boxes = []
  for window, alpha, colour, category in layers:  # In drawing order: the class object last.
    for plane, value in zip(planes, _PALETTE[colour].T):
      pixels = np.take(plane, window.flat)
      pixels += alpha * (value[:, None, None] - pixels)
      plane[window.flat] = pixels
    visible = alpha >= 0.5
    segmentation[window.flat] = np.where(visible, (category + 1)[:, None, None],
                                         np.take(segmentation, window.flat))
    boxes.append(np.where(category[:, None] >= 0, _box(window, visible, size), 0))

  object_window, object_alpha = layers[-1][:2]
  mask = np.zeros(n * size * size, bool)
  mask[object_window.flat] = object_alpha >= 0.5
  image = np.empty((n, size, size, 3), np.uint8)
  for channel, plane in enumerate(planes):
    image[..., channel] = plane.reshape(n, size, size) * 255 + 0.5  # Rounds on the cast.
  return {
      'image': image,
      'mask': mask.reshape(n, size, size),
      'segmentation': segmentation.reshape(n, size, size),
      'boxes': np.stack(boxes[-1:] + boxes[:-1], 1).astype(np.float32),
      'box_labels': np.stack([c for *_, c in layers[-1:] + layers[:-1]], 1).astype(np.int8),
  }
