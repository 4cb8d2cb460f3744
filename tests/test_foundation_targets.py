"""The foundation targets: config checks before work, MaskCLIP's value path, the baselines,
the report section, a head's resume, and (slow) a tiny run end to end
(experiments/foundation_targets.py)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import foundation
from experiments import foundation_targets as ft
from experiments import foundation_targets_report as report
from lib import downstream
from lib.data import get_dataset
from lib.models import clip as clip_lib
from lib.text.clip_tokenizer import train_clip_tokenizer

TINY_MODEL = dict(vision_hidden_size=32, vision_layers=1, vision_heads=2,
                  vision_intermediate_size=32, text_hidden_size=32, text_layers=1, text_heads=2,
                  text_intermediate_size=32, projection_dim=16)


def tiny_config(**changes) -> ml_collections.ConfigDict:
  """runlocal at the size of tests/test_foundation.py's tiny run, every head 3 steps."""
  c = ft.get_config('runlocal')
  c.num_train, c.num_test, c.vocab_size, c.batch_size = 64, 32, 1024, 16
  c.num_steps, c.warmup_steps, c.checkpoint_every, c.log_every = 6, 1, 2, 2
  c.model.update(TINY_MODEL)
  for h in c.heads.values():
    h.num_steps, h.batch_size = 3, 8
  c.heads.captioner.update(dict(dim=16, depth=1, heads=2, mlp_dim=16))
  for metric in ft.METRICS:
    c.num_eval[metric] = 16
  c.num_figure = 2
  c.update(changes)
  return c


def test_variants_validate():
  ft.validate_config(ft.get_config('runlocal'))
  full = ft.get_config('')
  full.clip_path = ''
  ft.validate_config(full)
  assert set(ft.get_config('runlocal').heads) == set(ft.HEADS)
  with pytest.raises(ValueError, match='unknown config variants'):
    ft.get_config('bogus')


def _set(c, path, value):
  *parents, leaf = path.split('.')
  node = c
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


@pytest.mark.parametrize('path, value, match', [
    ('heads.probe.num_steps', 0, 'config.heads.probe.num_steps'),
    ('heads.dense.batch_size', 20000, 'config.heads.dense.batch_size'),
    ('heads.vqa.learning_rate', 0.0, 'config.heads.vqa.learning_rate'),
    ('heads.boxes.hidden', -1, 'config.heads.boxes.hidden'),
    ('heads.captioner.heads', 3, 'config.heads.captioner.heads'),
    ('num_eval.vqa', 5000, 'config.num_eval.vqa'),
    ('num_eval.segmentation', 0, 'config.num_eval.segmentation'),
    ('num_figure', 0, 'config.num_figure'),
    ('background_prompts', 'a background', 'config.background_prompts'),
    ('head_seed', -1, 'config.head_seed'),
    ('image_size', 36, 'config.image_size'),   # the foundation's own checks run too
])
def test_validate_config_names_the_bad_key(path, value, match):
  c = ft.get_config('runlocal')
  _set(c, path, value)
  with pytest.raises(ValueError, match=match):
    ft.validate_config(c)


def test_a_head_with_unknown_fields_is_refused():
  c = ft.get_config('runlocal')
  c.heads.probe.hidden = 3
  with pytest.raises(ValueError, match='config.heads.probe must have the fields'):
    ft.validate_config(c)


def test_run_validates_before_any_work(tmp_path):
  c = tiny_config()
  c.num_eval.detection = 33
  with pytest.raises(ValueError, match='config.num_eval.detection'):
    ft.run(c, str(tmp_path))
  assert not os.listdir(tmp_path)


def _tiny_clip(c):
  captions = get_dataset('shapes', 'train', image_size=32, seed=0,
                         num_examples=64).arrays['caption']
  tokenizer = train_clip_tokenizer(captions, vocab_size=c.vocab_size,
                                   context_length=c.context_length)
  clip = clip_lib.Clip(foundation.model_config(c, vocab_size=tokenizer.vocab_size,
                                               eos_token_id=tokenizer.eos_token_id))
  return clip, tokenizer


@pytest.fixture(scope='module')
def random_foundation():
  """A Foundation with a random-init tiny CLIP image tower (no pretraining): what `fit` and
  the value path read."""
  c = tiny_config()
  clip, tokenizer = _tiny_clip(c)
  variables = {'image': clip.image.init(jax.random.key(0))}    # no text tower needed here
  encode = downstream.TapEncoder(clip.image.apply, clip.image_hidden_states[-1])
  return c, foundation.Foundation(clip, variables, tokenizer, 0.0, 0, 'random', encode, None,
                                  None, tuple(c.templates))


@pytest.fixture(scope='module')
def jitted(random_foundation):
  """(image tower apply, value-path encoder), jitted once for the module's tests."""
  _, f = random_foundation
  return jax.jit(f.clip.image.apply), jax.jit(ft.value_encoder(f))


def test_embed_tokens_is_the_class_token_path(random_foundation, jitted):
  _, f = random_foundation
  x = jnp.asarray(get_dataset('shapes', 'test', image_size=32, seed=0,
                              num_examples=2).arrays['image'], jnp.float32) / 255
  out = jitted[0](f.variables['image'], x)
  cls = out.taps[f.clip.image_hidden_states[-1]][:, 0]
  embedded = jax.jit(ft.embed_tokens, static_argnums=2)(f.variables['image'], cls, 1e-5)
  np.testing.assert_allclose(embedded, out.features,
                             rtol=1e-5, atol=1e-6)


def test_value_path_is_the_last_block_when_attention_is_the_identity(random_foundation, jitted):
  """With every token entering the last block equal, attention returns each token's own
  value: the real block then equals the value path."""
  c, f = random_foundation
  params = jax.tree.map(lambda a: a, f.variables['image'])
  p = params['params']
  p['patch_embed']['kernel'] = jnp.zeros_like(p['patch_embed']['kernel'])
  p['cls_token'] = jnp.zeros_like(p['cls_token'])
  p['pos_embed'] = jnp.zeros_like(p['pos_embed'])
  p['pre_norm']['bias'] = jax.random.normal(jax.random.key(1), p['pre_norm']['bias'].shape)
  x = jnp.full((2, 32, 32, 3), 0.5, jnp.float32)
  out = jitted[0](params, x)
  last = out.taps[f.clip.image_hidden_states[-1]][:, 1:].reshape(2, 4, 4, -1)
  tokens, embedding = jitted[1](params, x)
  assert tokens.shape == (2, 4, 4, c.model.projection_dim)
  expected = jax.jit(ft.embed_tokens, static_argnums=2)(params, last, 1e-5)
  np.testing.assert_allclose(tokens, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(embedding, out.features, rtol=1e-5, atol=1e-6)


def test_value_path_keeps_patches_apart(random_foundation, jitted):
  """One block: a patch's value-path token depends on that patch's pixels alone."""
  _, f = random_foundation
  x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
  y = x.at[:, :8, :8].set(0.0)                       # patch (0, 0) only
  a, _ = jitted[1](f.variables['image'], x)
  b, _ = jitted[1](f.variables['image'], y)
  changed = np.abs(np.asarray(a - b)).max(-1) > 1e-6
  assert np.all(changed[:, 0, 0]) and changed.sum() == 2


def test_tokens_and_baselines(random_foundation):
  _, f = random_foundation
  train = ft.first(get_dataset('shapes', 'train', image_size=32, seed=0, num_examples=64), 40)
  answers = ft.answer_vocabulary(train)
  split = ft.with_tokens(train, f.tokenizer, answers)
  ids, pad = split.arrays['caption_ids'], f.tokenizer.vocab_size
  assert ids.shape == (40, f.tokenizer.context_length) and ids.max() == pad
  assert np.all((ids == f.tokenizer.eos_token_id).sum(1) == 1)     # ends once, then padding
  assert split.arrays['question_ids'].shape[:2] == (40, 4)
  np.testing.assert_array_equal(answers[split.arrays['answer_ids']], train.arrays['answer'])
  prior = ft.prior_detections(train, 3, 10)
  assert prior.boxes.shape == (3, 10, 4) and prior.labels.shape == (3, 10)
  assert np.isclose(prior.scores[0][prior.labels[0] >= 0].sum(), 1.0)
  assert ft.majority(np.array([2, 1, 2, 1, 3])) == 1


def _synthetic_results():
  rng = np.random.default_rng(0)
  rows = [ft.Row(t, m, metric, float(v), 0.1) for (t, m, metric), v in zip(
      [('classification', 'zero-shot (prompts)', 'accuracy'),
       ('classification', 'linear probe', 'accuracy'),
       ('classification', 'full fine-tune', 'accuracy'),
       ('segmentation', 'MaskCLIP (training-free)', 'mIoU'),
       ('segmentation', 'dense head, frozen tokens', 'mIoU'),
       ('detection', 'patch-text boxes (training-free)', 'mAP'),
       ('detection', 'patch-text boxes (training-free)', 'AP50'),
       ('detection', 'box head, frozen tokens', 'mAP'),
       ('detection', 'box head, frozen tokens', 'AP50'),
       ('captioning', 'decoder on frozen tokens', 'BLEU-4'),
       ('captioning', 'decoder on frozen tokens', 'CIDEr'),
       ('vqa', 'attention head on frozen tokens', 'VQA accuracy')],
      [0.5, 0.6, 0.7, 0.05, 0.3, 0.0, 0.02, 0.1, 0.5, 0.4, 1.5, 0.8])]
  dets = downstream.Detections(np.tile([[0.1, 0.1, 0.5, 0.6]], (2, 3, 1)).astype(np.float32),
                               np.ones((2, 3), np.float32), np.array([[0, 8, -1]] * 2))
  maps = rng.integers(0, 11, (2, 32, 32))
  figure = ft.FigureData(rng.random((2, 32, 32, 3)), maps, maps, maps, dets.boxes, dets.labels,
                         dets, dets, tuple(f'c{i}' for i in range(10)))
  timings = {'foundation': (1.0, 1.5), 'probe: train': (2.0, 2.5)}
  return ft.Results(rows, 'pretrained', 6, timings, figure, [('a red star', 'a red star')])


def test_section_is_built_from_the_numbers(tmp_path):
  c = tiny_config()
  section = report.section(c, _synthetic_results(), str(tmp_path))
  table = section.tables[0]
  assert {row[0] for row in table.rows} == set(ft.METRICS)
  assert os.path.isfile(tmp_path / section.figures[0].path)
  assert section.headline['MaskCLIP mIoU'] == '0.0500 (baseline 0.1000)'
  assert len(section.headline) == 6
  text = section.render()
  assert '8 of 12 metrics beat their trivial baseline' in text
  assert 'On par with it (within 0.01): box head, frozen tokens mAP 0.1 vs 0.1.' in text
  assert 'Below it: MaskCLIP (training-free) mIoU 0.05 vs 0.1; patch-text' in text
  assert 'detection: the trained head beats the training-free method (0.1 vs 0 mAP)' in text
  assert 'the full fine-tune is best' in text


def test_head_resumes_and_refuses_another_setting(random_foundation, tmp_path):
  c, f = random_foundation
  train = get_dataset('shapes', 'train', image_size=32, seed=0, num_examples=64)
  head = downstream.LinearHead(8)
  fit = lambda c, workdir: ft.fit(c, f, workdir, 'probe', head, f.encode, train,
                                  progress=False)
  straight = fit(c, str(tmp_path / 'straight'))
  short = ml_collections.ConfigDict(c.to_dict())
  short.heads.probe.num_steps = 1
  fit(short, str(tmp_path / 'resumed'))
  resumed = fit(c, str(tmp_path / 'resumed'))
  assert int(resumed.step) == c.heads.probe.num_steps
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
  other = ml_collections.ConfigDict(c.to_dict())
  other.heads.probe.learning_rate = 0.5
  with pytest.raises(ValueError, match='head.learning_rate'):
    fit(other, str(tmp_path / 'resumed'))


@pytest.mark.slow
def test_tiny_run_end_to_end_and_resumed(tmp_path):
  c = tiny_config()
  section = ft.run(c, str(tmp_path))
  rows = section.tables[0].rows
  assert {row[0] for row in rows} == set(ft.METRICS) and len(rows) == 12
  assert all(np.isfinite(row[3]) and np.isfinite(row[4]) for row in rows)
  assert os.path.isfile(tmp_path / section.figures[0].path)
  assert 'zero-shot accuracy' in section.headline and len(section.headline) == 6
  for name in ft.HEADS:
    assert os.path.isdir(tmp_path / 'heads' / name / 'checkpoints')
  again = ft.run(c, str(tmp_path))           # every stage resumes from its last checkpoint
  assert again.tables[0].rows == rows
