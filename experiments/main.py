"""The main job: every study at the scale chosen per study, one report.

Each study runs in `workdir/<study>` and contributes one section to `workdir/report.md`,
which opens with a table of every study's headline figures. Re-running resumes every study
from its checkpoints. Every study's config is validated before the first one starts.
`foundation_transfer` attacks the targets `foundation_targets` trained, and `robustness`
reads the classifier study's model (`study_configs`).
`experiments/purification_robustness.py` runs on its own until its runlocal fits the budget
(its module docstring's Status).

The config argument picks each study's variant (the variants a study accepts are listed in
its module docstring). It is a comma-separated list of items:

  VARIANT            shared: every study not named below gets VARIANT ('' = full scale)
  STUDY=V1+V2        STUDY gets exactly the variants V1,V2 (its own argument, with '+' for
                     ',') instead of the shared ones; 'STUDY=' is STUDY at full scale

Examples:
  runlocal                          every study at runlocal scale (2 CPU cores, minutes)
  (empty)                           every study at full scale
  classifier=cifar10                the classifier on CIFAR-10, every other study full scale
  runlocal,classifier=cifar10+wrn   WRN-28-10 on CIFAR-10, every other study at runlocal

Launch (the README's first command does the first one):
  python -m launch.run --config=experiments/main.py:runlocal --workdir=workdirs/main
  python -m launch.run --config=experiments/main.py --workdir=workdirs/main_full
  python -m launch.run --config=experiments/main.py:classifier=cifar10 \
      --workdir=workdirs/main_c10 --config.classifier.data_dir=~/tensorflow_datasets
"""

from __future__ import annotations

import importlib
import os
import time

import ml_collections

from lib.report import markdown

STUDIES = ('classifier', 'robustness', 'attribution_integrity', 'foundation_targets',
           'foundation_transfer', 'tamper_resistance')
# Keys a relaunch may change without starting over: those any study declares resumable.
RESUMABLE_KEYS = tuple(sorted({k for name in STUDIES for k in getattr(
    importlib.import_module(f'experiments.{name}'), 'RESUMABLE_KEYS', ())}))


def study_args(arg: str) -> dict[str, str]:
  """Each study's own config argument for the main job's `arg` (see module docstring).

  Args:
    arg: comma-separated shared variants and `study=v1+v2` items.

  Returns:
    study name -> the argument of its `get_config` (comma-separated variants), for every
    study of `STUDIES`.

  Raises:
    ValueError: an item names an unknown study, or names one study twice.
  """
  shared, own = [], {}
  for item in filter(None, arg.split(',')):
    if '=' not in item:
      shared.append(item)
      continue
    name, variants = item.split('=', 1)
    if name not in STUDIES:
      raise ValueError(f'config argument {arg!r} names unknown study {name!r}; expected any of '
                       f'{list(STUDIES)}.')
    if name in own:
      raise ValueError(f'config argument {arg!r} names study {name!r} twice; give all its '
                       f"variants in one item, joined by '+' (e.g. {name}=runlocal+digits).")
    own[name] = variants.replace('+', ',')
  return {name: own.get(name, ','.join(shared)) for name in STUDIES}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """One sub-config per study, each built with its own variant argument (`study_args`).

  Raises:
    ValueError: `arg` is malformed, or a study rejects its variant (the message names the
      study and repeats the study's list of valid variants).
  """
  c = ml_collections.ConfigDict()
  c.studies = ','.join(STUDIES)
  for name, study_arg in study_args(arg).items():
    try:
      c[name] = importlib.import_module(f'experiments.{name}').get_config(study_arg)
    except ValueError as e:
      raise ValueError(
          f'config argument {arg!r}: study {name!r} rejects its variant {study_arg!r}: {e} '
          f"Give a study its own variants with '{name}=V1+V2' (see experiments/main.py).") from e
  return c


def study_configs(c: ml_collections.ConfigDict, workdir: str) -> dict[str, ml_collections.ConfigDict]:
  """Each study's config as it runs in the main job.

  Nothing trains twice:
  - a study with a `classifier_workdir` key (it attacks the classifier of
    experiments/classifier.py) that names none, when the `classifier` study runs under
    exactly the same classifier keys, reads (resumes) the classifier study's folder;
  - `foundation_transfer` attacks the targets the `foundation_targets` study trained: when
    both run and the transfer names no `targets_workdir`, the transfer takes the targets'
    fields from `c.foundation_targets` (one source of truth: an override given there holds
    for both) and reads that study's folder.

  Raises:
    ValueError: `c.studies` names an unknown study.
  """
  names = [s for s in c.studies.split(',') if s]
  for name in names:
    if name not in STUDIES:
      raise ValueError(f'config.studies has unknown study {name!r}; expected any of '
                       f'{list(STUDIES)}.')
  configs = {name: c[name] for name in names}
  if 'classifier' in names:
    same = lambda config: all(_plain(config.get(k)) == _plain(v) for k, v in c.classifier.items())
    for name, config in configs.items():
      if config.get('classifier_workdir') == '' and same(config):
        configs[name] = config = ml_collections.ConfigDict(config.to_dict())
        config.classifier_workdir = os.path.join(workdir, 'classifier')
  transfer = configs.get('foundation_transfer')
  if transfer is not None and 'foundation_targets' in names and not transfer.targets_workdir:
    transfer = ml_collections.ConfigDict(transfer.to_dict())
    for key, value in c.foundation_targets.items():
      transfer[key] = value
    transfer.targets_workdir = os.path.join(workdir, 'foundation_targets')
    configs['foundation_transfer'] = transfer
  return configs


def _plain(value):
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def run(c: ml_collections.ConfigDict, workdir: str) -> str:
  """Validates every study's config, then runs them in order; returns report.md's path.

  Raises:
    ValueError: a study's config is invalid (before any study starts work).
  """
  configs = study_configs(c, workdir)
  for name, config in configs.items():
    validate = getattr(importlib.import_module(f'experiments.{name}'), 'validate_config', None)
    if validate is not None:
      validate(config)
  sections, timings = [], []
  for name, config in configs.items():
    start = time.time()
    section = importlib.import_module(f'experiments.{name}').run(config,
                                                                 os.path.join(workdir, name))
    sections.append(section.relocated(name))
    timings.append([name, f'{time.time() - start:.0f} s'])
  preamble = ('Every study of the project at the scale of this config (`config.json` in this '
              'directory). Wall time of each study in this run (a resumed run counts only what '
              'it redid):\n\n' + markdown.table(['study', 'wall time'], timings))
  return markdown.write_report(os.path.join(workdir, 'report.md'),
                               'Security of foundation models: report', sections,
                               preamble=preamble)
