"""BERT's WordPiece tokenizer (Devlin et al. 2019; Wu et al. 2016) on the `tokenizers` library.

The pipeline is that of Hugging Face's `BertTokenizer` (the fast one in transformers 5)
and `tokenizers.BertWordPieceTokenizer`:

  BertNormalizer      clean text (drop control characters, whitespace -> ' '), spaces around
                      CJK characters, lowercase, strip accents (by default as lowercase)
  BertPreTokenizer    split on whitespace and punctuation
  WordPiece           greedy longest-match-first pieces, continuations prefixed '##', a word
                      without a split into known pieces (or over 100 characters) -> [UNK]
  TemplateProcessing  [CLS] A [SEP] (token type 0), pairs [CLS] A [SEP] B [SEP] (B: type 1)

and batches are truncated (longest first, with a warning) and right-padded with [PAD] to
`max_len`:

    >>> tokenize = from_vocab('bert_uncased_L-2_H-128_A-2/vocab.txt', max_len=128)
    >>> batch = tokenize(['a first text', 'another'])
    >>> batch['input_ids'].shape, batch['attention_mask'].dtype     # (2, 128), int32

The offline default trains a vocabulary on a user's corpus (`train_vocab`) and writes it as
vocab.txt, which `from_vocab` (and transformers' `BertTokenizer.from_pretrained` on its
folder) reads back. Ids of the special tokens come from the vocabulary (bert-base-uncased:
[PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103; `train_vocab`: 0 to 4).
"""

from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lib import validate

PAD, UNK, CLS, SEP, MASK = '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
_REQUIRED = (PAD, UNK, CLS, SEP)


def _pipeline(model: models.WordPiece, *, lowercase: bool,
              strip_accents: bool | None) -> tokenizers.Tokenizer:
  """A `tokenizers.Tokenizer` with BERT's normalizer, pre-tokenizer and decoder."""
  tokenizer = tokenizers.Tokenizer(model)
  tokenizer.normalizer = normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents,
      lowercase=lowercase)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tokenizer.decoder = decoders.WordPiece(prefix='##')
  return tokenizer


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
  if isinstance(texts, str) or not isinstance(texts, Sequence):
    raise ValueError(f'{name} must be a list of strings; got {type(texts).__name__} (wrap a '
                     'single text in a list).')
  if not texts:
    raise ValueError(f'{name} is empty; pass at least one text (an empty string gives '
                     '[CLS] [SEP]).')
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f'{name}[{i}] must be a string; got {type(text).__name__}.')
  return list(texts)


class WordPieceTokenizer:
  """Texts -> `{'input_ids', 'attention_mask', 'token_type_ids'}` int32 [B, max_len].

  Build it with `from_vocab`. The batches are what `lib.models.bert.BertTokens` takes
  (`lib.models.inputs.Tokens` takes the first two keys).

  Args:
    tokenizer: a `tokenizers.Tokenizer` with BERT's pipeline (`_pipeline`); copied.
    max_len: length of every sequence, special tokens included (>= 2).

  Attributes:
    max_len: as given.
    vocab_size: number of ids (the model's vocab_size must equal it).
    pad_id, unk_id, cls_id, sep_id: ids of the special tokens.
    mask_id: id of [MASK], or None when the vocabulary has none.
    special_ids: ids of all special tokens present (what masked-LM corruption skips).
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, max_len: int):
    validate.check_int(max_len, 'max_len', minimum=2)
    vocab = tokenizer.get_vocab()
    missing = [t for t in _REQUIRED if t not in vocab]
    if missing:
      raise ValueError(f'the vocabulary lacks the special tokens {missing}.')
    self.max_len, self.vocab_size = max_len, tokenizer.get_vocab_size()
    self.pad_id, self.unk_id, self.cls_id, self.sep_id = (vocab[t] for t in _REQUIRED)
    self.mask_id = vocab.get(MASK)
    self.special_ids = tuple(vocab[t] for t in SPECIAL_TOKENS if t in vocab)
    self._plain = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    # As in transformers: special tokens are matched in the raw text and skipped by decode.
    self._tokenizer.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
    self._tokenizer.post_processor = processors.TemplateProcessing(
        single=f'{CLS}:0 $A:0 {SEP}:0', pair=f'{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1',
        special_tokens=[(CLS, self.cls_id), (SEP, self.sep_id)])
    self._tokenizer.enable_truncation(max_len, strategy='longest_first')
    self._tokenizer.enable_padding(pad_id=self.pad_id, pad_token=PAD, length=max_len)

  def __repr__(self) -> str:
    return f'WordPieceTokenizer(vocab_size={self.vocab_size}, max_len={self.max_len})'

  def __call__(self, texts: Sequence[str],
               pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Tokenizes a batch (of texts, or of (text, pair) pairs).

    Args:
      texts: B strings (an empty string gives [CLS] [SEP]).
      pairs: optional B second segments (token type 1), as for sentence-pair tasks.

    Returns:
      {'input_ids', 'attention_mask' (1 = token, 0 = padding), 'token_type_ids'}: int32
      [B, max_len], right-padded with [PAD].

    Warns:
      UserWarning: some texts (pairs) are longer than max_len tokens; they are truncated
        (longest segment first), and the warning counts them and names the first.

    Raises:
      ValueError: texts (or pairs) is not a non-empty list of strings, pairs has another
        length, or max_len < 3 with pairs.
    """
    texts = _check_texts(texts, 'texts')
    if pairs is None:
      encodings = self._tokenizer.encode_batch(texts)
    else:
      pairs = _check_texts(pairs, 'pairs')
      if len(pairs) != len(texts):
        raise ValueError(f'pairs must have one entry per text ({len(texts)}); got '
                         f'{len(pairs)}.')
      if self.max_len < 3:
        raise ValueError(f'max_len={self.max_len} leaves no room for pairs ([CLS] A [SEP] B '
                         '[SEP] needs at least 3).')
      encodings = self._tokenizer.encode_batch(list(zip(texts, pairs)))
    self._warn_truncated(encodings)
    field = lambda name: np.array([getattr(e, name) for e in encodings], np.int32)
    return {'input_ids': field('ids'), 'attention_mask': field('attention_mask'),
            'token_type_ids': field('type_ids')}

  def _warn_truncated(self, encodings: list[tokenizers.Encoding]) -> None:
    cut = [i for i, e in enumerate(encodings) if e.overflowing]
    if cut:
      warnings.warn(f'{len(cut)} of {len(encodings)} texts are longer than max_len='
                    f'{self.max_len} tokens (with [CLS]/[SEP]) and were truncated; the first '
                    f'is texts[{cut[0]}].', stacklevel=3)

  def tokenize(self, text: str) -> list[str]:
    """The WordPiece tokens of one text, without special tokens or truncation."""
    _check_texts([text], 'text')
    return self._plain.encode(text, add_special_tokens=False).tokens

  def decode(self, ids: Sequence[int]) -> str:
    """Text of a sequence of ids, special tokens and padding dropped, '##' pieces joined."""
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def from_vocab(path: str | os.PathLike, *, max_len: int = 128, lowercase: bool = True,
               strip_accents: bool | None = None) -> WordPieceTokenizer:
  """BERT's tokenizer for a vocab.txt (one token per line; a line's index is its id).

  Args:
    path: the vocab.txt file (e.g. of google/bert_uncased_L-2_H-128_A-2), or its folder.
    max_len: length of every tokenized sequence, special tokens included.
    lowercase: lowercase the text (uncased checkpoints; False for cased ones).
    strip_accents: strip accents; None follows `lowercase` (as BERT).

  Raises:
    ValueError: no such file, a vocabulary without [PAD], [UNK], [CLS] or [SEP], or bad
      options.
  """
  path = os.fspath(path)
  path = os.path.join(path, 'vocab.txt') if os.path.isdir(path) else path
  if not os.path.isfile(path):
    raise ValueError(f'path={path!r} is not a file; expected a vocab.txt.')
  validate.check_bool(lowercase, 'lowercase')
  if strip_accents is not None:
    validate.check_bool(strip_accents, 'strip_accents')
  model = models.WordPiece(models.WordPiece.read_file(path), unk_token=UNK)
  return WordPieceTokenizer(_pipeline(model, lowercase=lowercase, strip_accents=strip_accents),
                            max_len=max_len)


# Continuation characters are trained as symbols of their own, coded into the Supplementary
# Private Use Areas (U+F0000 on), instead of the trainer's '##' prefix: `tokenizers` numbers
# its '##' symbols in hash-map order and breaks count ties between merges by those numbers,
# so its WordPieceTrainer gave a different vocabulary in about one run in seven on the bios
# corpus (huggingface/tokenizers#1794); plain characters are numbered in sorted order.
_PRIVATE_USE = 0xF0000


def train_vocab(texts: Sequence[str], path: str | os.PathLike, *, vocab_size: int = 8000,
                min_frequency: int = 2, lowercase: bool = True,
                limit_alphabet: int = 1000) -> str:
  """Trains a WordPiece vocabulary on `texts` with `tokenizers` and writes it as vocab.txt.

  The vocabulary of `tokenizers`' WordPieceTrainer (BPE merges over words split into a first
  character and '##'-continued ones, Hugging Face's recipe), made deterministic: the same
  texts always give the same file. The continuation characters are coded as characters of
  their own for the trainer (its BpeTrainer numbers characters in sorted order, so count ties
  are broken alike in every run) and decoded to '##' pieces after. The special tokens get ids
  0 to 4 ([PAD], [UNK], [CLS], [SEP], [MASK]); the other tokens follow in sorted order.

  Args:
    texts: the corpus, a non-empty list of strings.
    path: the vocab.txt to write (its folder must exist), or an existing folder to write
      vocab.txt into.
    vocab_size: the most tokens to keep (fewer when the corpus is small).
    min_frequency: the fewest occurrences a merged piece needs.
    lowercase: normalise as an uncased BERT (must match `from_vocab`'s `lowercase`).
    limit_alphabet: the most distinct characters kept (the most frequent; every one is a
      token, and the others are left out of training: [UNK] when tokenised).

  Returns:
    The path of the written vocab.txt.

  Raises:
    ValueError: bad texts or options, a path whose folder does not exist, or texts holding
      characters of the Supplementary Private Use Areas (the coding above needs them free).
  """
  texts = _check_texts(texts, 'texts')
  validate.check_int(vocab_size, 'vocab_size', minimum=len(SPECIAL_TOKENS) + 1)
  validate.check_int(min_frequency, 'min_frequency', minimum=1)
  validate.check_int(limit_alphabet, 'limit_alphabet', minimum=1)
  validate.check_bool(lowercase, 'lowercase')
  path = os.fspath(path)
  path = os.path.join(path, 'vocab.txt') if os.path.isdir(path) else path
  if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
    raise ValueError(f'path={path!r} is in a folder that does not exist.')
  bert = _pipeline(models.WordPiece(unk_token=UNK), lowercase=lowercase, strip_accents=None)
  words = [word for text in texts for word, _ in
           bert.pre_tokenizer.pre_tokenize_str(bert.normalizer.normalize_str(text))]
  used = sorted({ch for word in words for ch in word})
  if used and ord(used[-1]) >= _PRIVATE_USE:
    raise ValueError(f'texts hold the character U+{ord(used[-1]):X} of the Supplementary '
                     'Private Use Areas, which train_vocab needs free; remove it first.')
  counts = collections.Counter(ch for word in words for ch in word)
  kept = sorted(counts, key=lambda ch: (-counts[ch], ch))[:limit_alphabet]
  keep = set(kept)
  words = [w for w in (''.join(ch for ch in word if ch in keep) for word in words) if w]
  continuing = sorted({ch for word in words for ch in word[1:]})
  code = {ch: chr(_PRIVATE_USE + i) for i, ch in enumerate(continuing)}
  decode = {v: k for k, v in code.items()}
  bpe = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
  bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=kept, show_progress=False)
  bpe.train_from_iterator([word[0] + ''.join(code[ch] for ch in word[1:]) for word in words],
                          trainer)

  def piece(token: str) -> str:
    if token[0] in decode:
      return '##' + ''.join(decode[ch] for ch in token)
    return token[0] + ''.join(decode[ch] for ch in token[1:])

  learned = sorted({piece(t) for t in bpe.get_vocab() if t not in SPECIAL_TOKENS})
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(f'{token}\n' for token in (*SPECIAL_TOKENS, *learned))
  return path
