"""The main job: every study at the chosen scale, one report.

Each study runs in `workdir/<study>` and contributes one section to `workdir/report.md`.
Re-running resumes every study from its checkpoints.

Launch (the README's first command does this at `runlocal` scale):
  python -m launch.run --config=experiments/main.py:runlocal --workdir=workdirs/main
"""

from __future__ import annotations

import importlib
import os
import time

import ml_collections

from lib.report import markdown

STUDIES = ('classifier', 'attribution_integrity')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """One sub-config per study, each built with the same variant argument."""
  c = ml_collections.ConfigDict()
  c.studies = ','.join(STUDIES)
  for name in STUDIES:
    c[name] = importlib.import_module(f'experiments.{name}').get_config(arg)
  return c


def run(c: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs the studies listed in `c.studies`; returns the path of report.md."""
  names = [s for s in c.studies.split(',') if s]
  for name in names:
    if name not in STUDIES:
      raise ValueError(f'config.studies has unknown study {name!r}; expected any of {list(STUDIES)}.')
  sections, timings = [], []
  for name in names:
    start = time.time()
    section = importlib.import_module(f'experiments.{name}').run(c[name],
                                                                 os.path.join(workdir, name))
    sections.append(section.relocated(name))
    timings.append([name, f'{time.time() - start:.0f} s'])
  preamble = ('Every study of the project at the scale of this config. Wall time of each '
              'study in this run (a resumed run counts only what it redid):\n\n'
              + markdown.table(['study', 'wall time'], timings))
  return markdown.write_report(os.path.join(workdir, 'report.md'),
                               'Security of foundation models: report', sections,
                               preamble=preamble)
