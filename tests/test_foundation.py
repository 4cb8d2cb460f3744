"""The offline foundation: config checks, a tiny pretraining, exact resume, refused relaunch,
and loading a Hugging Face CLIP folder instead of pretraining (experiments/foundation.py).

One tiny config (1-layer towers of width 32, 16 scenes a batch) is shared by every test that
trains, so the process compiles its training step once.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from experiments import foundation
from lib.models import clip as clip_lib
from lib.text.clip_tokenizer import train_clip_tokenizer

STEPS = 6


def _with(c, **changes):
  """A copy of config `c` with `changes` ('model.x' for model fields), bypassing type locks."""
  plain = c.to_dict()
  for key, value in changes.items():
    if key.startswith('model.'):
      plain['model'][key[len('model.'):]] = value
    else:
      plain[key] = value
  return ml_collections.ConfigDict(plain)


TINY = {'num_train': 64, 'num_test': 32, 'batch_size': 16,
        'num_steps': STEPS, 'warmup_steps': 1, 'checkpoint_every': 2, 'log_every': 2,
        'model.vision_hidden_size': 32, 'model.vision_layers': 1, 'model.vision_heads': 2,
        'model.vision_intermediate_size': 32, 'model.text_hidden_size': 32,
        'model.text_layers': 1, 'model.text_heads': 2, 'model.text_intermediate_size': 32,
        'model.projection_dim': 16}


def tiny_config(**changes) -> ml_collections.ConfigDict:
  """The runlocal config at the tiny size of `TINY`, then `changes`."""
  return _with(foundation.get_config('runlocal'), **{**TINY, **changes})


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """(workdir, Foundation) of an uninterrupted tiny run of STEPS steps."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  return workdir, foundation.pretrain(tiny_config(), workdir, progress=False)


def test_variants_validate():
  foundation.validate_config(foundation.get_config('runlocal'))
  foundation.validate_config(_with(foundation.get_config(''), clip_path=''))
  with pytest.raises(ValueError, match='unknown config variants'):
    foundation.get_config('bogus')


@pytest.mark.parametrize('changes, match', [
    ({'dataset': 'digits'}, 'config.dataset'),
    ({'image_size': 36}, 'config.image_size'),
    ({'num_train': 8}, 'config.batch_size'),
    ({'batch_size': 1}, 'config.batch_size'),
    ({'vocab_size': 100}, 'config.vocab_size'),
    ({'context_length': 1.5}, 'config.context_length'),
    ({'warmup_steps': STEPS}, 'config.warmup_steps'),
    ({'learning_rate': 0.0}, 'config.learning_rate'),
    ({'learning_rate': float('nan')}, 'config.learning_rate'),
    ({'weight_decay': -1.0}, 'config.weight_decay'),
    ({'seed': -1}, 'config.seed'),
    ({'log_every': 0}, 'config.log_every'),
    ({'short_caption_rate': 1.5}, 'config.short_caption_rate'),
    ({'templates': 'a {}'}, 'config.templates'),
    ({'templates': ('a {}', 'no slot')}, r'config.templates\[1\]'),
    ({'clip_path': 3}, 'config.clip_path'),
    ({'clip_path': '/nonexistent/clip'}, 'config.clip_path'),
    ({'model.patch_size': 5}, 'config.model.patch_size'),
    ({'model.vision_heads': 3}, 'config.model.vision_heads'),
    ({'model.text_layers': 0}, 'config.model.text_layers'),
    ({'model.hidden_act': 'relu'}, 'config.model.hidden_act'),
    ({'model.width': 8}, 'config.model has unknown fields'),
])
def test_bad_config_is_refused_before_any_work(tmp_path, changes, match):
  bad = tiny_config(**changes)
  with pytest.raises(ValueError, match=match):
    foundation.validate_config(bad)
  with pytest.raises(ValueError, match=match):
    foundation.pretrain(bad, str(tmp_path))
  assert not os.path.exists(tmp_path / 'foundation')


def _multi_positive_loss(logits, positives):
  """InfoNCE with targets uniform over each row's positives, both directions."""
  targets = positives / positives.sum(axis=1, keepdims=True)
  ce = lambda z: optax.softmax_cross_entropy(z, targets).mean()
  return (ce(logits) + ce(logits.T)) / 2


def test_duplicate_captions_need_no_multi_positive_loss():
  # Texts 0 and 1 are the same caption (same embedding): CLIP's loss and the loss that
  # counts every identical caption as a positive agree in value and gradient.
  ids = jnp.array([[1, 2, 3], [1, 2, 3], [1, 2, 4], [5, 6, 7]])
  same = foundation.same_caption(ids)
  assert same.sum() == 6 and bool(same[0, 1]) and not bool(same[0, 2])
  k1, k2 = jax.random.split(jax.random.key(0))
  images, texts = jax.random.normal(k1, (4, 8)), jax.random.normal(k2, (3, 8))

  def loss(fn, images, texts):
    logits = clip_lib.contrastive_logits(images, texts[jnp.array([0, 0, 1, 2])],
                                         jnp.float32(2.0))
    return fn(logits)

  clip_value, clip_grads = jax.value_and_grad(
      lambda *a: loss(clip_lib.clip_loss, *a), argnums=(0, 1))(images, texts)
  multi_value, multi_grads = jax.value_and_grad(
      lambda *a: loss(lambda z: _multi_positive_loss(z, same.astype(z.dtype)), *a),
      argnums=(0, 1))(images, texts)
  np.testing.assert_allclose(clip_value, multi_value, rtol=1e-6)
  for a, b in zip(clip_grads, multi_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_object_phrase():
  assert foundation.object_phrase('a red star, a blue bar and a white dot on a striped '
                                  'background') == 'a red star'
  assert foundation.object_phrase('an orange ring and two cyan dots on a mottled background'
                                  ) == 'an orange ring'
  assert foundation.object_phrase('a white cross on a checkered background') == 'a white cross'


def test_tiny_pretraining_end_to_end(straight):
  workdir, f = straight
  assert f.steps == STEPS and f.source == 'pretrained'
  assert 0.0 <= f.zero_shot <= 1.0
  assert f.class_embeddings.shape == (8, 16)
  np.testing.assert_allclose(np.linalg.norm(f.class_embeddings, axis=1), 1.0, rtol=1e-5)
  prompts = [t.format('star') for t in f.templates] * 8   # as many as the zero-shot prompts
  assert f.encode_text(prompts).shape == (len(prompts), 16)   # no new compile
  tokens, embedding = jax.eval_shape(f.encode, f.variables['image'],
                                     jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32))
  assert tokens.shape == (3, 4, 4, 32) and embedding.shape == (3, 16)
  folder = os.path.join(workdir, 'foundation')
  for name in ('config.json', 'metrics.jsonl', 'tokenizer/vocab.json', 'tokenizer/merges.txt'):
    assert os.path.exists(os.path.join(folder, name)), name
  assert f.tokenizer.vocab_size == f.clip.config.vocab_size


def test_killed_run_resumes_to_the_same_variables(straight, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  real = foundation.pair_batch

  def dies_at_step_3(pairs, step, **kw):
    if step == 3:
      raise KeyboardInterrupt('killed')
    return real(pairs, step, **kw)

  monkeypatch.setattr(foundation, 'pair_batch', dies_at_step_3)
  with pytest.raises(KeyboardInterrupt):
    foundation.pretrain(tiny_config(), workdir, progress=False)
  monkeypatch.setattr(foundation, 'pair_batch', real)
  compiled = foundation.train_step._cache_size()
  resumed = foundation.pretrain(tiny_config(), workdir, progress=False)
  assert foundation.train_step._cache_size() == compiled   # fresh and restored states alike
  assert resumed.steps == STEPS
  for a, b in zip(leaves(resumed.variables), leaves(straight[1].variables)):
    np.testing.assert_array_equal(a, b)
  assert resumed.zero_shot == straight[1].zero_shot


def test_relaunch_with_another_config_is_refused(straight):
  workdir, f = straight
  with pytest.raises(ValueError, match=r'learning_rate: 0.005 -> 0.001'):
    foundation.pretrain(tiny_config(learning_rate=1e-3), workdir, progress=False)
  # Evaluation-only keys may change: the finished run is only re-evaluated.
  again = foundation.pretrain(tiny_config(templates=('a {}',)), workdir, progress=False)
  assert again.templates == ('a {}',) and again.steps == STEPS
  for a, b in zip(leaves(again.variables), leaves(f.variables)):
    np.testing.assert_array_equal(a, b)


def test_clip_path_loads_a_hugging_face_folder_without_training(tmp_path):
  transformers = pytest.importorskip('transformers')
  captions = ['a red star on a striped background', 'a blue ring on a mottled background']
  tokenizer = train_clip_tokenizer(captions, vocab_size=520, context_length=24)
  model = transformers.CLIPModel(transformers.CLIPConfig(
      projection_dim=16,
      vision_config=dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, image_size=32, patch_size=8),
      text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=32,
                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=24,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.eos_token_id)))
  folder = tmp_path / 'clip'
  model.save_pretrained(folder, safe_serialization=True)
  tokenizer.save(folder)
  workdir = tmp_path / 'run'
  f = foundation.pretrain(tiny_config(clip_path=str(folder)), str(workdir), progress=False)
  assert f.steps == 0 and f.source == str(folder)
  assert f.tokenizer.vocab == tokenizer.vocab and f.tokenizer.context_length == 24
  assert f.clip.config.vision_layers == 1 and 0.0 <= f.zero_shot <= 1.0
  assert not os.path.exists(workdir / 'foundation')
  torch_scale = float(model.logit_scale.detach())
  assert float(f.variables['logit_scale']) == pytest.approx(torch_scale)
