"""Layers: ConvBN folding (evaluation) and batch statistics (training); stand-alone BatchNorm."""

from __future__ import annotations

import jax
import model_reference as ref
import numpy as np
import pytest
from flax import nnx
from model_cases import key

from lib.models.core import Context
from lib.models.cnn import max_pool
from lib.models.layers import BatchNorm, ConvBN, Dense

RNG = np.random.default_rng(0)
X = RNG.normal(size=(4, 6, 6, 3)).astype(np.float32)


def set_stats(bn: nnx.BatchNorm) -> None:
  """Non-trivial affine parameters and running statistics."""
  c = bn.scale.shape[0]
  bn.scale[...] = RNG.uniform(0.5, 2, c).astype(np.float32)
  bn.bias[...] = RNG.normal(size=c).astype(np.float32)
  bn.mean[...] = RNG.normal(size=c).astype(np.float32)
  bn.var[...] = RNG.uniform(0.5, 2, c).astype(np.float32)


def bn_dict(bn: nnx.BatchNorm):
  params = {'scale': np.asarray(bn.scale[...]), 'bias': np.asarray(bn.bias[...])}
  return params, {'mean': np.asarray(bn.mean[...]), 'var': np.asarray(bn.var[...])}


def test_convbn_eval_folding_equals_conv_then_bn():
  layer = ConvBN(3, 5, 3, name='c', strides=2, padding=((1, 1), (1, 1)), rngs=nnx.Rngs(key(0)))
  set_stats(layer.bn)
  want = ref.batch_norm(ref.conv(X.astype(np.float64), np.asarray(layer.conv.kernel[...]), 2, 1),
                        *bn_dict(layer.bn))
  ctx = Context(train=False)
  np.testing.assert_allclose(layer(X, ctx), want, rtol=1e-5, atol=1e-5)
  assert ctx.layer_names == ['c']
  # A rule sees one linear layer with the batch norm folded into kernel and bias.
  seen = {}
  def rule(fn, x, kernel, bias):
    seen.update(kernel=kernel, bias=bias)
    return fn(x, kernel, bias)
  np.testing.assert_allclose(layer(X, Context(train=False, rules={'c': rule})), want,
                             rtol=1e-5, atol=1e-5)
  params, stats = bn_dict(layer.bn)
  factor = params['scale'] / np.sqrt(stats['var'] + 1e-5)
  np.testing.assert_allclose(seen['kernel'], layer.conv.kernel[...] * factor, rtol=1e-6)
  np.testing.assert_allclose(seen['bias'], params['bias'] - stats['mean'] * factor, rtol=1e-5,
                             atol=1e-6)


def test_convbn_train_uses_batch_statistics_and_updates_running_averages():
  layer = ConvBN(3, 5, 3, name='c', rngs=nnx.Rngs(key(0)))
  set_stats(layer.bn)
  old_mean = np.asarray(layer.bn.mean[...])
  ctx = Context(train=True, rules={'*': lambda *_: 1 / 0})
  y = np.asarray(layer(X, ctx))
  z = ref.conv(X.astype(np.float64), np.asarray(layer.conv.kernel[...]), 1, 1)
  mean, var = z.mean((0, 1, 2)), z.var((0, 1, 2))
  params, _ = bn_dict(layer.bn)
  np.testing.assert_allclose(y, ref.batch_norm(z, params, {'mean': mean, 'var': var}),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(layer.bn.mean[...], 0.9 * old_mean + 0.1 * mean, rtol=1e-5,
                             atol=1e-6)
  assert ctx.layer_names == []   # training mode bypasses rules


def test_batchnorm_layer_train_and_eval():
  bn = BatchNorm(3, rngs=nnx.Rngs(key(0)))
  set_stats(bn)
  params, stats = bn_dict(bn)
  ctx = Context(train=False, rules={'*': lambda *_: 1 / 0})
  np.testing.assert_allclose(bn(X, ctx), ref.batch_norm(X, params, stats), rtol=1e-5, atol=1e-5)
  assert ctx.layer_names == []   # invisible to rules: crossed with its plain gradient
  np.testing.assert_allclose(bn.mean[...], stats['mean'])   # eval leaves statistics alone
  y = bn(X, Context(train=True))
  batch = {'mean': X.mean((0, 1, 2)), 'var': X.var((0, 1, 2))}
  np.testing.assert_allclose(y, ref.batch_norm(X, params, batch), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(bn.var[...], 0.9 * stats['var'] + 0.1 * batch['var'], rtol=1e-5)


def test_batchnorm_gradient_is_the_affine_scale():
  bn = BatchNorm(3, rngs=nnx.Rngs(key(0)))
  set_stats(bn)
  params, stats = bn_dict(bn)
  grad = jax.grad(lambda x: bn(x, Context(train=False)).sum())(X)
  factor = params['scale'] / np.sqrt(stats['var'] + 1e-5)
  np.testing.assert_allclose(grad, np.broadcast_to(factor, X.shape), rtol=1e-5)


RNGS = lambda: nnx.Rngs(key(0))


@pytest.mark.parametrize('make, message', [
    (lambda: ConvBN(3, 0, 3, name='c', rngs=RNGS()), 'out_features must be an integer >= 1'),
    (lambda: ConvBN(3, 4, 2.5, name='c', rngs=RNGS()), 'kernel_size must be an integer'),
    (lambda: ConvBN(3, 4, 3, name='c', strides=0, rngs=RNGS()), 'strides must be'),
    (lambda: ConvBN(3, 4, 3, name='c', momentum=1.5, rngs=RNGS()), 'momentum must be in'),
    (lambda: BatchNorm(3, epsilon=-1.0, rngs=RNGS()), 'epsilon must be in'),
    (lambda: BatchNorm(-3, rngs=RNGS()), 'num_features must be an integer >= 1'),
    (lambda: Dense(3, 4, name='d', use_bias='no', rngs=RNGS()), 'use_bias must be True or False'),
    (lambda: max_pool(X, window=0), 'window must be an integer >= 1'),
])
def test_bad_layer_arguments_raise(make, message):
  with pytest.raises(ValueError, match=message):
    make()
