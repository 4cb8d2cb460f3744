"""Image resizing used by the loaders: batched bilinear upsampling and resize-and-crop."""

from __future__ import annotations

import numpy as np
import PIL.Image


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Interpolation weights float32 [out_size, in_size] of 1-D bilinear resizing.

  Pixel centres are aligned (half-pixel convention, as `jax.image.resize` and PIL) and
  samples beyond the border repeat the edge pixel. Meant for upsampling: when shrinking it
  does not low-pass filter first.
  """
  source = np.clip((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0, in_size - 1)
  low = np.floor(source).astype(np.int64)
  high = np.minimum(low + 1, in_size - 1)
  weight = (source - low).astype(np.float32)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, low), 1 - weight)
  np.add.at(matrix, (rows, high), weight)
  return matrix


def resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinearly resizes a stack of single-channel images.

  Args:
    images: float [N, h, w].
    height: output height H in pixels.
    width: output width W in pixels.

  Returns:
    float32 [N, H, W]; values stay within the input's range.
  """
  rows = bilinear_matrix(images.shape[1], height)
  cols = bilinear_matrix(images.shape[2], width)
  return np.einsum('Hh,nhw,Ww->nHW', rows, images.astype(np.float32), cols, optimize=True)


def resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes the shorter side to `size` (PIL bilinear, antialiased) and crops the centre.

  Args:
    image: uint8 [h, w, C], C = 1 or 3.
    size: output side in pixels.

  Returns:
    uint8 [size, size, C]; the input itself when it already has that shape.
  """
  h, w, channels = image.shape
  if (h, w) == (size, size):
    return image
  scale = size / min(h, w)
  new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
  pil = PIL.Image.fromarray(image[..., 0] if channels == 1 else image)
  resized = np.asarray(pil.resize((new_w, new_h), PIL.Image.BILINEAR))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return resized[top:top + size, left:left + size].reshape(size, size, channels)
