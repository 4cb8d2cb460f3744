"""CLIP tokenizer: ids identical to transformers' (fast) `CLIPTokenizer` on the same files.

The vocabulary is trained here on the embedded `shapes` captions plus a few sentences
(`train_clip_tokenizer`), saved as vocab.json + merges.txt and read by both tokenizers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers

from lib.data import get_dataset
from lib.text import clip_tokenizer
from lib.text.clip_tokenizer import BOS, EOS, ClipTokenizer

CONTEXT = 32
SENTENCES = ['A photo of a cat sitting on the mat.', "It's the dog's bowl; they'll've eaten",
             'Two apples, 3 pears and 1234 grapes!', 'the quick brown fox jumps over it']
STRINGS = [
    'a red triangle and two blue bars on a striped background',
    'A PHOTO of a Cat.', "it's a dog's life; they'll've gone, I'd say we're fine",
    'numbers 1234 and 3.14159', 'multiple   spaces\tand\nnewlines', '  padded both sides  ',
    'café naïve résumé', 'cafe\u0301 (decomposed accent)', '🙂 emoji 🐱', '猫の写真', 'Ünïcödé ÅΣΩ',
    'fish &amp; chips &lt;b&gt;', 'mojibake cafÃ© â€™', 'a\u00a0non-breaking\u200bzero-width',
    'special <|endoftext|> inside and <|startoftext|>', '', '   ', '!!!???...;;', "''''",
    'a very long caption ' * 10,   # longer than the context: truncated, EOS kept
]


@pytest.fixture(scope='module')
def trained():
  captions = get_dataset('shapes', 'train', image_size=32, seed=0, num_examples=300)
  texts = np.concatenate([captions.arrays['caption'], SENTENCES])   # arrays are accepted
  return clip_tokenizer.train_clip_tokenizer(texts, vocab_size=700, context_length=CONTEXT)


@pytest.fixture(scope='module')
def folder(trained, tmp_path_factory):
  path = tmp_path_factory.mktemp('clip_vocab')
  trained.save(path)
  return path


def test_matches_transformers_clip_tokenizer(folder):
  ours = ClipTokenizer.from_folder(folder, context_length=CONTEXT)
  reference = transformers.CLIPTokenizer.from_pretrained(str(folder))
  want = reference(STRINGS, padding='max_length', truncation=True, max_length=CONTEXT,
                   return_tensors='np')
  with pytest.warns(UserWarning, match=r'^2 of 20 texts are longer than the context of 32 tokens'):
    got = ours(STRINGS)
  assert got['input_ids'].dtype == np.int32 and got['input_ids'].shape == (len(STRINGS), CONTEXT)
  for i, text in enumerate(STRINGS):
    np.testing.assert_array_equal(got['input_ids'][i], want['input_ids'][i], err_msg=repr(text))
    np.testing.assert_array_equal(got['attention_mask'][i], want['attention_mask'][i])


def test_decode_matches_transformers(folder):
  ours = ClipTokenizer.from_folder(folder, context_length=CONTEXT)
  reference = transformers.CLIPTokenizer.from_pretrained(str(folder))
  with pytest.warns(UserWarning, match='truncated'):
    batch = ours(STRINGS)
  for ids in batch['input_ids']:
    assert ours.decode(ids) == reference.decode(ids.tolist(), skip_special_tokens=True)
  assert ours.decode(ours('A  Red DOT!')['input_ids'][0]) == 'a red dot !'


def test_layout_padding_and_truncation(trained):
  ids, mask = (v[0] for v in trained(['a red dot']).values())
  n = int(mask.sum())
  assert ids[0] == trained.bos_token_id and ids[n - 1] == trained.eos_token_id
  assert (ids[n:] == trained.eos_token_id).all() and not mask[n:].any()
  # OpenAI's layout: the special tokens have the two largest ids (legacy argmax pooling).
  assert (trained.bos_token_id, trained.eos_token_id) == (trained.vocab_size - 2,
                                                          trained.vocab_size - 1)
  with pytest.warns(UserWarning, match='truncated'):
    long = trained('dot ' * 40)
  assert long['attention_mask'].all() and long['input_ids'][0, -1] == trained.eos_token_id


def test_cleaning_follows_transformers_not_open_clip(trained):
  same = lambda a, b: np.array_equal(trained(a)['input_ids'], trained(b)['input_ids'])
  # Whitespace runs collapse and case folds in both libraries.
  assert same('A  red\tdot', 'a red dot')
  # open_clip unescapes HTML and fixes mojibake (ftfy) first; this pipeline does not.
  assert not same('fish &amp; chips', 'fish & chips')
  assert not same('cafÃ©', 'café')


def test_save_and_load_round_trip(trained, folder):
  loaded = ClipTokenizer.from_folder(folder, context_length=CONTEXT)
  assert loaded.vocab == trained.vocab and loaded.merges == trained.merges
  assert (folder / 'merges.txt').read_text().startswith('#version: 0.2\n')
  texts = STRINGS[:2] + STRINGS[5:8]
  np.testing.assert_array_equal(loaded(np.array(texts))['input_ids'], trained(texts)['input_ids'])


def test_training_is_deterministic(trained):
  captions = get_dataset('shapes', 'train', image_size=32, seed=0, num_examples=300)
  again = clip_tokenizer.train_clip_tokenizer(list(captions.arrays['caption']) + SENTENCES,
                                              vocab_size=700, context_length=CONTEXT)
  assert again.vocab == trained.vocab and again.merges == trained.merges


def test_bad_arguments_raise(trained, folder, tmp_path):
  with pytest.raises(ValueError, match='texts must be a string, a sequence of strings'):
    trained([1, 2])
  with pytest.raises(ValueError, match='ids must be a 1-D integer sequence'):
    trained.decode(np.zeros((2, 3), np.int32))
  with pytest.raises(ValueError, match='not one string'):
    clip_tokenizer.train_clip_tokenizer('a caption')
  with pytest.raises(ValueError, match='context_length must be an integer >= 2'):
    ClipTokenizer(trained.vocab, trained.merges, context_length=1)
  with pytest.raises(ValueError, match='lacks the special token'):
    ClipTokenizer({k: v for k, v in trained.vocab.items() if k != EOS}, [])
  with pytest.raises(ValueError, match=r'merges\[0\]'):
    ClipTokenizer({'a': 0, BOS: 1, EOS: 2}, [('a', 'b')])
  with pytest.raises(ValueError, match='vocab_file=.* is not a file'):
    ClipTokenizer.from_folder(tmp_path)
  (tmp_path / 'vocab.json').write_text('{not json')
  (tmp_path / 'merges.txt').write_text('')
  with pytest.raises(ValueError, match='is not valid JSON'):
    ClipTokenizer.from_folder(tmp_path)
  (tmp_path / 'vocab.json').write_text(json.dumps({'a': 0, BOS: 1, EOS: 3}))
  with pytest.raises(ValueError, match=r'vocab ids must be 0..2'):
    ClipTokenizer.from_folder(tmp_path)
  with pytest.raises(ValueError, match='vocab_size must be an integer >= 514'):
    clip_tokenizer.train_clip_tokenizer(['a'], vocab_size=100)
