"""The explanation study's pieces: config checks before training, one detection program per
kind of model, and report sentences chosen by the numbers.

(The whole study runs in tests/test_experiments.py; these tests take seconds.)
"""

from __future__ import annotations

import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import attribution_integrity as ai
from experiments import attribution_integrity_report as report
from lib import models, sweep
from lib.attribution import audit as audit_lib

FAKE_MODEL = types.SimpleNamespace(tap_shapes={'conv3': (8, 8, 32), 'features': (32,)})


def config(**changes):
  c = ai.get_config('runlocal')
  for key, value in changes.items():
    c[key] = value
  return c


def test_default_configs_pass_the_checks():
  ai.check_config(config(), FAKE_MODEL, num_test=2000)
  full = ai.get_config('')
  ai.check_config(full, FAKE_MODEL, num_test=2000)
  assert set(ai.attribution_methods(full)) == set(ai.registry.NAMES)
  assert list(ai.attribution_methods(config(methods='grad_cam,saliency'))) == ['grad_cam',
                                                                               'saliency']


@pytest.mark.parametrize('changes, match', [
    (dict(tap='conv9'), r"config.tap='conv9' must be a spatial tap.*\['conv3'\]"),
    (dict(tap='features'), 'config.tap'),
    (dict(methods='saliency,magic'), r"config.methods=.*unknown attribution method 'magic'"),
    (dict(strength=0.0), 'config.strength must be positive'),
    (dict(strength=float('inf')), 'config.strength must be a finite number'),
    (dict(strengths='1,x'), 'config.strengths must be comma-separated numbers'),
    (dict(strengths='1,-2'), 'config.strengths must be'),
    (dict(adaptive_margin=float('nan')), 'config.adaptive_margin'),
    (dict(occlusion_window=64), 'config.occlusion_window=64 exceeds the image size'),
    (dict(occlusion_window=1), 'config.occlusion_window must be an integer >= 2'),
    (dict(audit_occlusion_stride=8), 'config.audit_occlusion_stride=8 must not exceed'),
    (dict(num_eval=5000), 'config.num_eval=5000 exceeds the 2000 test images'),
    (dict(num_audit=100), 'config.num_audit=100 must not exceed config.num_eval=64'),
    (dict(ig_steps=1), 'config.ig_steps'),
    (dict(smoothgrad_stdev=-0.1), 'config.smoothgrad_stdev'),
])
def test_bad_settings_are_named(changes, match):
  with pytest.raises(ValueError, match=match):
    ai.check_config(config(**changes), FAKE_MODEL, num_test=2000)


def test_a_bad_tap_fails_before_training(tmp_path, monkeypatch):
  def no_training(**kwargs):
    raise AssertionError('training started before the config was checked')
  monkeypatch.setattr(sweep, 'fit_seeds', no_training)
  ai.build(config())  # data loading and model building warm up here
  start = time.time()
  with pytest.raises(ValueError, match="config.tap='conv9'"):
    ai.run(config(tap='conv9'), str(tmp_path))
  assert time.time() - start < 1.0
  assert not list(tmp_path.iterdir())


def test_detection_compiles_one_program_per_kind_of_model(monkeypatch):
  """Honest, fixed-K and adaptive: three traces of the audit, however many strengths."""
  model = models.get_model('cnn', input_shape=(8, 8, 3), num_classes=3, widths=(2, 2, 2))
  inits = [model.init(jax.random.key(s, impl='rbg')) for s in (0, 1)]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *inits)
  x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
  mask = ai.target_mask(8)
  evidence = np.broadcast_to(mask, (2, 8, 8)).astype(np.float32)
  traces = []
  real_audit = audit_lib.audit

  def counting_audit(apply, *args, **kwargs):
    traces.append(apply)
    return real_audit(apply, *args, **kwargs)
  monkeypatch.setattr(audit_lib, 'audit', counting_audit)
  c = config(strengths='0.1,10,1000', ig_steps=2, occlusion_window=4, audit_occlusion_stride=4,
             strategy='sequential')
  curve = ai.detection(c, model, stacked, x, evidence, mask, jax.random.key(0))
  assert [d['strength'] for d in curve] == [0.1, 10.0, 1000.0, c.adaptive_margin]
  assert len(traces) == 3
  assert all(0 <= d['auc'] <= 1 for d in curve)


def _results(**changes):
  methods = ('saliency', 'grad_cam', 'hires_cam', 'lrp_epsilon')
  supports = {m: report.SCORES for m in methods}
  supports['lrp_epsilon'] = ('logit', 'logit_difference')
  ev = {(k, m, s): 50.0 for k in ('honest', 'steered', 'paper') for m in methods
        for s in report.SCORES}
  ev.update({('steered', m, 'logit'): 0.0 for m in methods})
  tg = {(k, m, 'logit'): 10.0 for k in ('honest', 'steered') for m in methods}
  tg.update({('paper', m, 'logit'): v for m, v in zip(methods, (90.0, 3.0, 100.0, 70.0))})
  inv = [{'name': n, 'float64': 1e-12, 'float32': 1e-3, 'mean_t': 1e4, 'accuracy_honest': 0.8,
          'accuracy_manipulated': 0.8, 'same': 1.0} for n in ('paper', 'steering')]
  curve = [{'strength': 0.01, 'adaptive': False, 'auc': 0.5, 'drop': 0.0},
           {'strength': 1.0, 'adaptive': False, 'auc': 1.0, 'drop': 40.0}]
  base = dict(config=ai.get_config('runlocal'), num_test=1000, num_classes=8,
              seed_accuracy=np.array([0.7, 0.8]), methods=methods, supports=supports,
              invariance=inv, on_evidence=ev, on_target=tg, hires_vs_grad_cam=1e-7,
              detection=curve, figures={'heatmaps': 'h.png', 'detection': 'd.png'},
              stage_s={'training': 1.0})
  return ai.Results(**{**base, **changes})


def test_report_sentences_follow_the_numbers():
  r = _results()
  assert report.invariance_text(r.invariance).startswith('**Predictions are unchanged**')
  text = report.localisation_text(r.on_evidence, r.methods, r.supports)
  assert '4 of 4 methods lose more than 20 points (largest fall 50' in text
  assert 'explanations are immune' in text
  text = report.paper_text(r.on_target, r.methods, r.hires_vs_grad_cam)
  assert 'saliency, hires_cam, lrp_epsilon point into M' in text and 'Pooled Grad-CAM' in text
  assert 'HiResCAM equals Grad-CAM' in text
  assert 'K = 1 (AUC 1.000, drop 40); every one of them is detected' in report.detection_text(
      r.detection)

  inv = [dict(row, same=0.9) for row in r.invariance]
  assert report.invariance_text(inv).startswith('**Predictions changed**')
  ev = dict(r.on_evidence)
  ev['steered', 'saliency', 'probability'] = 20.0
  text = report.localisation_text(ev, r.methods, r.supports)
  assert 'largest change is 30 points (saliency, probability). Σ_j' in text
  assert 'explanations are immune' not in text
  tg = dict(r.on_target)
  tg['paper', 'grad_cam', 'logit'] = 100.0
  text = report.paper_text(tg, r.methods, 0.3)
  assert 'Pooled Grad-CAM' not in text and 'HiResCAM and Grad-CAM differ' in text
  curve = [dict(d, auc=0.6) for d in r.detection]
  assert 'only with AUC 0.600' in report.detection_text(curve)


def test_section_has_blocks_and_headline():
  r = _results(detection=[
      {'strength': 1.0, 'adaptive': False, 'auc': 1.0, 'drop': 40.0,
       'pointing_honest': np.array([60., 50.]), 'pointing_lying': np.array([5., 0.]),
       'scores_honest': np.array([0.3, 0.4]), 'scores_lying': np.array([0.8, 0.9])},
      {'strength': 3.0, 'adaptive': True, 'auc': 0.9, 'drop': 30.0,
       'pointing_honest': np.array([60., 50.]), 'pointing_lying': np.array([9., 3.]),
       'scores_honest': np.array([0.3, 0.4]), 'scores_lying': np.array([0.6, 0.7])}],
      invariance=[{'name': 'steering', 'float64': 1e-12, 'float32': 1e-3, 'mean_t': 1e4,
                   'accuracy_honest': 0.8, 'accuracy_manipulated': 0.8, 'same': 1.0}])
  section = report.section(r)
  assert section.title == report.TITLE
  assert section.headline['smallest K detected (audit AUC ≥ 0.95)'] == '1'
  assert section.headline['audit AUC, adaptive'] == '0.900'
  assert section.headline['logit saliency pointing, honest → steered (%)'] == '50 → 0'
