"""The inherited-vulnerability study: config checks before work, the resize-and-pad defence's
geometry and its stochastic encoder for EOT, FARE's distance, PGD on zero-shot really
lowering zero-shot accuracy, the report written from the numbers, and (slow) evaluation
compiling once and a tiny run end to end and resumed (experiments/foundation_transfer.py)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import foundation
from experiments import foundation_targets as ft
from experiments import foundation_transfer as fx
from experiments import foundation_transfer_report as report
from lib import contract, downstream
from lib.attacks import checks as checks_lib
from lib.attacks import pgd
from lib.data import get_dataset
from lib.downstream import captioning, classification, detection, segmentation, vqa
from tests.test_foundation_targets import TINY_MODEL, _tiny_clip
from tests.test_foundation_targets import _synthetic_results as targets_results

# The main job's tiny scale: the targets' tiny config (2 blocks: PRM's layer thirds need 3
# hidden states), 16 scenes attacked for 2 steps, FARE 2 steps.
TINY = dict(num_train=64, num_test=32, vocab_size=1024, batch_size=16, num_steps=6,
            warmup_steps=1, checkpoint_every=2, log_every=2, num_figure=2)
TINY_ATTACK = dict(num_images=16, eps=(4, 8, 16), steps=2, pgd_steps=2, layers_eps=8)
TINY_FARE = dict(num_steps=2, batch_size=8, pgd_steps=2, warmup_steps=0)


def tiny_config() -> ml_collections.ConfigDict:
  c = fx.get_config('runlocal')
  c.update(TINY)
  c.model.update(TINY_MODEL)
  c.model.vision_layers = 2
  for h in c.heads.values():
    h.num_steps, h.batch_size = 3, 8
  c.heads.captioner.update(dict(dim=16, depth=1, heads=2, mlp_dim=16))
  for metric in ft.METRICS:
    c.num_eval[metric] = 16
  c.attack.update(TINY_ATTACK)
  c.fare.update(TINY_FARE)
  c.deploy.eot = 2
  c.checks.update(dict(num_images=8, square_queries=5))
  return c


def test_variants_validate():
  fx.validate_config(fx.get_config('runlocal'))
  full = fx.get_config('')
  full.clip_path = ''
  fx.validate_config(full)
  fx.validate_config(tiny_config())


def _set(c, path, value):
  *parents, leaf = path.split('.')
  node = c
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value


@pytest.mark.parametrize('path, value, match', [
    ('attack.num_images', 5000, 'config.attack.num_images'),
    ('attack.eps', (4, 4), 'config.attack.eps'),
    ('attack.eps', (0, 8), r'config.attack.eps\[0\]'),
    ('attack.eps', (4, 300), r'config.attack.eps\[1\]'),
    ('attack.layers_eps', 2, 'config.attack.layers_eps'),
    ('attack.steps', 0, 'config.attack.steps'),
    ('attack.scale', (0.5, 1.5), 'config.attack.scale'),
    ('attack.scale', (0.1, 1.0), 'config.attack.scale'),     # below one patch
    ('attack.lr', 0.0, 'config.attack.lr'),
    ('fare.batch_size', 20000, 'config.fare.batch_size'),
    ('fare.eps', 0, 'config.fare.eps'),
    ('deploy.min_scale', 1.5, 'config.deploy.min_scale'),
    ('deploy.eot', 0, 'config.deploy.eot'),
    ('checks.num_images', 1000, 'config.checks.num_images'),
    ('targets_workdir', 3, 'config.targets_workdir'),
    ('model.vision_layers', 1, 'config.model.vision_layers'),
    ('heads.probe.num_steps', 0, 'config.heads.probe.num_steps'),   # the targets' checks too
])
def test_validate_config_names_the_bad_key(path, value, match):
  c = fx.get_config('runlocal')
  _set(c, path, value)
  with pytest.raises(ValueError, match=match):
    fx.validate_config(c)


def test_unknown_attack_fields_are_refused():
  c = fx.get_config('runlocal')
  c.attack.stepz = 3
  with pytest.raises(ValueError, match='config.attack must have the fields'):
    fx.validate_config(c)


def test_run_validates_before_any_work(tmp_path):
  c = tiny_config()
  c.attack.steps = -1
  with pytest.raises(ValueError, match='config.attack.steps'):
    fx.run(c, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_resize_pad_moves_images_maps_and_boxes_together():
  split = get_dataset('shapes', 'test', image_size=32, seed=0, num_examples=4)
  placement = fx.Placement(jnp.array([1.0, 0.5, 0.75, 0.5]),
                           jnp.array([[0.0, 0.0], [16.0, 0.0], [4.0, 8.0], [0.0, 16.0]]))
  moved = fx.resize_pad_split(split, placement)
  np.testing.assert_allclose(moved.arrays['image'][0], split.arrays['image'][0] / 255,
                             atol=1e-5)                       # s = 1, no offset: unchanged
  np.testing.assert_array_equal(moved.arrays['segmentation'][0], split.arrays['segmentation'][0])
  # Half size at rows 16..31: the top half is black background, the map is subsampled.
  assert np.all(moved.arrays['image'][1, :16] == 0) and np.all(moved.arrays['segmentation'][1, :16] == 0)
  np.testing.assert_array_equal(moved.arrays['segmentation'][1, 16:, :16],
                                split.arrays['segmentation'][1, 1::2, 1::2])   # centres land on odd pixels
  box = split.arrays['boxes'][1, 0]
  np.testing.assert_allclose(moved.arrays['boxes'][1, 0], box * 0.5 + [0.5, 0, 0.5, 0],
                             atol=1e-6)
  # Every moved box still encloses its (moved) mask pixels' centres.
  for i in range(4):
    for b, label in zip(moved.arrays['boxes'][i], moved.arrays['box_labels'][i]):
      if label >= 0:
        assert 0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1


def test_resize_pad_encoder_draws_each_images_placement_from_the_key():
  """The stochastic encoder PRM's EOT attacks: the placements of `draw_placement(key)`, one
  per image, so each step's fresh key moves the images anew."""
  encoder = lambda params, x: contract.Outputs(None, {'t': x.reshape(x.shape[0], -1, 3)}, None)
  through = fx.ResizePadEncoder(encoder, 0.75)
  x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
  key = jax.random.key(4)
  want = fx.resize_pad(x, fx.draw_placement(key, 3, (16, 16), 0.75)).reshape(3, -1, 3)
  np.testing.assert_allclose(through(None, x, key=key).taps['t'], want, atol=1e-6)
  other = through(None, x, key=jax.random.key(5)).taps['t']
  assert all(np.abs(other[i] - want[i]).max() > 1e-3 for i in range(3))


def test_fare_distance_is_embedding_plus_mean_patch_distance():
  encode = lambda params, x: (x[..., :2].reshape(x.shape[0], 2, 2, -1) * params,
                              x[:, 0, 0] * params)
  outputs = fx.FareOutputs(encode)
  x = jax.random.normal(jax.random.key(0), (3, 4, 1, 4))
  y = jax.random.normal(jax.random.key(1), (3, 4, 1, 4))
  (tx, ex), (ty, ey) = encode(1.0, x), encode(1.0, y)
  expected = (jnp.sum((ex - ey) ** 2, -1)
              + jnp.sum((tx - ty) ** 2, -1).reshape(3, -1).mean(1))
  np.testing.assert_allclose(fx.squared_distance(outputs(1.0, x), outputs(1.0, y)), expected,
                             rtol=1e-5)


@pytest.fixture(scope='module')
def random_foundation():
  """A `Foundation` of a random-init tiny CLIP image tower with random class rows (no
  pretraining, no text tower): what the white-box baseline reads."""
  c = tiny_config()
  clip, tokenizer = _tiny_clip(c)
  variables = {'image': clip.image.init(jax.random.key(0))}
  encode = downstream.TapEncoder(clip.image.apply, clip.image_hidden_states[-1])
  return c, foundation.Foundation(clip, variables, tokenizer, 0.0, 0, 'random', encode, None,
                                  _unit(jax.random.key(1), 8, c), tuple(c.templates))


def _unit(key, n, c):
  return classification.l2_normalize(jax.random.normal(key, (n, c.model.projection_dim)))


@pytest.fixture(scope='module')
def random_targets(random_foundation):
  """`Targets` on `random_foundation` with random text rows and untrained heads: what
  evaluation reads, without any training."""
  c, f = random_foundation
  train_split = get_dataset('shapes', 'train', image_size=32, seed=0, num_examples=64)
  answers = ft.answer_vocabulary(train_split)
  train = ft.with_tokens(train_split, f.tokenizer, answers)
  image = f.variables['image']
  features = jax.eval_shape(f.encode, image, jnp.zeros((2, 32, 32, 3)))
  heads = {}
  for i, (name, (head, _)) in enumerate(ft.make_heads(c, f, train.num_classes,
                                                      len(train.categories), answers).items()):
    params = {'encoder': image,
              'head': head.init(jax.random.key(10 + i), downstream.Features(*features))}
    heads[name] = (head, downstream.HeadState(jnp.zeros((), jnp.int32), params, None))
  return c, ft.Targets(f, _unit(jax.random.key(2), 11, c), answers, train, heads)


def test_pgd_on_zero_shot_lowers_zero_shot_accuracy(random_foundation):
  """Labelled with the model's own clean predictions (clean accuracy 1), PGD at 16/255 must
  flip most of them."""
  _, f = random_foundation
  x = jnp.asarray(get_dataset('shapes', 'test', image_size=32, seed=0,
                              num_examples=16).arrays['image'], jnp.float32) / 255
  model, params = fx.ZeroShot(f.encode), (f.variables['image'], f.class_embeddings)
  predict = jax.jit(lambda images: jnp.argmax(model(params, images), -1))
  y = predict(x)
  x_adv = pgd.pgd(model, params, x, y, eps=16 / 255, steps=10, random_start=True,
                  key=jax.random.key(0))
  assert float(jnp.abs(x_adv - x).max()) <= 16 / 255 + 1e-6
  assert float(jnp.mean(predict(x_adv) == y)) < 0.5


_EVAL_PROGRAMS = (classification._zero_shot_predict, classification._head_predict,  # pylint: disable=protected-access
                  segmentation._maskclip_batch, segmentation._head_segment,
                  detection._head_detect, detection._patch_tokens, captioning._generate,
                  vqa._answer)


@pytest.mark.slow   # ~50 s on 2 busy cores (load 12), compiling every target's evaluation
def test_evaluate_compiles_once_whatever_images_or_encoder(random_targets):
  c, targets = random_targets
  test = ft.first(get_dataset('shapes', 'test', image_size=32, seed=0, num_examples=32), 16)
  first = ft.evaluate(c, targets, test)
  compiled = [p._cache_size() for p in _EVAL_PROGRAMS]   # pylint: disable=protected-access
  noisy = np.clip(test.arrays['image'] / 255 + np.random.default_rng(0).uniform(
      -0.2, 0.2, test.arrays['image'].shape), 0, 1).astype(np.float32)
  other = jax.tree.map(lambda a: a * 1.1, targets.foundation.variables['image'])
  second = ft.evaluate(c, targets, fx.with_images(test, noisy))
  third = ft.evaluate(c, targets, test, image_params=other)
  assert [p._cache_size() for p in _EVAL_PROGRAMS] == compiled   # pylint: disable=protected-access
  assert [r[:3] for r in first.rows] == [r[:3] for r in second.rows] == [r[:3] for r in third.rows]
  assert first.rows != second.rows and first.rows != third.rows


@pytest.mark.slow   # trains the tiny targets and FARE, every attack: minutes on 2 busy cores
def test_tiny_run_end_to_end_and_resumed(tmp_path):
  c = tiny_config()
  c.targets_workdir = str(tmp_path / 'given_targets')
  section = fx.run(c, str(tmp_path / 'run'))
  tmp_path = tmp_path / 'run'
  titles = [t.caption for t in section.tables]
  assert len(section.tables) == 3 + 5 and any(t.startswith('Checks') for t in titles)
  for table in section.tables[:3]:
    assert [row[0] for row in table.rows] == ['clean (baseline)', *fx.ATTACKS]
    assert len(table.rows[0]) == 1 + len(fx.COLUMNS)
    assert all(np.isfinite(float(cell.split()[0])) for row in table.rows for cell in row[1:])
  for figure in section.figures:
    assert os.path.isfile(tmp_path / figure.path)
  assert len(section.figures) == 4 and len(section.headline) == 5
  assert os.path.isdir(tmp_path / 'fare' / 'checkpoints')
  assert not os.path.exists(tmp_path / 'targets')           # the given targets were reused
  stamps = {p: os.path.getmtime(tmp_path / 'adversarial' / p)
            for p in os.listdir(tmp_path / 'adversarial')}
  again = fx.run(c, str(tmp_path))                          # a relaunch recomputes nothing
  assert [t.rows for t in again.tables[:-1]] == [t.rows for t in section.tables[:-1]]
  assert stamps == {p: os.path.getmtime(tmp_path / 'adversarial' / p)
                    for p in os.listdir(tmp_path / 'adversarial')}


def _synthetic_results() -> fx.Results:
  """Every attack lowers each measurable column by a known share; two columns (MaskCLIP,
  patch-text boxes) do not beat their baselines."""
  def row(drop, clean_scale=1.0):
    out = []
    for i, col in enumerate(fx.COLUMNS):
      clean = 0.5 * clean_scale
      baseline = 0.6 if i in (3, 5) else 0.1
      out.append(fx.Cell(*col, clean, clean * (1 - drop * (2 if col[0] == 'segmentation' else 1)),
                         baseline))
    return out

  drops = {name: 0.1 * (k + 1) / 2 for k, name in enumerate(fx.ATTACKS)}
  matrix = {(name, eps): row(drops[name] * eps / 8) for eps in (4, 8, 16) for name in fx.ATTACKS}
  layers = {part: row(0.05 * (k + 1)) for k, part in enumerate(fx.LAYER_SETS)}
  report = checks_lib.Report((checks_lib.Check('gradients', 'warn', (0.1,), 'x'),), 0.5, 0.0)
  figure = targets_results().figure
  return fx.Results(matrix, layers, {p: ('embed',) for p in fx.LAYER_SETS},
                    {'original tower': row(0.05), 'FARE tower: PRM on FARE': row(0.02, 0.9),
                     'FARE tower: PRM on original': row(0.01, 0.9)},
                    {'no defence: PRM': row(0.05), 'resize-pad: PRM': row(0.01, 0.8),
                     'resize-pad: PRM with EOT': row(0.1, 0.8)},
                    report, 8, {'clean': figure.images, 'PRM 8/255': figure.images * 0.9},
                    {'clean': figure, 'PRM': figure}, {'attacks': (1.0, 2.0)}, 10)


def test_section_is_built_from_the_numbers(tmp_path):
  c = tiny_config()
  section = report.section(c, _synthetic_results(), str(tmp_path))
  text = section.render()
  for figure in section.figures:
    assert os.path.isfile(tmp_path / figure.path)
  # PRM's drop is 5% at 8/255 (10% on the dense head), 2.5% at 4/255 (5% on the dense head,
  # not above DAMAGE); MaskCLIP and patch-text boxes are not measurable.
  assert 'At ℓ∞ 4/255 PRM lowers 1 of the 7 measurable target metrics' in text
  assert 'At ℓ∞ 16/255 PRM lowers 7 of the 7 measurable target metrics' in text
  assert 'the measurable dense targets (segmentation, detection) lose 15% on average' in text
  assert "At 8/255 this is the paper's expected shape" in text
  assert 'Not measurable here: MaskCLIP, patch-text boxes' in text
  assert 'DR (authors) 40%, DR 34%' in text and "the authors' sign transfers better" in text
  assert 'FARE (10 steps at ℓ∞ 4/255) costs 10% of the clean metrics' in text
  assert '0.500 (0.600) †' in text                          # MaskCLIP's clean cell, marked
  assert 'overall warn; not passed: gradients (warn).' in text
  assert section.headline['white-box checks'] == 'warn'
