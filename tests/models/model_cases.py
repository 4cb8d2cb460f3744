"""Tiny configurations of every registered model and helpers, shared by the model tests.

Each case builds its model once per session (`get_case`); its `variables` carry batch-norm
statistics from one training-mode pass and jittered parameters, so no normalisation is the
identity. Full-size registry models are built abstractly (`full_model`): tracing only.

Keys use the 'rbg' implementation: XLA:CPU takes seconds to compile threefry for each
parameter shape (minutes for a vmapped init), and the models do not depend on the key's
implementation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lib import models


@dataclasses.dataclass(frozen=True)
class Spec:
  """A tiny model configuration and what the tests expect of it.

  Attributes:
    name: registry name.
    kwargs: architecture options for `get_model`.
    taps: expected tap name -> per-example shape, in network order.
    pattern: a layer-name pattern for the rule tests.
    matches: how many layers `pattern` must match.
    batch_norm: whether the model keeps batch statistics.
  """
  name: str
  kwargs: dict[str, Any]
  taps: dict[str, tuple[int, ...]]
  pattern: str
  matches: int
  batch_norm: bool


INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 5
VIT_KWARGS = dict(image_size=16, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=32)
_VIT_TAPS = {'embed': (17, 16), 'block0': (17, 16), 'block1': (17, 16), 'features': (16,)}
_CNN_TAPS = {'conv1': (16, 16, 4), 'conv2': (8, 8, 8), 'conv3': (4, 4, 8), 'features': (8,)}

SPECS = {
    'cnn': Spec('cnn', dict(widths=(4, 8, 8)), _CNN_TAPS, '*conv*', 3, False),
    'cnn_bn': Spec('cnn', dict(widths=(4, 8, 8), batch_norm=True), _CNN_TAPS, '*conv*', 3,
                   True),
    'resnet18': Spec(
        'resnet18', dict(widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1)),
        {'stem': (16, 16, 8), 'stage1': (16, 16, 8), 'stage2': (8, 8, 16),
         'stage3': (4, 4, 16), 'stage4': (2, 2, 32), 'features': (32,)}, '*conv*', 8, True),
    'wrn': Spec(
        'wrn28_10', dict(depth=10, widen=1),
        {'stem': (16, 16, 16), 'group1': (16, 16, 16), 'group2': (8, 8, 32),
         'group3': (4, 4, 64), 'features': (64,)}, '*conv*', 6, True),
    'vit': Spec('vit', VIT_KWARGS, _VIT_TAPS, '*/attn/*', 8, False),
}


def tiny_model(spec: Spec) -> models.PureModel:
  return models.get_model(spec.name, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                          **spec.kwargs)


FULL_INPUT_SHAPES = {'cnn': (32, 32, 3), 'resnet18': (32, 32, 3), 'wrn28_10': (32, 32, 3),
                     'vit': (32, 32, 3), 'vit_b16': (224, 224, 3)}


@functools.cache
def full_model(name: str) -> models.PureModel:
  """Registry model `name` with its default architecture, 10 classes."""
  return models.get_model(name, input_shape=FULL_INPUT_SHAPES[name], num_classes=10)


def param_count(model: models.PureModel) -> int:
  """Number of trainable parameters, from shapes only (no initialisation runs)."""
  shapes = jax.eval_shape(model.init, key(0))['params']
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def key(seed: int) -> jax.Array:
  """A typed PRNG key that compiles fast on CPU (see the module docstring)."""
  return jax.random.key(seed, impl='rbg')


def images(seed: int, batch: int = 2) -> np.ndarray:
  """[batch, *INPUT_SHAPE] float32 pixels in [0, 1]."""
  return np.random.default_rng(seed).uniform(size=(batch, *INPUT_SHAPE)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Case:
  """A tiny model with variables, a batch of two images, and its jitted entry points.

  Tests call the jitted functions (one compilation each per model) rather than the eager
  ones, which compile every operation separately; the eager path is checked in test_cnn.
  """
  spec: Spec
  model: models.PureModel
  variables: models.Variables
  x: np.ndarray
  init: Callable[[jax.Array], models.Variables]
  apply: Callable[..., models.Outputs]   # (variables, x) -> Outputs
  apply_train: Callable[..., Any]        # (variables, x) -> (Outputs, variables)
  # perturb (a delta at every tap) -> ((sum over the batch of logit 1, Outputs), d/d perturb)
  probe: Callable[..., Any]

  def zeros_at_taps(self) -> dict[str, jax.Array]:
    """A zero perturbation at every tap, for a batch of two."""
    return {tap: jnp.zeros((2, *shape)) for tap, shape in self.spec.taps.items()}


def jitter(tree, scale: float = 0.1, seed: int = 0):
  """`tree` plus Gaussian noise, so no norm scale is exactly 1 and no bias exactly 0."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: a + scale * rng.normal(size=a.shape).astype(a.dtype), tree)


@functools.cache
def get_case(name: str) -> Case:
  """The case of `SPECS[name]`, built (and its functions compiled) once per session."""
  spec = SPECS[name]
  model = tiny_model(spec)
  init, apply_train = jax.jit(model.init), jax.jit(model.apply_train)
  _, variables = apply_train(init(key(0)), images(1))
  variables = {'params': jitter(variables['params']), 'batch_stats': variables['batch_stats']}
  x = images(0)

  def logit_sum(perturb):
    out = model.apply(variables, x, perturb=perturb)
    return out.logits[:, 1].sum(), out

  probe = jax.jit(jax.value_and_grad(logit_sum, has_aux=True))
  return Case(spec, model, variables, x, init, jax.jit(model.apply), apply_train, probe)


def assert_outputs_close(outputs: models.Outputs, reference: tuple[np.ndarray, dict],
                         tol: float = 1e-4) -> None:
  """Logits and every tap of `outputs` equal a numpy reference's (logits, taps)."""
  logits, taps = reference
  assert set(outputs.taps) == set(taps)
  for name, value in taps.items():
    np.testing.assert_allclose(outputs.taps[name], value, rtol=tol, atol=tol, err_msg=name)
  np.testing.assert_allclose(outputs.logits, logits, rtol=tol, atol=tol)
