"""How far a softmax-invariant manipulation moves the probabilities: 0 in exact arithmetic.

A manipulated model returns z̃ = z + t·1 (`lib.attribution.manipulate`), and
softmax(z + t·1) = softmax(z) exactly. What remains is rounding, and where it happens:

* `softmax_gap` runs both models in the precision of the process (float32 unless the caller
  enabled x64): the logits z + t are rounded to float32 *inside* the model, about
  ε₃₂·|t| ≈ 6e-8·|t|, and that error reaches the probabilities. This is what a user of the
  manipulated model sees.
* `softmax_gaps` adds a float64 figure without touching JAX's global x64 switch: the honest
  logits z and the term t are taken from the float32 models, then z + t and both softmaxes
  are evaluated in float64 (numpy). Float64 holds the sum of two float32 numbers exactly
  (unless |t|/|z| exceeds about 2^29), so this figure is 0 (or at the level of float64's
  exp): the shift itself is invisible to the softmax, and the whole float32 gap is the
  rounding of z + t to float32. (Before, the study ran the whole model in float64 under
  `jax.enable_x64`, a process-wide switch; t computed in float64 then carried its own
  rounding, ε₆₄·|t|, e.g. 4.5e-12 for |t| ≈ 9e4. Both say the same thing: no gap but
  rounding.)
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lib import contract, validate
from lib.attribution import manipulate as manipulate_lib

Array = jax.Array


def _cast_floats(tree: Any, dtype: Any) -> Any:
  return jax.tree.map(
      lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating)
      else a, tree)


@functools.partial(jax.jit, static_argnames=('apply', 'wrapped'))
def _softmax_gap(apply, wrapped, params, x):
  probs = lambda f: jax.nn.softmax(contract.as_outputs(f(params, x)).logits, axis=-1)
  return jnp.abs(probs(apply) - probs(wrapped)).max()


def softmax_gap(apply: contract.Apply, wrapped: contract.Apply, params: Any,
                x: Array) -> Array:
  """max |softmax(z̃) − softmax(z)| over the batch and classes, in the process's precision.

  Params and x are cast to float64 when the caller has enabled x64 (this function never
  changes that setting), to float32 otherwise.

  Args:
    apply: the honest model.
    wrapped: the manipulated one (e.g. from `manipulate`); both static under jit.
    params: their shared parameters.
    x: [B, H, W, C] inputs.

  Returns:
    Scalar max |Δp|.
  """
  validate.check_images(x, 'x', value_range=None)
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  return _softmax_gap(apply, wrapped, _cast_floats(params, dtype), jnp.asarray(x, dtype))


def _softmax64(z: np.ndarray) -> np.ndarray:
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _layers(apply: contract.Apply,
            wrapped: Any) -> tuple[manipulate_lib.Manipulated, ...]:
  """The `Manipulated` layers from `wrapped` down to `apply`.

  Raises:
    ValueError: `wrapped` is not `apply` wrapped by `manipulate` (possibly nested).
  """
  layers, inner = [], wrapped
  while isinstance(inner, manipulate_lib.Manipulated) and inner != apply:
    layers.append(inner)
    inner = inner.apply
  if not layers or inner != apply:
    raise ValueError('wrapped must be apply wrapped by manipulate() (possibly nested); got '
                     f'wrapped={wrapped!r}.')
  return tuple(layers)


@functools.partial(jax.jit, static_argnames=('apply', 'layers'))
def _logits_and_term(apply, layers, params, x):
  """(honest logits [B, K], Σ t [B] over the manipulation layers)."""
  terms = [layer.term(params, x) for layer in layers]
  return contract.as_outputs(apply(params, x)).logits, sum(terms[1:], terms[0])


def softmax_gaps(apply: contract.Apply, wrapped: manipulate_lib.Manipulated, params: Any,
                 x: Array) -> dict[str, float]:
  """max |Δp| in both precisions, for reports (see the module docstring for what each means).

  Args:
    apply: the honest model.
    wrapped: `apply` wrapped by `manipulate` (possibly nested).
    params: their shared parameters.
    x: [B, H, W, C] inputs.

  Returns:
    {'float64': z + t and softmax in float64 from float32 z and t,
     'float32': `softmax_gap` of the two models in float32}.

  Raises:
    ValueError: bad x, or `wrapped` is not a manipulation of `apply`.
  """
  validate.check_images(x, 'x', value_range=None)
  params, x = _cast_floats(params, jnp.float32), jnp.asarray(x, jnp.float32)
  z, t = (np.asarray(a, np.float64)
          for a in _logits_and_term(apply, _layers(apply, wrapped), params, x))
  gap64 = np.abs(_softmax64(z + t[:, None]) - _softmax64(z)).max()
  return {'float64': float(gap64), 'float32': float(_softmax_gap(apply, wrapped, params, x))}
