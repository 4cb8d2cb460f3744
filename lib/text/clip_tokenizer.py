"""CLIP's byte-level BPE tokenizer, built on the `tokenizers` library (no hand-written BPE).

`ClipTokenizer` assembles the pipeline transformers 5's (fast) `CLIPTokenizer` builds from a
vocab.json and merges.txt (`transformers/models/clip/tokenization_clip.py`):

  normaliser      NFC, every run of whitespace -> one space, lowercase
  pre-tokeniser   split on <|startoftext|>, <|endoftext|>, 's 't 're 've 'm 'll 'd, runs of
                  letters, single digits, runs of other non-space characters (spaces dropped);
                  then byte-level (GPT-2's byte -> unicode alphabet), no prefix space
  model           BPE with end-of-word suffix '</w>', no continuing-subword prefix, unknown
                  pieces -> <|endoftext|> (not fused)
  post-processor  <|startoftext|> text <|endoftext|>
  special tokens  <|startoftext|>, <|endoftext|> matched verbatim in the input

Batches are padded to the context length (77 for OpenAI's models) with the end-of-text id,
as transformers' tokenizer pads (`pad_token = '<|endoftext|>'`), and come back as the
`{'input_ids', 'attention_mask'}` int32 arrays `lib.models.inputs.Tokens` takes. A text
longer than the context is truncated to its first `context_length - 2` tokens followed by
<|endoftext|> (what transformers' `truncation=True` and open_clip's `tokenize` both produce),
with a warning naming how many texts were cut.

**Which cleaning this follows.** transformers' pipeline above, not open_clip's: open_clip's
`SimpleTokenizer` first runs `ftfy.fix_text`, unescapes HTML twice and strips the text, so
on unusual strings (HTML entities such as '&amp;', mojibake such as 'cafÃ©', zero-width or
non-breaking spaces ftfy rewrites) its ids differ from ours, while on ordinary text and
with the same vocab.json/merges.txt the two agree. Clean such text before tokenising if
open_clip's ids are needed.

`train_clip_tokenizer` trains a vocabulary of the same layout on a list of captions (e.g.
the embedded `shapes` captions) with `tokenizers`' BPE trainer; `save` / `from_folder`
write and read it as vocab.json + merges.txt, the files a user brings for OpenAI's
vocabulary.

    >>> tok = ClipTokenizer.from_folder('clip-vit-base-patch16')   # vocab.json, merges.txt
    >>> batch = tok(['a photo of a cat', 'a dog'])                 # int32 [2, 77] each
    >>> tok.decode(batch['input_ids'][0])                          # 'a photo of a cat'
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import tokenizers
from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import BPE

from lib import validate

BOS, EOS = '<|startoftext|>', '<|endoftext|>'
CONTEXT_LENGTH = 77
END_OF_WORD = '</w>'
# transformers 5's CLIPTokenizer pre-tokenisation pattern (the pieces kept).
_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
            r"""|[^\s\p{L}\p{N}]+""")


def _normalizer() -> normalizers.Normalizer:
  return normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r'\s+'), ' '),
                               normalizers.Lowercase()])


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
  return pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(_PATTERN), behavior='removed', invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])


def _check_vocab(vocab: Mapping[str, int], merges: Sequence[tuple[str, str]]) -> None:
  missing = [t for t in (BOS, EOS) if t not in vocab]
  if missing:
    raise ValueError(f'vocab lacks the special token(s) {missing}; a CLIP vocabulary holds '
                     f'{BOS!r} and {EOS!r}.')
  ids = sorted(vocab.values())
  if ids != list(range(len(ids))):
    raise ValueError(f'vocab ids must be 0..{len(ids) - 1}, each once.')
  for i, merge in enumerate(merges):
    if len(merge) != 2 or any(part not in vocab for part in merge) or ''.join(merge) not in vocab:
      raise ValueError(f'merges[{i}]={tuple(merge)!r} is not a merge of two vocab tokens into a '
                       'vocab token.')


class ClipTokenizer:
  """CLIP's tokenizer over a given vocabulary (see the module docstring).

  Args:
    vocab: token -> id, ids 0..V-1, with <|startoftext|> and <|endoftext|>.
    merges: BPE merges (a, b) in priority order; a, b and a + b are in `vocab`.
    context_length: length every batch is padded (and truncated) to, >= 2.

  Attributes:
    vocab_size: V.
    bos_token_id, eos_token_id: ids of <|startoftext|> and <|endoftext|> (the padding id).
    context_length: as given.
    backend: the `tokenizers.Tokenizer`, truncating and padding to `context_length`.

  Raises:
    ValueError: special tokens missing from the vocab, ids that are not 0..V-1, a merge
      whose parts or result are not in the vocab, context_length < 2.
  """

  def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]], *,
               context_length: int = CONTEXT_LENGTH):
    validate.check_int(context_length, 'context_length', minimum=2)
    _check_vocab(vocab, merges)
    self.vocab, self.merges = dict(vocab), [tuple(m) for m in merges]
    self.context_length = context_length
    self.vocab_size = len(vocab)
    self.bos_token_id, self.eos_token_id = vocab[BOS], vocab[EOS]
    backend = tokenizers.Tokenizer(BPE(vocab=self.vocab, merges=self.merges, dropout=None,
                                       continuing_subword_prefix='',
                                       end_of_word_suffix=END_OF_WORD, fuse_unk=False,
                                       unk_token=EOS))
    backend.normalizer = _normalizer()
    backend.pre_tokenizer = _pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                                for t in (BOS, EOS)])
    backend.post_processor = processors.RobertaProcessing(
        (EOS, self.eos_token_id), (BOS, self.bos_token_id), trim_offsets=False,
        add_prefix_space=False)
    backend.enable_truncation(context_length)
    backend.enable_padding(length=context_length, pad_id=self.eos_token_id, pad_token=EOS)
    self.backend = backend

  def __repr__(self) -> str:
    return f'ClipTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})'

  @classmethod
  def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike, *,
                 context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
    """From a vocab.json (token -> id) and a merges.txt ('a b' per line, '#version' header
    optional), the files of OpenAI's vocabulary on the Hugging Face hub.

    Raises:
      ValueError: a file is missing or malformed, or the vocabulary is not a CLIP one.
    """
    for path, name in ((vocab_file, 'vocab_file'), (merges_file, 'merges_file')):
      if not os.path.isfile(path):
        raise ValueError(f'{name}={str(path)!r} is not a file.')
    try:
      with open(vocab_file, encoding='utf-8') as f:
        vocab = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'vocab_file={str(vocab_file)!r} is not valid JSON: {e}.') from e
    with open(merges_file, encoding='utf-8') as f:
      lines = [line.rstrip('\n') for line in f]
    if lines and lines[0].startswith('#version'):
      lines = lines[1:]
    merges = [tuple(line.split(' ')) for line in lines if line]
    return cls(vocab, merges, context_length=context_length)

  @classmethod
  def from_folder(cls, folder: str | os.PathLike, *,
                  context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
    """`from_files(folder/vocab.json, folder/merges.txt)` (e.g. a hub CLIP checkpoint)."""
    return cls.from_files(os.path.join(folder, 'vocab.json'),
                          os.path.join(folder, 'merges.txt'), context_length=context_length)

  def save(self, folder: str | os.PathLike) -> None:
    """Writes vocab.json and merges.txt (with a '#version: 0.2' header) into `folder`."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'vocab.json'), 'w', encoding='utf-8') as f:
      json.dump(self.vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, 'merges.txt'), 'w', encoding='utf-8') as f:
      f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in self.merges))

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Token ids [T] -> text, special tokens and padding dropped (transformers' `decode`
    with `skip_special_tokens=True`: byte-level decoding, '</w>' -> ' ', stripped)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f'ids must be a 1-D integer sequence; got shape {ids.shape}, dtype '
                       f'{ids.dtype}.')
    text = self.backend.decode(ids.tolist(), skip_special_tokens=True)
    return text.replace(END_OF_WORD, ' ').strip()

  def __call__(self, texts: str | Sequence[str]) -> dict[str, np.ndarray]:
    """Token ids and attention mask of a batch of texts.

    Args:
      texts: a string, a sequence of B strings or a 1-D numpy array of strings (e.g. a
        data set's 'caption' column).

    Returns:
      {'input_ids': int32 [B, context_length], 'attention_mask': int32 [B, context_length]}:
      <|startoftext|> tokens <|endoftext|>, then the end-of-text id with mask 0.

    Warns:
      UserWarning: texts longer than the context were truncated (their last token is still
        <|endoftext|>).
    """
    encodings = self.backend.encode_batch(_as_texts(texts))
    cut = sum(bool(e.overflowing) for e in encodings)
    if cut:
      warnings.warn(f'{cut} of {len(encodings)} texts are longer than the context of '
                    f'{self.context_length} tokens and were truncated (keeping '
                    '<|endoftext|> last).', stacklevel=2)
    shape = (len(encodings), self.context_length)
    ids = np.array([e.ids for e in encodings], np.int32).reshape(shape)
    mask = np.array([e.attention_mask for e in encodings], np.int32).reshape(shape)
    return {'input_ids': ids, 'attention_mask': mask}


def _as_texts(texts: str | Sequence[str] | np.ndarray) -> list[str]:
  """A list of Python strings; ValueError naming `texts` for anything else."""
  if isinstance(texts, str):
    return [texts]
  if isinstance(texts, np.ndarray) and texts.ndim == 1:
    texts = texts.tolist()
  if (isinstance(texts, (bytes, Mapping)) or not isinstance(texts, Sequence)
      or not all(isinstance(t, str) for t in texts)):
    raise ValueError('texts must be a string, a sequence of strings or a 1-D array of strings; '
                     f'got {type(texts).__name__}.')
  return [str(t) for t in texts]


def train_clip_tokenizer(texts: Sequence[str], *, vocab_size: int = 1024,
                         context_length: int = CONTEXT_LENGTH) -> ClipTokenizer:
  """Trains a CLIP-layout BPE vocabulary on `texts` with `tokenizers`' BPE trainer.

  The texts go through CLIP's normaliser and pre-tokeniser, merges are learnt with the
  '</w>' end-of-word suffix, and the vocabulary is laid out as OpenAI's: the 256 byte
  symbols, the same with '</w>', one token per merge in merge order, then <|startoftext|>
  and <|endoftext|> (the two largest ids, so CLIP's legacy argmax pooling finds the end of
  text too).

  Args:
    texts: training captions (a sequence or 1-D array of strings).
    vocab_size: the largest vocabulary wanted, >= 514 (512 byte symbols + 2 special
      tokens); a small corpus may yield fewer merges.
    context_length: of the returned tokenizer.

  Returns:
    A `ClipTokenizer` (deterministic for the same texts).
  """
  validate.check_int(vocab_size, 'vocab_size', minimum=514)
  if isinstance(texts, str):
    raise ValueError('texts must be a sequence of training texts, not one string.')
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())   # = OpenAI's byte order
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                initial_alphabet=alphabet, end_of_word_suffix=END_OF_WORD)
  model = tokenizers.Tokenizer(BPE(end_of_word_suffix=END_OF_WORD, continuing_subword_prefix=''))
  model.normalizer = _normalizer()
  model.pre_tokenizer = _pre_tokenizer()
  model.train_from_iterator(_as_texts(texts), trainer)
  merges = [tuple(m) for m in json.loads(model.to_str())['model']['merges']]
  merges = merges[:vocab_size - 2 * len(alphabet) - 2]
  tokens = alphabet + [c + END_OF_WORD for c in alphabet] + [a + b for a, b in merges]
  tokens = list(dict.fromkeys(tokens)) + [BOS, EOS]
  return ClipTokenizer({t: i for i, t in enumerate(tokens)}, merges,
                       context_length=context_length)
