"""The explanation-integrity report: the section and its headline, from a run's `Results`.

Nothing here measures; every sentence that states a conclusion is chosen by the numbers of
the run it reports (`experiments.attribution_integrity.measure`), so a run where, say, a
post-softmax map moved, or a manipulation changed predictions, says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lib.attribution.scores import SCORES
from lib.report import markdown

if TYPE_CHECKING:
  from experiments.attribution_integrity import Results

TITLE = 'Explanation integrity (Lerma & Lucas 2023)'
POST_SOFTMAX = tuple(s for s in SCORES if s != 'logit')
# Relevant moves of the pointing game (points); below IMMUNE a map is called unmoved.
MOVED, IMMUNE = 20.0, 5.0


def _setting(d: dict[str, Any]) -> str:
  return f'λ = {d["strength"]:g} (adaptive)' if d['adaptive'] else f'K = {d["strength"]:g}'


def invariance_text(rows: list[dict[str, Any]]) -> str:
  """Whether predictions and probabilities moved, from the invariance rows."""
  changed = [r for r in rows if r['same'] < 1.0]
  max64, max32 = max(r['float64'] for r in rows), max(r['float32'] for r in rows)
  if changed:
    lead = '**Predictions changed**: ' + ', '.join(
        f'{r["name"]} predicts the honest class on {100 * r["same"]:.1f}% of images'
        for r in changed) + '.'
  else:
    lead = ('**Predictions are unchanged**: every manipulation predicts the honest class on '
            'every image.')
  if max64 < 1e-9:
    gap = (f' max |Δp| over images and classes is {max64:.1e} with z + t and the softmax in '
           f'float64 (zero up to rounding) and {max32:.1e} in float32: the float32 figure is '
           "t's rounding inside z + t (about ε₃₂·|t|), which reaches the probabilities; mean "
           '|t| is the shift added to every logit.')
  else:
    gap = (f' max |Δp| reaches {max64:.1e} even with z + t and the softmax in float64: '
           'these probabilities moved by more than rounding.')
  return lead + gap


def localisation_text(on_evidence: dict, methods: tuple[str, ...],
                      supports: dict[str, tuple[str, ...]]) -> str:
  """How far logit maps and post-softmax maps moved on the evidence masks."""
  drops = {m: on_evidence['honest', m, 'logit'] - on_evidence['steered', m, 'logit']
           for m in methods if 'logit' in supports[m]}
  moved = [m for m, d in drops.items() if d > MOVED]
  parts = []
  if drops:
    unmoved = sorted(set(drops) - set(moved))
    largest = max(drops, key=drops.get)
    parts.append(f'Pre-softmax (logit) maps: {len(moved)} of {len(drops)} methods lose more '
                 f'than {MOVED:.0f} points (largest fall {drops[largest]:.0f}, {largest})'
                 + (f'; not: {", ".join(unmoved)}' if unmoved else '') + '.')
  post = {(m, s): abs(on_evidence['honest', m, s] - on_evidence['steered', m, s])
          for m in methods for s in POST_SOFTMAX if s in supports[m]}
  if post:
    (m, s), largest = max(post.items(), key=lambda kv: kv[1])
    same = sum(v == 0 for v in post.values())
    text = (f'Post-softmax scores: {same} of {len(post)} method × score pairs point exactly as '
            f'before, the largest change is {largest:.0f} points ({m}, {s})')
    parts.append(text + ('; post-softmax explanations are immune, as Σ_j ∂S/∂z_j = 0 says.'
                         if largest <= IMMUNE else
                         '. Σ_j ∂S/∂z_j = 0 makes these maps immune in exact arithmetic, so '
                         'what moved them is the float32 rounding of z + t, large against '
                         "this model's differences of nearly equal scores."))
  return ' '.join(parts)


def paper_text(on_target: dict, methods: tuple[str, ...], hires_gap: float | None) -> str:
  """Which maps the paper's construction moves into the top-left mask M."""
  into = [m for m in methods if on_target['paper', m, 'logit'] >= 50]
  not_into = [m for m in methods if m not in into]
  text = (f"With the paper's construction, {', '.join(into) or 'no method'} point into M on at "
          f"least half the images; {', '.join(not_into) or 'every method does'}"
          + (' do not.' if not_into else '.'))
  if 'grad_cam' in not_into and 'hires_cam' in into:
    text += (' Pooled Grad-CAM averages the added gradient over all cells (its map tends to the '
             'channel sum Σ_k A_k), while the un-pooled HiResCAM keeps it in the top-left cell: '
             "the paper's top-left heatmaps are what un-pooled maps show.")
  if hires_gap is not None:
    if hires_gap < 1e-4:
      text += (f' On the honest model HiResCAM equals Grad-CAM (largest relative difference '
               f'{hires_gap:.0e}): the gradient at the tap is the same in every cell (global '
               'average pooling and a linear head); the two differ exactly when t reads single '
               'cells.')
    else:
      text += (f' On the honest model HiResCAM and Grad-CAM differ (largest relative '
               f'difference {hires_gap:.2g}).')
  return text


def detection_text(curve: list[dict[str, Any]]) -> str:
  """Which settings move the pointing game, and whether the audit separates them."""
  moved = [d for d in curve if d['drop'] > MOVED]
  if not moved:
    return f'No setting moves the pointing game by more than {MOVED:.0f} points.'
  worst = min(d['auc'] for d in moved)
  return (f'Settings that move the pointing game by more than {MOVED:.0f} points: '
          + ', '.join(f'{_setting(d)} (AUC {d["auc"]:.3f}, drop {d["drop"]:.0f})' for d in moved)
          + (f'; every one of them is detected with AUC ≥ {worst:.3f}.' if worst >= 0.9 else
             f'; the audit separates the weakest of them only with AUC {worst:.3f}.'))


def headline(r: Results) -> dict[str, str]:
  """The study's key figures, for the report's opening table."""
  acc = r.seed_accuracy
  steering = next(row for row in r.invariance if row['name'] == 'steering')
  out = {'test accuracy (seeds)': f'{acc.mean():.3f} ± {acc.std():.3f}',
         'max |Δp| steering (float64 / float32)':
             f'{steering["float64"]:.1e} / {steering["float32"]:.1e}'}
  if 'saliency' in r.methods:
    out['logit saliency pointing, honest → steered (%)'] = (
        f'{r.on_evidence["honest", "saliency", "logit"]:.0f} → '
        f'{r.on_evidence["steered", "saliency", "logit"]:.0f}')
  fixed = [d for d in r.detection if not d['adaptive']]
  detected = [d['strength'] for d in fixed if d['auc'] >= 0.95]
  out['smallest K detected (audit AUC ≥ 0.95)'] = f'{min(detected):g}' if detected else 'none'
  adaptive = [d for d in r.detection if d['adaptive']]
  if adaptive:
    out['audit AUC, adaptive'] = f'{adaptive[0]["auc"]:.3f}'
  return out


def section(r: Results) -> markdown.Section:
  """The report section of a run, from its results."""
  c, acc, size, supports = r.config, r.seed_accuracy, r.config.image_size, r.supports
  inv_rows = [[row['name'], f'{row["float64"]:.1e}', f'{row["float32"]:.1e}',
               f'{row["mean_t"]:.3g}', f'{row["accuracy_honest"]:.3f}',
               f'{row["accuracy_manipulated"]:.3f}', f'{row["same"]:.3f}'] for row in r.invariance]
  ev, tg = r.on_evidence, r.on_target
  loc_rows = [[m] + [f'{ev["honest", m, s]:.0f} → {ev["steered", m, s]:.0f}'
                     if s in supports[m] else 'n/a' for s in SCORES] for m in r.methods]
  steer_rows = [[m, f'{tg["honest", m, "logit"]:.0f}', f'{tg["steered", m, "logit"]:.0f}',
                 f'{tg["paper", m, "logit"]:.0f}'] for m in r.methods]
  det_rows = [[_setting(d),
               f'{d["pointing_honest"][0]:.0f} → {d["pointing_lying"][0]:.0f}',
               f'{d["pointing_honest"][1]:.0f} → {d["pointing_lying"][1]:.0f}',
               f'{np.mean(d["scores_honest"]):.3f} ± {np.std(d["scores_honest"]):.3f}',
               f'{np.mean(d["scores_lying"]):.3f} ± {np.std(d["scores_lying"]):.3f}',
               f'{d["auc"]:.3f}'] for d in r.detection]
  body = (f'{c.num_seeds} seeds of {c.model} {dict(c.model_kwargs)} trained on `shapes` '
          f'({size}×{size}, {c.num_steps} steps of batch {c.batch_size}) as one sweep (strategy '
          f'{c.strategy!r}); test accuracy over {r.num_test} images: {acc.mean():.3f} ± '
          f'{acc.std():.3f} (min {acc.min():.3f}, max {acc.max():.3f}; chance '
          f'{1 / r.num_classes:.3f}). Tables use seed {c.seed} on {c.num_eval} test images, '
          f'explaining the predicted class. Target mask M = top-left {size // 4}×{size // 4} '
          f'pixels. K = {c.strength:g} unless stated.')
  blocks = [
      markdown.Table(invariance_text(r.invariance),
                     ['manipulation', 'max |Δp| float64', 'max |Δp| float32', 'mean |t|',
                      'accuracy honest', 'accuracy manipulated', 'same prediction'], inv_rows),
      markdown.Table('**Pointing game on the ground-truth evidence masks (%)**, honest → '
                     'steered, per score. ' + localisation_text(ev, r.methods, supports),
                     ['method', *SCORES], loc_rows),
      markdown.Table('**Pointing into the target mask M (%)**, logit score: honest, steered, '
                     "and the paper's construction t = K·Σ_k A[0,0,k]. "
                     + paper_text(tg, r.methods, r.hires_vs_grad_cam),
                     ['method', 'honest', 'steered', 'paper construction'], steer_rows),
      markdown.Figure('', r.figures['heatmaps']),
      markdown.Table(f'**Detection**: audit model score (class collapse, pre/post-softmax and '
                     f'cross-method disagreement; `lib.attribution.audit`) of {c.num_seeds} '
                     f'honest and {c.num_seeds} manipulated seeds on {c.num_audit} images each; '
                     'pointing (%) of logit saliency and Grad-CAM on the evidence masks, mean '
                     'over seeds:', ['setting', 'saliency pointing', 'Grad-CAM pointing',
                                     'honest score', 'manipulated score', 'ROC AUC'], det_rows),
      markdown.Text(detection_text(r.detection)),
      markdown.Figure('', r.figures['detection']),
      markdown.Text('Wall time of each stage: ' + ', '.join(
          f'{k} {v:.0f} s' for k, v in r.stage_s.items()) + '.'),
  ]
  return markdown.Section(TITLE, body, blocks=blocks, headline=headline(r))
