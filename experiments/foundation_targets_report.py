"""The foundation targets' report section, written from the run's numbers
(`foundation_targets.Results`).

Every sentence that states a conclusion is chosen by the numbers of the run.
"""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
from matplotlib import colors, patches

from lib.report import markdown
from lib.report.process import is_writer

FIGURE = 'targets.png'
# Differences up to this (absolute, in the metric's units) are reported as on par: one point of
# accuracy, mIoU, mAP or BLEU-4.
ON_PAR = 0.01
BASELINES = {'classification': 'majority class of the train split',
             'segmentation': 'every pixel background',
             'detection': "each category's mean train box, scored by its frequency",
             'captioning': 'the most frequent train caption for every image',
             'vqa': "each question's majority train answer"}
METRIC = {'classification': 'accuracy', 'segmentation': 'mIoU', 'detection': 'mAP'}
HEADLINE = {('classification', 'zero-shot (prompts)', 'accuracy'): 'zero-shot accuracy',
            ('classification', 'linear probe', 'accuracy'): 'linear-probe accuracy',
            ('segmentation', 'MaskCLIP (training-free)', 'mIoU'): 'MaskCLIP mIoU',
            ('detection', 'box head, frozen tokens', 'mAP'): 'box-head mAP',
            ('captioning', 'decoder on frozen tokens', 'CIDEr'): 'captioning CIDEr',
            ('vqa', 'attention head on frozen tokens', 'VQA accuracy'): 'VQA accuracy'}


def results_table(c: ml_collections.ConfigDict, results: Any) -> markdown.Table:
  """One row per (target, method, metric): the value, its baseline and the test scenes."""
  rows = [[r.target, r.method, r.metric, r.value, r.baseline, BASELINES[r.target],
           c.num_eval[r.target]] for r in results.rows]
  return markdown.Table('Clean metric of every target on the `shapes` test scenes, beside the '
                        'trivial baseline computed in this run:',
                        ['target', 'method', 'metric', 'value', 'baseline', 'baseline is',
                         'test scenes'], rows)


def _against(row: Any) -> str:
  return f'{row.method} {row.metric} {row.value:.3g} vs {row.baseline:.3g}'


def _compare(a: float, b: float) -> int:
  """1 if a beats b by more than `ON_PAR`, -1 if b beats a so, else 0."""
  return 0 if abs(a - b) <= ON_PAR else (1 if a > b else -1)


def baseline_sentence(results: Any) -> str:
  """Which metrics beat their trivial baseline by more than `ON_PAR`, which do not."""
  groups = {k: [r for r in results.rows if _compare(r.value, r.baseline) == k] for k in (1, 0, -1)}
  text = f'{len(groups[1])} of {len(results.rows)} metrics beat their trivial baseline'
  text += (': ' + '; '.join(_against(r) for r in groups[1]) if groups[1] else '') + '.'
  for k, words in ((0, f'On par with it (within {ON_PAR:g})'), (-1, 'Below it')):
    if groups[k]:
      text += f' {words}: ' + '; '.join(_against(r) for r in groups[k]) + '.'
  return text


def _value(results: Any, target: str, method: str) -> float:
  """The first metric of `method` on `target` (the one named in `METRIC`)."""
  return next(r.value for r in results.rows
              if (r.target, r.method, r.metric) == (target, method, METRIC[target]))


def training_free_sentence(results: Any) -> str:
  """Training-free against trained heads, per target, and zero-shot against probe/fine-tune."""
  pairs = []
  for target, free, trained in (
      ('segmentation', 'MaskCLIP (training-free)', 'dense head, frozen tokens'),
      ('detection', 'patch-text boxes (training-free)', 'box head, frozen tokens')):
    a, b = _value(results, target, free), _value(results, target, trained)
    verdict = {1: 'beats', 0: 'is on par with', -1: 'is below'}[_compare(b, a)]
    pairs.append(f'{target}: the trained head {verdict} the training-free method ({b:.3g} vs '
                 f'{a:.3g} {METRIC[target]})')
  zs = _value(results, 'classification', 'zero-shot (prompts)')
  probe = _value(results, 'classification', 'linear probe')
  tuned = _value(results, 'classification', 'full fine-tune')
  best = max(('zero-shot', zs), ('linear probe', probe), ('full fine-tune', tuned),
             key=lambda kv: kv[1])
  return ('; '.join(pairs) + f'. In classification the {best[0]} is best (zero-shot '
          f'{zs:.3g}, probe {probe:.3g}, fine-tune {tuned:.3g}).')


def timing_table(results: Any) -> markdown.Table:
  """Wall and CPU seconds of each stage of this run, and their totals."""
  rows = [[name, f'{wall:.1f}', f'{cpu:.1f}'] for name, (wall, cpu) in results.timings.items()]
  walls, cpus = zip(*results.timings.values())
  rows.append(['**total**', f'{sum(walls):.1f}', f'{sum(cpus):.1f}'])
  return markdown.Table('Time of each stage in this run (a resumed stage counts only what it '
                        'redid; CPU: the process\'s time over all its threads, what the stage '
                        'costs whatever else shares the machine):',
                        ['stage', 'wall seconds', 'CPU seconds'], rows)


def caption_table(results: Any) -> markdown.Table:
  """Reference and generated caption of each figure scene."""
  return markdown.Table('Captions of the figure scenes (reference, then generated):',
                        ['scene', 'reference', 'generated'],
                        [[i, ref, gen] for i, (ref, gen) in enumerate(results.captions)])


def _draw_boxes(ax, boxes, labels, scores, size, names, cmap, keep: int | None) -> None:
  """Rectangles of the valid boxes (the `keep` best by score if given), coloured by class."""
  order = np.argsort(-scores) if scores is not None else np.arange(len(labels))
  order = [i for i in order if labels[i] >= 0][:keep]
  h, w = size
  for i in order:
    y0, x0, y1, x1 = boxes[i]
    colour = cmap(int(labels[i]) + 1)
    ax.add_patch(patches.Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h,
                                   fill=False, edgecolor=colour, linewidth=1.2))
    ax.text(x0 * w, y0 * h, names[labels[i]], color=colour, fontsize=5, va='bottom')


def segmentation_figure(data: Any, path: str) -> str:
  """One row per scene: image with true boxes, true segmentation, MaskCLIP, dense head,
  zero-shot boxes, box-head boxes (each detector's k best, k = the scene's true boxes)."""
  n, size = len(data.images), data.images.shape[1:3]
  classes = len(data.categories) + 1
  cmap = colors.ListedColormap(['black', *plt.get_cmap('tab20').colors[:classes - 1]])
  columns = ('true boxes', 'true segmentation', 'MaskCLIP', 'dense head', 'zero-shot boxes',
             'box head')
  fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.7 * n),
                           squeeze=False)
  for i in range(n):
    maps = (data.segmentation[i], data.maskclip[i], data.dense[i])
    for col, ax in enumerate(axes[i]):
      if col in (1, 2, 3):
        ax.imshow(maps[col - 1], cmap=cmap, vmin=0, vmax=classes - 1, interpolation='nearest')
      else:
        ax.imshow(data.images[i], interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(columns[col], fontsize=7)
    k = int(np.sum(data.box_labels[i] >= 0))
    _draw_boxes(axes[i, 0], data.boxes[i], data.box_labels[i], None, size, data.categories,
                cmap, None)
    for col, dets in ((4, data.zero_shot), (5, data.box_head)):
      _draw_boxes(axes[i, col], dets.boxes[i], dets.labels[i], dets.scores[i], size,
                  data.categories, cmap, k)
  if is_writer():
    fig.tight_layout()
    fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def headline(results: Any) -> dict[str, str]:
  """The headline figures: each with its baseline."""
  out = {}
  for r in results.rows:
    name = HEADLINE.get((r.target, r.method, r.metric))
    if name:
      out[name] = f'{r.value:.4f} (baseline {r.baseline:.4f})'
  return out


def section(c: ml_collections.ConfigDict, results: Any, workdir: str) -> markdown.Section:
  """The report section of the stage."""
  path = segmentation_figure(results.figure, os.path.join(workdir, FIGURE))
  heads = ', '.join(f'{name} {h.num_steps} steps (batch {h.batch_size}, lr {h.learning_rate:g})'
                    for name, h in c.heads.items())
  origin = (f'pretrained here for {results.foundation_steps} steps on {c.num_train} `shapes` '
            f'scenes at {c.image_size} px' if results.source == 'pretrained'
            else f'loaded from `{results.source}`')
  body = (f'The foundation CLIP ({origin}) and the targets built on it, each measured clean '
          f'with its field\'s metric. Heads trained on frozen tokens ({heads}); the fine-tune '
          'trains the encoder too. The training-free targets read MaskCLIP\'s value-path patch '
          'tokens; the trained heads the last block\'s patch tokens.')
  figure = markdown.Figure(
      f'The first {c.num_figure} test scenes: true boxes and segmentation, the two segmenters '
      '(black: background), and each detector\'s k best boxes (k = the scene\'s true boxes):',
      os.path.basename(path))
  return markdown.Section(
      'Foundation targets', body=body,
      blocks=[results_table(c, results), markdown.Text(baseline_sentence(results)),
              markdown.Text(training_free_sentence(results)), figure, caption_table(results),
              timing_table(results)],
      headline=headline(results))
