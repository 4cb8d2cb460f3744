"""Plain-numpy (float64) forward passes of the models, written from the papers' equations.

They read the models' variable trees and share no code with `lib.models`, so agreement
checks architecture, padding, shortcut placement and normalisation independently.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def as64(tree):
  """A variable tree with every leaf as a float64 numpy array."""
  if isinstance(tree, dict):
    return {k: as64(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)


def conv(x, kernel, stride=1, pad=0):
  """x [B, H, W, I] (*) kernel [kh, kw, I, O], zero padding `pad` on every side."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw, i, o = kernel.shape
  h, w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  patches = np.stack([x[:, a:a + stride * h:stride, b:b + stride * w:stride]
                      for a in range(kh) for b in range(kw)], axis=3)
  return np.einsum('bhwpi,pio->bhwo', patches, kernel.reshape(kh * kw, i, o))


def batch_norm(x, params, stats, eps=1e-5):
  """Evaluation-mode batch norm over the last axis."""
  return (x - stats['mean']) / np.sqrt(stats['var'] + eps) * params['scale'] + params['bias']


def relu(x):
  return np.maximum(x, 0)


def dense(x, params):
  return x @ params['kernel'] + params['bias']


def layer_norm(x, params, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * params['scale'] + params['bias']


def max_pool(x):
  """Non-overlapping 2x2 max pooling of [B, H, W, C] (H, W even)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max((2, 4))


def small_cnn(variables, x):
  """`SmallCNN`: 3x3 'SAME' conv (+ BN) -> ReLU, 2x2 max pool between stages, mean pool."""
  p, s = as64(variables['params']), as64(variables['batch_stats'])
  taps = {}
  for i in sorted(p['convs']):
    layer = p['convs'][i]
    if 'bn' in layer:
      x = batch_norm(conv(x, layer['conv']['kernel'], 1, 1), layer['bn'], s['convs'][i]['bn'])
    else:
      x = conv(x, layer['kernel'], 1, 1) + layer['bias']
    x = taps[f'conv{i + 1}'] = relu(x)
    if i < len(p['convs']) - 1:
      x = max_pool(x)
  taps['features'] = x.mean((1, 2))
  return dense(taps['features'], p['head']), taps


def resnet(variables, x):
  """CIFAR ResNet (He et al. 2016): conv-BN-ReLU stem, post-activation basic blocks.

  Returns (logits, taps) with taps 'stem', 'stage{i}', 'features'.
  """
  p, s = as64(variables['params']), as64(variables['batch_stats'])
  cbn = lambda x, p, s, stride=1, pad=1: batch_norm(
      conv(x, p['conv']['kernel'], stride, pad), p['bn'], s['bn'])
  taps = {'stem': relu(cbn(x, p['stem'], s['stem']))}
  x = taps['stem']
  for i in sorted(p['stages']):
    for j in sorted(p['stages'][i]['blocks']):
      bp, bs = p['stages'][i]['blocks'][j], s['stages'][i]['blocks'][j]
      stride = 2 if i > 0 and j == 0 else 1
      y = cbn(relu(cbn(x, bp['conv1'], bs['conv1'], stride)), bp['conv2'], bs['conv2'])
      short = cbn(x, bp['shortcut'], bs['shortcut'], stride, 0) if 'shortcut' in bp else x
      x = relu(y + short)
    taps[f'stage{i + 1}'] = x
  taps['features'] = x.mean((1, 2))
  return dense(taps['features'], p['head']), taps


def wide_resnet(variables, x):
  """Pre-activation WRN as RobustBench's: the projection shortcut reads BN-ReLU(x)."""
  p, s = as64(variables['params']), as64(variables['batch_stats'])
  taps = {'stem': conv(x, p['stem']['kernel'], 1, 1)}
  x = taps['stem']
  for i in sorted(p['groups']):
    for j in sorted(p['groups'][i]['blocks']):
      bp, bs = p['groups'][i]['blocks'][j], s['groups'][i]['blocks'][j]
      stride = 2 if i > 0 and j == 0 else 1
      a = relu(batch_norm(x, bp['bn1'], bs['bn1']))
      y = conv(relu(batch_norm(conv(a, bp['conv1']['kernel'], stride, 1), bp['bn2'], bs['bn2'])),
               bp['conv2']['kernel'], 1, 1)
      x = y + (conv(a, bp['shortcut']['kernel'], stride, 0) if 'shortcut' in bp else x)
    taps[f'group{i + 1}'] = x
  taps['features'] = relu(batch_norm(x, p['bn'], s['bn'])).mean((1, 2))
  return dense(taps['features'], p['head']), taps


ACTIVATIONS = {
    'gelu': lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))),
    'quick_gelu': lambda x: x / (1 + np.exp(-1.702 * x)),
}


def vit(variables, x, *, patch_size, heads, activation, epsilon, pre_norm):
  """ViT (Dosovitskiy et al. 2021) with CLIP's options; taps 'embed', 'block{i}', 'features'."""
  p = as64(variables['params'])
  pe = p['patch_embed']
  tokens = conv(x, pe['kernel'], patch_size) + pe.get('bias', 0)
  b, d = tokens.shape[0], tokens.shape[-1]
  x = np.concatenate([np.broadcast_to(p['cls_token'], (b, 1, d)), tokens.reshape(b, -1, d)], 1)
  x = x + p['pos_embed']
  if pre_norm:
    x = layer_norm(x, p['pre_norm'], epsilon)
  taps = {'embed': x}
  for i in sorted(p['blocks']):
    bp = p['blocks'][i]
    h = layer_norm(x, bp['ln1'], epsilon)
    q, k, v = (dense(h, bp['attn'][n]).reshape(b, -1, heads, d // heads) for n in 'qkv')
    logits = np.einsum('bqhc,bkhc->bhqk', q, k) / np.sqrt(d // heads)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    x = x + dense(np.einsum('bhqk,bkhc->bqhc', weights, v).reshape(b, -1, d), bp['attn']['out'])
    h = layer_norm(x, bp['ln2'], epsilon)
    x = x + dense(ACTIVATIONS[activation](dense(h, bp['mlp']['fc1'])), bp['mlp']['fc2'])
    taps[f'block{i}'] = x
  taps['features'] = layer_norm(x[:, 0], p['norm'], epsilon)
  return dense(taps['features'], p['head']), taps
