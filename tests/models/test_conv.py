"""The CPU speed paths of lib/models: `conv.conv2d` against `lax.conv_general_dilated` (outputs,
first and second derivatives; under jit, vmap, lax.scan), and `cnn.max_pool`'s mask gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.models.cnn import max_pool
from lib.models.conv import conv2d
from lib.models.layers import conv_op

DN = ('NHWC', 'HWIO', 'NHWC')
TOL = 1e-5
# (kernel size, stride, padding): odd/even kernels, strides 1 and 2, every padding kind,
# a patch embedding (kernel = stride, VALID) and a cropping (negative) pad.
CASES = [
    (3, 1, 'SAME'), (3, 2, 'SAME'), (3, 1, 'VALID'), (3, 2, 'VALID'), (3, 2, ((1, 1), (1, 1))),
    (2, 1, 'SAME'), (4, 2, 'SAME'), (5, 2, ((2, 1), (0, 3))), (1, 2, 'VALID'), (4, 4, 'VALID'),
    (3, 1, ((-1, 2), (1, 0))),
]


def reference(x, w, stride, padding):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)


def ours(x, w, stride, padding):
  return conv2d(x, w, strides=stride, padding=padding)


def derivatives(conv, x, w, ct):
  """Output, first derivatives (x, w) of <conv, ct>, and second derivatives (x, w) of the
  squared norm of a nonlinear loss's gradient; plus a Hessian-vector product in x."""
  loss = lambda x, w: jnp.sum(jnp.tanh(conv(x, w)) * ct)
  grad_norm = lambda x, w: sum(jnp.sum(g ** 2) for g in jax.grad(loss, (0, 1))(x, w))
  hvp = jax.grad(lambda x: jnp.vdot(jax.grad(loss)(x, w), jnp.cos(x)))(x)
  return (conv(x, w), *jax.grad(lambda x, w: jnp.vdot(conv(x, w), ct), (0, 1))(x, w),
          *jax.grad(grad_norm, (0, 1))(x, w), hvp)


def inputs(kernel, stride, padding, size=(9, 8), batch=2, cin=3, cout=4):
  x = jax.random.normal(jax.random.key(0), (batch, *size, cin))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, cin, cout)) / kernel
  out = jax.eval_shape(lambda x, w: reference(x, w, stride, padding), x, w).shape
  return x, w, jax.random.normal(jax.random.key(2), out)


def assert_rel_close(got, want, what):
  for name, g, r in zip(['output', 'dx', 'dw', 'd2x', 'd2w', 'hvp'], got, want):
    err = float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r)))
    assert err <= TOL, (what, name, err)


@pytest.mark.parametrize('kernel,stride,padding', CASES)
def test_parity_with_lax_conv_jit(kernel, stride, padding):
  x, w, ct = inputs(kernel, stride, padding)
  both = jax.jit(lambda x, w, ct: (
      derivatives(lambda x, w: ours(x, w, stride, padding), x, w, ct),
      derivatives(lambda x, w: reference(x, w, stride, padding), x, w, ct)))
  got, want = both(x, w, ct)
  assert_rel_close(got, want, (kernel, stride, padding))


@pytest.mark.parametrize('in_axes', [(0, None, 0), (None, 0, 0), (0, 0, 0)])
def test_parity_under_vmap(in_axes):
  """vmap over inputs, over per-seed kernels (grouped convolutions) and over both."""
  x, w, ct = inputs(3, 2, ((1, 1), (1, 1)))
  stack = lambda a, axis: a if axis is None else jnp.stack([a, 0.5 * a[::-1]])
  xs, ws, cts = (stack(a, ax) for a, ax in zip((x, w, ct), in_axes))
  run = lambda conv: jax.jit(jax.vmap(lambda x, w, ct: derivatives(conv, x, w, ct), in_axes))(
      xs, ws, cts)
  assert_rel_close(run(lambda x, w: ours(x, w, 2, ((1, 1), (1, 1)))),
                   run(lambda x, w: reference(x, w, 2, ((1, 1), (1, 1)))), in_axes)


def test_parity_inside_scan():
  """A PGD-like loop (carry x) and a training-like loop (carry w), differentiated through."""
  x, w, ct = inputs(3, 1, 'SAME')

  def loops(conv, x, w):
    loss = lambda x, w: jnp.sum(jnp.tanh(conv(x, w)) * ct)
    def attack(x, _):
      return x + 0.1 * jnp.sign(jax.grad(loss)(x, w)), loss(x, w)
    def train(w, _):
      return w - 0.1 * jax.grad(loss, 1)(x, w), loss(x, w)
    x_end, attack_losses = jax.lax.scan(attack, x, None, length=3)
    meta = lambda w: jnp.sum(jax.lax.scan(train, w, None, length=3)[0] ** 2)
    return x_end, attack_losses, jax.grad(meta)(w)

  got = jax.jit(lambda x, w: loops(lambda x, w: ours(x, w, 1, 'SAME'), x, w))(x, w)
  want = jax.jit(lambda x, w: loops(lambda x, w: reference(x, w, 1, 'SAME'), x, w))(x, w)
  for name, g, r in zip(['x', 'losses', 'meta-gradient'], got, want):
    assert float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) <= TOL, name


def test_gradients_are_forward_convolutions():
  """The backward pass holds only NHWC/HWIO forward convolutions: no reversed or swapped
  kernel dimensions, which are what XLA:CPU runs slowly."""
  x, w, ct = inputs(3, 2, 'SAME')
  grads = jax.jit(jax.grad(lambda x, w: jnp.vdot(ours(x, w, 2, 'SAME'), ct), (0, 1)))
  convs = [line for line in grads.lower(x, w).as_text().splitlines() if 'convolution' in line]
  assert len(convs) == 2
  assert all('[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]' in line for line in convs), convs


def test_conv_op_uses_conv2d():
  x, w, _ = inputs(3, 2, 'SAME')
  bias = jnp.arange(4, dtype=jnp.float32)
  np.testing.assert_array_equal(conv_op(x, w, bias, strides=2, padding='SAME'),
                                ours(x, w, 2, 'SAME') + bias)
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(conv_op(x, w, None))))(x))
  assert 'custom_vjp_call' in jaxpr


def test_max_pool_gradient_is_a_mask_not_select_and_scatter():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  grad = jax.jit(jax.grad(lambda x: jnp.sum(max_pool(x) ** 2)))
  lowered, compiled = grad.lower(x).as_text(), grad.lower(x).compile().as_text()
  for op in ('stablehlo.select_and_scatter', 'stablehlo.reduce_window'):
    assert op not in lowered, op
  for op in (' select-and-scatter(', ' reduce-window('):
    assert op not in compiled, op
  pooled = max_pool(x)
  want = jnp.where(x == jnp.repeat(jnp.repeat(pooled, 2, 1), 2, 2),
                   2 * jnp.repeat(jnp.repeat(pooled, 2, 1), 2, 2), 0)
  np.testing.assert_allclose(grad(x), want, rtol=1e-6)
