"""What an attribution method differentiates, and the machinery every method shares.

Every method explains one scalar per example, chosen by `score`:

| kind | score of class t | immune to adding t(x) to every logit? |
| --- | --- | --- |
| 'logit' | z_t (pre-softmax) | no |
| 'probability' | softmax(z)_t | yes |
| 'log_probability' | log_softmax(z)_t = z_t - logsumexp(z) | yes |
| 'logit_difference' | z_t - mean_{j != t} z_j | yes |

The right-hand column is the point of Lerma & Lucas, "A Vulnerability of Attribution
Methods Using Pre-Softmax Scores" (arXiv 2307.03305): softmax(z + c(x)·1) = softmax(z), so a
model can add any c(x) to every logit without changing a prediction, and every gradient of
a raw logit then gains ∂c/∂x. The other three kinds cancel c(x).

Also here, so that no method repeats them: the eager checks of the arguments all methods
share (`check_inputs`), the gradient of the summed score (`score_grad`), and the chunked
sum over steps or samples (`chunked_sum`).

The model is a function `apply(params, x, **kwargs)` following `lib.contract`: it returns
`Outputs(logits, taps, features)`, a `(logits, taps)` tuple or bare logits [B, K]
(`contract.as_outputs` reads all three). Examples must be independent
(evaluation mode): the gradient of the batch's summed score is then each example's own
gradient.

Every method checks its arguments eagerly, then runs one jitted program with `apply` and
the options static, so pass the same `apply` object on every call (`model.apply`, a
module-level function): a new lambda per call compiles anew. Under an outer `jax.jit` or
`jax.vmap` the methods trace inline; value checks are skipped for traced arguments.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lib import contract, validate

Array = jax.Array
Apply = contract.Apply


def _logit_difference(z: Array) -> Array:
  return z - (z.sum(axis=-1, keepdims=True) - z) / (z.shape[-1] - 1)


# kind -> per-class score [B, K] from logits [B, K].
_CLASS_SCORES: Mapping[str, Callable[[Array], Array]] = {
    'logit': lambda z: z,
    'probability': jax.nn.softmax,
    'log_probability': jax.nn.log_softmax,
    'logit_difference': _logit_difference,
}

SCORES: tuple[str, ...] = tuple(_CLASS_SCORES)


def logits_of(outputs: Any) -> Array:
  """The logits of an `apply` result (`Outputs`, a `(logits, taps)` tuple or logits)."""
  return contract.as_outputs(outputs).logits


def taps_of(outputs: Any) -> dict[str, Array]:
  """The taps of an `apply` result (empty for a function that returns logits only)."""
  return contract.as_outputs(outputs).taps


def class_scores(logits: Array, kind: str = 'logit') -> Array:
  """Scores of every class: [B, K] logits -> [B, K] scores of `kind` (see `SCORES`)."""
  return _CLASS_SCORES[kind](logits)


def target_scores(logits: Array, target: Array, kind: str = 'logit') -> Array:
  """Per-example score of the target class.

  Args:
    logits: [B, K] pre-softmax scores.
    target: [B] int class indices.
    kind: one of `SCORES`.

  Returns:
    [B] scores, e.g. softmax(logits)[b, target[b]] for 'probability'.

  Example:
    >>> target_scores(jnp.array([[1., 2., 3.]]), jnp.array([2]), 'logit_difference')
    Array([1.5], dtype=float32)
  """
  scores = class_scores(logits, kind)
  return jnp.take_along_axis(scores, target[:, None].astype(jnp.int32), axis=1)[:, 0]


def score_grad(fn: Callable[[Array], Any], arg: Array, target: Array,
               kind: str) -> tuple[Array, Any]:
  """Gradient of the summed target scores of `fn(arg)` with respect to `arg`.

  With independent examples this is, row by row, ∂score_b/∂arg_b: the input gradient when
  `fn = lambda x: apply(params, x)`, the layer gradient when `fn` feeds a zero perturbation
  of a tap (`lambda d: apply(params, x, perturb={tap: d})`).

  Args:
    fn: arg -> outputs (anything `contract.as_outputs` reads).
    arg: [B, ...] the point to differentiate at.
    target: [B] int classes.
    kind: one of `SCORES`.

  Returns:
    (gradient shaped like `arg`, `fn(arg)` as `contract.Outputs`).
  """
  def total(a):
    outputs = contract.as_outputs(fn(a))
    return target_scores(outputs.logits, target, kind).sum(), outputs
  return jax.grad(total, has_aux=True)(arg)


def chunked_sum(fn: Callable[[Any], Any], xs: Any, chunk_size: int | None = None) -> Any:
  """Σ_i fn(xs[i]) over the leading axis of the pytree `xs`, `chunk_size` items at a time.

  Items of one chunk are vmapped (for a model, folded into its batch dimension); chunks run
  one after another under `lax.scan`, so memory grows with `chunk_size`, not with the number
  of items. `None` vmaps everything at once.

  Args:
    fn: one item -> pytree of arrays.
    xs: pytree of arrays with a common leading axis of length N >= 1.
    chunk_size: items per vmapped call, or None for N.

  Returns:
    The pytree of sums, shaped like one `fn` output.
  """
  n = jax.tree.leaves(xs)[0].shape[0]
  size = n if chunk_size is None else min(chunk_size, n)
  n_full, rest = divmod(n, size)
  summed = lambda chunk: jax.tree.map(lambda a: a.sum(0), jax.vmap(fn)(chunk))
  head = jax.tree.map(lambda a: a[:n_full * size].reshape(n_full, size, *a.shape[1:]), xs)
  if n_full == 1:
    total = summed(jax.tree.map(lambda a: a[0], head))
  else:
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(summed, jax.tree.map(lambda a: a[0], head)))
    add = lambda acc, chunk: (jax.tree.map(jnp.add, acc, summed(chunk)), None)
    total, _ = jax.lax.scan(add, zeros, head)
  if rest:
    total = jax.tree.map(jnp.add, total, summed(jax.tree.map(lambda a: a[n_full * size:], xs)))
  return total


@functools.lru_cache(maxsize=64)
def _abstract_outputs_cached(apply: Apply, params_def: Any, params_avals: tuple,
                             x_aval: jax.ShapeDtypeStruct) -> contract.Outputs:
  params = jax.tree.unflatten(params_def, params_avals)
  return contract.as_outputs(jax.eval_shape(apply, params, x_aval))


def abstract_outputs(apply: Apply, params: Any, x: Array) -> contract.Outputs:
  """`apply(params, x)` as shapes only (`jax.eval_shape`), as `contract.Outputs`.

  Cached per model and shapes; an `apply` that cannot be hashed (e.g. a manipulated model
  whose strength is traced) is evaluated without the cache.
  """
  leaves, params_def = jax.tree.flatten(params)
  avals = tuple(jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)) for a in leaves)
  x_aval = jax.ShapeDtypeStruct(x.shape, x.dtype)
  try:
    return _abstract_outputs_cached(apply, params_def, avals, x_aval)
  except TypeError:  # an unhashable `apply`: compute without the cache.
    return contract.as_outputs(jax.eval_shape(apply, params, x_aval))


def check_inputs(apply: Apply, params: Any, x: Array, target: Array,
                 score: str) -> contract.Outputs:
  """The eager checks every method runs before tracing; returns the abstract outputs.

  Args:
    apply: the model function.
    params: its parameters.
    x: [B, H, W, C] finite float inputs (any range the model accepts).
    target: [B] int classes in [0, K).
    score: one of `SCORES`.

  Returns:
    `jax.eval_shape` of `apply(params, x)` as `contract.Outputs`.

  Raises:
    ValueError: naming the bad argument and what was expected.
  """
  validate.check_images(x, 'x', value_range=None)
  validate.check_choice(score, SCORES, 'score')
  outputs = abstract_outputs(apply, params, x)
  logits = outputs.logits
  if getattr(logits, 'ndim', None) != 2 or logits.shape[0] != x.shape[0] or logits.shape[1] < 2:
    raise ValueError('apply(params, x) must return logits [B, K] with K >= 2 (as Outputs, a '
                     '(logits, taps) tuple or an array); got shape '
                     f'{getattr(logits, "shape", None)}.')
  validate.check_labels(target, logits.shape[1], 'target', batch=x.shape[0])
  return outputs


def check_tap(outputs: contract.Outputs, tap: str, *, needed_by: str,
              spatial: bool = False) -> None:
  """Checks that `tap` is one of the model's taps (and [B, h, w, c] if `spatial`).

  Args:
    outputs: abstract outputs of the model (from `check_inputs`).
    tap: the tap argument of the method.
    needed_by: the method's name, for the message.
    spatial: whether the method needs a spatial tap.

  Raises:
    ValueError: the model has no taps (an `apply` returning logits only), `tap` is not one of
      them, or it is not spatial when it must be; the valid taps are listed.
  """
  taps = outputs.taps
  if not taps:
    raise ValueError(f'{needed_by} reads the model tap tap={tap!r}, but apply returns logits '
                     'only: return Outputs(logits, taps) or a (logits, taps) tuple with that '
                     'tap, and take perturb={tap: delta} (see lib/contract.py).')
  cells = [name for name, a in taps.items() if len(a.shape) == 4]
  if tap not in taps:
    raise ValueError(f'tap={tap!r} is not a tap of this model; valid taps: {list(taps)}'
                     + (f' (spatial [B, h, w, c]: {cells}).' if spatial else '.'))
  if spatial and tap not in cells:
    raise ValueError(f'tap={tap!r} has shape {tuple(taps[tap].shape)}; {needed_by} needs a '
                     f'spatial tap [B, h, w, c], one of {cells}.')


def check_baseline(baseline: Any, x: Array, name: str = 'baseline') -> None:
  """Checks a baseline: shape (), [H, W, C] or [B, H, W, C] of `x`, finite values."""
  shape = tuple(np.shape(baseline))
  allowed = ((), tuple(x.shape[1:]), tuple(x.shape))
  if shape not in allowed:
    raise ValueError(f'{name} must be a scalar or have shape {allowed[1]} or {allowed[2]}; '
                     f'got {shape}.')
  validate.check_finite(baseline, name)
