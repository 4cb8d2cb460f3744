r"""Runs any experiment: `python -m launch.run --config=experiments/<name>.py:<arg> --workdir=DIR`.

The config file is the experiment module: its `get_config(arg)` builds the config (override
any field with `--config.field=value`; typos are refused) and its `run(config, workdir)`
runs it. Relaunching the same command resumes from the newest checkpoint in the workdir.

The workdir's config.json records the run's config. A relaunch with a different config is
refused, with the differing keys listed, unless only resumable keys changed (num_steps,
log_every, eval_every, checkpoint_every, and any the experiment module lists in a
`RESUMABLE_KEYS` tuple; see `lib.run_config`). `--restart` moves the old run into
`WORKDIR/.previous-<time>` (nothing is deleted) and starts over.

Multi-host (TPU pods, multi-node GPU): add `--distributed` on every process, which calls
`jax.distributed.initialize()` (arguments auto-detected on TPU, SLURM and Kubernetes, or
given with --coordinator_address/--num_processes/--process_id). Only process 0 writes logs
and reports.
"""

from __future__ import annotations

import importlib.util
import logging as std_logging
import os
import sys

from launch import xla_setup

xla_setup.add_project_flags()  # before the config file (and with it jax) is imported

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, report.')
_RESTART = flags.DEFINE_bool('restart', False,
                             'Move the run already in --workdir (checkpoints, metrics, report) '
                             'into WORKDIR/.previous-<time> and start over, instead of '
                             'resuming it; needed to relaunch a workdir with another config.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize().')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process.')
_CPU_COLLECTIVES = flags.DEFINE_string('cpu_collectives', None,
                                       "CPU collectives for multi-process CPU runs ('gloo').")
_LIBRARY_LOGS = flags.DEFINE_bool('library_logs', False,
                                   'Keep the INFO logs of jax and orbax (every checkpoint save '
                                   'and restore); by default only their warnings are shown.')
flags.mark_flags_as_required(['config', 'workdir'])

_CHATTY = (f'{os.sep}orbax{os.sep}', f'{os.sep}jax{os.sep}_src{os.sep}')


class _LibraryInfoFilter(std_logging.Filter):
  """Drops INFO records logged from inside jax and orbax; keeps warnings and our own logs."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(p in record.pathname for p in _CHATTY)


def _experiment_module(config_path: str):
  path = os.path.abspath(config_path.split(':', 1)[0])
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  rel = os.path.relpath(path, root)
  if rel.startswith('..') or not rel.endswith('.py'):
    spec = importlib.util.spec_from_file_location('experiment', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
  return importlib.import_module(rel[:-3].replace(os.sep, '.'))


def main(argv):
  del argv
  if not _LIBRARY_LOGS.value:
    logging.get_absl_handler().addFilter(_LibraryInfoFilter())
  import jax  # pylint: disable=g-import-not-at-top
  if _CPU_COLLECTIVES.value:
    jax.config.update('jax_cpu_collectives_implementation', _CPU_COLLECTIVES.value)
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  from lib import run_config  # pylint: disable=g-import-not-at-top
  from lib.report import markdown  # pylint: disable=g-import-not-at-top
  config, workdir = _CONFIG.value, _WORKDIR.value
  logging.info('process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  module = _experiment_module(config_flags.get_config_filename(flags.FLAGS['config']))
  run_config.prepare_workdir(
      workdir, config, restart=_RESTART.value,
      resumable=run_config.RESUMABLE + tuple(getattr(module, 'RESUMABLE_KEYS', ())))
  result = module.run(config, workdir)
  if isinstance(result, markdown.Section):  # write_report writes on process 0 only
    result = markdown.write_report(os.path.join(workdir, 'report.md'), result.title, [result])
  if result:
    print(f'report: {result}', file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
