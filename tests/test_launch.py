"""Relaunching a workdir: resumable config changes, refused ones, --restart (lib.run_config)."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from lib import run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_EXPERIMENT = textwrap.dedent('''
    """A fake experiment: records the num_steps of every run in runs.txt."""
    import os
    import ml_collections

    RESUMABLE_KEYS = ('note',)

    def get_config(arg=None):
      c = ml_collections.ConfigDict()
      c.learning_rate = 0.1
      c.num_steps = 3
      c.model = ml_collections.ConfigDict({'name': 'cnn', 'widths': (4, 8)})
      c.note = 'a'
      return c

    def run(config, workdir):
      with open(os.path.join(workdir, 'runs.txt'), 'a') as f:
        f.write(f'{config.num_steps}\\n')
''')


def _launch(experiment, workdir, *args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  return subprocess.run(
      [sys.executable, '-m', 'launch.run', f'--config={experiment}', f'--workdir={workdir}',
       *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _read(path):
  with open(path) as f:
    return f.read()


def test_relaunch_resumes_refuses_or_restarts(tmp_path):
  experiment, workdir = tmp_path / 'fake_experiment.py', tmp_path / 'run'
  experiment.write_text(_EXPERIMENT)
  config_json = workdir / 'config.json'

  out = _launch(experiment, workdir)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(config_json.read_text())['learning_rate'] == 0.1

  # Run-length keys and the experiment's own RESUMABLE_KEYS may change: config.json follows.
  out = _launch(experiment, workdir, '--config.num_steps=5', '--config.note=b')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'num_steps changed: 3 -> 5' in out.stderr
  assert json.loads(config_json.read_text())['num_steps'] == 5
  recorded = config_json.read_text()

  # Anything else is refused, naming every differing key; nothing runs or is rewritten.
  changed = ('--config.learning_rate=0.2', '--config.model.widths=(8,16)')
  out = _launch(experiment, workdir, *changed)
  assert out.returncode != 0
  assert 'ValueError' in out.stderr and '--restart' in out.stderr
  assert 'learning_rate: 0.1 -> 0.2' in out.stderr
  assert 'model.widths: [4, 8] -> [8, 16]' in out.stderr
  assert 'num_steps' not in out.stderr.split('these keys differ')[1].split('Only')[0]
  assert config_json.read_text() == recorded
  assert _read(workdir / 'runs.txt').split() == ['3', '5']

  # --restart moves the old run aside (nothing deleted) and starts over.
  out = _launch(experiment, workdir, *changed, '--restart')
  assert out.returncode == 0, out.stderr[-3000:]
  previous = [e for e in os.listdir(workdir) if e.startswith('.previous-')]
  assert len(previous) == 1
  assert _read(workdir / previous[0] / 'config.json') == recorded
  assert _read(workdir / previous[0] / 'runs.txt').split() == ['3', '5']
  assert json.loads(config_json.read_text())['learning_rate'] == 0.2
  assert _read(workdir / 'runs.txt').split() == ['3']


def test_variants_split_at_commas_and_refuse_unknown_ones():
  assert run_config.variants('', ('runlocal',)) == frozenset()
  assert run_config.variants('runlocal,,cifar10', ('runlocal', 'cifar10')) == {'runlocal', 'cifar10'}
  with pytest.raises(ValueError, match=r"unknown config variants \['runloca'\]; expected any of "
                     r"\['runlocal'\]"):
    run_config.variants('runloca', ('runlocal',))


def test_differences_are_dotted_paths_sorted():
  old = {'lr': 0.1, 'model': {'widths': [4, 8], 'depth': 2}, 'gone': 1}
  new = {'lr': 0.1, 'model': {'widths': [8], 'depth': 2, 'act': 'relu'}}
  assert run_config.differences(old, new) == [
      ('gone', 1, '<missing>'), ('model.act', '<missing>', 'relu'),
      ('model.widths', [4, 8], [8])]


@pytest.mark.parametrize('path, expected', [
    ('num_steps', True), ('classifier.num_steps', True), ('classifier.log_every', True),
    ('learning_rate', False), ('num_steps_extra', False), ('my_num_steps', False)])
def test_resumable_keys_match_the_last_part_of_a_path(path, expected):
  assert run_config.is_resumable(path) == expected


def test_check_compatible_lists_refused_keys_only():
  old = {'lr': 0.1, 'num_steps': 3, 'model': {'name': 'cnn'}}
  new = {'lr': 0.2, 'num_steps': 5, 'model': {'name': 'vit'}}
  with pytest.raises(ValueError, match=r'(?s)lr: 0.1 -> 0.2\n  model.name: "cnn" -> "vit"\n'
                                       r'Only num_steps, .*--restart') as err:
    run_config.check_compatible(old, new)
  assert 'num_steps: 3' not in str(err.value)
  assert run_config.check_compatible(old, {**old, 'num_steps': 9}) == [('num_steps', 3, 9)]
  assert run_config.check_compatible(old, {**old, 'lr': 1.0}, resumable=('lr',)) == \
      [('lr', 0.1, 1.0)]


def test_prepare_workdir_writes_refuses_and_restarts_without_deleting(tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  config = {'lr': 0.1, 'num_steps': 3}
  assert run_config.prepare_workdir(workdir, {'lr': 0.3}) is None
  # Only config.json there (the launch failed before its run started): any config goes.
  assert run_config.prepare_workdir(workdir, config) is None
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.write('{"step": 1}\n')
  with caplog.at_level(logging.WARNING):
    run_config.prepare_workdir(workdir, {**config, 'num_steps': 6})
  assert any('num_steps changed: 3 -> 6' in r.getMessage() for r in caplog.records)
  with pytest.raises(ValueError, match='lr: 0.1 -> 0.5'):
    run_config.prepare_workdir(workdir, {**config, 'lr': 0.5})
  first = run_config.prepare_workdir(workdir, {**config, 'lr': 0.5}, restart=True)
  second = run_config.prepare_workdir(workdir, {'lr': 0.7}, restart=True)
  assert first != second
  assert sorted(os.listdir(first)) == ['config.json', 'metrics.jsonl']
  assert os.listdir(second) == ['config.json']
  assert sorted(os.listdir(workdir)) == sorted(
      ['config.json', os.path.basename(first), os.path.basename(second)])
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f) == {'lr': 0.7}
