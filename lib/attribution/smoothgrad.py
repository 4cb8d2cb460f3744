"""SmoothGrad, SmoothGrad² and VarGrad over any attribution method of this package.

Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise":
  M̂(x) = 1/n Σ_{i=1}^n M(x + ε_i),  ε_i ~ N(0, σ²)
with the two variants of Captum's `NoiseTunnel`: 'smoothgrad_sq' = 1/n Σ M(x + ε_i)², and
'vargrad' (Adebayo et al. 2018, "Local Explanation Methods for Deep Neural Networks Lack
Sensitivity to Parameter Values") = 1/n Σ M² - (1/n Σ M)². σ is absolute, in the units of
`x`, as Captum's `stdevs` (for pixels in [0, 1], σ = 0.15 is 15% of the range, the paper's
recommended 10-20%).

The noisy copies are vmapped through the method (for a gradient method, folded into the
model's batch dimension) inside one jitted program; noise comes only from `key`, or is
given explicitly (`noise`), e.g. to reproduce another library's draws.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lib import validate
from lib.attribution import scores as scores_lib

Array = jax.Array

# nt_type -> (E[M], E[M²]) -> map.
_COMBINE: dict[str, Callable[[Array, Array], Array]] = {
    'smoothgrad': lambda mean, mean_sq: mean,
    'smoothgrad_sq': lambda mean, mean_sq: mean_sq,
    'vargrad': lambda mean, mean_sq: mean_sq - mean * mean,
}

NT_TYPES: tuple[str, ...] = tuple(_COMBINE)


@functools.partial(jax.jit, static_argnames=('method_fn', 'apply', 'score', 'n_samples',
                                             'nt_type', 'sample_batch_size', 'static_kwargs'))
def _smoothgrad(method_fn, apply, params, x, target, key, noise, stdev, array_kwargs, *, score,
                n_samples, nt_type, sample_batch_size, static_kwargs):
  if noise is None:
    noise = stdev * jax.random.normal(key, (n_samples, *x.shape), x.dtype)

  def moments(eps):
    m = method_fn(apply, params, x + eps, target, score=score, **array_kwargs,
                  **dict(static_kwargs))
    return m, m * m
  total, total_sq = scores_lib.chunked_sum(moments, noise, sample_batch_size)
  return _COMBINE[nt_type](total / n_samples, total_sq / n_samples)


def smoothgrad(method_fn: Callable[..., Array], apply: scores_lib.Apply, params: Any, x: Array,
               target: Array, *, score: str = 'logit', key: Array | None = None,
               noise: Array | None = None, n_samples: int = 25, stdev: float = 0.15,
               nt_type: str = 'smoothgrad', sample_batch_size: int | None = None,
               **method_kwargs: Any) -> Array:
  """Averages `method_fn` over Gaussian-noised copies of `x` (Smilkov et al. 2017).

  Args:
    method_fn: any method of this package, `method_fn(apply, params, x, target, *, score,
      **method_kwargs) -> maps` (e.g. `saliency`, `integrated_gradients`, `grad_cam`).
    apply: the model function the method takes.
    params: the model's parameters.
    x: [B, H, W, C] float inputs.
    target: [B] int classes to explain.
    score: what is differentiated, one of `scores.SCORES`.
    key: typed PRNG key (`jax.random.key`) for the noise; give this or `noise`.
    noise: explicit noise [n_samples, B, H, W, C] instead of drawing it from `key`
      (then `stdev` is not used).
    n_samples: number of noisy copies n.
    stdev: σ, absolute, in the units of `x`.
    nt_type: one of `NT_TYPES`: 'smoothgrad' (mean), 'smoothgrad_sq' (mean of squares),
      'vargrad' (variance).
    sample_batch_size: noisy copies per vmapped call, the calls looped under `lax.scan`
      (bounds memory, e.g. for SmoothGrad over IG, at some speed on XLA:CPU); None runs
      all n_samples at once, the fastest path.
    **method_kwargs: passed to `method_fn` (e.g. `n_steps=`, `tap=`); arrays among them
      (a baseline) are traced, everything else must be hashable.

  Returns:
    Maps shaped like `method_fn`'s ([B, H, W, C] for pixel methods, [B, H, W] for CAMs).

  Example:
    >>> maps = smoothgrad(saliency, model.apply, variables, x, labels,
    ...                   key=jax.random.key(0), n_samples=25, stdev=0.15)
    >>> many = jax.vmap(lambda k: smoothgrad(saliency, model.apply, variables, x, labels,
    ...                                      key=k))(jax.random.split(jax.random.key(0), 4))
  """
  scores_lib.check_inputs(apply, params, x, target, score)
  validate.check_choice(nt_type, NT_TYPES, 'nt_type')
  if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
    raise ValueError(f'n_samples must be an integer >= 1; got {n_samples!r}.')
  if sample_batch_size is not None:
    validate.check_positive(sample_batch_size, 'sample_batch_size')
  if (key is None) == (noise is None):
    raise ValueError('smoothgrad needs exactly one of key (a jax.random.key) or noise '
                     f'[n_samples, B, H, W, C]; got key={key!r} and noise of shape '
                     f'{getattr(noise, "shape", None)}.')
  if noise is None:
    if not (hasattr(key, 'dtype') and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and key.shape == ()):
      raise ValueError(f'key must be one typed PRNG key from jax.random.key; got {key!r}.')
    if validate.is_concrete(stdev) and not (np.ndim(stdev) == 0 and float(stdev) >= 0):
      raise ValueError(f'stdev must be a non-negative scalar; got {stdev!r}.')
  else:
    if tuple(noise.shape) != (n_samples, *x.shape):
      raise ValueError('noise must have shape [n_samples, B, H, W, C] = '
                       f'{(n_samples, *x.shape)}; got {tuple(noise.shape)}.')
    validate.check_finite(noise, 'noise')
  if method_kwargs.get('return_delta'):
    raise ValueError('smoothgrad averages maps; method_kwargs must not ask for return_delta.')
  is_array = lambda v: isinstance(v, (jax.Array, np.ndarray))
  array_kwargs = {k: v for k, v in method_kwargs.items() if is_array(v)}
  static_kwargs = tuple(sorted((k, v) for k, v in method_kwargs.items() if not is_array(v)))
  return _smoothgrad(method_fn, apply, params, x, target, key, noise, stdev, array_kwargs,
                     score=score, n_samples=int(n_samples), nt_type=nt_type,
                     sample_batch_size=sample_batch_size, static_kwargs=static_kwargs)
