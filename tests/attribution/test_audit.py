"""The explanation audit: manipulated models score higher than honest ones, one vmapped sweep.

Three random-init SmallCNN seeds, audited honest and wrapped by the softmax-invariant
manipulation ('input' nested in 'channel', so every family lies), as one vmapped program
per model function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import models
from lib.attribution import audit as audit_lib
from lib.attribution import gradcam, gradients, occlusion
from lib.attribution.audit import (COMPONENTS, Thresholds, audit, default_methods,
                                   default_references, detection_auc)
from lib.attribution.manipulate import manipulate

TAP = 'conv3'
MODEL = models.get_model('cnn', input_shape=(16, 16, 3), num_classes=5, widths=(4, 8, 8))
MASK = np.zeros((16, 16))
MASK[8:12, 4:8] = 1
LYING = manipulate(manipulate(MODEL.apply, construction='input', strength=100.0, mask=MASK),
                   construction='channel', strength=1000.0, mask=MASK, tap=TAP)
METHODS = {'saliency': gradients.saliency,
           'grad_cam': functools.partial(gradcam.grad_cam, tap=TAP, relu=False)}
REFERENCES = {'occlusion': functools.partial(occlusion.occlusion, window=4, stride=4)}
SEEDS = (0, 1, 2)
K = 16


@pytest.fixture(scope='module')
def x():
  return np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32)


@pytest.fixture(scope='module')
def stacked():
  inits = [MODEL.init(jax.random.key(seed, impl='rbg')) for seed in SEEDS]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *inits)


def sweep(apply, stacked, x, thresholds=Thresholds()):
  one = lambda p: audit(apply, p, x, methods=METHODS, references=REFERENCES, k=K,
                        thresholds=thresholds)
  return jax.vmap(one)(stacked)


@pytest.fixture(scope='module')
def reports(stacked, x):
  return sweep(MODEL.apply, stacked, x), sweep(LYING, stacked, x)


def test_manipulated_models_score_higher(reports, record_property):
  honest, lying = reports
  record_property('honest_scores', np.asarray(honest.model_score).tolist())
  record_property('manipulated_scores', np.asarray(lying.model_score).tolist())
  assert float(lying.model_score.min()) > float(honest.model_score.max())
  assert detection_auc(honest.model_score, lying.model_score) == 1.0
  # The two symptoms the manipulation must show: class collapse and pre/post disagreement.
  for component in ('collapse', 'pre_post'):
    assert float(getattr(lying, component).mean()) > float(getattr(honest, component).mean()) + 0.3
  assert np.asarray(lying.model_flags)[:, :2].all()
  assert not np.asarray(honest.model_flags)[:, 0].any()


def test_shapes_ranges_and_aggregates(reports):
  s, n, m, r = len(SEEDS), 4, len(METHODS), len(REFERENCES)
  for report in reports:
    for name in (*COMPONENTS, 'suspicion'):
      values = np.asarray(getattr(report, name))
      assert values.shape == (s, n) and np.all((values >= 0) & (values <= 1))
    assert report.flags.shape == (s, n, 3) and report.flags.dtype == jnp.bool_
    assert report.model_score.shape == (s,) and report.model_flags.shape == (s, 3)
    assert report.collapse_by_method.shape == (s, n, m)
    assert report.pre_post_by_method.shape == (s, n, m)
    assert report.disagreement_by_pair.shape == (s, n, m, r)
    np.testing.assert_allclose(report.collapse, report.collapse_by_method.mean(-1), rtol=1e-6)
    components = np.stack([report.collapse, report.pre_post, report.disagreement], -1)
    np.testing.assert_allclose(report.suspicion, components.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(report.model_score, report.suspicion.mean(-1), rtol=1e-6)


def test_vmapped_sweep_matches_single_audits_and_thresholds_do_not_recompile(
    reports, stacked, x):
  first = jax.tree.map(lambda a: a[0], stacked)
  single = audit(LYING, first, x, methods=METHODS, references=REFERENCES, k=K)
  np.testing.assert_allclose(single.suspicion, reports[1].suspicion[0], rtol=1e-5)
  compiled = audit_lib._audit._cache_size()
  everything = audit(LYING, first, x, methods=METHODS, references=REFERENCES, k=K,
                     thresholds=Thresholds(0.0, 0.0, 0.0, 0.0))
  nothing = audit(LYING, first, x, methods=METHODS, references=REFERENCES, k=K,
                  thresholds=Thresholds(1.0, 1.0, 1.0, 1.0))
  assert audit_lib._audit._cache_size() == compiled
  assert np.asarray(everything.flags).all() and np.asarray(everything.model_flags).all()
  assert not np.asarray(nothing.flags).any() and not np.asarray(nothing.model_flags).any()


def test_default_configuration():
  methods = default_methods(TAP, n_steps=8)
  assert list(methods) == ['saliency', 'gradient_x_input', 'integrated_gradients', 'grad_cam']
  assert list(default_references()) == ['occlusion']


def test_detection_auc():
  assert detection_auc([0.1, 0.3], [0.2, 0.4]) == 0.75
  assert detection_auc([0.5], [0.5]) == 0.5
  assert detection_auc(np.zeros(3), np.ones(2)) == 1.0
  with pytest.raises(ValueError, match='at least one'):
    detection_auc([], [1.0])
  with pytest.raises(ValueError, match='NaN or Inf'):
    detection_auc([np.nan], [1.0])


@pytest.mark.parametrize('kwargs, match', [
    (dict(methods={}), 'methods must be a non-empty mapping'),
    (dict(methods={'saliency': 'saliency'}), r"methods\['saliency'\] must be a callable"),
    (dict(references={}), 'references must be a non-empty mapping'),
    (dict(immune_score='logit'), "immune_score='logit'"),
    (dict(reference_score='logit'), "reference_score='logit'"),
    (dict(k=0), r'k must be in \[1, 256\]'),
    (dict(k=257), r'k must be in \[1, 256\]'),
    (dict(thresholds=Thresholds(collapse=1.5)), 'thresholds must be'),
    (dict(thresholds=(0.5, 0.5, 0.5, 0.5)), 'thresholds must be'),
])
def test_bad_arguments(stacked, x, kwargs, match):
  first = jax.tree.map(lambda a: a[0], stacked)
  options = {**dict(methods=METHODS, references=REFERENCES, k=K), **kwargs}
  with pytest.raises(ValueError, match=match):
    audit(MODEL.apply, first, x, **options)


def test_bad_inputs(stacked):
  first = jax.tree.map(lambda a: a[0], stacked)
  with pytest.raises(ValueError, match='rank 4'):
    audit(MODEL.apply, first, np.zeros((16, 16, 3), np.float32), methods=METHODS,
          references=REFERENCES)
