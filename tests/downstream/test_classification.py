"""Classification targets: zero-shot (prompt ensembling), linear probe vs fine-tune, accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import downstream as ds
from lib.downstream import classification


def test_prompt_texts_and_average_prompts_follow_clip():
  assert ds.prompt_texts(['cat', 'dog'], ['a {}.', 'the {}!']) == ['a cat.', 'the cat!', 'a dog.',
                                                                  'the dog!']
  prompts = jnp.array([[[3.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 5.0]]])   # [K=2, M=2, E=2]
  classes = ds.average_prompts(prompts)
  # Each prompt normalised first: mean of (1, 0) and (0, 1), renormalised.
  np.testing.assert_allclose(classes, [[2**-0.5, 2**-0.5], [0.0, 1.0]], atol=1e-6)


def test_class_embeddings_calls_the_text_tower_once_class_major():
  seen = []

  def encode_text(texts):
    seen.extend(texts)
    return jnp.array([[1.0, 0.0] if 'a' in t else [0.0, 1.0] for t in texts])

  classes = ds.class_embeddings(encode_text, ['a', 'b'], ['{}', 'x {}'])
  assert seen == ['a', 'x a', 'b', 'x b']
  np.testing.assert_allclose(classes, [[1.0, 0.0], [0.0, 1.0]])


def test_zero_shot_logits_are_scaled_cosines():
  image = jnp.array([[2.0, 0.0], [1.0, 1.0]])
  text = jnp.array([[1.0, 0.0], [0.0, 3.0]])
  np.testing.assert_allclose(ds.zero_shot_logits(image, text, scale=10.0),
                             [[10.0, 0.0], [10 * 2**-0.5, 10 * 2**-0.5]], rtol=1e-6)


def test_accuracy_hand_case_and_errors():
  assert classification.accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
  with pytest.raises(ValueError, match='same shape'):
    classification.accuracy([0, 1], [0, 1, 2])
  with pytest.raises(ValueError, match='template'):
    ds.prompt_texts(['cat'], ['no slot'])
  with pytest.raises(ValueError, match=r'\[K, M, E\]'):
    ds.average_prompts(jnp.ones((2, 3)))


def test_zero_shot_with_class_prototypes_beats_chance(encoder, tint_data):
  train, test = tint_data
  emb = jax.jit(encoder.encode)(encoder.variables, jnp.asarray(train.arrays["image"]))[1]
  prototypes = jnp.stack([emb[train.arrays['label'] == k].mean(0) for k in range(4)])
  assert ds.zero_shot_accuracy(encoder.encode, encoder.variables, prototypes, test) > 0.6
  with pytest.raises(ValueError, match='label'):
    ds.zero_shot_accuracy(encoder.encode, encoder.variables, prototypes[:2], test)


def _leaves_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('frozen', ['probe', 'finetune'])
def test_probe_freezes_the_encoder_and_finetune_trains_it(encoder, tint_data, tmp_path, frozen):
  train, test = tint_data
  head = ds.LinearHead(num_classes=4)
  state = ds.fit_head(head, encoder.encode, encoder.variables, train, num_steps=40,
                      batch_size=32, seed=0, workdir=str(tmp_path), learning_rate=3e-2,
                      frozen=ds.PROBE if frozen == 'probe' else ds.FINETUNE)
  unchanged = _leaves_equal(state.params['encoder'], encoder.variables)
  assert unchanged == (frozen == 'probe')
  assert ds.probe_accuracy(head, encoder.encode, state.params, test) > 0.6   # chance 0.25


def test_fit_head_rejects_bad_labels_and_empty_splits(encoder, tint_data, tmp_path):
  train, _ = tint_data
  with pytest.raises(ValueError, match=r"train_data\['label'\] must lie in \[0, 3\)"):
    ds.fit_head(ds.LinearHead(3), encoder.encode, encoder.variables, train, num_steps=1,
                batch_size=32, seed=0, workdir=str(tmp_path))
  with pytest.raises(ValueError, match='train_data is empty'):
    ds.fit_head(ds.LinearHead(4), encoder.encode, encoder.variables, train.__class__(
        name='x', split='train', class_names=('a',), arrays={
            'image': np.zeros((0, 32, 32, 3), np.float32), 'label': np.zeros(0, np.int32)}),
                num_steps=1, batch_size=1, seed=0, workdir=str(tmp_path))
  with pytest.raises(ValueError, match='matches no parameter'):
    ds.fit_head(ds.LinearHead(4), encoder.encode, encoder.variables, train, num_steps=1,
                batch_size=32, seed=0, workdir=str(tmp_path), frozen=('encodr/*',))
  with pytest.raises(ValueError, match='num_classes'):
    ds.LinearHead(1)
