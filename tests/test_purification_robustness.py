"""The purification study: configs, validation before training, denoiser resume, a tiny run."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import purification_robustness as study
from experiments import purification_robustness_report as report
from lib import data as data_lib
from lib.attacks import checks
from lib.diffusion import PurifiedClassifier, PurifierParams
from lib.report import markdown
from tests.diffusion import toys


# The smallest run (dotted `--config.` keys), for the main job's end-to-end test: measured
# run() 90 CPU-s for a fresh run (403 s wall at load ~12; was 107 s wall at load 0.6-2.5,
# 123 CPU-s, before fresh/fixed shared a program); the goal is 50 s wall on 2 quiet cores.
TINY = ['num_steps=4', 'warmup_steps=1', 'batch_size=16', 'num_train=200', 'eval_every=4',
        'checkpoint_every=2', 'log_every=2', 'denoiser.num_steps=4', 'denoiser.warmup_steps=1',
        'denoiser.batch_size=8', 'denoiser.checkpoint_every=2', 'denoiser.log_every=2',
        'denoiser.block_out_channels=8', 't_stars=0.1', 'check_t_star=0', 'num_eval=4',
        'check_num=4', 'attack_steps=1', 'eot=2', 'eval_draws=2', 'sampler_steps=1',
        'spread_draws=2', 'compression_directions=1', 'check_eps_scales=1',
        'check_square_queries=2']


def tiny_config(overrides=TINY):
  """The runlocal config under `overrides` ('a.b=value', typed as the field it replaces)."""
  c = study.get_config('runlocal')
  for item in overrides:
    dotted, value = item.split('=')
    *parents, name = dotted.split('.')
    node = c
    for parent in parents:
      node = node[parent]
    node[name] = type(node[name])(float(value) if isinstance(node[name], float) else value)
  return c


def test_runlocal_validates_and_full_scale_needs_the_ddpm_path():
  c = study.get_config('runlocal')
  study.validate_config(c)
  # The small UNet trains on k ≤ max_t·T (the labels of every t* ≤ max_t), at most T − 1.
  assert study.max_timestep(c) == 200 and max(study._floats(c, 't_stars')) <= c.denoiser.max_t
  c.denoiser.max_t = 1.0
  assert study.max_timestep(c) == 999
  # A continuous sampler with fixed steps: t* is the purifier's argument, one program.
  assert study.traced_t_star(c) and study.purifier_config(c, 0.1).t_star is None
  c.sampler_steps = 0  # DiffPure's t*·1000 steps: a static t* per program
  assert not study.traced_t_star(c) and study.purifier_config(c, 0.1).t_star == 0.1
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
    ('classifier_workdir', None, 'config.classifier_workdir must be a folder path'),
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
    ('max_t', 0.1234, 'config.denoiser.max_t'),
    ('max_t', 0.05, r'config.denoiser.max_t=0.05 must be at least every t\*'),
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
  c = tiny_config()  # one t*, no checks of the purifier (see the report tests)
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
      'purifier t*=0.1 (linf)', 'total']
  assert len(section.figures) == 2
  for figure in section.figures:
    assert os.path.exists(tmp_path / figure.path)
  assert 'no norm has 3 or more t* values' in section.render()
  # Another run reading that classifier (config.classifier_workdir) trains none of its own
  # and measures the same numbers (the denoiser trains again, deterministically).
  c.classifier_workdir = str(tmp_path / 'model')
  again = study.run(c, str(tmp_path / 'again'))
  assert 'model' not in os.listdir(tmp_path / 'again')
  assert again.tables[0].rows == accuracy.rows


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
      {'random': compression, 'attack': compression + 0.1}, report_ if checked else None,
      study.Seconds(1.0, 1.5))


def fake_results():
  points = [_point(0.05, 0.3, 0.2, 0.9), _point(0.1, 0.5, 0.3, 0.7, checked=True),
            _point(0.2, 0.6, 0.6, 0.5)]
  plain = checks.Report((checks.Check('gradients', 'pass', (0.0,), 'x'),), 0.9, 0.1)
  return study.Results(0.9, 0.1, {'linf': 0.1}, {'linf': plain}, points,
                       study.correlations(points),
                       {'classifier training': study.Seconds(1.0, 1.8)})


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
  # 0.8 against 0.9 alone: more than two images of 32 lost at every t*.
  assert 'At t*=0.05, t*=0.1, t*=0.2 it costs more than two images' in text
  assert 'keeps the classifier' not in text
  kept = report.section(c, fake_results()._replace(clean=0.85), str(tmp_path)).render()
  assert "At t*=0.05, t*=0.1, t*=0.2 it keeps the classifier's clean accuracy" in kept
  assert 'near-constant' not in text
  near_chance = report.section(c, fake_results()._replace(chance=0.75), str(tmp_path)).render()
  assert 'At t*=0.05, t*=0.1, t*=0.2 the purified classifier is within two images of chance' in (
      near_chance)
  accuracy = section.tables[0]
  rand = [row for row in accuracy.rows if row[1] == "ensemble 'rand'"]
  assert [row[2] for row in rand] == ['-'] * 3
  assert section.headline['checks (t*=0.1 ℓ∞ 8/255)'] == 'warn'
  assert section.tables[-1].rows == [['classifier training', 1.0, 1.8], ['total', 1.0, 1.8]]
  assert len(section.figures) == 2


def test_first_draw_is_the_first_key_a_fixed_randomness_attack_uses():
  key = jax.random.key(3)
  assert study.first_draw(key, 1) is key
  np.testing.assert_array_equal(jax.random.key_data(study.first_draw(key, 4)),
                                jax.random.key_data(jax.random.split(key, 4)[0]))


@pytest.mark.slow  # ~20 s in the two-worker suite; tests/attacks/test_ensemble covers 'rand'
def test_rand_ensemble_runs_on_the_purified_classifier_and_a_larger_radius_fools_more():
  """The 'rand' ensemble of config.rand_ensemble (APGD-CE + APGD-DLR with EOT, worst case over
  draws) on a toy purifier: an MLP ε-model and a linear classifier, 4×4×3 images."""
  c = study.get_config('runlocal')
  c.rand_ensemble, c.ensemble_steps, c.eot, c.eval_draws = True, 3, 2, 2
  params = study.purifier_params(c, PurifierParams(toys.init_mlp(0), toys.init_classifier(1)),
                                 0.02)
  x = toys.uniform_images(2, (8, *toys.IMAGE_SHAPE), 0.1, 0.9)
  y = jnp.argmax(toys.linear_classifier(params.classifier, x), axis=-1)  # clean: all right
  s = study.Study(c, toys.mlp_denoiser, toys.linear_classifier, params, x, y)
  model = PurifiedClassifier(s.denoiser, s.classifier, study.purifier_config(c, 0.02))
  rand = {eps: study.rand_ensemble(s, model, study.Threat(0.02, 'linf', eps), jax.random.key(0))
          for eps in (0.01, 0.4)}
  assert all(np.isnan(r.mean) for r in rand.values())
  assert 0.0 <= rand[0.4].worst < rand[0.01].worst <= 1.0, rand
