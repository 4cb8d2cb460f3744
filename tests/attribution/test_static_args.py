"""Objects passed as static jit arguments: immutable, equal by value, compiled once.

Trace counts are read from the jitted kernels' `_cache_size()`: a program compiled for one
object must serve every equal object, and an object that differs must get its own program
(never a stale one).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import models
from lib.attribution import audit as audit_lib
from lib.attribution import (gradcam, gradients, integrated_gradients, invariance, lrp,
                             manipulate, occlusion, registry)
from lib.attribution import smoothgrad as smoothgrad_lib

TAP = 'conv3'
MODEL = models.get_model('cnn', input_shape=(8, 8, 3), num_classes=3, widths=(2, 2, 2))
MASK = np.zeros((8, 8))
MASK[:2, :2] = 1


@pytest.fixture(scope='module')
def setup():
  variables = MODEL.init(jax.random.key(0, impl='rbg'))
  x = np.random.default_rng(0).uniform(0.05, 1.0, size=(2, 8, 8, 3)).astype(np.float32)
  return variables, x, np.array([0, 1])


def compiles(jitted, run):
  """How many programs `jitted` gained while `run()` ran."""
  before = jitted._cache_size()
  run()
  return jitted._cache_size() - before


def test_manipulated_is_immutable_and_equal_by_value(setup):
  variables, x, target = setup
  a = manipulate.steered(MODEL.apply, MASK, tap=TAP, strength=10.0)
  b = manipulate.steered(MODEL.apply, MASK.copy(), tap=TAP, strength=np.float32(10.0))
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.strength = 1e4
  assert a == b and hash(a) == hash(b) and a is not b
  assert a != dataclasses.replace(a, strength=11.0)
  assert compiles(gradients._gradient_map, lambda: [
      gradients.saliency(w, variables, x, target) for w in (a, b)]) == 1


def test_changing_the_strength_gives_new_maps(setup):
  """The stale-cache defect: a mutated wrapper used to return the maps of its old strength."""
  variables, x, target = setup
  weak = manipulate.manipulate(MODEL.apply, construction='input', strength=1e-3, mask=MASK)
  strong = dataclasses.replace(weak, strength=1e4)
  maps = [np.asarray(gradients.saliency(w, variables, x, target)) for w in (weak, strong)]
  inside = lambda m: np.abs(m)[:, :2, :2].sum() / np.abs(m).sum()
  assert inside(maps[0]) < 0.5 < 0.99 < inside(maps[1])


def test_a_concrete_array_strength_is_a_float_and_a_traced_one_cannot_be_hashed():
  wrapped = manipulate.manipulate(MODEL.apply, construction='input', strength=jnp.float32(2.0),
                                  mask=MASK)
  assert isinstance(wrapped.strength, float)

  def hash_inside(k):
    inner = manipulate.manipulate(MODEL.apply, construction='input', strength=k, mask=MASK)
    assert inner == inner and inner != wrapped
    hash(inner)
    return k
  with pytest.raises(TypeError, match='traced strength'):
    jax.jit(hash_inside)(jnp.float32(2.0))


def test_softmax_gaps_leaves_x64_alone_and_compiles_once(setup):
  variables, x, _ = setup
  lying = manipulate.steered(MODEL.apply, MASK, tap=TAP, strength=1e3)
  assert not jax.config.jax_enable_x64
  first = invariance.softmax_gaps(MODEL.apply, lying, variables, x)
  again = lambda: invariance.softmax_gaps(MODEL.apply, manipulate.steered(
      MODEL.apply, MASK, tap=TAP, strength=1e3), variables, x)
  assert compiles(invariance._softmax_gap, again) == 0
  assert compiles(invariance._logits_and_term, again) == 0
  assert not jax.config.jax_enable_x64
  assert first['float64'] < 1e-9 < first['float32']
  with pytest.raises(ValueError, match='wrapped must be apply wrapped by manipulate'):
    invariance.softmax_gaps(MODEL.apply, MODEL.apply, variables, x)


def test_equal_lrp_rules_compile_once(setup):
  variables, x, target = setup
  assert lrp.epsilon_plus() == lrp.epsilon_plus()
  assert lrp.gamma(0.25) == lrp.gamma(0.25) != lrp.gamma(0.5)
  assert lrp.zbox(np.zeros(3), 1.0) == lrp.zbox(np.zeros(3), 1.0) != lrp.zbox(0.1, 1.0)
  run = lambda: [lrp.lrp(MODEL.apply, variables, x, target, rules=lrp.epsilon_plus())
                 for _ in range(2)]
  assert compiles(lrp._relevance, run) == 1


def test_registry_methods_compile_the_audit_once(setup):
  variables, x, _ = setup
  run = lambda: [audit_lib.audit(MODEL.apply, variables, x, k=4,
                                 methods=audit_lib.default_methods(TAP, n_steps=2),
                                 references=audit_lib.default_references(window=4, stride=4))
                 for _ in range(2)]
  assert compiles(audit_lib._audit, run) == 1
  assert registry.get('grad_cam').bind(tap=TAP) == registry.get('grad_cam').bind(tap=TAP)


KERNELS = {  # method name -> its jitted kernel
    'saliency': gradients._gradient_map,
    'grad_cam': gradcam._class_activation_map,
    'integrated_gradients': integrated_gradients._integrated_gradients,
    'smoothgrad': smoothgrad_lib._smoothgrad,
    'occlusion': occlusion._occlusion,
}


@pytest.mark.parametrize('name', list(KERNELS))
def test_every_method_compiles_once_for_equal_wrappers_and_methods(setup, name):
  variables, x, target = setup
  options = {'integrated_gradients': {'n_steps': 2}, 'smoothgrad': {'n_samples': 2},
             'occlusion': {'window': 4, 'stride': 4}}.get(name, {})

  def run():
    for _ in range(2):  # rebuilt each time: equal by value, not the same objects
      method = registry.build([name], tap=TAP, options={name: options})[name]
      wrapped = manipulate.steered(MODEL.apply, MASK, tap=TAP, strength=7.0)  # unique here
      method(wrapped, variables, x, target, key=jax.random.key(0))
  assert compiles(KERNELS[name], run) == 1
