"""A workdir's config: resume a run only under the config it was started with.

`workdir/config.json` records the config of the run in the workdir. Relaunching the workdir
resumes that run from its checkpoints, which is only right under the same config: a new
learning rate would be ignored (it lives in the restored optimiser state), a new
architecture cannot load the checkpoints. So once the workdir holds anything besides
config.json (checkpoints, metrics: a run has started), `prepare_workdir` compares the new
config with the recorded one and refuses any difference outside the resumable keys:

  num_steps, log_every, eval_every, checkpoint_every

(matched as the last part of a dotted path, so `classifier.num_steps` in a nested config
is resumable too). These change how long a run goes and how often it logs, not what it
computes up to the resumed step. A longer `num_steps` continues the run (a decaying
learning-rate schedule is rebuilt for the new length from the resumed step on); a shorter
one than a checkpoint already reached is refused by the training loop. An experiment adds
its own resumable keys through the `resumable` argument (`launch.run` reads a module-level
`RESUMABLE_KEYS` tuple of the experiment module).

`restart=True` moves the old run (everything in the workdir) into
`workdir/.previous-<UTC time>`, never deleting anything, and starts over.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import jax
from jax.experimental import multihost_utils

from lib import validate
from lib.report.process import is_writer

RESUMABLE = ('num_steps', 'log_every', 'eval_every', 'checkpoint_every')
CONFIG_FILE = 'config.json'
PREVIOUS_PREFIX = '.previous-'

_MISSING = '<missing>'


def variants(arg: str, allowed: Iterable[str]) -> frozenset[str]:
  """The variants named by a config argument: `arg` split at commas, empty items dropped.

  Raises:
    ValueError: a variant is not in `allowed` (a typo would otherwise run another scale).
  """
  named = frozenset(filter(None, arg.split(',')))
  unknown = named - set(allowed)
  if unknown:
    raise ValueError(f'unknown config variants {sorted(unknown)}; expected any of '
                     f'{list(allowed)}.')
  return named


def names(value: Any, choices: Iterable[str], name: str) -> list[str]:
  """The comma-separated names of config field `name` (value `value`), in their order.

  Raises:
    ValueError: no name is given, or one is not in `choices`.
  """
  choices = list(choices)
  named = [n for n in str(value).split(',') if n]
  if not named:
    raise ValueError(f'{name} must name at least one of {choices}; got {value!r}.')
  for n in named:
    validate.check_choice(n, choices, name)
  return named


def to_json(config: Any) -> dict[str, Any]:
  """The config as config.json holds it: plain JSON types (tuples as lists, others as str).

  Args:
    config: an `ml_collections.ConfigDict` (anything with `to_dict`) or a mapping.
  """
  plain = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
  return json.loads(json.dumps(plain, default=str))


def differences(old: Mapping[str, Any], new: Mapping[str, Any],
                prefix: str = '') -> list[tuple[str, Any, Any]]:
  """`(dotted path, old value, new value)` of every leaf that differs, sorted by path.

  A key present on one side only has the value '<missing>' on the other.
  """
  out = []
  for key in sorted(set(old) | set(new), key=str):
    path = f'{prefix}{key}'
    a, b = old.get(key, _MISSING), new.get(key, _MISSING)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out += differences(a, b, f'{path}.')
    elif a != b:
      out.append((path, a, b))
  return out


def is_resumable(path: str, resumable: Iterable[str] = RESUMABLE) -> bool:
  """True when the dotted `path` is, or ends with, one of the `resumable` keys."""
  return any(path == key or path.endswith(f'.{key}') for key in resumable)


def check_compatible(old: Mapping[str, Any], new: Mapping[str, Any], *,
                     resumable: Iterable[str] = RESUMABLE,
                     workdir: str = 'the workdir') -> list[tuple[str, Any, Any]]:
  """The resumable differences between two JSON configs; raises on any other.

  Args:
    old: the recorded config (`to_json` form).
    new: the config of the relaunch (`to_json` form).
    resumable: keys that may change when a run resumes (see the module docstring).
    workdir: named in the error message.

  Returns:
    The `(path, old, new)` differences, all resumable.

  Raises:
    ValueError: some key outside `resumable` differs; the message lists each one as
      `path: old -> new` and how to start over.
  """
  resumable = tuple(resumable)
  diffs = differences(old, new)
  refused = [d for d in diffs if not is_resumable(d[0], resumable)]
  if refused:
    lines = '\n'.join(f'  {path}: {_show(a)} -> {_show(b)}' for path, a, b in refused)
    raise ValueError(
        f'{workdir} holds a run with another config; these keys differ (old -> new):\n'
        f'{lines}\nOnly {", ".join(resumable)} may change when a run resumes. Relaunch '
        f'with --restart to move the old run to {PREVIOUS_PREFIX}<time> inside the '
        f'workdir and start over, or use another workdir.')
  return diffs


def prepare_workdir(workdir: str, config: Any, *, restart: bool = False,
                    resumable: Iterable[str] = RESUMABLE) -> str | None:
  """Checks `config` against the workdir's config.json, then records it.

  Every process checks (so all of them fail alike); process 0 moves and writes.

  Args:
    workdir: the run directory (created if missing).
    config: the launch's config (`ConfigDict` or mapping).
    restart: move the old run aside and start over instead of resuming it.
    resumable: keys that may change when a run resumes.

  Returns:
    Where the old run was moved (`restart`), else None.

  Raises:
    ValueError: the workdir holds a run whose config differs in a non-resumable key.
  """
  new = to_json(config)
  path = os.path.join(workdir, CONFIG_FILE)
  moved = None
  if restart:
    moved = _move_aside(workdir)
  elif os.path.exists(path) and _holds_run(workdir):
    with open(path) as f:
      old = json.load(f)
    for key, a, b in check_compatible(old, new, resumable=resumable, workdir=workdir):
      logging.warning('Resuming %s with %s changed: %s -> %s.', workdir, key, _show(a),
                      _show(b))
  if is_writer():
    os.makedirs(workdir, exist_ok=True)
    with open(path + '.tmp', 'w') as f:
      f.write(json.dumps(new, indent=2))
    os.replace(path + '.tmp', path)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('prepare_workdir')
  return moved


def _entries(workdir: str) -> list[str]:
  """The workdir's entries but the runs moved aside earlier."""
  if not os.path.isdir(workdir):
    return []
  return [e for e in os.listdir(workdir) if not e.startswith(PREVIOUS_PREFIX)]


def _holds_run(workdir: str) -> bool:
  """True when a run has started in `workdir` (more than its config.json is there)."""
  return any(e not in (CONFIG_FILE, CONFIG_FILE + '.tmp') for e in _entries(workdir))


def _move_aside(workdir: str) -> str | None:
  """Moves the workdir's contents (but earlier moved runs) into a `.previous-` folder."""
  entries = _entries(workdir)
  if not entries:
    return None
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
  target, n = os.path.join(workdir, PREVIOUS_PREFIX + stamp), 1
  while os.path.exists(target):
    n += 1
    target = os.path.join(workdir, f'{PREVIOUS_PREFIX}{stamp}-{n}')
  if is_writer():
    os.makedirs(target)
    for entry in entries:
      os.rename(os.path.join(workdir, entry), os.path.join(target, entry))
    logging.warning('Restarting %s: moved the previous run to %s.', workdir, target)
  return target


def _show(value: Any) -> str:
  return value if value is _MISSING else json.dumps(value)
