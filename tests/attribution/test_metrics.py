"""Tests for lib.attribution.metrics: localisation, deletion/insertion, sanity checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import models
from lib.attribution import metrics


def _uniform(seed, shape):
  # numpy draws: test data needs no compiled PRNG programs.
  return jnp.asarray(np.random.RandomState(seed).uniform(size=shape), jnp.float32)


@pytest.fixture(scope='module')
def cnn():
  """The small CNN, its variables, inputs, labels, and plain gradients of the labelled logits."""
  model = models.get_model('cnn', input_shape=(16, 16, 3), num_classes=4)
  variables = model.init(jax.random.key(0))
  x = _uniform(20, (2, 16, 16, 3))
  labels = jnp.array([0, 2])

  def attribute(params):
    score = lambda images: jnp.take_along_axis(model.apply(params, images).logits,
                                               labels[:, None], axis=1).sum()
    return jax.grad(score)(x)

  return model, variables, x, labels, attribute


# ---------------------------------------------------------------------------------------
# Heatmaps and localisation.


def test_to_heatmap_reductions():
  maps = jnp.array([[[[1., -2., 0.5]]]])
  np.testing.assert_allclose(metrics.to_heatmap(maps), [[[3.5]]])
  np.testing.assert_allclose(metrics.to_heatmap(maps, 'sum'), [[[-0.5]]])
  np.testing.assert_allclose(metrics.to_heatmap(maps, 'max_abs'), [[[2.]]])
  with pytest.raises(ValueError, match='reduce'):
    metrics.to_heatmap(maps, 'mean')
  with pytest.raises(ValueError, match='maps must have rank 4'):
    metrics.to_heatmap(maps[..., 0])


MASKS = jnp.zeros((3, 6, 6), jnp.int32).at[:, 1:3, 1:3].set(1)  # a 2 x 2 square in every example


def test_pointing_game():
  heat = jnp.zeros((3, 6, 6))
  heat = heat.at[0, 2, 1].set(1.)         # inside the square
  heat = heat.at[1, 5, 5].set(1.)         # sqrt(18) from the nearest mask pixel (2, 2)
  heat = heat.at[2, 2, 4].set(1.)         # 2 right of (2, 2), tied with (0, 0), which is
  heat = heat.at[2, 0, 0].set(1.)         # first in row-major order: sqrt(2) from (1, 1)
  np.testing.assert_array_equal(metrics.pointing_game(heat, MASKS), [1, 0, 0])
  np.testing.assert_array_equal(metrics.pointing_game(heat, MASKS, tolerance=1.5), [1, 0, 1])
  np.testing.assert_array_equal(metrics.pointing_game(heat, MASKS, tolerance=4.3), [1, 1, 1])
  np.testing.assert_array_equal(metrics.pointing_game(heat, MASKS.astype(bool)), [1, 0, 0])


def test_relevance_mass_and_rank_accuracy():
  heat = jnp.zeros((3, 6, 6))
  heat = heat.at[0, 1:3, 1:3].set(1.)                           # all relevance inside
  heat = heat.at[1, 1, 1].set(3.).at[1, 5, 5].set(1.).at[1, 0, 0].set(-4.)
  heat = heat.at[2].set(-1.)                                    # no positive relevance
  np.testing.assert_allclose(metrics.relevance_mass_accuracy(heat, MASKS), [1., 0.75, 0.])
  # Example 1: top-4 pixels are (1,1) = 3, (5,5) = 1, then zeros in row-major order:
  # (0,1), (0,2); only (1,1) is inside. Example 2: all tied, top-4 = row 0, none inside.
  np.testing.assert_allclose(metrics.relevance_rank_accuracy(heat, MASKS), [1., 0.25, 0.])
  np.testing.assert_allclose(jax.jit(metrics.relevance_rank_accuracy)(heat, MASKS), [1., 0.25, 0.])


def test_localisation_errors():
  heat = jnp.zeros((3, 6, 6))
  with pytest.raises(ValueError, match='masks must have the shape'):
    metrics.pointing_game(heat, MASKS[:, :5])
  with pytest.raises(ValueError, match='only 0 and 1'):
    metrics.relevance_mass_accuracy(heat, MASKS * 2)
  with pytest.raises(ValueError, match='at least one pixel'):
    metrics.relevance_rank_accuracy(heat, MASKS.at[1].set(0))
  with pytest.raises(ValueError, match='heatmaps must have rank 3'):
    metrics.pointing_game(heat[..., None], MASKS[..., None])
  with pytest.raises(ValueError, match='heatmaps contains NaN'):
    metrics.pointing_game(heat.at[0, 0, 0].set(jnp.nan), MASKS)
  with pytest.raises(ValueError, match='tolerance'):
    metrics.pointing_game(heat, MASKS, tolerance=-1)


# ---------------------------------------------------------------------------------------
# Deletion and insertion on a linear model, where w * x is the exact attribution.

SHAPE = (3, 8, 8, 2)
W = 0.1 + _uniform(10, SHAPE[1:])              # positive weights


def linear_apply(w, x):
  """Two logits, [w . x, 0]: every pixel's contribution w * x is non-negative."""
  score = (w * x).reshape(x.shape[0], -1).sum(-1)
  return jnp.stack([score, jnp.zeros_like(score)], axis=-1)


def logit(logits, target):
  return jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]


def test_deletion_and_insertion_with_exact_heatmap():
  x = _uniform(11, SHAPE)
  target = jnp.zeros(3, jnp.int32)
  exact = (W * x).sum(-1)
  shuffled = _uniform(12, SHAPE[:3])  # a random ordering of the pixels
  n_steps = 16

  deletion = metrics.deletion_curve(linear_apply, W, x, exact, target, n_steps=n_steps,
                                    score_fn=logit)
  # Removing the k largest contributions leaves the sum of the others.
  contributions = np.sort(np.asarray(exact).reshape(3, -1), axis=-1)[:, ::-1]
  counts = np.arange(n_steps + 1) * 64 // n_steps
  remaining = np.stack([contributions[:, c:].sum(-1) for c in counts], axis=-1)
  np.testing.assert_allclose(deletion.scores, remaining, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(deletion.fractions, np.linspace(0, 1, n_steps + 1))
  assert np.all(np.diff(deletion.scores, axis=-1) <= 0)
  np.testing.assert_allclose(deletion.auc, np.trapezoid(remaining, dx=1 / n_steps), rtol=1e-5)
  random_deletion = metrics.deletion_curve(linear_apply, W, x, shuffled, target, n_steps=n_steps,
                                           score_fn=logit)
  assert np.all(deletion.auc < random_deletion.auc)
  in_jit = jax.jit(lambda images, heat: metrics.deletion_curve(
      linear_apply, W, images, heat, target, n_steps=n_steps, score_fn=logit).auc)
  np.testing.assert_allclose(in_jit(x, exact), deletion.auc, rtol=1e-6)

  # Default score: softmax probability of class 0 = sigmoid(w . x), monotone in the logit.
  insertion = metrics.insertion_curve(linear_apply, W, x, exact, target, n_steps=n_steps,
                                      baseline='zeros')
  assert np.all(np.diff(insertion.scores, axis=-1) >= 0)
  np.testing.assert_allclose(insertion.scores[:, 0], 0.5)   # zero image: equal logits
  random_insertion = metrics.insertion_curve(linear_apply, W, x, shuffled, target,
                                             n_steps=n_steps, baseline='zeros')
  assert np.all(insertion.auc > random_insertion.auc)
  # Steps evaluated a few at a time give the same curve.
  chunked = metrics.insertion_curve(linear_apply, W, x, exact, target, n_steps=n_steps,
                                    baseline='zeros', batch_size=5)
  np.testing.assert_allclose(chunked.scores, insertion.scores, atol=1e-6)


def test_curve_endpoints_on_cnn(cnn):
  model, variables, x, target, _ = cnn
  heat = _uniform(14, (2, 16, 16))
  prob = jax.jit(lambda images: metrics.probability(model.apply(variables, images).logits, target))
  mean = jnp.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape)

  deletion = metrics.deletion_curve(model.apply, variables, x, heat, target, n_steps=4,
                                    baseline='mean')
  np.testing.assert_allclose(deletion.scores[:, 0], prob(x), atol=1e-5)
  np.testing.assert_allclose(deletion.scores[:, -1], prob(mean), atol=1e-5)
  grey = jnp.full_like(x, 0.5)
  insertion = metrics.insertion_curve(model.apply, variables, x, heat, target, n_steps=4,
                                      baseline=grey)
  np.testing.assert_allclose(insertion.scores[:, 0], prob(grey), atol=1e-5)
  np.testing.assert_allclose(insertion.scores[:, -1], prob(x), atol=1e-5)
  assert deletion.scores.shape == insertion.scores.shape == (2, 5)


def test_blur_baseline():
  target = jnp.zeros(3, jnp.int32)
  flat = jnp.full(SHAPE, 0.3)  # blurring a constant image leaves it unchanged
  curve = metrics.insertion_curve(linear_apply, W, flat, _uniform(1, SHAPE[:3]), target, n_steps=2,
                                  score_fn=logit)
  np.testing.assert_allclose(curve.scores, np.broadcast_to(logit(linear_apply(W, flat), target)[:, None],
                                                           (3, 3)), rtol=1e-5)
  x = _uniform(2, SHAPE)
  curve = metrics.insertion_curve(linear_apply, W, x, _uniform(1, SHAPE[:3]), target, n_steps=2,
                                  score_fn=logit)
  assert np.all(np.abs(curve.scores[:, 0] - logit(linear_apply(W, x), target)) > 1e-3)


def test_curve_errors():
  x = _uniform(11, SHAPE)
  heat = _uniform(12, SHAPE[:3])
  target = jnp.zeros(3, jnp.int32)
  run = lambda **kw: metrics.deletion_curve(
      linear_apply, W, kw.pop('x', x), kw.pop('heat', heat), kw.pop('target', target), **kw)
  with pytest.raises(ValueError, match=r'target must hold class indices in \[0, 2\)'):
    run(target=jnp.array([0, 2, 1]))
  with pytest.raises(ValueError, match='target must have 3 entries'):
    run(target=jnp.zeros(2, jnp.int32))
  with pytest.raises(ValueError, match='heatmaps must have shape'):
    run(heat=heat[:, :4])
  with pytest.raises(ValueError, match=r'n_steps must be in \[1, 64\]'):
    run(n_steps=65)
  with pytest.raises(ValueError, match='baseline'):
    run(baseline='noise')
  with pytest.raises(ValueError, match='baseline must have pixels'):
    run(baseline=x - 1)
  with pytest.raises(ValueError, match='x must have pixels in'):
    run(x=x * 2)
  with pytest.raises(ValueError, match='score_fn must return one score'):
    run(score_fn=lambda logits, t: logits)
  with pytest.raises(ValueError, match='batch_size'):
    run(n_steps=4, batch_size=6)


# ---------------------------------------------------------------------------------------
# Model randomisation (Adebayo et al. 2018) on a small CNN with plain gradients.

LAYERS = ['params/head', 'params/convs/2', 'params/convs/1', 'params/convs/0']


def test_cascading_randomisation_drops_similarity(cnn):
  _, variables, _, _, attribute = cnn
  sim = metrics.model_randomisation(attribute, variables, LAYERS, key=jax.random.key(1))
  assert sim.spearman.shape == sim.ssim.shape == (2, len(LAYERS) + 1)
  np.testing.assert_allclose(sim.spearman[:, 0], 1., atol=1e-5)
  np.testing.assert_allclose(sim.ssim[:, 0], 1., atol=1e-5)
  assert np.all(sim.spearman[:, 1:] < 0.6) and np.all(sim.ssim[:, 1:] < 0.6)
  again = metrics.model_randomisation(attribute, variables, LAYERS, key=jax.random.key(1))
  np.testing.assert_array_equal(again.spearman, sim.spearman)  # the key fixes the draws

  independent = metrics.model_randomisation(attribute, variables, LAYERS, key=jax.random.key(1),
                                            mode='independent')
  np.testing.assert_allclose(independent.spearman[:, 0], 1., atol=1e-5)
  # Stage 1 randomises the same group (the head) with the same key in both modes.
  np.testing.assert_allclose(independent.spearman[:, 1], sim.spearman[:, 1], atol=1e-5)
  assert np.all(independent.spearman[:, 1:] < 0.6)


def test_randomisation_errors(cnn):
  _, variables, _, _, attribute = cnn
  key = jax.random.key(1)
  with pytest.raises(ValueError, match='matches no parameter'):
    metrics.model_randomisation(attribute, variables, ['params/tail'], key=key)
  with pytest.raises(ValueError, match='must not overlap'):
    metrics.model_randomisation(attribute, variables, ['params/convs', 'params/convs/1'], key=key)
  with pytest.raises(ValueError, match='typed PRNG key'):
    metrics.model_randomisation(attribute, variables, LAYERS, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='mode'):
    metrics.model_randomisation(attribute, variables, LAYERS, key=key, mode='backwards')
  with pytest.raises(ValueError, match='non-empty'):
    metrics.model_randomisation(attribute, variables, [], key=key)
  with pytest.raises(ValueError, match='H, W >= 11'):
    metrics.model_randomisation(lambda p: attribute(p)[:, :8], variables, LAYERS, key=key)


# ---------------------------------------------------------------------------------------
# Class sensitivity: logits z(x) + t(x) * 1 with t dominating.

D, K = 48, 5


def _shifted_linear(scale):
  rng = np.random.RandomState(30)
  w, v = jnp.asarray(rng.normal(size=(D, K)), jnp.float32), jnp.asarray(rng.normal(size=D), jnp.float32)
  return lambda x: x @ w + scale * (x @ v)[:, None]


@pytest.mark.parametrize('scale, collapsed', [(0., False), (100., True)])
def test_class_sensitivity(scale, collapsed):
  logits_fn = _shifted_linear(scale)
  x = _uniform(31, (4, D))

  def attribute(target):
    return jax.grad(lambda inputs: jnp.take_along_axis(logits_fn(inputs), target[:, None],
                                                       axis=1).sum())(x)

  top, other = metrics.contrast_targets(logits_fn(x))
  sim = metrics.class_sensitivity(attribute, top, other, k=10)
  if collapsed:
    assert np.all(sim.spearman > 0.99) and np.all(sim.feature_agreement >= 0.9)
  else:
    assert np.all(sim.spearman < 0.6) and np.all(sim.feature_agreement < 0.9)


def test_class_sensitivity_errors():
  attribute = lambda t: jnp.ones((3, 8)) * t[:, None].astype(jnp.float32)
  t = jnp.array([0, 1, 2])
  with pytest.raises(ValueError, match='differ'):
    metrics.class_sensitivity(attribute, t, t.at[0].set(1), k=2)
  with pytest.raises(ValueError, match='other_targets must have the shape'):
    metrics.class_sensitivity(attribute, t, t[:2] + 1, k=2)
  with pytest.raises(ValueError, match='integer'):
    metrics.class_sensitivity(attribute, t, t.astype(jnp.float32) + 0.5, k=2)
  with pytest.raises(ValueError, match=r'k must be in \[1, 8\]'):
    metrics.class_sensitivity(attribute, t, t + 1, k=9)
  with pytest.raises(ValueError, match='must return maps'):
    metrics.class_sensitivity(lambda t: jnp.ones(3), t, t + 1, k=2)


def test_contrast_targets():
  logits = jnp.array([[0.1, 2.0, -1.0], [1., 1., 1.], [5., -3., 0.]])
  top, least = metrics.contrast_targets(logits)
  np.testing.assert_array_equal(top, [1, 0, 0])
  np.testing.assert_array_equal(least, [2, 1, 1])   # a constant row still gets another class
  logits = jnp.asarray(np.random.RandomState(0).normal(size=(500, 4)), jnp.float32)
  top, other = metrics.contrast_targets(logits, key=jax.random.key(1))
  assert np.all(top != other) and set(np.asarray(other).tolist()) == {0, 1, 2, 3}
  with pytest.raises(ValueError, match='typed PRNG key'):
    metrics.contrast_targets(logits, key=0)
