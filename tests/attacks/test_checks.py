"""Tests of lib/attacks/checks.py: the evaluation checks on an honest and three planted models.

The planted models wrap the `twin` CNN: an input quantiser (zero input gradient), a
saturated softmax head (logits × 1e4) and Gaussian input noise drawn from the model key (a
randomised defence evaluated with one draw). Shapes are tiny and PGD short (compilation
dominates the time).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.attacks import checks

EPS = 4 / 255
STEPS = 5
SCALES = (0.5, 1.0, 2.0)


def _quantised(apply):
  return lambda params, x: apply(params, jnp.round(x * 4) / 4)


def _saturated(apply):
  return lambda params, x: apply(params, x).logits * 1e4


def _noisy(apply):
  def noisy(params, x, *, key):
    return apply(params, jnp.clip(x + 0.1 * jax.random.normal(key, x.shape, x.dtype), 0, 1))
  return noisy


def _run(apply, twin, **kw):
  kw = {'eps': EPS, 'steps': STEPS, 'eps_scales': SCALES, 'key': jax.random.key(0), **kw}
  return checks.check_evaluation(apply, twin.variables, twin.x, twin.y, **kw)


def test_passes_the_honest_model(twin):
  report = _run(twin.apply, twin, square_queries=50)
  assert 'fail' not in report.verdicts().values(), report.format()
  assert set(report.verdicts()) == {
      'eps_monotone', 'unbounded_eps', 'more_steps', 'more_restarts', 'beaten_by_square',
      'beaten_by_noise', 'gradients', 'stochastic', 'saturation'}
  assert report.clean_accuracy == 0.5  # the fixture labels half of the batch wrongly
  assert 0 <= report.robust_accuracy <= report.clean_accuracy
  assert report.verdicts()['unbounded_eps'] == 'pass'


def test_fails_an_input_quantiser(twin):
  report = _run(_quantised(twin.apply), twin, square_queries=50,
                surrogate=(twin.apply, twin.variables))
  verdicts = report.verdicts()
  assert verdicts['gradients'] == 'fail', report.format()
  assert dict(zip(('zero', 'vanishing', 'non_finite'), _value(report, 'gradients')))['zero'] == 1
  assert verdicts['unbounded_eps'] == 'fail'
  assert verdicts['beaten_by_transfer'] != 'pass'  # the honest twin's PGD transfers
  assert report.verdict == 'fail'


def test_fails_a_saturated_softmax(twin):
  report = _run(_saturated(twin.apply), twin, square_queries=None)
  assert report.verdicts()['saturation'] == 'fail', report.format()
  assert _value(report, 'saturation') == (1.0,)
  assert 'beaten_by_square' not in report.verdicts()


def test_fails_a_randomised_model_evaluated_with_one_draw(twin):
  report = _run(_noisy(twin.apply), twin, square_queries=None, eval_draws=1)
  assert report.verdicts()['stochastic'] == 'fail', report.format()
  assert _value(report, 'stochastic')[0] > 0
  assert report.verdicts()['saturation'] == 'pass'


def _value(report: checks.Report, name: str) -> tuple[float, ...]:
  return next(c.value for c in report.checks if c.name == name)


def test_report_table():
  report = checks.Report((checks.Check('a', 'pass', (0.5, 1.0), 'first'),
                          checks.Check('b', 'warn', (0.25,), 'x | y')), 1.0, 0.5)
  assert report.verdict == 'warn'
  assert report.to_rows() == [['a', 'pass', '0.5, 1', 'first'], ['b', 'warn', '0.25', 'x | y']]
  table = report.format().splitlines()
  assert table[2:4] == ['| check | verdict | value | explanation |', '|---|---|---|---|']
  assert table[-1] == r'| b | warn | 0.25 | x \| y |'  # a pipe in a cell is escaped


@pytest.mark.parametrize('kwargs, name', [
    ({'eps': 0.0}, 'eps'),
    ({'eps': 2.0}, 'eps'),
    ({'norm': 'l3'}, 'norm'),
    ({'key': None}, 'key'),
    ({'loss': 'hinge'}, 'loss'),
    ({'eval_draws': 0}, 'eval_draws'),
    ({'eps_scales': ()}, 'eps_scales'),
    ({'eps_scales': (1.0, -0.5)}, 'eps_scales[1]'),
    ({'square_queries': 0}, 'square_queries'),
    ({'surrogate': 'twin'}, 'surrogate'),
    ({'thresholds': checks.Thresholds(tolerance=2.0)}, 'thresholds.tolerance'),
    ({'thresholds': {'tolerance': 0.1}}, 'thresholds'),
])
def test_bad_arguments(twin, kwargs, name):
  with pytest.raises(ValueError, match=name.replace('[', r'\[').replace(']', r'\]')):
    _run(twin.apply, twin, **kwargs)


def test_bad_inputs_and_draws(twin):
  with pytest.raises(ValueError, match='x must lie in'):
    checks.check_evaluation(twin.apply, twin.variables, twin.x + 1, twin.y, eps=EPS,
                            key=jax.random.key(0))
  with pytest.raises(ValueError, match='eval_draws'):
    _run(_quantised(twin.apply), twin, eval_draws=2)
  with pytest.raises(ValueError, match='y must hold'):
    checks.check_evaluation(twin.apply, twin.variables, twin.x, np.full_like(twin.y, 99),
                            eps=EPS, key=jax.random.key(0))


def test_passes_a_randomised_model_attacked_with_eot_and_evaluated_over_draws(twin):
  report = _run(_noisy(twin.apply), twin, square_queries=None, eot=2, eval_draws=4)
  assert report.verdicts()['stochastic'] == 'pass', report.format()


def test_saturation_only_warns_for_the_margin_loss(twin):
  report = _run(_saturated(twin.apply), twin, square_queries=None, loss='margin')
  assert report.verdicts()['saturation'] == 'warn', report.format()
