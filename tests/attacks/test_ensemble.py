"""lib/attacks/ensemble.py: attacks in sequence, per-example worst case, deterministic and 'rand'."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.attacks import apgd, ensemble, evaluate

EPS = 4 / 255
SMALL = dict(steps=5, n_target_classes=2, n_queries=20)


@pytest.fixture(scope='module')
def standard(twin):
  return ensemble.ensemble(twin.apply, twin.variables, twin.x, twin.y, eps=EPS,
                           key=jax.random.key(0), **SMALL)


def test_worst_case_is_kept_per_example(twin, standard):
  acc = list(standard.accuracy.values())
  assert list(standard.accuracy) == ['clean', 'APGD-CE', 'APGD-T', 'Square']
  assert all(a >= b for a, b in zip(acc, acc[1:])), standard.accuracy
  assert np.mean(standard.robust) == acc[-1]
  # Fooled examples are misclassified at the returned points; robust ones keep x.
  pred = np.asarray(twin.apply(twin.variables, standard.x_adv).logits.argmax(-1))
  robust = np.asarray(standard.robust)
  assert np.all(pred[~robust] != twin.y[~robust])
  np.testing.assert_array_equal(np.asarray(standard.x_adv)[robust], twin.x[robust])
  delta = np.asarray(standard.x_adv) - twin.x
  assert np.abs(delta).max() <= EPS + 1e-6 and standard.x_adv.min() >= 0 and standard.x_adv.max() <= 1


def test_first_stage_is_apgd_alone_and_later_stages_only_lower_it(twin, standard):
  alone = apgd.apgd(twin.apply, twin.variables, twin.x, twin.y, eps=EPS, steps=SMALL['steps'],
                    key=jax.random.fold_in(jax.random.key(0), 0))
  alone_acc = float(evaluate.robust_accuracy(twin.apply, twin.variables, alone, twin.y).mean)
  assert standard.accuracy['APGD-CE'] == alone_acc
  assert standard.accuracy['Square'] <= alone_acc


def _noisy(apply):
  def noisy(params, x, *, key=None):
    noise = 0.0 if key is None else 0.05 * jax.random.normal(key, x.shape)
    return apply(params, jnp.clip(x + noise, 0.0, 1.0))
  return noisy


def test_rand_version_counts_an_example_robust_only_on_every_draw(twin):
  noisy = _noisy(twin.apply)
  result = ensemble.ensemble(noisy, twin.variables, twin.x, twin.y, eps=EPS,
                             key=jax.random.key(1), version='rand', steps=3, eot=2, draws=4)
  assert list(result.accuracy) == ['clean', 'APGD-CE (EOT 2)', 'APGD-DLR (EOT 2)']
  eval_key = jax.random.fold_in(jax.random.key(1), len(ensemble.VERSIONS) + 100)
  correct = evaluate.robust_accuracy(noisy, twin.variables, result.x_adv, twin.y, key=eval_key,
                                     draws=4).correct
  assert np.all(np.asarray(correct).all(0)[np.asarray(result.robust)])


@pytest.mark.parametrize('kwargs, match', [
    (dict(version='plus'), 'version'),
    (dict(key=None), 'key'),
    (dict(eps=-0.1), 'eps'),
    (dict(draws=0), 'draws'),
    (dict(norm='l1'), 'norm'),
])
def test_bad_arguments_name_themselves(twin, kwargs, match):
  args = dict(eps=EPS, key=jax.random.key(0), **SMALL)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    ensemble.ensemble(twin.apply, twin.variables, twin.x, twin.y, **args)


def test_rand_needs_a_model_that_takes_a_key(twin):
  plain = lambda params, x: twin.apply(params, x)
  with pytest.raises(ValueError, match='key'):
    ensemble.ensemble(plain, twin.variables, twin.x, twin.y, eps=EPS, key=jax.random.key(0),
                      version='rand', steps=2, eot=2, draws=2)
