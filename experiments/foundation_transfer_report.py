"""The inherited-vulnerability study's report section, written from the run's numbers
(`foundation_transfer.Results`).

Every sentence that states a conclusion is chosen by the numbers of the run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np

from experiments import foundation_targets_report as targets_report
from lib.report import figures as figures_lib
from lib.report import markdown
from lib.report.process import is_writer

HEATMAP = 'transfer_matrix.png'
EXAMPLES = 'adversarial_examples.png'
MAPS = {'clean': 'transfer_maps_clean.png', 'PRM': 'transfer_maps_prm.png'}
# Short names of the matrix's columns (foundation_transfer.COLUMNS), in order.
LABELS = ('zero-shot', 'probe', 'fine-tune', 'MaskCLIP', 'dense head', 'patch-text boxes',
          'box head', 'captioner (CIDEr)', 'VQA')
DENSE = ('segmentation', 'detection')
# A relative drop counts as damage above this (5% of the clean metric) ...
DAMAGE = 0.05
# ... and two mean relative drops as different when they differ by more than this.
APART = 0.02


def _mean(cells: Sequence[Any], keep=lambda cell: True) -> float:
  """Mean relative drop over the measurable cells that `keep` selects (NaN if none)."""
  drops = [c.drop for c in cells if c.measurable and keep(c) and np.isfinite(c.drop)]
  return float(np.mean(drops)) if drops else float('nan')


def _mark(cell: Any, text: str) -> str:
  """`text`, with † when the cell's clean metric does not beat its trivial baseline."""
  return text if cell.measurable else text + ' †'


NOT_MEASURABLE = ('† the clean metric does not beat the target\'s trivial baseline by more than '
                  f'{targets_report.ON_PAR:g}: nothing was learned to lose, so its drop is left '
                  'out of every mean and sentence.')


def _pct(x: float) -> str:
  return 'n/a' if not np.isfinite(x) else f'{100 * x:.0f}%'


def matrix_table(results: Any, eps: int) -> markdown.Table:
  """Rows: clean, then each attack; cells: attacked metric (relative drop)."""
  clean = results.matrix[next(iter(results.matrix))]
  rows = [['clean (baseline)', *[_mark(c, f'{c.clean:.3f} ({c.baseline:.3f})')
                                  for c in clean]]]
  for (name, e), cells in results.matrix.items():
    if e == eps:
      rows.append([name, *[_mark(c, f'{c.attacked:.3f} ({_pct(c.drop)})') for c in cells]])
  return markdown.Table(f'Transfer matrix at ℓ∞ {eps}/255: each target\'s metric on the attacked '
                        'scenes (relative drop from clean); every attack computed on the '
                        'foundation alone, the same images given to every target. '
                        + NOT_MEASURABLE, ['attack', *LABELS], rows)


def heatmap(results: Any, path: str) -> str:
  """Relative drop of every (attack, target), one panel per ε."""
  eps_list = sorted({e for _, e in results.matrix})
  attacks = list(dict.fromkeys(name for name, _ in results.matrix))
  fig, axes = plt.subplots(1, len(eps_list), figsize=(4.6 * len(eps_list), 3.6), squeeze=False)
  for ax, eps in zip(axes[0], eps_list):
    grid = np.array([[c.drop if c.measurable else np.nan for c in results.matrix[name, eps]]
                     for name in attacks])
    image = ax.imshow(grid, cmap='magma_r', vmin=-0.2, vmax=1.0, aspect='auto')
    ax.set_xticks(range(len(LABELS)), LABELS, rotation=60, ha='right', fontsize=7)
    ax.set_yticks(range(len(attacks)), attacks if ax is axes[0][0] else [], fontsize=7)
    ax.set_title(f'ℓ∞ {eps}/255', fontsize=9)
    for (i, j), v in np.ndenumerate(grid):
      ax.text(j, i, _pct(v), ha='center', va='center', fontsize=5.5,
              color='white' if np.isfinite(v) and v > 0.5 else 'black')
  fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label='relative drop')
  if is_writer():
    fig.savefig(path, dpi=110, bbox_inches='tight')
  plt.close(fig)
  return path


def examples_figure(results: Any, path: str) -> str:
  """Clean and adversarial figure scenes, and PRM's perturbation (amplified to fill [0, 1])."""
  names = list(results.examples)
  clean = results.examples['clean']
  prm = results.examples[names[1]]
  delta = prm - clean
  scale = max(float(np.abs(delta).max()), 1e-12)
  images, titles = [], []
  for i in range(len(clean)):
    for name in names:
      images.append(results.examples[name][i])
      titles.append(name)
    images.append(0.5 + 0.5 * delta[i] / scale)
    titles.append(f'{names[1]}: δ x{0.5 / scale:.0f}')
  return figures_lib.image_grid(np.clip(np.stack(images), 0, 1), titles, path,
                                cols=len(names) + 1) if is_writer() else path


def layers_table(results: Any) -> markdown.Table:
  rows = [[part, ', '.join(results.layer_names[part]), _pct(_mean(cells)),
           *[_mark(c, _pct(c.drop)) for c in cells]] for part, cells in results.layers.items()]
  return markdown.Table(f'Which layers matter: relative drop under PRM at ℓ∞ '
                        f'{results.eps}/255 on each third of the hidden states:',
                        ['layers', 'hidden states', 'mean drop', *LABELS], rows)


def defence_table(title: str, conditions: dict[str, list[Any]]) -> markdown.Table:
  rows = [[name, _pct(_mean(cells)),
           *[_mark(c, f'{c.clean:.3f} → {c.attacked:.3f} ({_pct(c.drop)})') for c in cells]]
          for name, cells in conditions.items()]
  return markdown.Table(title, ['condition', 'mean drop', *LABELS], rows)


def checks_table(results: Any) -> markdown.Table:
  r = results.checks
  return markdown.Table(f'Checks of the white-box baseline (PGD on the zero-shot classifier, '
                        f'ℓ∞ {results.eps}/255; clean accuracy {r.clean_accuracy:.3f}, '
                        f'robust {r.robust_accuracy:.3f}; overall {r.verdict}):',
                        ['check', 'verdict', 'value', 'explanation'], r.to_rows())


def timing_table(results: Any) -> markdown.Table:
  rows = [[name, f'{wall:.1f}', f'{cpu:.1f}'] for name, (wall, cpu) in results.timings.items()]
  walls, cpus = zip(*results.timings.values())
  rows.append(['**total**', f'{sum(walls):.1f}', f'{sum(cpus):.1f}'])
  return markdown.Table('Time of each stage in this run (summed over its calls; a cached '
                        'attack or a resumed training counts only what it redid):',
                        ['stage', 'wall seconds', 'CPU seconds'], rows)


def shape_sentences(results: Any) -> list[str]:
  """PRM against the expected shape (every target degraded, dense ones most), noise and PGD."""
  out = []
  for eps in sorted({e for _, e in results.matrix}):
    prm = results.matrix['PRM', eps]
    measured = [(LABELS[i], c) for i, c in enumerate(prm) if c.measurable]
    damaged = [label for label, c in measured if c.drop > DAMAGE]
    spared = [f'{label} ({_pct(c.drop)})' for label, c in measured if not c.drop > DAMAGE]
    dense = _mean(prm, lambda c: c.target in DENSE)
    rest = _mean(prm, lambda c: c.target not in DENSE)
    noise = _mean(results.matrix['noise', eps])
    text = (f'At ℓ∞ {eps}/255 PRM lowers {len(damaged)} of the {len(measured)} measurable '
            f'target metrics by more than {_pct(DAMAGE)} of their clean value')
    text += f' (not: {", ".join(spared)})' if spared else ' (all of them)'
    if np.isfinite(dense):
      verdict = ('more than' if dense > rest + APART else
                 'less than' if dense < rest - APART else 'about as much as')
      text += (f'; the measurable dense targets (segmentation, detection) lose {_pct(dense)} on '
               f'average, {verdict} the others ({_pct(rest)})')
    else:
      text += '; no dense target is measurable'
    text += f'; noise of the same norm: {_pct(noise)}.'
    out.append(text)
  eps = results.eps
  prm, white = results.matrix['PRM', eps], results.matrix['PGD zero-shot', eps]
  out.append(f'Against the white-box baseline at {eps}/255: PGD on the zero-shot classifier '
             f'takes zero-shot accuracy down by {_pct(white[0].drop)} (PRM: {_pct(prm[0].drop)}) '
             f'and the other targets by {_pct(_mean(white[1:]))} on average (PRM: '
             f'{_pct(_mean(prm[1:]))}).')
  ranking = sorted(((name, _mean(cells)) for (name, e), cells in results.matrix.items()
                    if e == eps), key=lambda kv: -kv[1] if np.isfinite(kv[1]) else 1)
  out.append(f'Mean relative drop over the targets at {eps}/255, strongest first: '
             + ', '.join(f'{name} {_pct(v)}' for name, v in ranking) + '.')
  dr, dr_authors = _mean(results.matrix['DR', eps]), _mean(results.matrix['DR (authors)', eps])
  out.append(f'DR in the direction of Lu et al. (std minimised) does {_pct(dr)}, the PRM '
             f'code\'s sign (std increased) {_pct(dr_authors)}: the '
             + ('original direction transfers better.' if dr > dr_authors + APART else
                'authors\' sign transfers better.' if dr_authors > dr + APART else
                'two directions are on par.'))
  dense, rest = (_mean(prm, lambda c: c.target in DENSE),
                 _mean(prm, lambda c: c.target not in DENSE))
  expected = all(c.drop > DAMAGE for c in prm if c.measurable) and dense > rest
  unmeasured = [LABELS[i] for i, c in enumerate(prm) if not c.measurable]
  if expected:
    out.append(f'At {eps}/255 this is the paper\'s expected shape: PRM degrades every target, '
               'the dense ones most.')
  else:
    out.append(f'At {eps}/255 this differs from the paper\'s expected shape (PRM degrading every '
               'target, dense ones most)'
               + (f': the dense targets lose {_pct(dense)}, the others {_pct(rest)}.'
                  if np.isfinite(dense) else ': no dense target is measurable.'))
  if unmeasured:
    dense_left = [LABELS[i] for i, c in enumerate(prm) if c.measurable and c.target in DENSE]
    out.append(f'Not measurable here: {", ".join(unmeasured)} do not beat their trivial '
               'baselines on clean scenes (the targets section), so this foundation gives them '
               'nothing for an attack to take away; '
               + (f'the dense comparison rests on {", ".join(dense_left)} alone, and a stronger '
                  'foundation (the full config) is needed to test the rest of the claim.'
                  if dense_left else 'no dense target is left to test the claim on: that '
                  'needs a stronger foundation (the full config).'))
  return out


def layer_sentence(results: Any) -> str:
  means = {part: _mean(cells) for part, cells in results.layers.items()}
  thirds = {k: v for k, v in means.items() if k != 'all'}
  best = max(thirds, key=lambda k: thirds[k] if np.isfinite(thirds[k]) else -1)
  return (f'Of the thirds of the hidden states, PRM on the {best} ones transfers most (mean '
          f'drop {_pct(means[best])}; ' + ', '.join(f'{k} {_pct(v)}' for k, v in means.items())
          + ').')


def _clean_cost(before: Sequence[Any], after: Sequence[Any]) -> float:
  """Mean relative loss of the clean metric from `before` to `after` over the columns that
  are measurable before (NaN if none)."""
  costs = [(b.clean - a.clean) / b.clean for b, a in zip(before, after) if b.measurable]
  return float(np.mean(costs)) if costs else float('nan')


def fare_sentence(results: Any, c: ml_collections.ConfigDict) -> str:
  original = results.fare['original tower']
  defended = results.fare['FARE tower: PRM on FARE']
  cost = _clean_cost(original, defended)
  left, before = _mean(defended), _mean(original)
  share = left / before if before > 0 else float('nan')
  return (f'FARE ({results.fare_steps} steps at ℓ∞ {c.fare.eps}/255) costs {_pct(cost)} of the '
          f'clean metrics on average; PRM recomputed on the defended tower then lowers the '
          f'targets by {_pct(left)} on average, against {_pct(before)} on the original tower: '
          f'{_pct(share)} of the transfer remains'
          + (' (the defence removes most of it).' if share < 0.5 else
             ' (the defence removes less than half of it).' if np.isfinite(share) else '.'))


def deploy_sentence(results: Any) -> str:
  plain = results.deploy['resize-pad: PRM']
  eot = results.deploy['resize-pad: PRM with EOT']
  none = results.deploy['no defence: PRM']
  cost = _clean_cost(none, plain)
  through = _mean(eot)
  return (f'Random resizing and padding costs {_pct(cost)} of the clean metrics on average; '
          f'PRM without EOT lowers the defended targets by {_pct(_mean(plain))}, with EOT by '
          f'{_pct(through)} (undefended: {_pct(_mean(none))}): PRM '
          + ('transfers through it.' if through > DAMAGE else 'does not transfer through it.'))


def checks_sentence(results: Any) -> str:
  r = results.checks
  bad = [f'{c.name} ({c.verdict})' for c in r.checks if c.verdict != 'pass']
  return (f'The checks of the white-box baseline: overall {r.verdict}'
          + (f'; not passed: {", ".join(bad)}.' if bad else '; every check passed.'))


def headline(results: Any) -> dict[str, str]:
  eps = results.eps
  prm = results.matrix['PRM', eps]
  worst = max(range(len(prm)), key=lambda i: prm[i].drop
              if prm[i].measurable and np.isfinite(prm[i].drop) else -np.inf)
  return {f'PRM {eps}/255 mean relative drop': _pct(_mean(prm)),
          f'PRM {eps}/255 worst target': f'{LABELS[worst]} ({_pct(prm[worst].drop)})',
          'PRM drop on FARE': _pct(_mean(results.fare['FARE tower: PRM on FARE'])),
          'PRM+EOT drop through resize-pad': _pct(_mean(
              results.deploy['resize-pad: PRM with EOT'])),
          'white-box checks': results.checks.verdict}


def section(c: ml_collections.ConfigDict, results: Any, workdir: str) -> markdown.Section:
  """The report section of the study."""
  a = c.attack
  heat = heatmap(results, os.path.join(workdir, HEATMAP))
  examples = examples_figure(results, os.path.join(workdir, EXAMPLES))
  maps = {k: targets_report.segmentation_figure(results.figures[k], os.path.join(workdir, v))
          for k, v in MAPS.items()}
  body = (f'Attacks computed on the foundation\'s image tower alone (no downstream model), '
          f'on the first {a.num_images} test scenes, then given to every target of the '
          f'targets section. Feature attacks: {a.steps} AdamW steps (lr {a.lr:g}, weight '
          f'decay {a.weight_decay:g}, δ in 0-255 units; the paper runs 250), dynamic scale '
          f'{tuple(a.scale)}; PGD on the zero-shot classifier: {a.pgd_steps} steps with a '
          'random start. Relative drop = (clean − attacked) / clean.')
  blocks = [matrix_table(results, e) for e in sorted({e for _, e in results.matrix})]
  blocks += [markdown.Figure('Relative drop of every target under every attack (n/a: a target '
                             'whose clean metric does not beat its trivial baseline, †):',
                             os.path.basename(heat)),
             *[markdown.Text(s) for s in shape_sentences(results)],
             markdown.Figure(f'Clean and adversarial scenes ({", ".join(results.examples)}) '
                             'and PRM\'s perturbation, amplified:', os.path.basename(examples)),
             markdown.Figure('Segmentation maps and boxes on the clean scenes:',
                             os.path.basename(maps['clean'])),
             markdown.Figure(f'... and on the same scenes under PRM at {results.eps}/255:',
                             os.path.basename(maps['PRM'])),
             layers_table(results), markdown.Text(layer_sentence(results)),
             defence_table(f'FARE-defended foundation (clean → attacked, PRM at ℓ∞ '
                           f'{results.eps}/255; heads frozen as trained, every target '
                           'reading the defended tower):', results.fare),
             markdown.Text(fare_sentence(results, c)),
             defence_table(f'Random resizing (s ∈ [{c.deploy.min_scale:g}, 1]) and padding '
                           f'before the encoder (EOT: {c.deploy.eot} fresh placements per '
                           'image at every step; evaluated on placements no attack drew; '
                           'clean → attacked):', results.deploy),
             markdown.Text(deploy_sentence(results)),
             checks_table(results), markdown.Text(checks_sentence(results)),
             timing_table(results)]
  return markdown.Section('Inherited vulnerability: attacks on the foundation alone', body=body,
                          blocks=blocks, headline=headline(results))
