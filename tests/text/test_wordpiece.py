"""WordPiece: ids equal to transformers' `BertTokenizer` (the fast one) on the same vocab.txt,
for a hand-written vocabulary and for one `train_vocab` writes; truncation, padding, pairs
and the refusals.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import transformers

from lib.text import wordpiece

MAX_LEN = 24
TEXTS = [
    'Hello, world!',
    'Café NAÏVE résumé',                                 # accents, uppercase
    "The fox's jump... (really?) -- 3.14!",             # punctuation
    'xyzzy unaffable zebra 🙂',                          # unknown words and pieces
    '中文 text\twith\ttabs\nand\x00 control',            # CJK, whitespace, a control char
    '',                                                  # [CLS] [SEP]
    'a [MASK] and [cls]',                                # a special token in the text
    'the quick brown fox jumps over the lazy dog ' * 3,  # truncated
]
PAIRS = ['A second segment.', 'short', 'x', '', 'Hello', 'world', '[SEP]', 'the end']
WORDS = ('hello world , ! . ( ) \' - ? 3 1 4 cafe naive resume the fox s jump really text '
         'with tabs and control 中 文 un ##aff ##able quick brown jumps over lazy dog a second '
         'segment short end x y').split()
LETTERS = [c for c in 'abcdefghijklmnopqrstuvwxy'] + [f'##{c}' for c in 'abcdefghijklmnopqrstuvwxy']
CORPUS = ['The quick brown fox jumps over the lazy dog.', 'A lazy dog sleeps; the fox runs!',
          'Résumés of naïve cafés.', 'Foxes and dogs, dogs and foxes.'] * 5


@pytest.fixture(scope='module', params=['written', 'trained'])
def vocab_folder(request, tmp_path_factory):
  """A folder with vocab.txt: hand-written (no '##z', so 'xyzzy' is [UNK]) or trained."""
  folder = tmp_path_factory.mktemp(request.param)
  if request.param == 'written':
    tokens = [*wordpiece.SPECIAL_TOKENS, *WORDS, *LETTERS]
    (folder / 'vocab.txt').write_text(''.join(f'{t}\n' for t in tokens), encoding='utf-8')
  else:
    wordpiece.train_vocab(CORPUS, folder, vocab_size=120, min_frequency=1)
  return folder


def hf_batch(folder, texts, pairs=None) -> dict[str, np.ndarray]:
  tokenizer = transformers.BertTokenizer.from_pretrained(str(folder))
  out = tokenizer(texts, pairs, padding='max_length', truncation=True, max_length=MAX_LEN,
                  return_tensors='np')
  return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize('pairs', [None, PAIRS])
def test_matches_transformers_bert_tokenizer(vocab_folder, pairs):
  tokenize = wordpiece.from_vocab(vocab_folder / 'vocab.txt', max_len=MAX_LEN)
  with pytest.warns(UserWarning, match=r'[12] of 8 texts are longer than max_len=24 tokens .* '
                                       r'the first is texts\[[27]\]'):
    got = tokenize(TEXTS, pairs)
  want = hf_batch(vocab_folder, TEXTS, pairs)
  assert set(got) == set(want)
  for name, ids in got.items():
    assert ids.dtype == np.int32 and ids.shape == (len(TEXTS), MAX_LEN)
    np.testing.assert_array_equal(ids, want[name], err_msg=name)


def test_cased_matches_transformers(vocab_folder):
  tokenize = wordpiece.from_vocab(vocab_folder, max_len=MAX_LEN, lowercase=False)
  texts = TEXTS[:2] + TEXTS[4:7]
  want = transformers.BertTokenizer.from_pretrained(str(vocab_folder), do_lower_case=False)(
      texts, padding='max_length', max_length=MAX_LEN, return_tensors='np')
  np.testing.assert_array_equal(tokenize(texts)['input_ids'], want['input_ids'])


def test_pieces_unknowns_specials_and_decode(vocab_folder):
  tokenize = wordpiece.from_vocab(vocab_folder, max_len=MAX_LEN)
  if vocab_folder.name.startswith('written'):
    assert tokenize.tokenize('Unaffable XYZZY, CAFÉ') == ['un', '##aff', '##able', '[UNK]', ',',
                                                           'cafe']
  assert (tokenize.pad_id, tokenize.unk_id, tokenize.cls_id, tokenize.sep_id,
          tokenize.mask_id) == (0, 1, 2, 3, 4)
  assert tokenize.special_ids == (0, 1, 2, 3, 4)
  batch = tokenize(['', 'Hello, world!'])
  np.testing.assert_array_equal(batch['input_ids'][0, :3], [2, 3, 0])
  np.testing.assert_array_equal(batch['attention_mask'].sum(1),
                                [2, len(tokenize.tokenize('Hello, world!')) + 2])
  assert tokenize.decode(batch['input_ids'][1]) == 'hello, world!'


def test_no_warning_when_everything_fits(vocab_folder):
  tokenize = wordpiece.from_vocab(vocab_folder, max_len=MAX_LEN)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    tokenize(TEXTS[:2] + TEXTS[4:6])


def test_training_is_deterministic_and_puts_specials_first(tmp_path):
  a = wordpiece.train_vocab(CORPUS, tmp_path / 'a.txt', vocab_size=120, min_frequency=1)
  lines = open(a, encoding='utf-8').read().splitlines()
  # tokenizers' own WordPieceTrainer gives two vocabularies on the corpus of
  # huggingface/tokenizers#1794 (count ties broken in hash-map order); this one gives one.
  tied = ['Wel come to the Tok en izers libr ary.']
  vocabularies = {open(wordpiece.train_vocab(tied, tmp_path / 't.txt', min_frequency=1),
                       encoding='utf-8').read() for _ in range(40)}
  assert len(vocabularies) == 1
  for _ in range(3):
    b = wordpiece.train_vocab(CORPUS, tmp_path / 'b.txt', vocab_size=120, min_frequency=1)
    assert lines == open(b, encoding='utf-8').read().splitlines()
  assert tuple(lines[:5]) == wordpiece.SPECIAL_TOKENS and len(lines) <= 120
  assert 'fox' in lines and any(t.startswith('##') for t in lines)
  assert wordpiece.from_vocab(a).vocab_size == len(lines)


@pytest.mark.parametrize('texts, pairs, message', [
    ([], None, 'texts is empty'),
    ('one text', None, 'texts must be a list of strings; got str'),
    (['a', 3], None, r'texts\[1\] must be a string; got int'),
    (['a', 'b'], ['c'], r'pairs must have one entry per text \(2\); got 1'),
])
def test_bad_texts_raise(vocab_folder, texts, pairs, message):
  tokenize = wordpiece.from_vocab(vocab_folder, max_len=MAX_LEN)
  with pytest.raises(ValueError, match=message):
    tokenize(texts, pairs)


def test_bad_vocabularies_and_options_raise(tmp_path):
  with pytest.raises(ValueError, match='is not a file; expected a vocab.txt'):
    wordpiece.from_vocab(tmp_path / 'nope.txt')
  (tmp_path / 'vocab.txt').write_text('[PAD]\n[UNK]\nhello\n')
  with pytest.raises(ValueError, match=r"lacks the special tokens \['\[CLS\]', '\[SEP\]'\]"):
    wordpiece.from_vocab(tmp_path)
  (tmp_path / 'vocab.txt').write_text('[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n')
  assert wordpiece.from_vocab(tmp_path).mask_id is None
  with pytest.raises(ValueError, match='max_len must be an integer >= 2'):
    wordpiece.from_vocab(tmp_path, max_len=1)
  with pytest.raises(ValueError, match='needs at least 3'):
    wordpiece.from_vocab(tmp_path, max_len=2)(['a'], ['b'])
  with pytest.raises(ValueError, match='folder that does not exist'):
    wordpiece.train_vocab(CORPUS, tmp_path / 'no' / 'vocab.txt')
  with pytest.raises(ValueError, match='vocab_size must be an integer >= 6'):
    wordpiece.train_vocab(CORPUS, tmp_path, vocab_size=5)
