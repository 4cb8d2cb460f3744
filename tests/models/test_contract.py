"""The `PureModel` contract, checked on a tiny configuration of every registered model.

Shapes and taps, jit and vmap, perturbations and tap gradients, training mode, layer
rules, and the `ValueError`s of the public boundary.
"""

from __future__ import annotations

import fnmatch
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_cases import INPUT_SHAPE, NUM_CLASSES, key


def test_output_and_tap_shapes(case):
  out = case.apply(case.variables, case.x)
  assert out.logits.shape == (2, NUM_CLASSES)
  assert case.model.tap_names == tuple(case.spec.taps)
  assert case.model.tap_shapes == case.spec.taps
  assert {k: v.shape[1:] for k, v in out.taps.items()} == case.spec.taps
  assert all(np.isfinite(v).all() for v in (out.logits, *out.taps.values()))


@pytest.mark.parametrize('batch', [1, 3])
def test_other_batch_sizes(case, batch):
  x = jax.ShapeDtypeStruct((batch, *INPUT_SHAPE), jnp.float32)
  out = jax.eval_shape(case.model.apply, case.variables, x)
  assert out.logits.shape == (batch, NUM_CLASSES)
  assert {k: v.shape for k, v in out.taps.items()} == {
      k: (batch, *v) for k, v in case.spec.taps.items()}


def test_layer_names_unique_and_path_like(case):
  names = case.model.layer_names
  assert len(set(names)) == len(names)
  assert names[-1] == 'head'
  assert all(re.fullmatch(r'[a-z_0-9]+(/[a-z_0-9]+)*', n) for n in names), names


def test_vmap_over_two_inits(case):
  inits = [case.init(key(seed)) for seed in (3, 4)]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *inits)
  logits = jax.jit(jax.vmap(lambda v: case.model.apply(v, case.x).logits))(stacked)
  assert logits.shape == (2, 2, NUM_CLASSES)
  for i, variables in enumerate(inits):
    np.testing.assert_allclose(logits[i], case.apply(variables, case.x).logits,
                               rtol=1e-5, atol=1e-5)
  assert not np.allclose(logits[0], logits[1])


def test_init_vmaps_over_keys(case):
  # Traced only: compiling a vmapped init costs seconds per model; the values of stacked
  # inits are checked by test_vmap_over_two_inits.
  stacked = jax.eval_shape(jax.vmap(case.model.init), jax.random.split(key(5), 2))
  single = jax.eval_shape(case.model.init, key(5))
  assert jax.tree.structure(stacked) == jax.tree.structure(single)
  for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(single)):
    assert a.shape == (2, *b.shape)


def test_perturbation_changes_logits_iff_nonzero(case):
  clean = case.apply(case.variables, case.x)
  zeros = case.zeros_at_taps()
  (_, same), _ = case.probe(zeros)
  np.testing.assert_allclose(same.logits, clean.logits, rtol=1e-6, atol=1e-6)
  rng = np.random.default_rng(0)
  for tap, zero in zeros.items():
    delta = rng.normal(size=zero.shape).astype(np.float32)
    (_, moved), _ = case.probe({**zeros, tap: delta})
    np.testing.assert_allclose(moved.taps[tap], clean.taps[tap] + delta, rtol=1e-5, atol=1e-5)
    assert np.abs(moved.logits - clean.logits).max() > 1e-3, tap


def test_tap_gradient_matches_finite_differences(case):
  zeros = case.zeros_at_taps()
  (_, clean), grads = case.probe(zeros)
  value = lambda perturb: case.probe(perturb)[0][0]
  for tap, grad in grads.items():
    assert grad.shape == zeros[tap].shape
    assert np.abs(grad).max() > 0, tap
    # The two largest entries away from ReLU / max-pool kinks (where a tap is exactly 0).
    candidates = np.flatnonzero(np.abs(np.asarray(clean.taps[tap])).ravel() > 1e-2)
    for flat in candidates[np.argsort(-np.abs(grad).ravel()[candidates])[:2]]:
      # Central differences in float32: large steps cross nearby ReLU kinks, small ones
      # drown in rounding, so the best of three step sizes must agree.
      errors = []
      for h in (1e-2, 1e-3, 1e-4):
        e = np.zeros(grad.size, np.float32)
        e[flat] = h
        e = e.reshape(grad.shape)
        fd = (value({**zeros, tap: e}) - value({**zeros, tap: -e})) / (2 * h)
        errors.append(abs(float(fd) - float(grad.ravel()[flat])))
      assert min(errors) <= 1e-2 * abs(float(grad.ravel()[flat])) + 1e-4, (tap, errors)
  # The head is linear, so the gradient at 'features' is the head's kernel column.
  kernel = case.variables['params']['head']['kernel']
  np.testing.assert_allclose(grads['features'], np.broadcast_to(kernel[:, 1], (2, len(kernel))),
                             rtol=1e-6)


def test_train_mode(case):
  variables = case.variables
  out, new = case.apply_train(variables, case.x)
  assert out.logits.shape == (2, NUM_CLASSES)
  assert jax.tree.structure(new) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(new['params']), jax.tree.leaves(variables['params'])):
    np.testing.assert_array_equal(a, b)
  eval_logits = case.apply(variables, case.x).logits
  stats_moved = [not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(new['batch_stats']), jax.tree.leaves(variables['batch_stats']))]
  if case.spec.batch_norm:
    assert stats_moved and all(stats_moved)
    assert not np.allclose(out.logits, eval_logits, atol=1e-4)
    assert not np.allclose(case.apply(new, case.x).logits, eval_logits, atol=1e-4)
  else:
    assert not stats_moved
    np.testing.assert_allclose(out.logits, eval_logits, rtol=1e-5, atol=1e-6)


def test_rules_intercept_exactly_the_matching_layers(case):
  # Rules run when the model is traced, so tracing (no compilation) shows which ran; the
  # values a rule produces are checked once, in test_cnn.
  seen = []
  def record(fn, x, kernel, bias):
    seen.append(kernel.shape)
    return fn(x, kernel, bias)
  trace = lambda rules: jax.eval_shape(
      lambda v, x: case.model.apply(v, x, rules=rules), case.variables, case.x)
  trace({case.spec.pattern: record})
  assert len(seen) == case.spec.matches
  assert len(fnmatch.filter(case.model.layer_names, case.spec.pattern)) == case.spec.matches
  # One rule per exact name: every layer is applied once, through its own rule.
  calls = []
  trace({name: (lambda n: lambda fn, x, k, b: calls.append(n) or fn(x, k, b))(name)
         for name in case.model.layer_names})
  assert tuple(calls) == case.model.layer_names
  # The first matching pattern wins.
  calls.clear()
  trace({'head': lambda fn, x, k, b: calls.append('head') or fn(x, k, b),
         '*': lambda fn, x, k, b: calls.append('*') or fn(x, k, b)})
  assert calls == ['*'] * (len(case.model.layer_names) - 1) + ['head']


@pytest.mark.parametrize('bad, message', [
    (lambda x: x[0], 'rank 4'),
    (lambda x: np.concatenate([x, x[..., :1]], axis=-1), 'per-image shape'),
    (lambda x: x[:, :8], 'per-image shape'),
    (lambda x: x * 2, r'pixels in \[0'),
    (lambda x: x - 0.5, r'pixels in \[0'),
    (lambda x: np.where(x > 0.5, np.nan, x).astype(np.float32), 'NaN'),
    (lambda x: (x * 255).astype(np.uint8), 'floating-point'),
])
def test_bad_images_raise(case, bad, message):
  with pytest.raises(ValueError, match=message):
    case.model.apply(case.variables, bad(case.x))
  with pytest.raises(ValueError, match=message):
    case.model.apply_train(case.variables, bad(case.x))


def test_bad_perturbations_raise(case):
  tap, shape = next(iter(case.spec.taps.items()))
  with pytest.raises(ValueError, match="unknown tap 'nope'"):
    case.model.apply(case.variables, case.x, perturb={'nope': np.zeros((2, *shape))})
  with pytest.raises(ValueError, match=f"perturb\\['{tap}'\\] must have shape"):
    case.model.apply(case.variables, case.x, perturb={tap: np.zeros((1, *shape))})
  with pytest.raises(ValueError, match='must have shape'):
    case.model.apply_train(case.variables, case.x, perturb={tap: np.zeros(shape)})
