"""The purification study: configs, validation before training, denoiser resume, a tiny run."""

import os
import shutil

import jax
import numpy as np
import pytest

from experiments import purification_robustness as study
from experiments import purification_robustness_report as report
from lib import data as data_lib
from lib.attacks import checks
from lib.report import markdown


def tiny_config():
  c = study.get_config('runlocal')
  c.num_steps, c.warmup_steps, c.batch_size, c.num_train = 4, 1, 16, 200
  c.eval_every, c.checkpoint_every, c.log_every = 4, 2, 2
  d = c.denoiser
  d.num_steps, d.warmup_steps, d.batch_size, d.checkpoint_every, d.log_every = 4, 1, 8, 2, 2
  d.block_out_channels = '8'  # one UNet level: compiles fastest
  c.num_eval, c.check_num, c.attack_steps, c.eot, c.eval_draws = 4, 4, 1, 2, 2
  c.sampler_steps, c.spread_draws, c.compression_directions = 1, 2, 1
  c.check_eps_scales, c.check_square_queries = '1', 2
  return c


def test_runlocal_validates_and_full_scale_needs_the_ddpm_path():
  study.validate_config(study.get_config('runlocal'))
  full = study.get_config('')
  assert (full.dataset, full.model, full.t_stars, full.norms) == ('cifar10', 'wrn28_10',
                                                                 '0.1,0.075', 'linf,l2')
  with pytest.raises(ValueError, match='config.denoiser.path'):
    study.validate_config(full)
  full.denoiser.path = '/somewhere/ddpm-cifar10-32'
  study.validate_config(full)
  assert [(t.t_star, t.norm) for t in study.grid(full)] == [(0.1, 'linf'), (0.075, 'l2')]
  assert study.get_config('digits').dataset == 'digits'


@pytest.mark.parametrize('key, value, match', [
    ('t_stars', '0.1,0.0005', 'config.t_stars'),
    ('t_stars', 'a', 'config.t_stars'),
    ('norms', 'linf,l2', 'config.norms must name one norm, or one per t'),
    ('norms', 'l1', 'config.norms'),
    ('sampler', 'euler', 'config.sampler'),
    ('eot', 0, 'config.eot'),
    ('spread_draws', 1, 'config.spread_draws'),
    ('check_t_star', 0.3, 'config.check_t_star'),
    ('check_num', 64, 'config.check_num'),
    ('check_eps_scales', '1,-1', 'config.check_eps_scales'),
    ('linf_eps', 300.0, 'config.linf_eps'),
])
def test_validate_config_names_the_bad_key(key, value, match):
  c = study.get_config('runlocal')
  c[key] = value
  with pytest.raises(ValueError, match=match):
    study.validate_config(c)


@pytest.mark.parametrize('key, value, match', [
    ('block_out_channels', '8,10', 'config.denoiser.norm_num_groups'),
    ('block_out_channels', '8,x', 'config.denoiser.block_out_channels'),
    ('warmup_steps', 1000, 'config.denoiser.warmup_steps'),
    ('learning_rate', 0.0, 'config.denoiser.learning_rate'),
])
def test_validate_config_names_the_bad_denoiser_key(key, value, match):
  c = study.get_config('runlocal')
  c.denoiser[key] = value
  with pytest.raises(ValueError, match=match):
    study.validate_config(c)


def test_run_rejects_bad_values_before_training(tmp_path):
  c = study.get_config('runlocal')
  c.num_eval = 100000
  with pytest.raises(ValueError, match=r'config.num_eval=100000 exceeds the \d+ test images'):
    study.run(c, str(tmp_path))
  c = study.get_config('runlocal')
  c.eot = 0
  with pytest.raises(ValueError, match='config.eot'):
    study.run(c, str(tmp_path))
  assert os.listdir(tmp_path) == []


def _train_data(c):
  return data_lib.get_dataset(c.dataset, 'train', image_size=c.image_size, seed=c.data_seed,
                              num_examples=c.num_train)


@pytest.mark.slow  # compiles the UNet training step / the purified attacks: 1-2 min
def test_denoiser_training_resumes_exactly_and_refuses_another_config(tmp_path):
  c = tiny_config()
  data = _train_data(c)
  _, whole = study.train_denoiser(c, data, str(tmp_path / 'a'))
  study.train_denoiser(c, data, str(tmp_path / 'b'))
  # As if killed after the step-2 checkpoint: the relaunch resumes there and ends equal.
  shutil.rmtree(tmp_path / 'b' / 'denoiser' / 'checkpoints' / '4')
  _, resumed = study.train_denoiser(c, data, str(tmp_path / 'b'))
  jax.tree.map(np.testing.assert_array_equal, whole, resumed)
  c.denoiser.learning_rate = 1e-3
  with pytest.raises(ValueError, match='denoiser.learning_rate'):
    study.train_denoiser(c, data, str(tmp_path / 'b'))


@pytest.mark.slow  # compiles the UNet training step / the purified attacks: 1-2 min
def test_tiny_run_returns_section_with_tables_figures_and_headline(tmp_path):
  c = tiny_config()
  c.t_stars, c.check_t_star = '0.1', 0.0  # one t*; the purifier's checks: see the report tests
  section = study.run(c, str(tmp_path))
  assert isinstance(section, markdown.Section) and section.title == 'Purification robustness'
  assert 3 <= len(section.headline) <= 5
  accuracy, geometry, compression, timings = section.tables
  assert accuracy.header == ['purifier', 'evaluation', 'mean', 'worst', 'gain', 'checks']
  assert [row[1] for row in accuracy.rows] == [
      'clean', 'PGD ℓ∞', 'clean', *[report.SETTING_LABELS[s] for s in ('fresh', 'fixed', 'bpda')]]
  assert accuracy.rows[1][-1] in ('pass', 'warn', 'fail')
  assert [row[0] for row in compression.rows] == ['t*=0.1 ℓ∞ 8/255'] == [
      row[0] for row in geometry.rows]
  for row in (*geometry.rows, *compression.rows):
    assert all(np.isfinite(v) for v in row[1:])
  assert [row[0] for row in timings.rows] == [
      'classifier training', 'denoiser training', 'classifier alone: PGD and checks',
      'purifier t*=0.1 (linf)']
  assert len(section.figures) == 2
  for figure in section.figures:
    assert os.path.exists(tmp_path / figure.path)
  assert 'no norm has 3 or more t* values' in section.render()


def _point(t_star, fresh, fixed, compression, checked=False):
  threat = study.Threat(t_star, 'linf', 8 / 255)
  acc = lambda m: study.Accuracy(m, m - 0.1)
  report_ = checks.Report((checks.Check('stochastic', 'warn', (0.1,), 'x'),), 0.9, fresh)
  return study.PointResult(
      threat, acc(0.8), {'fresh': acc(fresh), 'fixed': acc(fixed), 'bpda': acc(fresh - 0.1),
                         'rand': study.Accuracy(float('nan'), fresh - 0.2)},
      {'purified_clean': 3.0, 'adversarial_clean': 1.5, 'purified_pair': 0.5,
       'purified_adversarial_clean': 3.1},
      {'mean': 3.0, 'std': 0.1, 'cv': 0.03, 'between_draws': 2.0},
      {'random': compression, 'attack': compression + 0.1}, report_ if checked else None, 1.0)


def fake_results():
  points = [_point(0.05, 0.3, 0.2, 0.9), _point(0.1, 0.5, 0.3, 0.7, checked=True),
            _point(0.2, 0.6, 0.6, 0.5)]
  plain = checks.Report((checks.Check('gradients', 'pass', (0.0,), 'x'),), 0.9, 0.1)
  return study.Results(0.9, 0.1, {'linf': 0.1}, {'linf': plain}, points,
                       study.correlations(points), {'classifier training': 1.0})


def test_report_states_conclusions_computed_from_the_numbers(tmp_path):
  c = study.get_config('runlocal')
  section = report.section(c, fake_results(), str(tmp_path))
  text = section.render()
  assert 'the gain shrinks from +0.400 (fresh) to +0.200 (fixed), 50% of it' in text
  assert 'at t*=0.2 ℓ∞ 8/255 the gain does not shrink once randomness is fixed' in text
  assert 'at 3 of 3 t*; it brings the adversarial image closer to the clean one' in text
  # Compression falls as robustness rises: a perfect negative rank correlation, flagged weak.
  assert 'random directions: Pearson' in text and 'Spearman -1.000 over 3 t* values' in text
  assert 'probability 2/3! = 0.333' in text
  assert 't*=0.1 ℓ∞ 8/255: warn (stochastic warn)' in text
  assert 'to 0.800 at t*=0.05, 0.800 at t*=0.1, 0.800 at t*=0.2 (chance 0.100).' in text
  assert 'near-constant' not in text
  near_chance = report.section(c, fake_results()._replace(chance=0.75), str(tmp_path)).render()
  assert 'At t*=0.05, t*=0.1, t*=0.2 the purified classifier is within two images of chance' in (
      near_chance)
  accuracy = section.tables[0]
  rand = [row for row in accuracy.rows if row[1] == "ensemble 'rand'"]
  assert [row[2] for row in rand] == ['-'] * 3
  assert section.headline['checks (t*=0.1 ℓ∞ 8/255)'] == 'warn'
  assert len(section.figures) == 2


def test_first_draw_is_the_first_key_a_fixed_randomness_attack_uses():
  key = jax.random.key(3)
  assert study.first_draw(key, 1) is key
  np.testing.assert_array_equal(jax.random.key_data(study.first_draw(key, 4)),
                                jax.random.key_data(jax.random.split(key, 4)[0]))
