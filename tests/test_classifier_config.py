"""The classifier and seed-sweep configs are checked whole before anything is trained."""

import os

import ml_collections
import pytest

from experiments import classifier, seed_sweep


def _with(c, **changes):
  """A copy of config `c` with `changes`, bypassing ConfigDict's type locking."""
  return ml_collections.ConfigDict({**c.to_dict(), **changes})


@pytest.mark.parametrize('arg', ['', 'runlocal', 'digits', 'runlocal,digits', 'cifar10',
                                 'cifar10,wrn'])
def test_every_variant_is_valid(arg):
  classifier.validate_config(classifier.get_config(arg))
  seed_sweep.validate_config(seed_sweep.get_config(arg))


@pytest.mark.parametrize('changes, match', [
    ({'seed': 1.5}, 'config.seed'),
    ({'seed': '3'}, 'config.seed'),
    ({'seed': -1}, 'config.seed'),
    ({'flip': 'no'}, 'config.flip'),
    ({'weight_decay': -5e-4}, 'config.weight_decay'),
    ({'momentum': -0.9}, 'config.momentum'),
    ({'momentum': 1.0}, 'config.momentum'),
    ({'label_smoothing': 1.5}, 'config.label_smoothing'),
    ({'label_smoothing': 1.0}, 'config.label_smoothing'),
    ({'pad': -1}, 'config.pad'),
    ({'batch_size': 16.5}, 'config.batch_size'),
    ({'batch_size': True}, 'config.batch_size'),
    ({'num_steps': '600'}, 'config.num_steps'),
    ({'warmup_steps': 600}, 'config.warmup_steps'),
    ({'learning_rate': float('nan')}, 'config.learning_rate'),
    ({'learning_rate': 0.0}, 'config.learning_rate'),
    ({'optimizer': 'rmsprop'}, 'config.optimizer'),
    ({'image_size': 0}, 'config.image_size'),
    ({'eval_every': 0}, 'config.eval_every'),
    ({'dataset': 3}, 'config.dataset'),
    ({'model_kwargs': 'widths=8'}, 'config.model_kwargs'),
])
def test_bad_classifier_config_is_refused_before_training(tmp_path, changes, match):
  bad = _with(classifier.get_config('runlocal,digits'), **changes)
  with pytest.raises(ValueError, match=match):
    classifier.validate_config(bad)
  with pytest.raises(ValueError, match=match):
    classifier.build(bad)
  with pytest.raises(ValueError, match=match):
    classifier.run(bad, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


@pytest.mark.parametrize('changes, match', [
    ({'num_seeds': 0}, 'config.num_seeds'),
    ({'num_seeds': 2.5}, 'config.num_seeds'),
    ({'strategy': 'pmap'}, 'config.strategy'),
    ({'learning_rates': 'a,b'}, 'config.learning_rates'),
    ({'learning_rates': '0.1'}, 'one value per seed'),
    ({'learning_rates': '0.1,-0.1'}, r'config.learning_rates\[1\]'),
    ({'learning_rates': '0.1,nan'}, r'config.learning_rates\[1\]'),
    ({'seed': 0.5}, 'config.seed'),
])
def test_bad_seed_sweep_config_is_refused_before_training(tmp_path, changes, match):
  bad = _with(seed_sweep.get_config('runlocal,digits'), **{'num_seeds': 2, **changes})
  with pytest.raises(ValueError, match=match):
    seed_sweep.run(bad, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


def test_seed_sweep_parses_learning_rates():
  c = _with(seed_sweep.get_config('runlocal'), num_seeds=2, learning_rates='0.1,0.05')
  assert seed_sweep.learning_rates(c) == [0.1, 0.05]
  assert seed_sweep.learning_rates(_with(c, learning_rates='')) is None


def test_seed_sweep_may_switch_strategy_on_resume():
  """Both strategies share one checkpoint layout, so launch.run lets `strategy` change."""
  assert 'strategy' in seed_sweep.RESUMABLE_KEYS
