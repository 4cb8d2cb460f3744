"""Checkpointer: fall-back past damaged checkpoints, refused overwrites, model mismatch."""

import logging
import os
import shutil
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from lib.checkpoint import Checkpointer
from lib.train import run_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree(step, width=3):
  return {'w': jnp.full((2, width), float(step)), 'b': jnp.arange(4, dtype=jnp.int32) + step}


def _saved(directory, steps=(1, 2, 3)):
  ckpt = Checkpointer(directory)
  for step in steps:
    ckpt.save(step, _tree(step))
  ckpt.close()
  return Checkpointer(directory)


def _empty(step_dir):
  shutil.rmtree(step_dir)
  os.makedirs(step_dir)


def _lose_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'default'))


def _truncate_files(step_dir):
  for root, _, files in os.walk(step_dir):
    for name in files:
      if name != '_CHECKPOINT_METADATA':
        open(os.path.join(root, name), 'wb').close()


def _truncate_arrays(step_dir):
  data = os.path.join(step_dir, 'default', 'd')
  for name in os.listdir(data):  # the array data; the metadata stays readable
    open(os.path.join(data, name), 'wb').close()


@pytest.mark.parametrize('damage', [_empty, _lose_item, _truncate_files, _truncate_arrays])
def test_damaged_newest_checkpoint_is_set_aside_and_its_step_saved_again(tmp_path, damage):
  directory = str(tmp_path / 'ckpt')
  ckpt = _saved(directory)
  damage(os.path.join(directory, '3'))
  step, tree = ckpt.restore_latest(_tree(0))
  assert step == 2
  np.testing.assert_array_equal(tree['w'], _tree(2)['w'])
  assert ckpt.steps() == [1, 2]
  assert sorted(os.listdir(directory)) == ['1', '2', '3.damaged-1']
  ckpt.save(3, _tree(30))  # the same manager saves and restores after the failed restore
  assert ckpt.restore_latest(_tree(0))[0] == 3
  ckpt.close()
  again = Checkpointer(directory)
  step, tree = again.restore_latest(_tree(0))
  assert step == 3 and float(tree['w'][0, 0]) == 30.0
  again.close()


def test_every_damaged_checkpoint_set_aside_then_none(tmp_path):
  directory = str(tmp_path / 'ckpt')
  ckpt = _saved(directory, steps=(1, 2))
  _empty(os.path.join(directory, '2'))
  _lose_item(os.path.join(directory, '1'))
  assert ckpt.restore_latest(_tree(0)) is None
  assert sorted(os.listdir(directory)) == ['1.damaged-1', '2.damaged-1']
  ckpt.save(1, _tree(1))
  assert ckpt.steps() == [1]
  ckpt.close()


def test_damaged_warning_is_one_line(tmp_path, caplog):
  directory = str(tmp_path / 'ckpt')
  ckpt = _saved(directory)
  _truncate_arrays(os.path.join(directory, '3'))  # tensorstore's error holds a long spec
  with caplog.at_level(logging.WARNING):
    assert ckpt.restore_latest(_tree(0))[0] == 2
  ckpt.close()
  warnings = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert len(warnings) == 1
  message = warnings[0]
  assert '\n' not in message and len(message) < 600, message
  assert 'step 3' in message and directory in message and 'falling back' in message
  assert 'Error' in message and '3.damaged-1' in message


def test_save_at_or_below_newest_step_is_refused(tmp_path):
  ckpt = _saved(str(tmp_path / 'ckpt'), steps=(1, 2))
  for step in (2, 1):
    with pytest.raises(ValueError, match=r'step must be above the newest checkpoint .*step 2'):
      ckpt.save(step, _tree(step))
  ckpt.save(3, _tree(3))
  assert ckpt.steps() == [1, 2, 3]
  ckpt.close()


@pytest.mark.parametrize('like, match', [
    ({'w': jnp.zeros((2, 4)), 'b': jnp.zeros(4, jnp.int32)},
     r"different model: leaf 'w' has shape \(2, 3\) in the checkpoint and \(2, 4\)"),
    ({'w': jnp.zeros((2, 3)), 'b': jnp.zeros(4, jnp.int32), 'extra': jnp.zeros(2)},
     r"different model: the model's leaf 'extra' \(2,\) is not in the checkpoint"),
    ({'w': jnp.zeros((2, 3))}, r"different model: the checkpoint's leaf 'b' is not in the model"),
])
def test_different_model_is_refused_and_nothing_is_moved(tmp_path, like, match):
  directory = str(tmp_path / 'ckpt')
  ckpt = _saved(directory)
  with pytest.raises(ValueError, match=match + r'.*--restart'):
    ckpt.restore_latest(like)
  assert sorted(os.listdir(directory)) == ['1', '2', '3']
  ckpt.close()


def test_max_to_keep_is_validated(tmp_path):
  for bad in (1, 2.5, True):
    with pytest.raises(ValueError, match='max_to_keep must be an integer of at least 2'):
      Checkpointer(str(tmp_path), max_to_keep=bad)


_FALLBACK_SCRIPT = textwrap.dedent('''
    import os, sys, time
    import jax.numpy as jnp
    from lib.checkpoint import Checkpointer
    directory = sys.argv[1]
    tree = {f'a{i}': jnp.arange(256.0) + i for i in range(200)}
    ckpt = Checkpointer(directory)
    ckpt.save(1, tree)
    for _ in range(8):  # each failed restore races its in-flight reads against the loop
      ckpt.save(2, tree)
      data = os.path.join(directory, '2', 'default', 'd')
      for name in os.listdir(data):  # truncate the array data, keep the metadata
        open(os.path.join(data, name), 'wb').close()
      print('restored', ckpt.restore_latest(tree)[0])
    ckpt.close()
    time.sleep(0.5)  # let the last reads finish while the process lives
''')


def test_fallback_prints_no_event_loop_is_closed(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  out = subprocess.run([sys.executable, '-c', _FALLBACK_SCRIPT, str(tmp_path / 'ckpt')],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ['restored', '1'] * 8
  assert 'Event loop is closed' not in out.stderr, out.stderr[-3000:]
  assert 'Traceback' not in out.stderr, out.stderr[-3000:]


def _metrics_text(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return f.read()


def _loop(workdir, width):
  return run_loop(init=lambda: {'w': jnp.zeros(width)},
                  step_fn=lambda s, b: ({'w': s['w'] + 1.0}, {'loss': jnp.sum(s['w'])}),
                  batch_fn=lambda step: {}, num_steps=4, workdir=workdir, checkpoint_every=2,
                  log_every=1, progress=False)


def test_run_loop_replaces_a_damaged_final_checkpoint(tmp_path):
  workdir = str(tmp_path)
  _loop(workdir, 3)
  metrics = _metrics_text(workdir)
  _empty(os.path.join(workdir, 'checkpoints', '4'))
  state = _loop(workdir, 3)
  np.testing.assert_array_equal(state['w'], np.full(3, 4.0))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4', '4.damaged-1']
  assert _metrics_text(workdir) == metrics
  assert float(_loop(workdir, 3)['w'][0]) == 4.0  # the new step 4 is read back


def test_run_loop_on_a_different_model_keeps_checkpoints_and_metrics(tmp_path):
  workdir = str(tmp_path)
  _loop(workdir, 3)
  metrics = _metrics_text(workdir)
  with pytest.raises(ValueError, match=r"different model: leaf 'w' has shape \(3,\) in the "
                                       r'checkpoint and \(5,\) in the model'):
    _loop(workdir, 5)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert _metrics_text(workdir) == metrics
