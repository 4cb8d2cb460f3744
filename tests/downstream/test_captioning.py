"""Captioning targets: BLEU-4 and CIDEr through pycocoevalcap (no Java), greedy decoding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lib import downstream as ds
from lib.downstream import captioning
from lib.downstream.features import Features
from tests.downstream.conftest import WordVocab, with_fields

CAPTIONS = ['a red circle on a striped background', 'a blue square and a green dot on a '
            'mottled background', 'two white bars and a cyan star on a checkered background',
            'an orange ring, a red bar and a blue dot on a striped background']


def test_identical_captions_score_bleu_one_and_cider_ten():
  candidates = [c.upper() + '.' for c in CAPTIONS]          # case and punctuation normalised
  scores = ds.caption_metrics([[c] for c in CAPTIONS], candidates)
  assert scores['BLEU-4'] == pytest.approx(1.0)
  assert scores['CIDEr'] == pytest.approx(10.0)


def test_different_captions_score_lower_and_bad_inputs_raise():
  scores = ds.caption_metrics([[c] for c in CAPTIONS], CAPTIONS[1:] + CAPTIONS[:1])
  assert scores['BLEU-4'] < 0.5 and scores['CIDEr'] < 2.0
  with pytest.raises(ValueError, match='same length'):
    ds.caption_metrics([[c] for c in CAPTIONS], CAPTIONS[:2])
  with pytest.raises(ValueError, match=r'references\[0\]'):
    ds.caption_metrics(['not a list'], ['x'])


def test_greedy_decoding_stops_at_eos():
  head = ds.Captioner(vocab_size=8, max_len=6, dim=16, depth=1, heads=2, mlp_dim=32)
  features = Features(np.zeros((2, 2, 2, 4), np.float32), np.zeros((2, 4), np.float32))
  params = head.init(jax.random.key(0), features)
  bias = params['params']['lm_head']['bias']
  params['params']['lm_head']['bias'] = bias.at[head.eos_id].set(100.0)
  tokens = jax.jit(head.generate)(params, features)
  assert tokens.shape == (2, 5)
  assert tokens.tolist() == [[head.eos_id] + [head.pad_id] * 4] * 2
  assert captioning.strip_special([5, 3, head.eos_id, 4], head) == [5, 3]


@pytest.mark.slow   # ~20 s on 2 busy cores, mostly compiling the decoder's step and scan
def test_captioner_learns_the_captions(encoder, shapes, tmp_path):
  train, test = shapes
  vocab = WordVocab(list(train.arrays['caption']) + list(test.arrays['caption']))
  length = 17                                              # bos + up to 14 words + eos + pad
  train, test = (with_fields(d, caption_ids=vocab.encode(d.arrays['caption'], length,
                                                         bos_eos=True)) for d in (train, test))
  head = ds.Captioner(vocab_size=len(vocab), max_len=length, dim=32, depth=1, heads=2,
                      mlp_dim=64)
  state = ds.fit_head(head, encoder.encode, encoder.variables, train, num_steps=120,
                      batch_size=32, seed=0, workdir=str(tmp_path), learning_rate=5e-3)
  scores, captions = ds.evaluate_captions(head, encoder.encode, state.params, test,
                                          decode=vocab.decode)
  assert len(captions) == len(test)
  assert scores['BLEU-4'] > 0.2 and scores['CIDEr'] > 0.2, (scores, captions[:3])
