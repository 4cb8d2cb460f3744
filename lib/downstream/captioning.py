"""Image captioning on a foundation encoder: a prefix-conditioned decoder, BLEU-4 and CIDEr.

`Captioner` is a small causal transformer (pre-LN blocks of `lib.models.transformer`)
conditioned by prefix: the patch tokens [B, h*w, E], projected to its width, come first,
the caption tokens after them, and causal attention lets every caption position see the
whole image and the words before it (the prefix-LM form of ClipCap, Mokady et al. 2021,
with the patch tokens instead of a mapped global embedding). It trains with teacher
forcing (cross-entropy of each next token, padding masked) and decodes greedily as one
`lax.scan` over a fixed maximum length.

Token ids come from any tokenizer: a batch field 'caption_ids' int [B, L] holds
`bos w1 ... wn eos pad ...`; the decoder reads positions 0..L-2 and predicts 1..L-1.

Metrics (`caption_metrics`): BLEU-4 (Papineni et al. 2002) and CIDEr (Vedantam, Zitnick &
Parikh 2015, "CIDEr: Consensus-based Image Description Evaluation"; the CIDEr-D variant of
the COCO server, with its IDF over the evaluated split's references) from pycocoevalcap's
`Bleu(4)` and `Cider()` scorers. The COCO caption pipeline first runs PTBTokenizer, which
needs Java; here captions are tokenised in Python instead (lowercased, the punctuation PTB
would drop removed, split on white space), which matches it on plain English captions and
runs where Java is absent. CIDEr's IDF comes from the references, so an n-gram that every
reference contains weighs nothing: score a split of varied captions, not one caption.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from lib import validate
from lib.contract import Context, Outputs
from lib.downstream import _layers
from lib.downstream.features import Encode, Features
from lib.downstream.fitting import encode_features, predictions
from lib.models.core import PureModel
from lib.models.inputs import InputSpec
from lib.models.layers import Dense
from lib.models.transformer import EncoderBlock, layer_norm

Array = jax.Array
_PUNCTUATION = re.compile(r"[.,?!:;'\"`()\[\]{}-]")


def normalize_caption(text: str) -> str:
  """Lowercased, punctuation removed, words joined by single spaces (PTB-like, no Java)."""
  return ' '.join(_PUNCTUATION.sub(' ', str(text).lower()).split())


def caption_metrics(references: Sequence[Sequence[str]],
                    candidates: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU-4 and CIDEr(-D) of candidates against references (pycocoevalcap scorers).

  Args:
    references: N lists of reference captions (at least one each).
    candidates: N generated captions.

  Returns:
    {'BLEU-4': in [0, 1], 'CIDEr': >= 0 (10 for candidates equal to their references, when
    the references' n-grams vary across the split)}.
  """
  if len(references) != len(candidates) or not candidates:
    raise ValueError(f'references and candidates must have the same length N >= 1; got '
                     f'{len(references)} and {len(candidates)}.')
  gts, res = {}, {}
  for i, (refs, candidate) in enumerate(zip(references, candidates)):
    if isinstance(refs, str) or not len(refs):
      raise ValueError(f'references[{i}] must be a non-empty list of captions; got {refs!r}.')
    gts[i] = [normalize_caption(r) for r in refs]
    res[i] = [normalize_caption(candidate)]
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  cider, _ = Cider().compute_score(gts, res)
  return {'BLEU-4': float(bleu[3]), 'CIDEr': float(cider)}


@dataclasses.dataclass(frozen=True)
class _PrefixedTokens(InputSpec):
  """{'prefix': float [B, P, E], 'tokens': int [B, T]} with T <= max_len."""
  prefix_len: int
  prefix_dim: int
  max_len: int

  @property
  def example(self) -> dict[str, jax.ShapeDtypeStruct]:
    return {'prefix': jax.ShapeDtypeStruct((1, self.prefix_len, self.prefix_dim), jnp.float32),
            'tokens': jax.ShapeDtypeStruct((1, self.max_len), jnp.int32)}

  def check(self, inputs: Any, name: str = 'x') -> None:
    prefix, tokens = inputs['prefix'], inputs['tokens']
    if tuple(prefix.shape[1:]) != (self.prefix_len, self.prefix_dim):
      raise ValueError(f"{name}['prefix'] must be [B, {self.prefix_len}, {self.prefix_dim}]; got "
                       f'{tuple(prefix.shape)}.')
    if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.max_len:
      raise ValueError(f"{name}['tokens'] must be [B, T] with T <= {self.max_len}; got "
                       f'{tuple(tokens.shape)}.')


class _Decoder(nnx.Module):
  """Prefix projection, token + position embeddings, causal blocks, LayerNorm, LM head."""

  def __init__(self, *, prefix_len: int, prefix_dim: int, vocab_size: int, max_len: int,
               dim: int, depth: int, heads: int, mlp_dim: int, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    self.prefix_proj = Dense(prefix_dim, dim, name='prefix_proj', rngs=rngs)
    self.token_embed = nnx.Param(init(rngs.params(), (vocab_size, dim)))
    self.pos_embed = nnx.Param(init(rngs.params(), (prefix_len + max_len, dim)))
    self.blocks = nnx.List([EncoderBlock(dim, heads, mlp_dim, activation='gelu', epsilon=1e-5,
                                         name=f'block{i}', causal=True, rngs=rngs)
                            for i in range(depth)])
    self.norm = layer_norm(dim, 1e-5, rngs)
    self.lm_head = Dense(dim, vocab_size, name='lm_head', rngs=rngs)

  def __call__(self, inputs: dict[str, Array], ctx: Context) -> Outputs:
    """{'prefix' [B, P, E], 'tokens' [B, T]} -> Outputs(logits [B, T, V])."""
    prefix = self.prefix_proj(inputs['prefix'], ctx)
    tokens = jnp.take(self.token_embed[...], inputs['tokens'], axis=0)
    x = jnp.concatenate([prefix, tokens], 1)
    x = x + self.pos_embed[:x.shape[1]]
    for block in self.blocks:
      x = ctx.tap(block.name, block(x, ctx))
    return Outputs(logits=self.lm_head(self.norm(x[:, prefix.shape[1]:]), ctx))


@dataclasses.dataclass(frozen=True)
class Captioner:
  """Prefix-conditioned caption decoder (see the module docstring).

  Attributes:
    vocab_size: V, token ids in [0, V).
    max_len: L, the length of 'caption_ids' (bos + words + eos + padding); decoding
      produces L - 1 tokens.
    bos_id, eos_id, pad_id: the tokenizer's special ids.
    dim, depth, heads, mlp_dim: decoder width, blocks, attention heads, MLP width.
  """
  vocab_size: int
  max_len: int
  bos_id: int = 1
  eos_id: int = 2
  pad_id: int = 0
  dim: int = 64
  depth: int = 2
  heads: int = 4
  mlp_dim: int = 128
  fields: ClassVar[tuple[str, ...]] = ('caption_ids',)

  def __post_init__(self):
    validate.check_int(self.vocab_size, 'vocab_size', minimum=3)
    validate.check_int(self.max_len, 'max_len', minimum=2)
    for name in ('bos_id', 'eos_id', 'pad_id'):
      value = getattr(self, name)
      validate.check_int(value, name, minimum=0)
      if value >= self.vocab_size:
        raise ValueError(f'{name}={value} must be below vocab_size={self.vocab_size}.')

  def model(self, features: Features) -> PureModel:
    """The decoder as a `PureModel` for these features' patch grid and width."""
    _, h, w, e = features.patch_tokens.shape
    return _decoder(self, h * w, e)

  def init(self, key: Array, features: Features) -> dict:
    return self.model(features).init(key)

  def logits(self, params: dict, features: Features, tokens: Array) -> Array:
    """Next-token logits [B, T, V] for tokens [B, T] (T <= L - 1) after the image prefix."""
    b, h, w, e = features.patch_tokens.shape
    prefix = features.patch_tokens.reshape(b, h * w, e)
    return self.model(features).apply(params, {'prefix': prefix, 'tokens': tokens}).logits

  def loss(self, params: dict, features: Features,
           batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
    ids = batch['caption_ids']
    logits = self.logits(params, features, ids[:, :-1])
    target = ids[:, 1:]
    mask = (target != self.pad_id).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, target)
    count = jnp.maximum(mask.sum(), 1.0)
    return (nll * mask).sum() / count, {
        'token_accuracy': jnp.where(jnp.argmax(logits, -1) == target, mask, 0.0).sum() / count}

  def generate(self, params: dict, features: Features) -> Array:
    """Greedy decoding: int32 [B, L - 1] tokens after bos (eos, then padding), one lax.scan."""
    b = features.patch_tokens.shape[0]
    n = self.max_len - 1
    tokens = jnp.full((b, self.max_len), self.pad_id, jnp.int32).at[:, 0].set(self.bos_id)

    def step(carry, t):
      tokens, done = carry
      logits = self.logits(params, features, tokens[:, :n])
      nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, 1, keepdims=False), -1)
      nxt = jnp.where(done, self.pad_id, nxt).astype(jnp.int32)
      tokens = jax.lax.dynamic_update_index_in_dim(tokens, nxt, t + 1, 1)
      return (tokens, done | (nxt == self.eos_id)), None

    (tokens, _), _ = jax.lax.scan(step, (tokens, jnp.zeros((b,), bool)), jnp.arange(n))
    return tokens[:, 1:]

  def check_batch(self, batch: Mapping[str, np.ndarray], name: str) -> None:
    _layers.check_int_field(batch, 'caption_ids', name, shape=(len(batch['image']), self.max_len),
                            low=0, high=self.vocab_size)


@functools.lru_cache(maxsize=16)
def _decoder(captioner: Captioner, prefix_len: int, prefix_dim: int) -> PureModel:
  build = functools.partial(
      _Decoder, prefix_len=prefix_len, prefix_dim=prefix_dim, vocab_size=captioner.vocab_size,
      max_len=captioner.max_len - 1, dim=captioner.dim, depth=captioner.depth,
      heads=captioner.heads, mlp_dim=captioner.mlp_dim)
  return PureModel('caption_decoder', lambda rngs: build(rngs=rngs),
                   _PrefixedTokens(prefix_len, prefix_dim, captioner.max_len - 1),
                   num_classes=captioner.vocab_size)


def strip_special(tokens: Any, captioner: Captioner) -> list[int]:
  """The ids of one generated sequence up to (without) eos, bos and padding dropped."""
  out = []
  for t in np.asarray(tokens).tolist():
    if t == captioner.eos_id:
      break
    if t not in (captioner.bos_id, captioner.pad_id):
      out.append(t)
  return out


@functools.partial(jax.jit, static_argnums=(0, 1))
def _generate(captioner: Captioner, encode: Encode, params: dict, batch: dict) -> Array:
  features = encode_features(encode, params['encoder'], batch['image'])
  return captioner.generate(params['head'], features)


def evaluate_captions(captioner: Captioner, encode: Encode, params: dict, dataset: Any, *,
                      decode: Callable[[list[int]], str],
                      batch_size: int = 64) -> tuple[dict[str, float], list[str]]:
  """BLEU-4 and CIDEr of greedy captions over a split against its 'caption' field.

  Args:
    captioner: the trained head.
    encode: the encoder function.
    params: `HeadState.params` ({'encoder', 'head'}).
    dataset: a split with 'image' and 'caption' (str [N], one reference per image).
    decode: the tokenizer's ids -> text (bos/eos/padding already removed).
    batch_size: evaluation batch size.

  Returns:
    (`caption_metrics`, the generated captions in split order).
  """
  references, candidates = [], []
  for tokens, batch in predictions(functools.partial(_generate, captioner, encode, params),
                                   dataset, fields=('image',), needs=('caption',),
                                   batch_size=batch_size):
    candidates += [decode(strip_special(t, captioner)) for t in tokens]
    references += [[str(c)] for c in batch['caption']]
  return caption_metrics(references, candidates), candidates
