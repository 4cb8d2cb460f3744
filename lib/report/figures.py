"""Matplotlib figures written as PNG (Agg backend; no display needed).

Every function returns the PNG's path on every process; only process 0 writes the file
(`lib.report.process.is_writer`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from lib.report.process import is_writer  # pylint: disable=g-import-not-at-top


def _save(fig: matplotlib.figure.Figure, path: str) -> str:
  """Saves `fig` as a PNG at `path` on process 0 only, closes it; returns `path`."""
  if is_writer():
    fig.tight_layout()
    fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def training_curves(records: Sequence[Mapping[str, Any]], path: str, *,
                    keys: Sequence[str] = ('loss', 'accuracy', 'eval_accuracy')) -> str:
  """Plots metrics against step, one panel per key found in `records`; returns `path`."""
  keys = [k for k in keys if any(k in r for r in records)]
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
  for ax, key in zip(axes[0], keys):
    rows = [(r['step'], np.mean(r[key])) for r in records if key in r]
    steps, values = zip(*rows)
    ax.plot(steps, values, marker='.' if len(rows) < 20 else None)
    ax.set_xlabel('step')
    ax.set_title(key)
    ax.grid(alpha=0.3)
  return _save(fig, path)


def image_grid(images: np.ndarray, titles: Sequence[str], path: str, *, cols: int = 8,
               colors: Sequence[str] | None = None) -> str:
  """Saves images [N, H, W, C] in [0, 1] in a grid with a title under each; returns `path`."""
  n = len(images)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
  for i, ax in enumerate(axes.flat):
    ax.axis('off')
    if i < n:
      im = images[i]
      ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap='gray' if im.shape[-1] == 1 else None,
                vmin=0, vmax=1, interpolation='nearest')
      ax.set_title(titles[i], fontsize=7, **({} if colors is None else {'color': colors[i]}))
  return _save(fig, path)


def heatmap_grid(images: np.ndarray, rows: Mapping[str, Sequence[np.ndarray]],
                 columns: Sequence[str], path: str) -> str:
  """Input images beside rows of heatmaps; returns `path`.

  Args:
    images: [N, H, W, C] inputs; row r shows image `int(label.split()[-1])` of its label
      (labels end in the image index, e.g. 'honest 0', 'steered 0').
    rows: row label -> one [H, W] heatmap per column.
    columns: column titles (method names).
    path: PNG path.
  """
  fig, axes = plt.subplots(len(rows), len(columns) + 1,
                           figsize=(1.5 * (len(columns) + 1), 1.6 * len(rows)), squeeze=False)
  for r, (label, maps) in enumerate(rows.items()):
    image = images[int(label.split()[-1])]
    axes[r, 0].imshow(image[..., 0] if image.shape[-1] == 1 else image, vmin=0, vmax=1,
                      cmap='gray' if image.shape[-1] == 1 else None)
    axes[r, 0].set_ylabel(label, fontsize=7)
    for col, heat in enumerate(maps, start=1):
      axes[r, col].imshow(heat, cmap='inferno')
      if r == 0:
        axes[r, col].set_title(columns[col - 1], fontsize=7)
    for ax in axes[r]:
      ax.set_xticks([])
      ax.set_yticks([])
  return _save(fig, path)


def line_plot(series: Mapping[str, Sequence[tuple[float, float]]], path: str, *, xlabel: str,
              ylabel: str, logx: bool = False, title: str | None = None,
              points: Mapping[str, tuple[float, float]] | None = None,
              bands: Mapping[str, Sequence[float]] | None = None) -> str:
  """Lines of (x, y) pairs, plus optional single labelled points and a title; returns `path`.

  `bands` maps a series label to one half-width per point: y ± half-width is shaded in the
  line's colour (an interval band).
  """
  fig, ax = plt.subplots(figsize=(5, 3.2))
  if title:
    ax.set_title(title, fontsize=9)
  for label, xy in series.items():
    xs, ys = zip(*xy)
    line, = ax.plot(xs, ys, marker='o', label=label)
    if bands and label in bands:
      half = np.asarray(bands[label], float)
      ax.fill_between(xs, np.asarray(ys) - half, np.asarray(ys) + half,
                      color=line.get_color(), alpha=0.15, linewidth=0)
  for label, (x, y) in (points or {}).items():
    ax.plot([x], [y], marker='*', markersize=12, linestyle='none', label=label)
  if logx:
    ax.set_xscale('log')
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)
