"""Transformer blocks: pre-/post-LN parity with PyTorch, padding and causal masks, dropout.

PyTorch's `nn.TransformerEncoderLayer` (norm_first=True is pre-LN, False is post-LN as in
BERT) is the reference; its weights reach our block through `lib.models.weights`, the
packed q/k/v projection split into the separate ones we (and Hugging Face) use.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx
from model_cases import key

from lib.contract import Context
from lib.models import weights
from lib.models.transformer import EncoderBlock

DIM, HEADS, MLP, T = 8, 2, 16, 6
RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, T, DIM)).astype(np.float32)
# Example 0 has two padding tokens at the end, example 1 none.
MASK = np.array([[1, 1, 1, 1, 0, 0], [1] * T], np.int32)


def block(**options) -> EncoderBlock:
  return EncoderBlock(DIM, HEADS, MLP, activation='gelu', epsilon=1e-5, name='block0',
                      rngs=nnx.Rngs(key(0)), **options)


def torch_names(name: str):
  """PyTorch TransformerEncoderLayer tensor name -> our block's parameter path."""
  module, _, kind = name.rpartition('.')
  ours = {'q': 'attn/q', 'k': 'attn/k', 'v': 'attn/v', 'self_attn.out_proj': 'attn/out',
          'linear1': 'mlp/fc1', 'linear2': 'mlp/fc2', 'norm1': 'ln1', 'norm2': 'ln2'}[module]
  if module.startswith('norm'):
    return f'{ours}/{"scale" if kind == "weight" else "bias"}'
  return (f'{ours}/kernel', weights.torch_linear) if kind == 'weight' else f'{ours}/bias'


def torch_pair(norm_first: bool, causal: bool = False):
  """A random PyTorch layer and our block carrying its weights."""
  torch.manual_seed(0)
  layer = torch.nn.TransformerEncoderLayer(DIM, HEADS, MLP, dropout=0.0, activation='gelu',
                                           batch_first=True, norm_first=norm_first).eval()
  with torch.no_grad():   # non-trivial layer norms
    for norm in (layer.norm1, layer.norm2):
      norm.weight.uniform_(0.5, 1.5)
      norm.bias.normal_()
  tensors = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
  for part, suffix in (('weight', 'weight'), ('bias', 'bias')):
    for name, value in zip('qkv', np.split(tensors.pop(f'self_attn.in_proj_{part}'), 3)):
      tensors[f'{name}.{suffix}'] = value
  ours = block(norm_first=norm_first, causal=causal)
  graphdef, params = nnx.split(ours, nnx.Param)
  loaded, report = weights.load_variables(tensors, torch_names, params.to_pure_dict())
  assert report == weights.LoadReport((), ())
  return layer, nnx.merge(graphdef, nnx.State(loaded))


def rel_err(a, b) -> float:
  return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize('norm_first', [False, True])
def test_matches_torch_encoder_layer(norm_first):
  layer, ours = torch_pair(norm_first)
  with torch.no_grad():
    want = layer(torch.from_numpy(X)).numpy()
  assert rel_err(ours(X, Context(train=False)), want) <= 1e-5


@pytest.mark.parametrize('norm_first', [False, True])
def test_padding_mask_matches_torch(norm_first):
  layer, ours = torch_pair(norm_first)
  with torch.no_grad():
    want = layer(torch.from_numpy(X), src_key_padding_mask=torch.from_numpy(MASK == 0)).numpy()
  got = np.asarray(ours(X, Context(train=False), MASK))
  keep = MASK.astype(bool)
  assert rel_err(got[keep], want[keep]) <= 1e-5


def test_causal_matches_torch():
  layer, ours = torch_pair(norm_first=True, causal=True)
  causal = torch.nn.Transformer.generate_square_subsequent_mask(T)
  with torch.no_grad():
    want = layer(torch.from_numpy(X), src_mask=causal, is_causal=True).numpy()
  assert rel_err(ours(X, Context(train=False)), want) <= 1e-5


@pytest.mark.parametrize('norm_first', [False, True])
def test_padding_tokens_do_not_change_other_tokens(norm_first):
  ours = block(norm_first=norm_first)
  ctx = Context(train=False)
  masked = np.asarray(ours(X, ctx, MASK))
  garbage = X.copy()
  garbage[0, 4:] = 100 * RNG.normal(size=(2, DIM))
  np.testing.assert_allclose(ours(garbage, ctx, MASK)[0, :4], masked[0, :4], rtol=1e-5,
                             atol=1e-5)
  # The unpadded prefix alone, with no mask, gives the same outputs.
  np.testing.assert_allclose(ours(X[:1, :4], ctx)[0], masked[0, :4], rtol=1e-5, atol=1e-5)
  # A mask of ones is no mask.
  np.testing.assert_allclose(ours(X, ctx, np.ones_like(MASK)), ours(X, ctx), rtol=1e-6,
                             atol=1e-6)


def test_causal_position_ignores_later_positions():
  ours = block(causal=True)
  ctx = Context(train=False)
  full = np.asarray(ours(X, ctx))
  for i in range(T):
    later = X.copy()
    later[:, i + 1:] = RNG.normal(size=later[:, i + 1:].shape)
    np.testing.assert_allclose(ours(later, ctx)[:, :i + 1], full[:, :i + 1], rtol=1e-5,
                               atol=1e-5)
  # Not causal: the first position sees the last one.
  plain = block()
  later = X.copy()
  later[:, -1] = RNG.normal(size=(2, DIM))
  assert np.abs(plain(later, ctx)[:, 0] - plain(X, ctx)[:, 0]).max() > 1e-3


def test_dropout_uses_the_key_in_training_mode_only():
  ours = block(dropout=0.3, attention_dropout=0.3)
  clean = np.asarray(ours(X, Context(train=False)))
  np.testing.assert_array_equal(ours(X, Context(train=False, key=key(1))), clean)
  a = np.asarray(ours(X, Context(train=True, key=key(1))))
  np.testing.assert_array_equal(ours(X, Context(train=True, key=key(1))), a)
  b = np.asarray(ours(X, Context(train=True, key=key(2))))
  assert not np.allclose(a, b) and not np.allclose(a, clean)
  with pytest.raises(ValueError, match="'block0/.*needs a PRNG key"):
    ours(X, Context(train=True))


@pytest.mark.parametrize('options, message', [
    (dict(norm_first='no'), 'norm_first must be True or False'),
    (dict(causal=1), 'causal must be True or False'),
    (dict(dropout=1.0), r'dropout must be in \[0.0, 1.0\)'),
    (dict(attention_dropout=-0.1), 'attention_dropout must be in'),
    (dict(dropout='0.1'), 'dropout must be a finite number'),
])
def test_bad_options_raise(options, message):
  with pytest.raises(ValueError, match=message):
    block(**options)
