"""The one place where Flax NNX modules cross into pure functions.

A network is defined once as an `nnx.Module` whose `__call__(inputs, ctx)` threads a
`lib.contract.Context` through its layers and returns `Outputs(logits, features=...)`
(or bare logits). `PureModel` splits it into `(graphdef, variables)` and offers:

  * `init(key) -> variables`, with `variables = {'params': {...}, 'batch_stats': {...}}`
    (plain nested dicts of arrays: orbax-, vmap- and optax-friendly);
  * `apply(variables, inputs, *, key=None, perturb=None, rules=None) -> Outputs` in
    evaluation mode;
  * `apply_train(variables, inputs, *, key=None, perturb=None) -> (Outputs, variables)` in
    training mode (dropout active), returning the updated batch-norm statistics.

Both are pure (no hidden state), jit and vmap over variables, inputs, keys and
perturbations. `inputs` is whatever the model's `InputSpec` (`lib.models.inputs`) says:
images [B, H, W, C]; token ids with an attention mask; noisy images with timesteps.

**Outputs.** `Outputs(logits, taps, features)` (`lib.contract`): `logits` [B, K] where the
model has a head (None for an encoder built with `num_classes=None`), `features` the pooled
representation the model offers (None if none), `taps` the named intermediate features.

**Taps.** Every model records named intermediate features ("taps") with `ctx.tap` and adds
`perturb[name]` (the tap's shape) to the feature before the rest of the network consumes
it. The gradient of any output with respect to a zero perturbation at a tap is the
gradient with respect to that layer's activations, so Grad-CAM and feature-level attacks
need no hooks.

**Randomness.** `key` (a typed PRNG key) reaches every stochastic layer through
`ctx.rng(layer_name)`; dropout is active only in `apply_train`. A stochastic layer called
without a key raises ValueError.

**Layer rules.** `rules` maps layer-name patterns to `Rule`s that replace how a linear
layer (dense or conv, batch norm folded in) is applied (`lib.contract.apply_linear`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from lib import validate
from lib.contract import Context, Outputs, Rule, Rules, as_outputs
from lib.models.inputs import InputSpec

Array = jax.Array
Variables = dict[str, Any]

__all__ = ['Context', 'Outputs', 'PureModel', 'Rule', 'Variables', 'flatten_with_paths']


def flatten_with_paths(tree: Any) -> tuple[dict[str, Any], Any]:
  """({'params/head/kernel': leaf, ...}, treedef): leaves by '/'-joined key path.

  List entries (e.g. `nnx.List` layers) appear as their index ('params/convs/0/kernel').
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  path = lambda keys: '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in keys)
  return {path(keys): leaf for keys, leaf in leaves}, treedef


class PureModel:
  """Pure `init`/`apply` for an NNX module built by `build(rngs)`.

  Args:
    name: registry name (for messages and reports).
    build: `build(rngs: nnx.Rngs) -> nnx.Module` whose `__call__(inputs, ctx)` returns
      `Outputs(logits, features=...)` or bare logits.
    inputs: the input family (`lib.models.inputs.Images(shape)`, `Tokens(...)`, ...): its
      `example` (batch of one, as `jax.ShapeDtypeStruct`s) is traced to learn the taps
      and layers, its `check` validates every batch at `apply`.
    num_classes: number of logits, or None for an encoder without a head.

  Attributes:
    input_shape: per-example shape of the primary input ((H, W, C) for images).
    tap_names: tap names in network order.
    tap_shapes: tap name -> per-example shape, for the example inputs.
    layer_names: names of the linear layers (those rules can match), in call order.
    abstract_variables: `jax.ShapeDtypeStruct` tree of `init`'s result.

  Raises:
    ValueError: `inputs` is not an `InputSpec`, `num_classes` is not None or a positive
      integer, or the example inputs are too small for the network (a tap, the features or
      the logits come out empty).
  """

  def __init__(self, name: str, build: Callable[[nnx.Rngs], nnx.Module], inputs: InputSpec, *,
               num_classes: int | None = None):
    if not isinstance(inputs, InputSpec):
      raise ValueError(f'inputs must be an InputSpec (lib.models.inputs.Images, Tokens, ...); '
                       f'got {type(inputs).__name__}.')
    if num_classes is not None:
      validate.check_int(num_classes, 'num_classes', minimum=1)
    self.name = name
    self.inputs = inputs
    self.input_shape = inputs.shape
    self.num_classes = num_classes
    self._build = build
    abstract = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    self._graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    self.abstract_variables = jax.eval_shape(self._init, jax.random.key(0))
    ctx = Context(train=False)
    out = jax.eval_shape(lambda v, x: self._call(v, x, ctx)[0], self.abstract_variables,
                         inputs.example)
    self.tap_shapes = {k: tuple(v.shape[1:]) for k, v in ctx.taps.items()}
    self.tap_names = tuple(ctx.taps)
    self.layer_names = tuple(ctx.layer_names)
    self._check_not_empty(out)
    self._leaf_shapes = {path: tuple(leaf.shape) for path, leaf
                         in flatten_with_paths(self.abstract_variables)[0].items()}

  def __repr__(self) -> str:
    return f'PureModel({self.name!r}, inputs={self.inputs}, num_classes={self.num_classes})'

  def _check_not_empty(self, out: Outputs) -> None:
    shapes = {**{f'tap {k!r}': v for k, v in self.tap_shapes.items()},
              'features': None if out.features is None else out.features.shape[1:],
              'logits': None if out.logits is None else out.logits.shape[1:]}
    for what, shape in shapes.items():
      if shape is not None and 0 in shape:
        raise ValueError(f'input_shape={self.input_shape} is too small for {self.name!r}: its '
                         f'{what} would have the empty shape {shape}; use larger inputs or '
                         'fewer downsampling stages.')
    logits = None if out.logits is None else out.logits.shape[-1]
    if logits != self.num_classes:
      raise ValueError(f'num_classes={self.num_classes} but {self.name!r} returns '
                       f'{"no" if logits is None else logits} logits.')

  def init(self, key: Array) -> Variables:
    """Fresh variables from a typed PRNG key: {'params': ..., 'batch_stats': ...}.

    Jitted: one compilation per model instead of one per parameter shape eagerly.
    """
    validate.check_key(key)
    return self._init_jit(key)

  @functools.cached_property
  def _init_jit(self) -> Callable[[Array], Variables]:
    return jax.jit(self._init)

  def _init(self, key: Array) -> Variables:
    module = self._build(nnx.Rngs(params=key))
    _, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
    return {'params': params.to_pure_dict(), 'batch_stats': stats.to_pure_dict()}

  def _call(self, variables: Variables, inputs: Any, ctx: Context) -> tuple[Outputs, nnx.Module]:
    module = nnx.merge(self._graphdef, nnx.State(variables['params']),
                       nnx.State(variables['batch_stats']))
    out = as_outputs(module(inputs, ctx))
    return Outputs(out.logits, ctx.taps, out.features), module

  def _check_variables(self, variables: Any) -> None:
    if not isinstance(variables, Mapping) or not {'params', 'batch_stats'} <= set(variables):
      raise ValueError("variables must be a dict with 'params' and 'batch_stats' (from "
                       f'model.init); got {type(variables).__name__}.')
    leaves, _ = flatten_with_paths({'params': variables['params'],
                                    'batch_stats': variables['batch_stats']})
    given = {path: tuple(np.shape(leaf)) for path, leaf in leaves.items()}
    if given != self._leaf_shapes:
      for path, shape in self._leaf_shapes.items():
        if path not in given:
          raise ValueError(f'variables lack {path!r} of {self.name!r} (shape {shape}).')
        if given[path] != shape:
          raise ValueError(f'variables {path!r} has shape {given[path]}; {self.name!r} '
                           f'expects {shape}.')
      extra = sorted(set(given) - set(self._leaf_shapes))
      raise ValueError(f'variables have entries {self.name!r} does not have: {extra}.')

  def _check(self, variables: Any, inputs: Any, key: Array | None,
             perturb: Mapping[str, Array] | None) -> None:
    self._check_variables(variables)
    self.inputs.check(inputs, 'x')
    if key is not None:
      validate.check_key(key)
    for name, delta in (perturb or {}).items():
      if name not in self.tap_shapes:
        raise ValueError(f'perturb has unknown tap {name!r}; valid taps: {list(self.tap_names)}.')
      validate.check_finite(delta, f'perturb[{name!r}]')

  def apply(self, variables: Variables, x: Any, *, key: Array | None = None,
            perturb: Mapping[str, Array] | None = None, rules: Rules | None = None) -> Outputs:
    """Evaluation-mode forward pass (dropout off).

    Args:
      variables: from `init` (or a checkpoint).
      x: a batch of the model's inputs (e.g. [B, H, W, C] float images in [0, 1]).
      key: typed PRNG key for stochastic layers active in evaluation (none of the
        registered models has one), or None.
      perturb: optional tap name -> finite additive perturbation of that tap's shape
        ([B, *tap_shapes[name]]).
      rules: optional layer-name pattern -> `Rule` (e.g. LRP rules).

    Returns:
      `Outputs(logits [B, num_classes] or None, taps, features or None)`.
    """
    self._check(variables, x, key, perturb)
    out, _ = self._call(variables, x, Context(train=False, key=key, perturb=perturb,
                                              rules=rules))
    return out

  def apply_train(self, variables: Variables, x: Any, *, key: Array | None = None,
                  perturb: Mapping[str, Array] | None = None) -> tuple[Outputs, Variables]:
    """Training-mode forward pass (batch statistics, dropout on if the model has any).

    Args:
      variables: from `init`.
      x: a batch of the model's inputs.
      key: typed PRNG key for dropout; required when the model has dropout.
      perturb: as in `apply`.

    Returns:
      `(Outputs, variables)` with updated batch-norm statistics.
    """
    self._check(variables, x, key, perturb)
    out, module = self._call(variables, x, Context(train=True, key=key, perturb=perturb))
    _, _, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
    return out, {'params': variables['params'], 'batch_stats': stats.to_pure_dict()}

  def logits_fn(self) -> Callable[[Variables, Array], Array]:
    """`f(variables, x) -> logits`: the plain function kernels in `lib.attacks` etc. take.

    Raises:
      ValueError: the model has no head (`num_classes=None`).
    """
    if self.num_classes is None:
      raise ValueError(f'{self.name!r} was built without a head (num_classes=None), so it has '
                       'no logits; use apply(...).features.')
    return lambda variables, x: self.apply(variables, x).logits
