"""The purification study's report section, written from the run's numbers
(`purification_robustness.Results`).

Every sentence that states a conclusion is chosen by the numbers of the run; the paper's
figures are quoted as context only (PAPERS.md §2), never used to pick a sentence.
"""

from __future__ import annotations

import math
import os
from typing import Any

import ml_collections

from lib.report import figures, markdown

NORM_LABELS = {'linf': 'ℓ∞', 'l2': 'ℓ2'}
SETTING_LABELS = {'fresh': 'PGD-EOT, fresh randomness', 'fixed': 'PGD-EOT, fixed randomness',
                  'bpda': 'BPDA + EOT', 'rand': "ensemble 'rand'"}
DISTANCE_LABELS = {'purified_clean': '‖f(x) − x‖', 'adversarial_clean': '‖x_adv − x‖',
                   'purified_pair': '‖f(x_adv) − f(x)‖',
                   'purified_adversarial_clean': '‖f(x_adv) − x‖'}
SPREAD_LABELS = {'mean': 'mean ‖f(x) − x‖ over draws', 'std': 'std over draws',
                 'cv': 'std / mean', 'between_draws': '‖f_ω(x) − f_ω′(x)‖'}


def _eps_label(norm: str, eps: float) -> str:
  return f'{eps * 255:g}/255' if norm == 'linf' else f'{eps:g}'


def _point_label(point: Any) -> str:
  t = point.threat
  return f't*={t.t_star:g} {NORM_LABELS[t.norm]} {_eps_label(t.norm, t.eps)}'


def _verdict(report: Any) -> str:
  return '-' if report is None else report.verdict


def accuracy_table(results: Any) -> markdown.Table:
  """Per t* and threat setting: mean and worst accuracy, gain over no defence, checks."""
  rows = [['no defence', 'clean', results.clean, results.clean, '-', '-']]
  for norm, acc in results.undefended.items():
    rows.append(['no defence', f'PGD {NORM_LABELS[norm]}', acc, acc, 0.0,
                 results.undefended_reports[norm].verdict])
  for p in results.points:
    base = results.undefended[p.threat.norm]
    rows.append([_point_label(p), 'clean', p.clean.mean, p.clean.worst, '-', '-'])
    for setting, acc in p.robust.items():
      mean = '-' if math.isnan(acc.mean) else acc.mean
      check = _verdict(p.report) if setting == 'fresh' else '-'
      rows.append([_point_label(p), SETTING_LABELS[setting], mean, acc.worst,
                   acc.worst - base if setting == 'rand' else acc.mean - base, check])
  return markdown.Table(
      'Accuracy of the classifier alone and of the purified classifier: mean over (image, '
      'draw) pairs and worst case (an image counts only if every draw is right); the gain is '
      'over the classifier alone under the same PGD; checks: the verdict of '
      '`checks.check_evaluation` where it ran:',
      ['purifier', 'evaluation', 'mean', 'worst', 'gain', 'checks'], rows)


def geometry_table(results: Any) -> markdown.Table:
  """Per t*: the distances (one draw ω) and the spread across draws, mean over images."""
  rows = [[_point_label(p), *p.distances.values(), *p.spread.values()] for p in results.points]
  first = results.points[0]
  return markdown.Table(
      'Distances (ℓ2, pixel units, mean over images) under one draw ω (x_adv: the '
      'fixed-randomness attack), and the spread of f_ω(x) across draws ω:',
      ['purifier', *[DISTANCE_LABELS[k] for k in first.distances],
       *[SPREAD_LABELS[k] for k in first.spread]], rows)


def compression_table(results: Any) -> markdown.Table:
  """Per t*: compression rate (random and attack directions) next to robust accuracy."""
  rows = [[_point_label(p), p.compression['random'], p.compression['attack'],
           p.robust['fixed'].mean, p.robust['fresh'].mean] for p in results.points]
  return markdown.Table(
      'Compression rate CR_ω = ‖f_ω(x + δ) − f_ω(x)‖₂ / ‖δ‖₂ under one draw ω (mean over '
      'images and directions; δ random of the threat radius, or the fixed-randomness attack '
      'direction), next to robust accuracy (mean over draws):',
      ['purifier', 'CR random δ', 'CR attack δ', 'robust, fixed', 'robust, fresh'], rows)


def correlation_sentence(results: Any) -> str:
  """The correlations across t*, with how many points they rest on."""
  if not results.correlations:
    return ('No correlation of compression with robust accuracy was computed: no norm has 3 '
            'or more t* values in the grid.')
  parts = []
  for norm, by_kind in results.correlations.items():
    n = sum(p.threat.norm == norm for p in results.points)
    for kind, corr in by_kind.items():
      if corr is None:
        parts.append(f'{NORM_LABELS[norm]}, {kind} directions: undefined (a constant series)')
      else:
        parts.append(f'{NORM_LABELS[norm]}, {kind} directions: Pearson {corr.pearson:.3f}, '
                     f'Spearman {corr.spearman:.3f} over {n} t* values')
    if n <= 4:
      parts[-1] += (f' (with {n} points a correlation is weak evidence: a '
                    f'Spearman of ±1 arises by chance with probability 2/{n}! = '
                    f'{2 / math.factorial(n):.3f} for unrelated series)')
  return ('Correlation of the compression rate with fixed-randomness robust accuracy across '
          't*: ' + '; '.join(parts) + '.')


def cost_sentence(results: Any, resolution: float) -> str:
  """What purification costs in clean accuracy, and where it leaves a near-chance classifier."""
  cleans = ', '.join(f'{p.clean.mean:.3f} at t*={p.threat.t_star:g}' for p in results.points)
  near = [p for p in results.points if p.clean.mean <= results.chance + 2 * resolution]
  kept = [p for p in results.points if p.clean.mean >= results.clean - 2 * resolution]
  lost = [p for p in results.points if p not in kept and p not in near]
  text = (f'Purification changes clean accuracy from {results.clean:.3f} (classifier alone) to '
          f'{cleans} (chance {results.chance:.3f}).')
  labels = lambda points: ', '.join(f't*={p.threat.t_star:g}' for p in points)
  if kept:
    text += (f' At {labels(kept)} it keeps the classifier\'s clean accuracy (within two '
             'images): there the robust accuracies measure the defence, not its damage.')
  if lost:
    text += (f' At {labels(lost)} it costs more than two images of clean accuracy, a bound on '
             'every robust accuracy there.')
  if near:
    text += (' At ' + ', '.join(f't*={p.threat.t_star:g}' for p in near) + ' the purified '
             'classifier is within two images of chance on clean inputs: its robust accuracy '
             'there measures a near-constant classifier, not robustness (the denoiser destroys '
             'the images; a better-trained denoiser is needed before reading its gain).')
  return text


def gain_sentence(results: Any) -> str:
  """Whether fixing the randomness shrinks the purifier's gain, by how much, per t*."""
  parts = []
  for p in results.points:
    base = results.undefended[p.threat.norm]
    fresh, fixed = p.robust['fresh'].mean - base, p.robust['fixed'].mean - base
    if fresh <= 0:
      parts.append(f'at {_point_label(p)} the purifier gains nothing under fresh randomness '
                   f'({fresh:+.3f}); with fixed randomness {fixed:+.3f}')
    elif fixed < fresh:
      parts.append(f'at {_point_label(p)} the gain shrinks from {fresh:+.3f} (fresh) to '
                   f'{fixed:+.3f} (fixed), {fixed / fresh:.0%} of it')
    else:
      parts.append(f'at {_point_label(p)} the gain does not shrink once randomness is fixed '
                   f'({fresh:+.3f} fresh, {fixed:+.3f} fixed)')
  return ('Gain in robust accuracy (mean over draws) over the classifier alone: '
          + '; '.join(parts) + '.')


def distance_sentence(results: Any) -> str:
  """Does purification move images away from the clean one? Is the noise larger than the attack?"""
  away = [p for p in results.points
          if p.distances['purified_clean'] > p.distances['adversarial_clean']]
  closer = [p for p in results.points
            if p.distances['purified_adversarial_clean'] < p.distances['adversarial_clean']]
  noisy = [p for p in results.points if p.spread['between_draws'] > p.distances['purified_pair']]
  n = len(results.points)
  return (f'Purification moves the clean image further from itself than the attack does '
          f'(‖f(x) − x‖ > ‖x_adv − x‖) at {len(away)} of {n} t*; it brings the adversarial '
          f'image closer to the clean one (‖f(x_adv) − x‖ < ‖x_adv − x‖) at {len(closer)} of '
          f'{n}; two noise draws of the same image differ more than the purified clean and '
          f'adversarial images of one draw at {len(noisy)} of {n} (the sampler\'s randomness '
          'decides more of the output than the perturbation does).')


def checks_sentence(results: Any) -> str:
  """The checks' verdicts: which evaluations were checked and what they say."""
  checked = [p for p in results.points if p.report is not None]
  plain = ', '.join(f'{NORM_LABELS[n]} {r.verdict}' for n, r in results.undefended_reports.items())
  if not checked:
    return (f'The checks ran on the classifier alone ({plain}); the purifier\'s evaluation was '
            'not checked (config.check_t_star = 0).')
  parts = [f'{_point_label(p)}: {p.report.verdict} (' + ', '.join(
      f'{ch.name} {ch.verdict}' for ch in p.report.checks if ch.verdict != 'pass') + ')'
           for p in checked]
  parts = [s.replace(' ()', ' (every check passes)') for s in parts]
  return (f'The checks of the classifier alone say {plain}; of the fresh-randomness PGD-EOT '
          f'on the purifier, ' + '; '.join(parts) + '.')


def accuracy_figure(results: Any, workdir: str) -> markdown.Figure:
  """Robust accuracy (mean over draws) against t*, one line per norm and threat setting."""
  series = {}
  for norm in NORM_LABELS:
    points = [p for p in results.points if p.threat.norm == norm]
    if not points:
      continue
    series[f'clean, purified {NORM_LABELS[norm]}'] = [(p.threat.t_star, p.clean.mean)
                                                       for p in points]
    for setting in ('fresh', 'fixed', 'bpda'):
      series[f'{SETTING_LABELS[setting]} {NORM_LABELS[norm]}'] = [
          (p.threat.t_star, p.robust[setting].mean) for p in points]
  points = {f'no defence, PGD {NORM_LABELS[n]}': (0.0, a) for n, a in results.undefended.items()}
  path = figures.line_plot(series, os.path.join(workdir, 'robust_accuracy_vs_t.png'),
                           xlabel='t*', ylabel='accuracy (mean over draws)', points=points,
                           title=f'classifier alone, clean {results.clean:.3f}')
  return markdown.Figure('Accuracy of the purified classifier against t*, per threat setting '
                         '(stars at t* = 0: the classifier alone under PGD):',
                         os.path.basename(path))


def compression_figure(results: Any, workdir: str) -> markdown.Figure:
  """Compression rate and robust accuracy against t* in one plot."""
  series = {}
  for norm in NORM_LABELS:
    points = [p for p in results.points if p.threat.norm == norm]
    if not points:
      continue
    label = NORM_LABELS[norm]
    series[f'CR random δ {label}'] = [(p.threat.t_star, p.compression['random']) for p in points]
    series[f'CR attack δ {label}'] = [(p.threat.t_star, p.compression['attack']) for p in points]
    series[f'robust, fixed {label}'] = [(p.threat.t_star, p.robust['fixed'].mean) for p in points]
  path = figures.line_plot(series, os.path.join(workdir, 'compression_vs_t.png'), xlabel='t*',
                           ylabel='compression rate / accuracy')
  return markdown.Figure('Compression rate against t*, next to fixed-randomness robust accuracy:',
                         os.path.basename(path))


def timing_table(results: Any) -> markdown.Table:
  """Wall and CPU seconds per stage, with the total."""
  rows = [[k, round(v.wall, 1), round(v.cpu, 1)] for k, v in results.timings.items()]
  rows.append(['total', round(sum(v.wall for v in results.timings.values()), 1),
               round(sum(v.cpu for v in results.timings.values()), 1)])
  return markdown.Table('Time of each stage in this run (a resumed stage counts only what it '
                        'redid); CPU seconds are this process\'s, every thread, so on a shared '
                        'machine they, not the wall time, are the stage\'s cost:',
                        ['stage', 'wall s', 'CPU s'], rows)


def _headline_point(results: Any) -> Any:
  """The checked t* if any, else the first of the grid."""
  return next((p for p in results.points if p.report is not None), results.points[0])


def section(c: ml_collections.ConfigDict, results: Any, workdir: str) -> markdown.Section:
  """The report section of the study."""
  p = _headline_point(results)
  label = _point_label(p)
  headline = {
      f'no defence, PGD ({NORM_LABELS[p.threat.norm]})': f'{results.undefended[p.threat.norm]:.4f}',
      f'purified, fresh randomness ({label})': f'{p.robust["fresh"].mean:.4f}',
      f'purified, fixed randomness ({label})': f'{p.robust["fixed"].mean:.4f}',
      f'purified, BPDA + EOT ({label})': f'{p.robust["bpda"].mean:.4f}',
      f'checks ({label})': _verdict(p.report)}
  denoiser = (f'the diffusers UNet from `{c.denoiser.path}`' if c.denoiser.path else
              f'a UNet with channels {c.denoiser.block_out_channels} trained (ε-prediction on '
              f'diffusion times up to {c.denoiser.max_t:g}) for {c.denoiser.num_steps} steps of '
              f'batch {c.denoiser.batch_size} on the same images')
  steps = c.sampler_steps or 't*·1000'
  body = (f'{c.model} trained as the classifier study ({c.num_steps} steps on `{c.dataset}`); '
          f'DiffPure purification with {denoiser}, sampler `{c.sampler}` with {steps} reverse '
          f'steps; {c.num_eval} test images. PGD: {c.attack_steps} steps of {c.attack_step_size}, '
          f'no random start (Lee & Kim), EOT {c.eot}, exact gradients through every sampler '
          f'step; evaluation over {c.eval_draws} draws (fixed randomness: the {c.eot} draws the '
          f'attack saw). Accuracy resolves 1/{c.num_eval} = {1 / c.num_eval:.3f}. The paper '
          '(Liu & Wei 2025) reports the CIFAR-10 gain dropping to about 24% robust accuracy with '
          'randomness fixed, against reports near 70%; these numbers come from another scale.')
  return markdown.Section(
      'Purification robustness',
      body=body,
      blocks=[accuracy_table(results),
              markdown.Text(cost_sentence(results, 1 / c.num_eval)),
              markdown.Text(gain_sentence(results)),
              accuracy_figure(results, workdir), markdown.Text(checks_sentence(results)),
              geometry_table(results), markdown.Text(distance_sentence(results)),
              compression_table(results), compression_figure(results, workdir),
              markdown.Text(correlation_sentence(results)),
              *[markdown.Table(f'Checks of the fresh-randomness PGD-EOT at {_point_label(q)} '
                               f'({c.check_num} images):',
                               ['check', 'verdict', 'value', 'explanation'], q.report.to_rows())
                for q in results.points if q.report is not None],
              timing_table(results)],
      headline=headline)
