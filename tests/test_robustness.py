"""The robustness study: configs, validation before training, and a tiny run end to end."""

import os

import jax
import numpy as np
import pytest

from experiments import robustness
from lib.report import markdown


def tiny_config():
  c = robustness.get_config('runlocal')
  c.num_steps, c.warmup_steps, c.batch_size, c.num_train = 4, 1, 16, 200
  c.eval_every, c.checkpoint_every, c.log_every = 4, 2, 2
  c.num_eval, c.linf_eps, c.l2_eps = 8, '8', '0.5'
  c.pgd_steps, c.apgd_steps, c.square_queries, c.n_target_classes = 2, 2, 4, 1
  return c


@pytest.mark.parametrize('arg', ['', 'runlocal'])
def test_config_variants_build_and_validate(arg):
  c = robustness.get_config(arg)
  robustness.validate_config(c)
  assert robustness.attack_names(c) == list(robustness.ATTACKS)


def test_takes_the_classifiers_variants_and_refuses_others():
  assert robustness.get_config('cifar10').model == 'resnet18'
  with pytest.raises(ValueError, match=r"unknown config variants \['bogus'\]"):
    robustness.get_config('bogus')


def test_radii_are_in_pixel_units():
  c = robustness.get_config('runlocal')
  assert robustness.radii(c, 'linf') == [1 / 255, 2 / 255, 4 / 255, 8 / 255]
  assert robustness.radii(c, 'l2') == [0.1, 0.25, 0.5]


@pytest.mark.parametrize('key, value, match', [
    ('linf_eps', '1,-2', 'config.linf_eps'),
    ('linf_eps', '1,300', 'config.linf_eps'),
    ('l2_eps', 'a,b', 'config.l2_eps'),
    ('attacks', 'pgd,cw', 'config.attacks'),
    ('attacks', '', 'config.attacks'),
    ('main_eps', -1, 'config.main_eps'),
    ('num_eval', 0, 'config.num_eval'),
    ('apgd_steps', 0, 'config.apgd_steps'),
    ('square_queries', 0, 'config.square_queries'),
    ('saturation_scale', 0.5, 'config.saturation_scale'),
])
def test_validate_config_names_the_bad_key(key, value, match):
  c = robustness.get_config('runlocal')
  c[key] = value
  with pytest.raises(ValueError, match=match):
    robustness.validate_config(c)


@pytest.mark.parametrize('key, value, match', [
    ('num_eval', 100000, r'config.num_eval=100000 exceeds the \d+ test images'),
    ('n_target_classes', 50, 'config.n_target_classes=50 must be below'),
])
def test_run_rejects_data_dependent_values_before_training(tmp_path, key, value, match):
  c = robustness.get_config('runlocal')
  c[key] = value
  with pytest.raises(ValueError, match=match):
    robustness.run(c, str(tmp_path))
  assert not os.path.exists(tmp_path / 'model')


# The main job's end-to-end test (tests/test_experiments.py) runs this study too and checks
# that the planted models fail the checks; this one looks at every table.
@pytest.mark.slow
def test_tiny_run_returns_section_with_tables_figure_and_headline(tmp_path):
  section = robustness.run(tiny_config(), str(tmp_path))
  assert isinstance(section, markdown.Section) and section.title == 'Adversarial robustness'
  assert 3 <= len(section.headline) <= 5
  curve, checks, verdicts, planted = section.tables
  assert curve.header[2:] == ['FGSM', 'PGD', 'APGD-CE', 'APGD-T', 'Square', 'Ensemble']
  assert [row[:2] for row in curve.rows] == [['ℓ∞', '8/255'], ['ℓ2', '0.5']]
  assert checks.header == ['check', 'verdict', 'value', 'explanation']
  assert verdicts.header == ['check', 'honest', 'quantised', 'saturated']
  # The planted masking is seen by the checks whatever the (barely trained) model.
  overall = dict((row[0], row[1:]) for row in verdicts.rows)['**overall**']
  assert overall[1:] == ['fail', 'fail']
  assert [row[0] for row in planted.rows] == ['honest', 'quantised', 'saturated']
  assert planted.header[-2:] == list(robustness.ADAPTIVE)
  (figure,) = section.figures
  assert os.path.exists(tmp_path / figure.path)
  assert 'The ensemble' in section.render()


def test_bpda_view_of_the_quantiser_has_the_same_outputs_and_the_identity_gradient():
  w = jax.random.normal(jax.random.key(0), (12, 3))
  apply = lambda v, x: x.reshape(len(x), -1) @ v
  params = robustness.planted_params(w, 1e4)['quantised']
  x = jax.random.uniform(jax.random.key(1), (2, 2, 2, 3))
  plain = robustness.masked_model(apply)
  through = robustness.masked_model(apply, through_bpda=True)
  np.testing.assert_array_equal(plain(params, x), through(params, x))
  grad = lambda f: jax.grad(lambda x: f(params, x)[:, 0].sum())(x)
  assert not np.any(grad(plain))
  np.testing.assert_allclose(grad(through), np.broadcast_to(w[:, 0].reshape(2, 2, 3), x.shape))
