"""The one place where Flax NNX modules cross into pure functions.

A network is defined once as an `nnx.Module` whose `__call__(x, ctx)` threads a `Context`
through its layers. `PureModel` splits it into `(graphdef, variables)` and offers:

  * `init(key) -> variables`, with `variables = {'params': {...}, 'batch_stats': {...}}`
    (plain nested dicts of arrays: orbax-, vmap- and optax-friendly);
  * `apply(variables, x, *, perturb=None, rules=None) -> Outputs` in evaluation mode;
  * `apply_train(variables, x, *, perturb=None) -> (Outputs, variables)` in training mode,
    returning the updated batch-norm statistics.

Both are pure (no hidden state), jit and vmap over variables, inputs and perturbations.

**Taps.** Every model records named intermediate features ("taps") in `Outputs.taps` and
adds `perturb[name]` (same shape as the tap) to the feature before the rest of the network
consumes it. The gradient of any output with respect to a zero perturbation at a tap is the
gradient with respect to that layer's activations, so Grad-CAM and feature-level attacks
need no hooks.

**Layer rules.** `rules` maps layer-name patterns (`fnmatch` syntax, first match in the
mapping's order wins) to callables `rule(linear_fn, x, kernel, bias) -> y` that replace how
a linear layer (dense or conv, batch norm folded in) is applied. Attribution methods such
as LRP pass rules that keep the forward value and change the backward pass; the models
never import them.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from lib import validate

Array = jax.Array
Variables = dict[str, Any]
# rule(linear_fn, x, kernel, bias) -> y, where linear_fn(x, kernel, bias) is the layer's op.
Rule = Callable[[Callable[..., Array], Array, Array, Array | None], Array]


class Outputs(NamedTuple):
  """What every model returns.

  Attributes:
    logits: [B, num_classes] pre-softmax scores.
    taps: name -> intermediate feature (e.g. [B, h, w, c] for conv stages, [B, T, D] for
      transformer blocks), after any perturbation at that tap was added.
  """
  logits: Array
  taps: dict[str, Array]


class Context:
  """Per-call state threaded through a model's layers (trace-time Python object).

  Args:
    train: training mode (batch norm uses and updates batch statistics).
    perturb: tap name -> additive perturbation.
    rules: layer-name pattern -> `Rule` (see module docstring).
  """

  def __init__(self, *, train: bool, perturb: Mapping[str, Array] | None = None,
               rules: Mapping[str, Rule] | None = None):
    self.train = train
    self.perturb = dict(perturb or {})
    self.rules = dict(rules or {})
    self.taps: dict[str, Array] = {}
    self.layer_names: list[str] = []

  def tap(self, name: str, x: Array) -> Array:
    """Records `x` as tap `name`, after adding `perturb[name]` if given."""
    if name in self.perturb:
      x = x + self.perturb[name]
    self.taps[name] = x
    return x

  def rule_for(self, name: str) -> Rule | None:
    """The first rule whose pattern matches layer `name`, or None."""
    for pattern, rule in self.rules.items():
      if fnmatch.fnmatchcase(name, pattern):
        return rule
    return None

  def linear(self, name: str, fn: Callable[..., Array], x: Array, kernel: Array,
             bias: Array | None) -> Array:
    """Applies the linear layer `fn(x, kernel, bias)`, through a rule if one matches."""
    self.layer_names.append(name)
    rule = self.rule_for(name)
    return fn(x, kernel, bias) if rule is None else rule(fn, x, kernel, bias)


class PureModel:
  """Pure `init`/`apply` for an NNX module built by `build(rngs)`.

  Args:
    name: registry name (for messages and reports).
    build: `build(rngs: nnx.Rngs) -> nnx.Module` whose `__call__(x, ctx) -> logits`.
    input_shape: (H, W, C) of one input image.
    num_classes: number of logits.
  """

  def __init__(self, name: str, build: Callable[[nnx.Rngs], nnx.Module],
               input_shape: tuple[int, int, int], num_classes: int):
    self.name = name
    self.input_shape = tuple(input_shape)
    self.num_classes = num_classes
    self._build = build
    abstract = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    self._graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    ctx = Context(train=False)
    x = jax.ShapeDtypeStruct((1, *self.input_shape), np.float32)
    variables = jax.eval_shape(self._init, jax.random.key(0))
    jax.eval_shape(lambda v, x: self._call(v, x, ctx), variables, x)
    self.tap_shapes = {k: tuple(v.shape[1:]) for k, v in ctx.taps.items()}
    self.tap_names = tuple(ctx.taps)
    self.layer_names = tuple(ctx.layer_names)

  def __repr__(self) -> str:
    return f'PureModel({self.name!r}, input_shape={self.input_shape}, num_classes={self.num_classes})'

  def init(self, key: Array) -> Variables:
    """Fresh variables from a typed PRNG key: {'params': ..., 'batch_stats': ...}.

    Jitted: one compilation per model instead of one per parameter shape eagerly.
    """
    return self._init_jit(key)

  @functools.cached_property
  def _init_jit(self) -> Callable[[Array], Variables]:
    return jax.jit(self._init)

  def _init(self, key: Array) -> Variables:
    module = self._build(nnx.Rngs(params=key))
    _, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
    return {'params': params.to_pure_dict(), 'batch_stats': stats.to_pure_dict()}

  def _call(self, variables: Variables, x: Array, ctx: Context) -> tuple[Array, nnx.Module]:
    module = nnx.merge(self._graphdef, nnx.State(variables['params']),
                       nnx.State(variables['batch_stats']))
    return module(x, ctx), module

  def _check(self, x: Array, perturb: Mapping[str, Array] | None) -> None:
    validate.check_images(x, 'x', shape=self.input_shape)
    for name, delta in (perturb or {}).items():
      if name not in self.tap_shapes:
        raise ValueError(f'perturb has unknown tap {name!r}; valid taps: {list(self.tap_names)}.')
      want = (x.shape[0], *self.tap_shapes[name])
      if tuple(delta.shape) != want:
        raise ValueError(f'perturb[{name!r}] must have shape {want}; got {tuple(delta.shape)}.')

  def apply(self, variables: Variables, x: Array, *, perturb: Mapping[str, Array] | None = None,
            rules: Mapping[str, Rule] | None = None) -> Outputs:
    """Evaluation-mode forward pass.

    Args:
      variables: from `init` (or a checkpoint).
      x: [B, H, W, C] float images in [0, 1].
      perturb: optional tap name -> additive perturbation of that tap's shape.
      rules: optional layer-name pattern -> `Rule` (e.g. LRP rules).

    Returns:
      `Outputs(logits [B, num_classes], taps)`.
    """
    self._check(x, perturb)
    ctx = Context(train=False, perturb=perturb, rules=rules)
    logits, _ = self._call(variables, x, ctx)
    return Outputs(logits, ctx.taps)

  def apply_train(self, variables: Variables, x: Array, *,
                  perturb: Mapping[str, Array] | None = None) -> tuple[Outputs, Variables]:
    """Training-mode forward pass; returns outputs and variables with updated batch stats."""
    self._check(x, perturb)
    ctx = Context(train=True, perturb=perturb)
    logits, module = self._call(variables, x, ctx)
    _, _, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
    return Outputs(logits, ctx.taps), {'params': variables['params'],
                                        'batch_stats': stats.to_pure_dict()}

  def logits_fn(self) -> Callable[[Variables, Array], Array]:
    """`f(variables, x) -> logits`: the plain function kernels in `lib.attacks` etc. take."""
    return lambda variables, x: self.apply(variables, x).logits
