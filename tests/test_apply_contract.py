"""lib/contract.py: output normalisation, keyword checks, rule lookup, the layer context."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import contract


def test_as_outputs_accepts_outputs_tuples_and_arrays():
  logits = jnp.ones((2, 3))
  taps = {'a': jnp.zeros((2, 4))}
  full = contract.Outputs(logits, taps, jnp.zeros((2, 5)))
  assert contract.as_outputs(full) is full
  from_tuple = contract.as_outputs((logits, taps))
  assert from_tuple.logits is logits and from_tuple.taps == taps and from_tuple.features is None
  bare = contract.as_outputs(logits)
  assert bare.logits is logits and bare.taps == {}


def test_as_outputs_rejects_other_results():
  with pytest.raises(ValueError, match='apply must return'):
    contract.as_outputs('logits')
  with pytest.raises(ValueError, match='apply must return'):
    contract.as_outputs((jnp.ones(2), jnp.ones(2)))


def test_outputs_is_a_pytree_with_optional_parts():
  out = jax.jit(lambda x: contract.Outputs(features=x * 2))(jnp.ones(3))
  assert out.logits is None and out.taps == {}
  np.testing.assert_array_equal(out.features, 2 * np.ones(3))


def test_accepted_keywords_of_functions_partials_and_objects():
  def f(params, x, *, rules=None, perturb=None):
    return x

  class Model:
    def __call__(self, params, x, *, key=None):
      return x

  assert contract.accepted_keywords(f) >= {'rules', 'perturb'}
  assert 'rules' in contract.accepted_keywords(functools.partial(f, perturb=None))
  assert contract.accepted_keywords(Model()) >= {'key'}
  assert contract.accepted_keywords(lambda p, x, **kw: x) is None


def test_require_keywords_names_what_is_missing():
  contract.require_keywords(lambda p, x, **kw: x, ('rules',), needed_by='lrp')
  contract.require_keywords(lambda p, x, *, rules=None: x, ('rules',), needed_by='lrp')
  with pytest.raises(ValueError, match=r"lrp calls apply\(params, x, rules=...\).*\['rules'\]"):
    contract.require_keywords(lambda p, x: x, ('rules',), needed_by='lrp')


def test_find_rule_first_match_in_order():
  first, second = (lambda *a: 1), (lambda *a: 2)
  rules = {'block*/attn/*': first, 'block1/*': second}
  assert contract.find_rule(rules, 'block1/attn/q') is first
  assert contract.find_rule(rules, 'block1/mlp/fc1') is second
  assert contract.find_rule(rules, 'head') is None
  assert contract.find_rule(None, 'head') is None


def test_apply_linear_routes_through_the_rule():
  x, w, b = jnp.ones((2, 3)), jnp.full((3, 4), 2.0), jnp.ones(4)
  np.testing.assert_allclose(contract.apply_linear(None, 'fc', contract.dense, x, w, b), 7.0)
  doubled = {'fc': lambda fn, x, w, b: 2 * fn(x, w, b)}
  np.testing.assert_allclose(contract.apply_linear(doubled, 'fc', contract.dense, x, w, b), 14.0)
  np.testing.assert_allclose(contract.apply_linear(doubled, 'other', contract.dense, x, w, None), 6.0)


def test_context_taps_perturb_and_record_layer_names():
  ctx = contract.Context(train=False, perturb={'t': jnp.ones(2)})
  np.testing.assert_array_equal(ctx.tap('t', jnp.zeros(2)), np.ones(2))
  np.testing.assert_array_equal(ctx.taps['t'], np.ones(2))
  ctx.linear('fc', contract.dense, jnp.ones((1, 2)), jnp.ones((2, 1)), None)
  assert ctx.layer_names == ['fc']


def test_context_rng_depends_on_layer_name_not_call_order():
  key = jax.random.key(0)
  a = contract.Context(train=True, key=key)
  b = contract.Context(train=True, key=key)
  first = a.rng('block0/dropout')
  b.rng('other')
  assert jnp.array_equal(jax.random.key_data(first), jax.random.key_data(b.rng('block0/dropout')))
  assert not jnp.array_equal(jax.random.key_data(first), jax.random.key_data(a.rng('block1/dropout')))
  with pytest.raises(ValueError, match='needs a PRNG key'):
    contract.Context(train=True).rng('dropout')
