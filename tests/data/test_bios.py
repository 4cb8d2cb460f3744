"""Tests of the text data sets 'bios' (generated) and 'bias_in_bios' (local files)."""

import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lib import data
from lib.data import _bios, _bios_files, _bios_text
from lib.data._bios_dataset import PROFESSIONS

PRONOUN = re.compile(r'\b(he|she|his|her|him|hers|himself|herself)\b', re.IGNORECASE)
GENDERED_WORDS = {1: re.compile(r'\b(mother|mom|husband|grandmother)\b'),
                  0: re.compile(r'\b(father|dad|wife|grandfather)\b')}


def _generated(split='train', num_examples=3000, **kwargs):
  return data.get_dataset('bios', split, seed=0, num_examples=num_examples, **kwargs)


def _all(ds):
  return ds.get(np.arange(len(ds)))


def _bag_of_words_accuracy(train, test, field):
  """Test accuracy of a bag-of-words logistic regression predicting `field`."""
  from sklearn import feature_extraction, linear_model  # pylint: disable=g-import-not-at-top

  vectorizer = feature_extraction.text.CountVectorizer(binary=True)
  features = vectorizer.fit_transform(train['text'])
  # saga: lbfgs takes seconds on 28 classes when the cores are busy.
  model = linear_model.LogisticRegression(solver='saga', tol=1e-3, max_iter=200)
  model.fit(features, train[field])
  return model.score(vectorizer.transform(test['text']), test[field])


@pytest.fixture(scope='module')
def batch():
  return _all(_generated())


def test_fields_dtypes_and_class_names(batch):
  ds = _generated()
  assert (ds.name, ds.split, len(ds), ds.image_shape) == ('bios', 'train', 3000, None)
  assert ds.class_names == PROFESSIONS and ds.num_classes == 28
  assert {k: (v.shape, v.dtype.type) for k, v in batch.items()} == {
      'text': ((3000,), np.str_), 'profession': ((3000,), np.int32),
      'gender': ((3000,), np.int32), 'label': ((3000,), np.int32)}
  np.testing.assert_array_equal(batch['label'], batch['profession'])
  gender_task = _generated(task='gender')
  assert gender_task.class_names == ('male', 'female') and gender_task.num_classes == 2
  np.testing.assert_array_equal(_all(gender_task)['label'], batch['gender'])
  assert ds.profession_names == PROFESSIONS and ds.gender_names == ('male', 'female')


def test_every_profession_and_both_genders_occur(batch):
  assert set(batch['profession']) == set(range(28))
  assert 0.4 < batch['gender'].mean() < 0.6


def test_same_seed_same_data_other_seed_or_split_differs(batch):
  prefix = _all(_generated(num_examples=100))  # Generated separately: must be the prefix.
  for key, values in prefix.items():
    np.testing.assert_array_equal(values, batch[key][:100])
  others = [_all(data.get_dataset('bios', 'train', seed=1, num_examples=1000))] + [
      _all(_generated(split, num_examples=1000)) for split in ('validation', 'test')]
  texts = [set(batch['text'])] + [set(other['text']) for other in others]
  for i in range(len(texts)):
    for j in range(i):
      assert len(texts[i] & texts[j]) < 10  # Separate streams; a rare short bio may repeat.
  assert not np.array_equal(others[0]['profession'], batch['profession'][:1000])


def test_pronouns_never_appear_and_length_is_moderate(batch):
  for leak in (0.0, 0.5, 1.0):
    texts = batch['text'] if leak == 1.0 else _all(_generated(gender_leak=leak))['text']
    assert not any(PRONOUN.search(text) for text in texts)
  sentences = np.array([text.count('.') for text in batch['text']])
  words = np.array([len(text.split()) for text in batch['text']])
  assert sentences.min() == 2 and sentences.max() == 4 and words.max() <= 80
  assert all(text.split()[0] in _bios_text.ALL_NAMES + ('Based',) for text in batch['text'])


def test_gendered_words_only_with_leak_and_matching_gender(batch):
  for gender, pattern in GENDERED_WORDS.items():
    marked = np.array([bool(pattern.search(text)) for text in batch['text']])
    assert marked.sum() > 50 and (batch['gender'][marked] == gender).all()
  unleaked = _all(_generated(gender_leak=0.0))
  assert not any(p.search(text) for p in GENDERED_WORDS.values() for text in unleaked['text'])
  # The knob changes only the wording: same labels, same number of sentences.
  for key in ('profession', 'gender'):
    np.testing.assert_array_equal(unleaked[key], batch[key])
  assert [t.count('.') for t in unleaked['text']] == [t.count('.') for t in batch['text']]


def test_gender_correlation_follows_the_female_shares():
  shares = np.array([_bios.FEMALE_SHARE[name] for name in PROFESSIONS])
  for strength in (0.0, 1.0):
    labels = _all(_generated(num_examples=20_000, gender_correlation=strength, gender_leak=0.0))
    female = np.bincount(labels['profession'], labels['gender'], 28) / np.bincount(
        labels['profession'], minlength=28)
    np.testing.assert_allclose(female, 0.5 + strength * (shares - 0.5), atol=0.09)


@pytest.mark.parametrize('leak', [0.0, 1.0])
def test_bag_of_words_learns_gender_only_when_it_leaks(leak):
  train = _all(_generated(gender_leak=leak, gender_correlation=0.0))
  test = _all(_generated('test', num_examples=2000, gender_leak=leak, gender_correlation=0.0))
  gender = _bag_of_words_accuracy(train, test, 'gender')
  profession = _bag_of_words_accuracy(train, test, 'profession')
  print(f'gender_leak={leak}: gender accuracy {gender:.3f}, profession {profession:.3f}')
  assert profession > 0.8  # Chance: 1/28.
  assert (gender <= 0.56) if leak == 0 else (gender > 0.8)


def test_text_batches_go_through_the_batching_helpers():
  ds = _generated('validation', num_examples=50)
  step = data.batch_at(ds, 3, batch_size=16, seed=0)
  assert step['text'].shape == (16,) and step['label'].dtype == np.int32
  batches = list(data.eval_batches(ds, 32))
  assert [b['text'].shape for b in batches] == [(32,), (32,)] and sum(
      b['valid'].sum() for b in batches) == 50
  assert {'bios', 'bias_in_bios'} <= set(data.NAMES)


@pytest.mark.parametrize('kwargs, message', [
    (dict(split='valid'), r"split='valid'.*\['train', 'validation', 'test'\]"),
    (dict(image_size=32), 'image_size must be None'),
    (dict(num_examples=0), 'num_examples'),
    (dict(seed=-1), 'seed'),
    (dict(task='age'), r"task='age'.*\['profession', 'gender'\]"),
    (dict(gender_leak=1.5), 'gender_leak'),
    (dict(gender_correlation=-0.1), 'gender_correlation'),
])
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    data.get_dataset('bios', **kwargs)


# The real-data loader, on files written here.

def test_replace_pronouns_keeps_case_and_whole_words():
  text = ('She said her work is hers; HE did it himself. His dog and him. Herself? '
          "Shepherds, heroes and Hershey there; the hen's shell.")
  assert _bios_files.replace_pronouns(text) == (
      'They said their work is theirs; THEY did it themself. Their dog and them. Themself? '
      "Shepherds, heroes and Hershey there; the hen's shell.")


def _write_parquet(path, n, start=0, **columns):
  table = {'hard_text': [f'Row {i}: she wrote his book for her.' for i in range(start, start + n)],
           'profession': [i % 28 for i in range(start, start + n)],
           'gender': [i % 2 for i in range(start, start + n)]}
  table.update(columns)
  pq.write_table(pa.table(table), path)


def _records(n, start=0):
  titles = ('Software Engineer', 'nurse', 'yoga-teacher', 'DJ')
  return [{'title': titles[i % 4], 'gender': 'FM'[i % 2], 'raw': f'Row {i}: He is a {i}.',
           'bio': f'_ is a {i}.', 'name': ['A', '', 'B']} for i in range(start, start + n)]


def _write_jsonl(path, records):
  path.write_text(''.join(json.dumps(record) + '\n' for record in records))


def _load(path, split='train', **kwargs):
  return _all(data.get_dataset('bias_in_bios', split, path=path, **kwargs))


def _row_ids(batch):
  return [int(re.match(r'Row (\d+):', text).group(1)) for text in batch['text']]


def test_parquet_split_85_5_10_disjoint_with_labels_and_pronouns_replaced(tmp_path):
  _write_parquet(tmp_path / 'train.parquet', 150)
  _write_parquet(tmp_path / 'test.parquet', 50, start=150, extra=list(range(50)))
  splits = {split: _load(tmp_path, split) for split in ('train', 'validation', 'test')}
  assert {split: len(b['text']) for split, b in splits.items()} == dict(
      train=170, validation=10, test=20)
  ids = {split: _row_ids(b) for split, b in splits.items()}
  assert sorted(sum(ids.values(), [])) == list(range(200))  # Disjoint and complete.
  for batch, rows in zip(splits.values(), ids.values()):
    np.testing.assert_array_equal(batch['profession'], np.array(rows) % 28)
    np.testing.assert_array_equal(batch['gender'], np.array(rows) % 2)
    assert all(text.endswith(': they wrote their book for their.') for text in batch['text'])
  assert _row_ids(_load(tmp_path, seed=0)) == ids['train']
  assert _row_ids(_load(tmp_path, seed=1)) != ids['train']
  gender_task = data.get_dataset('bias_in_bios', 'test', path=tmp_path, task='gender')
  assert gender_task.num_classes == 2 and gender_task.image_shape is None


def test_jsonl_records_map_titles_and_genders(tmp_path):
  _write_jsonl(tmp_path / 'bios.jsonl', _records(40))
  batch = _load(tmp_path / 'bios.jsonl', 'test')
  assert len(batch['text']) == 4
  expected = np.array([PROFESSIONS.index(name) for name in (
      'software_engineer', 'nurse', 'yoga_teacher', 'dj')])
  rows = np.array(_row_ids(batch))
  np.testing.assert_array_equal(batch['profession'], expected[rows % 4])
  np.testing.assert_array_equal(batch['gender'], 1 - rows % 2)  # 'F' is 1, 'M' is 0.
  assert all(text.startswith(f'Row {i}: They is') for i, text in zip(rows, batch['text']))
  bio = _load(tmp_path / 'bios.jsonl', 'test', text_field='bio')
  assert all(text.startswith('_ is a') for text in bio['text'])


def test_a_directory_pools_parquet_and_jsonl_files(tmp_path):
  _write_parquet(tmp_path / 'a.parquet', 60)
  (tmp_path / 'nested').mkdir()
  _write_jsonl(tmp_path / 'nested' / 'b.jsonl', _records(40, start=60))
  (tmp_path / 'README.md').write_text('not data')
  total = sum(len(_load(tmp_path, split)['text']) for split in ('train', 'validation', 'test'))
  assert total == 100


def test_bad_files_raise_naming_the_problem(tmp_path):
  _write_parquet(tmp_path / 'no_gender.parquet', 10)
  pq.write_table(pq.read_table(tmp_path / 'no_gender.parquet').drop(['gender']),
                 tmp_path / 'no_gender.parquet')
  _write_jsonl(tmp_path / 'unknown.jsonl', _records(3) + [dict(_records(1)[0], title='magician')])
  _write_jsonl(tmp_path / 'no_title.jsonl', [{'gender': 'F', 'raw': 'x'}])
  _write_jsonl(tmp_path / 'bad_gender.jsonl', [dict(_records(1)[0], gender='X')])
  _write_parquet(tmp_path / 'bad_id.parquet', 3, profession=[0, 5, 28])
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'blank.jsonl').write_text('\n')
  (tmp_path / 'bios.csv').write_text('a,b')
  cases = [
      (tmp_path / 'missing', 'does not exist'),
      (tmp_path / 'empty', r'holds no \.parquet or \.jsonl files'),
      (tmp_path / 'bios.csv', r"must end in one of \['.parquet', '.jsonl'\]"),
      (None, 'path is required'),
      (tmp_path / 'blank.jsonl', 'holds no rows'),
      (tmp_path / 'no_gender.parquet', r"lacks column\(s\) \['gender'\]"),
      (tmp_path / 'no_title.jsonl', r"no_title.jsonl:1 lacks field\(s\) \['title'\]"),
      (tmp_path / 'unknown.jsonl', r"unknown profession\(s\) \['magician'\].*drop_unknown"),
      (tmp_path / 'bad_gender.jsonl', r"gender must be 0/1 or 'M'/'F'; got \['X'\]"),
      (tmp_path / 'bad_id.parquet', r'profession ids must lie in \[0, 28\)'),
  ]
  for path, message in cases:
    with pytest.raises(ValueError, match=message):
      data.get_dataset('bias_in_bios', 'train', path=path)
  kept = sum(len(_load(tmp_path / 'unknown.jsonl', split, drop_unknown=True)['text'])
             for split in ('train', 'validation', 'test'))
  assert kept == 3
  with pytest.raises(ValueError, match='image_size must be None'):
    data.get_dataset('bias_in_bios', path=tmp_path / 'unknown.jsonl', image_size=32)
