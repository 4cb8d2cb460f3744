"""VQA targets: VQA accuracy (official leave-one-out formula), answer classification head."""

from __future__ import annotations

import numpy as np
import pytest

from lib import downstream as ds
from tests.downstream.conftest import WordVocab, with_fields


def test_vqa_accuracy_hand_cases():
  # Two of ten annotators said 'red': leaving out one of them leaves 1 match (1/3), leaving
  # out any of the other eight leaves 2 (2/3): (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
  humans = ['red'] * 2 + ['blue'] * 8
  assert ds.vqa_accuracy(['red'], [humans]) == pytest.approx(0.6)
  assert ds.vqa_accuracy(['blue'], [humans]) == pytest.approx(1.0)   # >= 3 others agree
  assert ds.vqa_accuracy(['green'], [humans]) == 0.0
  # One ground-truth answer per question: exact match (after case and space normalisation).
  assert ds.vqa_accuracy(['Red ', 'blue', '2'], ['red', 'red', '2']) == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match='must match'):
    ds.vqa_accuracy(['a', 'b'], ['a'])


def test_vqa_head_beats_the_per_question_majority(encoder, shapes, tmp_path):
  train, test = shapes
  answers = sorted(set(train.arrays['answer'].ravel()) | set(test.arrays['answer'].ravel()))
  index = {a: i for i, a in enumerate(answers)}
  questions = set(train.arrays['question'].ravel()) | set(test.arrays['question'].ravel())
  vocab = WordVocab(sorted(questions))

  def tokenised(d):
    q = d.arrays['question']
    ids = vocab.encode(q.ravel(), 8, bos_eos=False).reshape(*q.shape, 8)
    return with_fields(d, question_ids=ids,
                       answer_ids=np.vectorize(index.get)(d.arrays['answer']).astype(np.int32))

  train, test = tokenised(train), tokenised(test)
  head = ds.VQAHead(num_answers=len(answers), vocab_size=len(vocab), dim=32)
  state = ds.fit_head(head, encoder.encode, encoder.variables, train, num_steps=300,
                      batch_size=32, seed=0, workdir=str(tmp_path), learning_rate=1e-2)
  result = ds.evaluate_vqa(head, encoder.encode, state.params, test, answer_vocab=answers)
  truth = test.arrays['answer']
  majority = np.mean([np.mean(truth[:, j] == max(set(truth[:, j]), key=list(truth[:, j]).count))
                      for j in range(4)])
  assert result['vqa_accuracy'] > majority + 0.05, (result, majority)
  with pytest.raises(ValueError, match=r"\['answer_ids'\] must lie in"):
    ds.fit_head(ds.VQAHead(num_answers=3, vocab_size=len(vocab)), encoder.encode,
                encoder.variables, train, num_steps=1, batch_size=32, seed=0,
                workdir=str(tmp_path / 'bad'))
