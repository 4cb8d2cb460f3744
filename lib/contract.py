"""The model contract: what every `apply` returns and how layer rules reach its linear ops.

One neutral module that `lib.models` (which implements the contract) and the kernel packages
(`lib.attribution`, `lib.attacks`, ... which rely on it) both import, so neither imports the
other. A model is any function

    apply(params, inputs, *, key=None, perturb=None, rules=None) -> Outputs

(or a subset of those keywords; kernels that need one check for it with `require_keywords`).

* `Outputs(logits, taps, features)`: `logits` [B, K] where the model has a head (else None),
  `taps` name -> intermediate feature after any perturbation at that tap, `features` the
  pooled representation an encoder returns (e.g. [B, D] embeddings; None if not offered).
  `as_outputs` also accepts a bare logits array or a `(logits, taps)` tuple, so a user's
  plain function is a first-class model.
* `Rule`: `rule(linear_fn, x, kernel, bias) -> y` replaces how one linear layer (dense or
  convolution, batch norm folded in) is applied; `rules` maps layer-name patterns (`fnmatch`
  syntax, first match in the mapping's order wins) to rules. `apply_linear` is the single
  implementation of that lookup; `Context.linear` and any wrapper that adds its own linear
  layer (e.g. `lib.attribution.manipulate`) call it.
* `Context`: the per-call, trace-time object a model threads through its layers: mode,
  PRNG key, perturbations, rules, and the taps it records.

**LRP for your own function.** LRP rules act where a model routes a linear op through
`apply_linear` (or `Context.linear`); everything else is crossed with its plain gradient.
For LRP to mean what the rules say, (1) every dense/conv op goes through it under a unique
name, (2) batch norm in evaluation mode is folded into the preceding linear op before the
call (as `lib.models.layers.ConvBN` does), (3) kernels are [in, out] for dense layers and
[kh, kw, in, out] (HWIO) for convolutions, since rules such as z⁺ and w² read the kernel:

    >>> def my_apply(params, x, *, rules=None):
    ...   h = apply_linear(rules, 'fc1', dense, x.reshape(len(x), -1), params['w1'], params['b1'])
    ...   h = jax.nn.relu(h)
    ...   return Outputs(logits=apply_linear(rules, 'fc2', dense, h, params['w2'], params['b2']),
    ...                  taps={'fc1': h})
    >>> lrp(my_apply, params, x, target, rules=epsilon_plus())
"""

from __future__ import annotations

import fnmatch
import inspect
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax

Array = jax.Array
# rule(linear_fn, x, kernel, bias) -> y, where linear_fn(x, kernel, bias) is the layer's op.
Rule = Callable[[Callable[..., Array], Array, Array, Array | None], Array]
Rules = Mapping[str, Rule]
Apply = Callable[..., Any]


class Outputs(NamedTuple):
  """What every model returns (a pytree: jit, vmap and `eval_shape` see through it).

  Attributes:
    logits: [B, K] pre-softmax scores, or None for an encoder without a head.
    taps: name -> intermediate feature (e.g. [B, h, w, c] for conv stages, [B, T, D] for
      transformer blocks), after any perturbation at that tap was added.
    features: the pooled representation an encoder offers (e.g. [B, D] image or text
      embeddings), or None.
  """
  logits: Array | None = None
  taps: dict[str, Array] = {}
  features: Array | None = None


def as_outputs(result: Any) -> Outputs:
  """An `apply` result as `Outputs`.

  Accepts `Outputs` (or any object with `.logits`/`.taps`/`.features`), a `(logits, taps)`
  tuple or a bare logits array.

  Raises:
    ValueError: the result is none of these.
  """
  if isinstance(result, Outputs):
    return result
  if hasattr(result, 'logits') or hasattr(result, 'taps'):
    return Outputs(getattr(result, 'logits', None), dict(getattr(result, 'taps', None) or {}),
                   getattr(result, 'features', None))
  if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Mapping):
    return Outputs(result[0], dict(result[1]))
  if hasattr(result, 'shape') and hasattr(result, 'dtype'):
    return Outputs(result, {})
  raise ValueError('apply must return Outputs(logits, taps, features), a (logits, taps) tuple '
                   f'or a logits array; got {type(result).__name__}.')


def accepted_keywords(apply: Apply) -> frozenset[str] | None:
  """The keyword arguments `apply` accepts, or None when it takes `**kwargs` (any keyword).

  Works on functions, `functools.partial` objects and callable objects (their `__call__`).
  """
  try:
    sig = inspect.signature(apply)
  except (TypeError, ValueError):  # a builtin or C function: assume it takes anything
    return None
  params = sig.parameters.values()
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
    return None
  return frozenset(p.name for p in params
                   if p.kind in (inspect.Parameter.KEYWORD_ONLY,
                                 inspect.Parameter.POSITIONAL_OR_KEYWORD))


def require_keywords(apply: Apply, keywords: Iterable[str], *, needed_by: str) -> None:
  """Raises ValueError unless `apply` accepts every keyword in `keywords`.

  Args:
    apply: the model function.
    keywords: e.g. ('rules',) for LRP, ('perturb',) for tap gradients, ('key',) for EOT.
    needed_by: what needs them, for the message (e.g. 'lrp').
  """
  accepted = accepted_keywords(apply)
  if accepted is None:
    return
  missing = [k for k in keywords if k not in accepted]
  if missing:
    raise ValueError(f'{needed_by} calls apply(params, x, {", ".join(f"{k}=..." for k in missing)}) '
                     f'but apply={getattr(apply, "__name__", apply)!r} takes no keyword '
                     f'{missing}; add it to its signature (see lib/contract.py).')


def find_rule(rules: Rules | None, name: str) -> Rule | None:
  """The first rule (in mapping order) whose `fnmatch` pattern matches layer `name`."""
  for pattern, rule in (rules or {}).items():
    if fnmatch.fnmatchcase(name, pattern):
      return rule
  return None


def dense(x: Array, kernel: Array, bias: Array | None) -> Array:
  """x @ kernel (+ bias) over the last axis: the op of every dense layer."""
  y = x @ kernel
  return y if bias is None else y + bias


def apply_linear(rules: Rules | None, name: str, fn: Callable[..., Array], x: Array,
                 kernel: Array, bias: Array | None) -> Array:
  """`fn(x, kernel, bias)`, or the first matching rule's `rule(fn, x, kernel, bias)`."""
  rule = find_rule(rules, name)
  return fn(x, kernel, bias) if rule is None else rule(fn, x, kernel, bias)


class Context:
  """Per-call state threaded through a model's layers (a trace-time Python object).

  Args:
    train: training mode (batch norm uses and updates batch statistics, dropout is active).
    key: typed PRNG key for dropout and any stochastic layer, or None (deterministic).
    perturb: tap name -> additive perturbation.
    rules: layer-name pattern -> `Rule`.
  """

  def __init__(self, *, train: bool, key: Array | None = None,
               perturb: Mapping[str, Array] | None = None, rules: Rules | None = None):
    self.train = train
    self.key = key
    self.perturb = dict(perturb or {})
    self.rules = dict(rules or {})
    self.taps: dict[str, Array] = {}
    self.layer_names: list[str] = []

  def tap(self, name: str, x: Array) -> Array:
    """Records `x` as tap `name`, after adding `perturb[name]` if given.

    Raises:
      ValueError: `perturb[name]` does not have the tap's shape (checked when traced, so
        a perturbation never broadcasts silently).
    """
    if name in self.perturb:
      delta = self.perturb[name]
      if tuple(getattr(delta, 'shape', ())) != tuple(x.shape):
        raise ValueError(f'perturb[{name!r}] must have shape {tuple(x.shape)} (the tap\'s); '
                         f'got {tuple(getattr(delta, "shape", ()))}.')
      x = x + delta
    self.taps[name] = x
    return x

  def linear(self, name: str, fn: Callable[..., Array], x: Array, kernel: Array,
             bias: Array | None) -> Array:
    """Applies the linear layer `fn(x, kernel, bias)`, through a rule if one matches."""
    self.layer_names.append(name)
    return apply_linear(self.rules, name, fn, x, kernel, bias)

  def rng(self, name: str) -> Array:
    """The key of the stochastic layer `name`: `fold_in(key, crc32(name))`.

    Derived from the layer's name, not from call order, so adding a layer elsewhere does not
    change another layer's noise.

    Raises:
      ValueError: the call got no key.
    """
    if self.key is None:
      raise ValueError(f'layer {name!r} is stochastic (dropout or a randomised defence) and '
                       'needs a PRNG key: call apply(..., key=jax.random.key(...)).')
    return jax.random.fold_in(self.key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
