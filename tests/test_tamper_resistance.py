"""The tamper-resistance study (experiments/tamper_resistance.py): config validation, the
bad-input policy (empty texts refused, over-long ones truncated with a warning, labels out
of range, a vocabulary that does not match the checkpoint), and a tiny end-to-end run with
its resume (slow: every meta-trained model compiles its own second-order program).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import safetensors.numpy

from experiments import tamper_resistance as tr
from lib.text import wordpiece

TEXTS = ['Mary Adams is a nurse in Boston.', 'John Scott works as an architect in Seattle.',
         'Alex Lee teaches yoga in London.'] * 4


def tiny_config():
  """The runlocal config shrunk to seconds of compute (the main job's test uses the same)."""
  c = tr.get_config('runlocal')
  c.num_train, c.num_val, c.num_test, c.max_len = 120, 16, 16, 16
  c.pretrain.update(vocab_size=120, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, num_steps=4, batch_size=8,
                    warmup_steps=1)
  c.mlac_k, c.k_sweep, c.num_adversaries = 1, '1', 2
  c.meta.update(num_steps=2, batch_size=8, inner_batch_sizes='2,4', calibration_iters=10)
  c.attack_ns, c.attack_lrs, c.attack_steps = '8,16', '1e-3,1e-2', '5,10'
  c.attack_eval_every, c.attack_batch_sizes, c.attack_reruns = 5, '4', 2
  c.checkpoint_every, c.log_every = 1, 1
  return c


def test_configs_validate_and_bad_fields_are_named():
  tr.validate_config(tr.get_config('runlocal'))
  with pytest.raises(ValueError, match='data_path'):
    tr.validate_config(tr.get_config(''))     # Bias in Bios needs the user's files
  with pytest.raises(ValueError, match='variants'):
    tr.get_config('huge')
  bad = {'mlac_k': -1, 'attack_lrs': '', 'attack_ns': '', 'attack_modes': 'frozen',
         'attack_steps': '30', 'models': 'mlac,other', 'bert_path': '/no/such/folder',
         'attack_batch_sizes': 'a,b', 'k_sweep': ''}
  for key, value in bad.items():
    c = tr.get_config('runlocal')
    c[key] = value
    with pytest.raises(ValueError, match=f'config.{key}'):
      tr.validate_config(c)
  c = tr.get_config('runlocal')
  c.pretrain.num_attention_heads = 3
  with pytest.raises(ValueError, match='num_attention_heads'):
    tr.validate_config(c)


def test_model_names_and_options():
  c = tr.get_config('runlocal')
  names = tr.model_names(c)
  assert names == ['random', 'pretrained', 'desired', 'ac', 'mlac_k4', 'mlac_k1', 'mlac_k4_a2']
  assert tr.mlac_options(c, 'pretrained') is None
  assert tr.mlac_options(c, 'desired').harmful_weight == 0
  assert tr.mlac_options(c, 'ac').num_steps == 0
  options = tr.mlac_options(c, 'mlac_k4_a2')
  assert (options.num_steps, options.num_adversaries, options.batch_sizes) == (4, 2, (8, 16))


def test_blocking_is_judged_only_where_the_pretrained_encoder_is_above_random():
  """At n = 20 the pretrained encoder is inside random's interval: no verdict there."""
  cells = lambda *v: {n: (m, h, []) for n, (m, h) in zip((20, 200), v)}
  best = {n: {'mode': 'full', 'learning_rate': 1e-3, 'steps': 100, 'batch_size': 4}
          for n in (20, 200)}
  models = {'random': tr.ModelResult(cells((0.5, 0.05), (0.6, 0.05)), best, None, {}),
            'pretrained': tr.ModelResult(cells((0.52, 0.05), (0.8, 0.05)), best, None, {}),
            'desired': tr.ModelResult(cells((0.52, 0.05), (0.8, 0.05)), best, 0.3, {}),
            'mlac_k1': tr.ModelResult(cells((0.5, 0.05), (0.62, 0.05)), best, 0.1,
                                      {'harmful_ce': 0.69})}
  results = tr.Results(models, 0.52, 0.6, 0.05, 'here', 3, {})
  assert tr.report.judged_ns(results) == [200]
  text = ' '.join(tr.report.blocking_sentences(results))
  assert 'within the random initialisation\'s interval at n = [20]' in text
  assert 'desired only does not block at any judged n ([200])' in text
  assert 'MLAC (K = 1) blocks at every judged n ([200])' in text
  assert 'was 0.690' in ' '.join(tr.report.diagnosis(results))


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = wordpiece.train_vocab(TEXTS, tmp_path_factory.mktemp('vocab'), vocab_size=100,
                               min_frequency=1)
  return wordpiece.from_vocab(path, max_len=8)


def test_encode_refuses_empty_texts_and_bad_labels_and_truncates_long_ones(tokenizer):
  n = len(TEXTS)
  prof, gender = np.zeros(n, np.int32), np.ones(n, np.int32)
  with pytest.warns(UserWarning, match='truncated'):
    split = tr.encode(TEXTS, prof, gender, tokenizer, 'train')
  assert split.inputs['input_ids'].shape == (n, 8)
  assert set(split.inputs) == {'input_ids', 'attention_mask'}
  with pytest.raises(ValueError, match=r'train texts\[1\] is an empty text'):
    tr.encode([TEXTS[0], '  ', TEXTS[2]], prof[:3], gender[:3], tokenizer, 'train')
  with pytest.raises(ValueError, match='profession labels'):
    tr.encode(TEXTS, prof + 28, gender, tokenizer, 'test')
  with pytest.raises(ValueError, match='gender labels'):
    tr.encode(TEXTS, prof, gender + 1, tokenizer, 'test')


def test_vocabulary_that_does_not_match_the_checkpoint_is_refused(tmp_path):
  """A BERT folder whose word embeddings have 50 rows beside a 65-token vocab.txt (the check
  runs before any other tensor is read, so the file holds the embeddings alone)."""
  config = {'model_type': 'bert', 'vocab_size': 50, 'hidden_size': 16,
            'num_hidden_layers': 1, 'num_attention_heads': 2, 'intermediate_size': 32,
            'max_position_embeddings': 32}
  (tmp_path / 'config.json').write_text(json.dumps(config))
  safetensors.numpy.save_file(
      {'embeddings.word_embeddings.weight': np.zeros((50, 16), np.float32)},
      str(tmp_path / 'model.safetensors'))
  tokens = [*wordpiece.SPECIAL_TOKENS, *[f'w{i}' for i in range(60)]]
  (tmp_path / 'vocab.txt').write_text(''.join(f'{t}\n' for t in tokens))
  c = tr.get_config('runlocal')
  c.bert_path, c.max_len = str(tmp_path), 16
  tr.validate_config(c)
  with pytest.raises(ValueError, match='65 tokens .* 50 rows'):
    tr.load_encoder(c)


@pytest.mark.slow  # five meta-trained models (two programs), attacks, a resume
def test_tiny_run_reports_finite_numbers_and_resumes_as_a_no_op(tmp_path):
  from lib.meta import attacker
  c = tiny_config()
  workdir = str(tmp_path)
  section = tr.run(c, workdir, progress=False)
  names = tr.model_names(c)
  table = section.tables[0]
  assert [r[0] for r in table.rows] == [tr.report.label(n) for n in names]
  for row in table.rows:
    for cell in row[1:3]:
      mean, half = (float(x) for x in cell.split(' ± '))
      assert 0 <= mean <= 1 and math.isfinite(half)
    assert row[3] == '-' or 0 <= float(row[3]) <= 1
  assert os.path.isfile(os.path.join(workdir, section.figures[0].path))
  assert len(section.headline) >= 3
  text = section.render()   # a blocking sentence per trained model (or why none is judged)
  assert 'block' in text and all(f'{tr.report.label(n)} ' in text for n in names[2:])
  # One attack program per (mode, batch size), shared by every n, search, re-run and model;
  # one second-order meta step shared by AC and every MLAC model.
  vocab = wordpiece.from_vocab(os.path.join(workdir, 'pretrain', 'vocab.txt')).vocab_size
  apply = tr.encoder_model(tr.pretrain_config(c, vocab_size=vocab), c.max_len).apply
  for mode in ('probe', 'full'):
    program = attacker._program(apply, num_classes=2, max_n=16, batch_size=4,
                                max_steps=10, eval_every=5, mode=mode)
    assert program._cache_size() == 1, mode
  programs = {tr.program_options(c, n) for n in names[2:]}
  assert len(programs) == 2     # desired-only, and the adversarial one
  for options in programs:
    assert tr.meta_program(apply, c.pretrain.hidden_size, options, c.seed)[1]._cache_size() == 1
  assert tr.head_accuracy._cache_size() == 1
  metrics = {n: open(os.path.join(workdir, 'meta', n, 'metrics.jsonl')).read()
             for n in names[2:]}
  again = tr.run(c, workdir, progress=False)
  assert again.tables[0].rows == table.rows
  for n in names[2:]:    # nothing retrained: the logs are untouched
    assert open(os.path.join(workdir, 'meta', n, 'metrics.jsonl')).read() == metrics[n]
  assert tr.head_accuracy._cache_size() == 1
  c.pretrain.learning_rate = 0.5
  with pytest.raises(ValueError, match='pretrain.learning_rate'):
    tr.run(c, workdir, progress=False)
