"""BPDA: a non-differentiable preprocessing step with a differentiable substitute backward.

Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner 2018, "Obfuscated
gradients give a false sense of security", §4.1): a defence g(x) whose gradient is zero,
undefined or useless (quantisation, JPEG, a purifier run without gradients) is replaced in
the backward pass by a smooth h with h(x) ≈ g(x), usually the identity. The forward pass is
g's exactly, so the attacked model and the evaluated model are the same function:

    quantise = bpda(lambda x: jnp.round(x * 7) / 7)          # forward: g, backward: identity
    apply_defended = lambda p, x: apply(p, quantise(x))
    x_adv = pgd(apply_defended, params, x, y, eps=8 / 255)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array


def identity(x: Array, *args: Any) -> Array:
  """The default substitute: h(x) = x, whose VJP passes the cotangent through unchanged."""
  del args
  return x


def bpda(preprocess: Callable[..., Array],
         substitute: Callable[..., Array] = identity) -> Callable[..., Array]:
  """`preprocess` in the forward pass, `substitute`'s vector-Jacobian product backward.

  Args:
    preprocess: g(x, *args) -> array shaped like the model's input; `args` (e.g. a noise
      key or parameters) are passed through and get no gradient.
    substitute: h(x, *args), differentiable, with h(x) ≈ g(x); identity by default.

  Returns:
    f(x, *args) with f(x) = g(x) and ∂f/∂x = ∂h/∂x (cotangents of `args` are zero). Pure:
    it jits and vmaps, and compositions (EOT, restarts) see the substitute's gradient.
  """
  if not callable(preprocess):
    raise ValueError(f'preprocess must be a function g(x, *args); got {preprocess!r}.')
  if not callable(substitute):
    raise ValueError(f'substitute must be a function h(x, *args); got {substitute!r}.')

  @jax.custom_vjp
  def f(x, *args):
    return preprocess(x, *args)

  def forward(x, *args):
    return preprocess(x, *args), (x, args)

  def backward(residuals, cotangent):
    x, args = residuals
    _, vjp = jax.vjp(lambda x_: substitute(x_, *args), x)
    return (*vjp(cotangent), *(None for _ in args))

  f.defvjp(forward, backward)
  return f
