"""BERT (Devlin et al. 2019), Hugging Face `BertModel` with its task heads, in Flax NNX.

  word [V, D] + position [P, D] + token-type [S, D] embeddings     BertEmbeddings
  LayerNorm (eps 1e-12), dropout       [tap 'embed' B x T x D]      = hidden_states[0]
  L post-LN encoder blocks (erf GELU)  [taps 'block{i}' B x T x D]  = hidden_states[i + 1]
                                       (BertLayer; `lib.models.transformer.EncoderBlock`)
  pooler: dense + tanh of the first ([CLS]) token                   BertPooler
                                       [tap 'features' B x D]       = pooler_output
  optional classification head: dropout + dense 'head' -> logits [B, K]
                                       (BertForSequenceClassification's dropout + classifier)
  or optional masked-LM head: dense + GELU + LayerNorm, then the word embeddings
    (tied) + bias -> logits [B, T, V]  (BertForMaskedLM's cls.predictions)

Where HF's outputs are: `Outputs.features` is `pooler_output`, `taps['block{L-1}']` is
`last_hidden_state`, and the taps 'embed', 'block0', ..., 'block{L-1}' in order are
`hidden_states` (L + 1 of them). Padding positions are computed (as in HF) but never
change the outputs of real tokens.

Inputs (`BertTokens`): {'input_ids': int [B, T], 'attention_mask': [B, T] (1 = token,
0 = padding), optional 'token_type_ids': int [B, T] in [0, type_vocab_size) (segment A = 0,
B = 1; zeros when absent)}, T <= max_len <= max_position_embeddings; positions 0..T-1.
`lib.text.wordpiece` produces such batches.

Linear layers (rule names): 'block{i}/attn/{q,k,v,out}', 'block{i}/mlp/{fc1,fc2}',
'pooler', 'head', 'mlm/transform', 'mlm/decoder'. The embedding lookups are not linear
layers; perturbing the 'embed' tap is how gradient methods and attacks reach the input.

Initialisation (HF's `_init_weights` where the blocks allow): embeddings and the pooler,
head and MLM dense kernels N(0, initializer_range^2) with the padding token's embedding
zero; the blocks' kernels Xavier-uniform (`EncoderBlock`'s); biases zero; LayerNorms 1, 0.
Weights of published checkpoints: `lib.models.bert_weights`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lib import validate
from lib.contract import Context, Outputs
from lib.contract import dense as dense_op
from lib.models.core import PureModel
from lib.models.inputs import Tokens
from lib.models.layers import Dense, dropout
from lib.models.transformer import ACTIVATIONS, EncoderBlock, check_rate, layer_norm

Array = jax.Array
# Label of positions the masked-LM loss skips (PyTorch's CrossEntropyLoss ignore_index).
IGNORE_INDEX = -100
# HF config.json options with the one value this implementation supports.
_FIXED_OPTIONS = {'position_embedding_type': 'absolute', 'is_decoder': False,
                  'add_cross_attention': False}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The architecture, with the field names of Hugging Face's `config.json` (defaults: BERT-base).

  Attributes:
    vocab_size: number of token ids V.
    hidden_size: model width D.
    num_hidden_layers: number of encoder blocks L.
    num_attention_heads: attention heads (must divide D).
    intermediate_size: MLP hidden width.
    hidden_act: MLP activation; only 'gelu' (the exact, erf form) is supported.
    max_position_embeddings: position embeddings P, the longest sequence.
    type_vocab_size: number of token types (segments) S.
    layer_norm_eps: LayerNorm epsilon.
    hidden_dropout_prob: dropout on the embeddings and each sub-layer's output (training).
    attention_probs_dropout_prob: dropout on the attention probabilities (training).
    pad_token_id: the padding token, whose embedding starts at zero, or None.
    initializer_range: standard deviation of the initial embeddings and dense kernels.
    classifier_dropout: dropout before the classification head; None means
      `hidden_dropout_prob` (as HF).

  Raises:
    ValueError: naming the first bad field.
  """
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = 'gelu'
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  pad_token_id: int | None = 0
  initializer_range: float = 0.02
  classifier_dropout: float | None = None

  def __post_init__(self):
    for name in ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads',
                 'intermediate_size', 'max_position_embeddings', 'type_vocab_size'):
      validate.check_int(getattr(self, name), f'config.{name}', minimum=1)
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f'config.num_attention_heads={self.num_attention_heads} must divide '
                       f'config.hidden_size={self.hidden_size}.')
    if self.hidden_act != 'gelu':
      raise ValueError(f"config.hidden_act={self.hidden_act!r} is not supported; BERT "
                       "checkpoints use 'gelu' (the exact, erf form).")
    validate.check_number(self.layer_norm_eps, 'config.layer_norm_eps', low=0.0)
    validate.check_number(self.initializer_range, 'config.initializer_range', low=0.0)
    for name in ('hidden_dropout_prob', 'attention_probs_dropout_prob'):
      check_rate(getattr(self, name), f'config.{name}')
    if self.classifier_dropout is not None:
      check_rate(self.classifier_dropout, 'config.classifier_dropout')
    if self.pad_token_id is not None:
      validate.check_int(self.pad_token_id, 'config.pad_token_id', minimum=0)
      if self.pad_token_id >= self.vocab_size:
        raise ValueError(f'config.pad_token_id={self.pad_token_id} must be below '
                         f'config.vocab_size={self.vocab_size}.')

  @classmethod
  def from_hf_config(cls, config: Mapping[str, Any]) -> BertConfig:
    """The config of a Hugging Face `config.json` (a dict); fields it lacks keep HF's defaults.

    Keys that do not change the computation (architectures, dtype, use_cache, ...) are
    ignored.

    Raises:
      ValueError: not a mapping, a `model_type` other than 'bert', an unsupported option
        (position_embedding_type other than 'absolute', a decoder, cross-attention, an
        activation other than 'gelu'; named with its value), or a bad field.
    """
    if not isinstance(config, Mapping):
      raise ValueError(f'config must be a dict (config.json); got {type(config).__name__}.')
    if config.get('model_type', 'bert') != 'bert':
      raise ValueError(f"config model_type={config['model_type']!r} is not 'bert'.")
    for name, supported in _FIXED_OPTIONS.items():
      if config.get(name, supported) != supported:
        raise ValueError(f'config {name}={config[name]!r} is not supported (only '
                         f'{supported!r}).')
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{k: config[k] for k in names if k in config})


BERT_BASE = BertConfig()
# google/bert_uncased_L-2_H-128_A-2, the model of Henderson et al.'s MLAC code.
BERT_TINY = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=512)
# For tests: small enough to compile in about a second.
BERT_TEST = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)


@dataclasses.dataclass(frozen=True)
class BertTokens(Tokens):
  """`Tokens` with optional segment ids: {'input_ids', 'attention_mask'[, 'token_type_ids']}.

  Args:
    max_len: longest sequence T the model takes.
    vocab_size: ids lie in [0, vocab_size).
    type_vocab_size: token types lie in [0, type_vocab_size).
  """
  type_vocab_size: int = 2

  def __post_init__(self):
    super().__post_init__()
    validate.check_int(self.type_vocab_size, 'type_vocab_size', minimum=1)

  def check(self, inputs: Any, name: str = 'x') -> None:
    keys = ('input_ids', 'attention_mask')
    if not isinstance(inputs, dict) or not set(keys) <= set(inputs) <= {*keys, 'token_type_ids'}:
      got = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
      raise ValueError(f"{name} must be a dict with keys {list(keys)} and optionally "
                       f"'token_type_ids'; got {got}.")
    super().check({k: inputs[k] for k in keys}, name)
    if 'token_type_ids' in inputs:
      self._check_types(inputs['token_type_ids'], inputs['input_ids'].shape, name)

  def _check_types(self, types: Any, shape: tuple[int, ...], name: str) -> None:
    what = f"{name}['token_type_ids']"
    if not hasattr(types, 'shape') or not np.issubdtype(types.dtype, np.integer):
      raise ValueError(f'{what} must be an integer array; got {type(types).__name__} '
                       f'{getattr(types, "dtype", "")}.')
    if tuple(types.shape) != tuple(shape):
      raise ValueError(f'{what} must have the shape of input_ids {tuple(shape)}; got '
                       f'{tuple(types.shape)}.')
    if validate.is_concrete(types):
      a = np.asarray(types)
      if a.size and (a.min() < 0 or a.max() >= self.type_vocab_size):
        raise ValueError(f'{what} must lie in [0, {self.type_vocab_size}); got values in '
                         f'[{a.min()}, {a.max()}].')


class MaskedLMHead(nnx.Module):
  """HF `BertLMPredictionHead`: dense + activation + LayerNorm, then the tied decoder.

  [B, T, D] hidden states, word embeddings [V, D] -> logits [B, T, V] =
  LN(act(h W + b)) E^T + bias.

  Args:
    config: the architecture.
    init: initialiser of the dense kernel.
    rngs: parameter generators.
  """

  def __init__(self, config: BertConfig, init: Any, *, rngs: nnx.Rngs):
    dim = config.hidden_size
    self.transform = Dense(dim, dim, name='mlm/transform', kernel_init=init, rngs=rngs)
    self.norm = layer_norm(dim, config.layer_norm_eps, rngs)
    self.bias = nnx.Param(jnp.zeros((config.vocab_size,)))
    self.activation = config.hidden_act

  def __call__(self, x: Array, embeddings: Array, ctx: Context) -> Array:
    h = self.norm(ACTIVATIONS[self.activation](self.transform(x, ctx)))
    return ctx.linear('mlm/decoder', dense_op, h, embeddings.T, self.bias[...])


def _embedding_table(init: Any, rngs: nnx.Rngs, rows: int, dim: int,
                     pad: int | None = None) -> nnx.Param:
  table = init(rngs.params(), (rows, dim))
  return nnx.Param(table if pad is None else table.at[pad].set(0.0))


class Bert(nnx.Module):
  """The BERT encoder with its pooler and an optional task head (see the module docstring).

  Args:
    config: the architecture.
    num_classes: logits of a classification head on the pooled output, or None.
    mlm: add the masked-language-modelling head (logits [B, T, V]); excludes num_classes.
    rngs: parameter generators.
  """

  def __init__(self, config: BertConfig, *, num_classes: int | None = None, mlm: bool = False,
               rngs: nnx.Rngs):
    c, dim = config, config.hidden_size
    init = nnx.initializers.normal(c.initializer_range)
    self.token_embed = _embedding_table(init, rngs, c.vocab_size, dim, c.pad_token_id)
    self.pos_embed = _embedding_table(init, rngs, c.max_position_embeddings, dim)
    self.type_embed = _embedding_table(init, rngs, c.type_vocab_size, dim)
    self.embed_norm = layer_norm(dim, c.layer_norm_eps, rngs)
    self.blocks = nnx.List([
        EncoderBlock(dim, c.num_attention_heads, c.intermediate_size, activation=c.hidden_act,
                     epsilon=c.layer_norm_eps, name=f'block{i}', norm_first=False,
                     dropout=c.hidden_dropout_prob,
                     attention_dropout=c.attention_probs_dropout_prob, rngs=rngs)
        for i in range(c.num_hidden_layers)])
    self.pooler = Dense(dim, dim, name='pooler', kernel_init=init, rngs=rngs)
    self.head = (None if num_classes is None else
                 Dense(dim, num_classes, name='head', kernel_init=init, rngs=rngs))
    self.mlm = MaskedLMHead(c, init, rngs=rngs) if mlm else None
    self.dropout = c.hidden_dropout_prob
    self.head_dropout = (c.hidden_dropout_prob if c.classifier_dropout is None
                         else c.classifier_dropout)

  def embed(self, inputs: Mapping[str, Array], ctx: Context) -> Array:
    """HF `BertEmbeddings`: token ids (+ types) [B, T] -> [B, T, D], recorded as tap 'embed'."""
    ids = inputs['input_ids']
    types = inputs.get('token_type_ids')
    type_embed = (self.type_embed[0] if types is None
                  else jnp.take(self.type_embed[...], types, axis=0))
    x = (jnp.take(self.token_embed[...], ids, axis=0) + type_embed
         + self.pos_embed[:ids.shape[1]])
    x = dropout(self.embed_norm(x), self.dropout, ctx, 'embed/dropout')
    return ctx.tap('embed', x)

  def __call__(self, inputs: Mapping[str, Array], ctx: Context) -> Outputs:
    """`BertTokens` inputs -> Outputs(logits [B, K], [B, T, V] or None, features [B, D])."""
    x = self.embed(inputs, ctx)
    for block in self.blocks:
      x = ctx.tap(block.name, block(x, ctx, inputs['attention_mask']))
    pooled = ctx.tap('features', jnp.tanh(self.pooler(x[:, 0], ctx)))
    if self.mlm is not None:
      return Outputs(self.mlm(x, self.token_embed[...], ctx), features=pooled)
    if self.head is None:
      return Outputs(features=pooled)
    return Outputs(self.head(dropout(pooled, self.head_dropout, ctx, 'head/dropout'), ctx),
                   features=pooled)


def bert_model(config: BertConfig, num_classes: int | None = None, *, max_len: int | None = None,
               mlm: bool = False) -> PureModel:
  """The pure form of `Bert`: `init(key)`, `apply(variables, tokens, ...) -> Outputs`.

  Args:
    config: the architecture (`BERT_TINY`, `BertConfig.from_hf_config(...)`, ...).
    num_classes: logits of a classification head on the pooled output
      (BertForSequenceClassification), or None for the encoder (BertModel).
    max_len: longest sequence the inputs may have; defaults to
      `config.max_position_embeddings`. It sets the example traced for `tap_shapes`.
    mlm: the masked-LM head instead (BertForMaskedLM; its `num_classes` is V and its
      logits are [B, T, V]).

  Returns:
    A `PureModel` named 'bert' over `BertTokens` inputs.

  Raises:
    ValueError: config is not a `BertConfig`, num_classes is not None or an integer >= 1,
      both num_classes and mlm are set, or max_len is outside [1, max_position_embeddings].

  Example:
    >>> model = bert_model(BERT_TINY, num_classes=2, max_len=128)
    >>> variables = model.init(jax.random.key(0))
    >>> tokenize = lib.text.wordpiece.from_vocab('vocab.txt', max_len=128)
    >>> out = model.apply(variables, tokenize(['a text']))
    >>> out.logits, out.features, out.taps['block1']   # [1, 2], [1, 128], [1, 128, 128]
  """
  if not isinstance(config, BertConfig):
    raise ValueError(f'config must be a BertConfig; got {type(config).__name__}.')
  validate.check_bool(mlm, 'mlm')
  if num_classes is not None:
    validate.check_int(num_classes, 'num_classes', minimum=1)
    if mlm:
      raise ValueError(f'num_classes={num_classes} and mlm=True exclude each other: the '
                       'masked-LM head has one logit per token id.')
  max_len = config.max_position_embeddings if max_len is None else max_len
  validate.check_int(max_len, 'max_len', minimum=1)
  if max_len > config.max_position_embeddings:
    raise ValueError(f'max_len={max_len} exceeds config.max_position_embeddings='
                     f'{config.max_position_embeddings}.')
  inputs = BertTokens(max_len=max_len, vocab_size=config.vocab_size,
                      type_vocab_size=config.type_vocab_size)
  build = functools.partial(Bert, config, num_classes=num_classes, mlm=mlm)
  return PureModel('bert', lambda rngs: build(rngs=rngs), inputs,
                   num_classes=config.vocab_size if mlm else num_classes)


def mlm_loss(logits: Array, labels: Array) -> Array:
  """Mean cross-entropy over the labelled positions, as HF `BertForMaskedLM`'s loss.

  Args:
    logits: [B, T, V] masked-LM logits.
    labels: int [B, T], the original token id where a position was masked and
      `IGNORE_INDEX` (-100) elsewhere (as `mask_tokens` returns).

  Returns:
    Scalar loss; 0 when no position is labelled (HF returns NaN there).

  Raises:
    ValueError: shapes or dtypes that do not fit.
  """
  if getattr(logits, 'ndim', None) != 3 or getattr(labels, 'shape', None) != logits.shape[:2]:
    raise ValueError(f'logits must be [B, T, V] and labels [B, T]; got shapes '
                     f'{getattr(logits, "shape", None)} and {getattr(labels, "shape", None)}.')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must have an integer dtype; got {labels.dtype}.')
  keep = labels != IGNORE_INDEX
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(keep, labels, 0))
  count = jnp.maximum(keep.sum(), 1).astype(losses.dtype)
  return jnp.where(keep, losses, 0.0).sum() / count


def _check_mask_options(vocab_size: int, mask_id: int, special_ids: Sequence[int],
                        mask_prob: float, mask_replace_prob: float,
                        random_replace_prob: float) -> None:
  validate.check_int(vocab_size, 'vocab_size', minimum=1)
  validate.check_int(mask_id, 'mask_id', minimum=0)
  if mask_id >= vocab_size:
    raise ValueError(f'mask_id={mask_id} must be below vocab_size={vocab_size}.')
  if special_ids:
    validate.check_ints(list(special_ids), 'special_ids', minimum=0)
  for value, name in ((mask_prob, 'mask_prob'), (mask_replace_prob, 'mask_replace_prob'),
                      (random_replace_prob, 'random_replace_prob')):
    validate.check_number(value, name, low=0.0, high=1.0)
  if mask_replace_prob + random_replace_prob > 1:
    raise ValueError(f'mask_replace_prob + random_replace_prob must be at most 1; got '
                     f'{mask_replace_prob} + {random_replace_prob}.')


def mask_tokens(input_ids: Array, *, key: Array, mask_id: int, vocab_size: int,
                special_ids: Sequence[int] = (), mask_prob: float = 0.15,
                mask_replace_prob: float = 0.8,
                random_replace_prob: float = 0.1) -> tuple[Array, Array]:
  """Masked-LM corruption of HF `DataCollatorForLanguageModeling`, with an explicit key.

  Each position that is not a special token is selected with probability `mask_prob`; a
  selected position becomes [MASK] with probability `mask_replace_prob`, a token drawn
  uniformly from [0, vocab_size) with probability `random_replace_prob`, and stays as it
  is otherwise (BERT's 15% / 80-10-10).

  Args:
    input_ids: int [B, T] token ids (with [CLS], [SEP] and padding).
    key: typed PRNG key (keyword-only); the same key gives the same corruption.
    mask_id: the [MASK] token's id.
    vocab_size: random replacements lie in [0, vocab_size).
    special_ids: ids never selected ([CLS], [SEP], [PAD], ...; HF skips all special tokens).
    mask_prob: selection probability.
    mask_replace_prob: probability that a selected position becomes [MASK].
    random_replace_prob: probability that it becomes a random token.

  Returns:
    `(corrupted_ids [B, T], labels [B, T])`: labels hold the original id at selected
    positions and `IGNORE_INDEX` elsewhere (`mlm_loss`'s labels). Jit-compatible.

  Raises:
    ValueError: a bad key, ids that are not an integer [B, T] array, or options out of
      range.
  """
  validate.check_key(key)
  if getattr(input_ids, 'ndim', None) != 2 or not np.issubdtype(input_ids.dtype, np.integer):
    raise ValueError(f'input_ids must be an integer array [B, T]; got '
                     f'{getattr(input_ids, "shape", type(input_ids).__name__)}.')
  _check_mask_options(vocab_size, mask_id, special_ids, mask_prob, mask_replace_prob,
                      random_replace_prob)
  ids = jnp.asarray(input_ids)
  select_key, replace_key, random_key, word_key = jax.random.split(key, 4)
  special = jnp.isin(ids, jnp.asarray(list(special_ids), ids.dtype))
  selected = jax.random.bernoulli(select_key, mask_prob, ids.shape) & ~special
  replaced = jax.random.bernoulli(replace_key, mask_replace_prob, ids.shape) & selected
  rest = 1.0 - mask_replace_prob
  randomised = (jax.random.bernoulli(random_key, random_replace_prob / rest if rest else 0.0,
                                     ids.shape) & selected & ~replaced)
  words = jax.random.randint(word_key, ids.shape, 0, vocab_size, ids.dtype)
  corrupted = jnp.where(replaced, jnp.asarray(mask_id, ids.dtype),
                        jnp.where(randomised, words, ids))
  return corrupted, jnp.where(selected, ids, jnp.asarray(IGNORE_INDEX, ids.dtype))
