"""The robustness study's report section, written from the run's numbers (`robustness.Results`).

Every sentence that states a conclusion is chosen by the numbers of the run.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from lib.report import figures, markdown

LABELS = {'fgsm': 'FGSM', 'pgd': 'PGD', 'apgd_ce': 'APGD-CE', 'apgd_t': 'APGD-T',
          'square': 'Square', 'ensemble': 'Ensemble'}
NORM_LABELS = {'linf': 'ℓ∞', 'l2': 'ℓ2'}


def _eps_label(norm: str, eps: float) -> str:
  return f'{eps * 255:g}/255' if norm == 'linf' else f'{eps:g}'


def _at(curve: list[tuple[float, float]], eps: float) -> float | None:
  """The robust accuracy of `curve` at radius `eps`, or None if it was not measured."""
  return next((acc for e, acc in curve if abs(e - eps) < 1e-9), None)


def curve_table(results: Any) -> markdown.Table:
  """Robust accuracy per (norm, ε) row and attack column."""
  names = list(next(iter(results.curves.values())))
  rows = []
  for norm, by_attack in results.curves.items():
    for i, (eps, _) in enumerate(by_attack[names[0]]):
      rows.append([NORM_LABELS[norm], _eps_label(norm, eps),
                   *[by_attack[n][i][1] for n in names]])
  return markdown.Table(f'Robust accuracy (clean: {results.clean:.4f}):',
                        ['norm', 'ε', *[LABELS[n] for n in names]], rows)


def curve_figure(results: Any, workdir: str) -> markdown.Figure:
  """One line per attack and norm: robust accuracy against ε (ℓ∞ in units of 1/255)."""
  series = {}
  for norm, by_attack in results.curves.items():
    scale = 255 if norm == 'linf' else 1
    for name, curve in by_attack.items():
      series[f'{LABELS[name]} {NORM_LABELS[norm]}'] = [(e * scale, a) for e, a in curve]
  path = figures.line_plot(series, os.path.join(workdir, 'robust_accuracy.png'),
                           xlabel='ε (ℓ∞: ×1/255; ℓ2: pixel units)', ylabel='robust accuracy',
                           title=f'clean accuracy {results.clean:.3f}')
  return markdown.Figure('Robust accuracy against ε, one line per attack and norm:',
                         os.path.basename(path))


def strongest_sentence(results: Any) -> str:
  """Whether the ensemble is at or below every single attack at every radius."""
  exceptions = []
  for norm, by_attack in results.curves.items():
    if 'ensemble' not in by_attack:
      return 'The ensemble was not run.'
    for i, (eps, acc) in enumerate(by_attack['ensemble']):
      best = min(curve[i][1] for name, curve in by_attack.items() if name != 'ensemble')
      if acc > best:
        exceptions.append(f'{NORM_LABELS[norm]} ε={_eps_label(norm, eps)} '
                          f'({acc:.3f} vs {best:.3f})')
  if not exceptions:
    return ('The ensemble is the strongest evaluation at every radius: its robust accuracy is '
            'at or below that of every single attack.')
  return ('The ensemble is not the strongest evaluation everywhere; a single attack beats it at '
          + ', '.join(exceptions) + ' (its stages use other random starts).')


def verdict_table(results: Any) -> markdown.Table:
  """Check name rows, one verdict column per model, plus the overall verdict."""
  models = list(results.reports)
  names = [ch.name for ch in results.reports[models[0]].checks]
  rows = [[n, *[results.reports[m].verdicts().get(n, '-') for m in models]] for n in names]
  rows.append(['**overall**', *[results.reports[m].verdict for m in models]])
  rows.append(['PGD robust accuracy', *[results.reports[m].robust_accuracy for m in models]])
  return markdown.Table('Verdicts of the evaluation checks per model:', ['check', *models], rows)


def planted_table(results: Any) -> markdown.Table:
  """Per model: PGD (the checks' attack), each ensemble stage, then the adaptive attacks."""
  stages = list(next(iter(results.planted.values())))
  adaptive = list(next(iter(results.adaptive.values())))
  rows = [[m, results.reports[m].robust_accuracy, *[acc[s] for s in stages],
           *[results.adaptive[m][a] for a in adaptive]]
          for m, acc in results.planted.items()]
  return markdown.Table('Accuracy at the main radius: PGD (as in the checks), the ensemble '
                        '(cumulative, stage by stage) and the adaptive attacks (PGD with the '
                        'same steps through BPDA, or with the margin loss):',
                        ['model', 'PGD', *[f'ensemble: {s}' for s in stages], *adaptive], rows)


def planted_sentence(results: Any, tolerance: float) -> str:
  """Whether the ensemble breaks each planted model as far as the honest one, and the checks."""
  honest = results.planted['honest']
  base = list(honest.values())[-1]
  parts = []
  for name, acc in results.planted.items():
    if name == 'honest':
      continue
    final, pgd_acc = list(acc.values())[-1], results.reports[name].robust_accuracy
    broken = 'breaks it as far as the honest model' if final <= base + tolerance else (
        f'does not break it as far as the honest model ({base:.3f})')
    best_name, best = min(results.adaptive[name].items(), key=lambda kv: kv[1])
    parts.append(f'on the {name} model PGD reports {pgd_acc:.3f} and the ensemble {final:.3f}: '
                 f'the ensemble {broken}; the best adaptive attack ({best_name}) reaches '
                 f'{best:.3f}; the checks say {results.reports[name].verdict}')
  honest_verdict = results.reports['honest'].verdict
  return (f'The checks say {honest_verdict} for the honest model; ' + '; '.join(parts) + '.')


def section(c: ml_collections.ConfigDict, results: Any, workdir: str) -> markdown.Section:
  """The report section of the study."""
  main = c.main_eps / 255
  tolerance = max(0.01, 1 / c.num_eval)
  honest = results.reports['honest']
  ens = results.planted['honest']
  pgd_main = _at(results.curves['linf'].get('pgd', []), main)
  headline = {'clean accuracy': f'{results.clean:.4f}',
              f'ensemble robust accuracy (ℓ∞ {c.main_eps:g}/255)': f'{list(ens.values())[-1]:.4f}',
              f'PGD robust accuracy (ℓ∞ {c.main_eps:g}/255)': f'{honest.robust_accuracy:.4f}',
              'check verdicts (honest / planted)': ' / '.join(
                  r.verdict for r in results.reports.values()),
              'ensemble on planted models': ' / '.join(
                  f'{list(results.planted[m].values())[-1]:.4f}' for m in results.planted
                  if m != 'honest')}
  body = (f'{c.model} trained as the classifier study ({c.num_steps} steps on `{c.dataset}`), '
          f'attacked on {c.num_eval} test images: PGD {c.pgd_steps} steps with a random start, '
          f'APGD {c.apgd_steps} steps, APGD-T over {c.n_target_classes} target classes, Square '
          f'{c.square_queries} queries; the ensemble is APGD-CE, APGD-T and Square with those '
          'settings. Robust accuracy resolves 1/'
          f'{c.num_eval} = {1 / c.num_eval:.3f}.')
  if pgd_main is not None:
    body += f' PGD in the ε sweep at {c.main_eps:g}/255: {pgd_main:.4f}.'
  return markdown.Section(
      'Adversarial robustness',
      body=body,
      blocks=[curve_table(results), curve_figure(results, workdir),
              markdown.Text(strongest_sentence(results)),
              markdown.Table(f'Checks of the PGD evaluation of the honest model at ℓ∞ '
                             f'{c.main_eps:g}/255:', ['check', 'verdict', 'value', 'explanation'],
                             honest.to_rows()),
              verdict_table(results), planted_table(results),
              markdown.Text(planted_sentence(results, tolerance))],
      headline=headline)
