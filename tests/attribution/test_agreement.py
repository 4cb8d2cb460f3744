"""Tests for lib.attribution.agreement: hand-made answers, scipy / scikit-image parity."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from lib.attribution import agreement

TOPK = {
    'feature_agreement': agreement.feature_agreement,
    'rank_agreement': agreement.rank_agreement,
    'sign_agreement': agreement.sign_agreement,
    'signed_rank_agreement': agreement.signed_rank_agreement,
}


def _maps(seed, shape=(3, 5, 6, 2)):
  # numpy draws: test data needs no compiled PRNG programs.
  return jnp.asarray(np.random.RandomState(seed).normal(size=shape), jnp.float32)


# ---------------------------------------------------------------------------------------
# Hand-made examples. |E1| ranks features 0, 1, 2, 3, 4; |E2| ranks 0, 2, 3, 1, 4.

E1 = jnp.array([[4., -3., 2., -1., .5]])
E2 = jnp.array([[-4., 1., 3., -2., .1]])


@pytest.mark.parametrize('k, expected', [
    # k: (feature, rank, sign, signed rank)
    (2, (1 / 2, 1 / 2, 0, 0)),        # T1={0,1}, T2={0,2}; feature 0 differs in sign
    (3, (2 / 3, 1 / 3, 1 / 3, 0)),    # common {0,2}; only feature 2 agrees in sign
    (4, (1, 1 / 4, 2 / 4, 0)),        # same set; ranks agree at position 0 only
    (5, (1, 2 / 5, 3 / 5, 1 / 5)),    # feature 4 is last in both, positive in both
])
def test_topk_metrics_hand_made(k, expected):
  got = [float(fn(E1, E2, k)[0]) for fn in TOPK.values()]
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_topk_intersection_absolute_or_signed():
  a, b = jnp.array([[3., -5., 1., 0.]]), jnp.array([[2., 1., -6., 0.]])
  # |a|: 1, 0, 2;  |b|: 2, 0, 1;  a: 0, 2, 3;  b: 0, 1, 3.
  np.testing.assert_allclose(agreement.topk_intersection(a, b, 1), [0.])
  np.testing.assert_allclose(agreement.topk_intersection(a, b, 2), [0.5])
  np.testing.assert_allclose(agreement.topk_intersection(a, b, 1, absolute=False), [1.])
  np.testing.assert_allclose(agreement.topk_intersection(a, b, 3, absolute=False), [2 / 3])
  np.testing.assert_allclose(agreement.topk_intersection(a, b, 3),
                             agreement.feature_agreement(a, b, 3))


def test_ties_broken_by_lower_index():
  scores = jnp.array([[1., 3., 3., 0., 3.]])
  np.testing.assert_array_equal(agreement.descending_order(scores), [[1, 2, 4, 0, 3]])
  np.testing.assert_array_equal(agreement.top_features(scores, 3), [[1, 2, 4]])
  np.testing.assert_array_equal(agreement.descending_positions(scores), [[3, 0, 1, 4, 2]])
  # Equal magnitudes: the lower index wins the single top-1 slot in both maps.
  a, b = jnp.array([[2., -2., 1.]]), jnp.array([[-2., 2., 0.]])
  np.testing.assert_allclose(agreement.rank_agreement(a, b, 1), [1.])
  np.testing.assert_allclose(agreement.sign_agreement(a, b, 1), [0.])


# ---------------------------------------------------------------------------------------
# A literal numpy transcription of the definitions (Krishna et al. 2022, §3).


def _reference(a, b, k):
  a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
  out = []
  for ea, eb in zip(a, b):
    ta, tb = np.argsort(-np.abs(ea), kind='stable')[:k], np.argsort(-np.abs(eb), kind='stable')[:k]
    common = set(ta) & set(tb)
    out.append((len(common) / k,
                np.mean(ta == tb),
                sum(np.sign(ea[f]) == np.sign(eb[f]) for f in common) / k,
                np.mean((ta == tb) & (np.sign(ea[ta]) == np.sign(eb[tb])))))
  return np.array(out).T


@pytest.mark.parametrize('k', [1, 7, 60])
def test_topk_metrics_match_reference(k):
  a, b = _maps(0), _maps(1)
  b = b.at[:, :2].set(a[:, :2] * 2)  # some shared top features, so the metrics are not all ~0
  for got, want in zip([fn(a, b, k) for fn in TOPK.values()], _reference(a, b, k)):
    np.testing.assert_allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Whole-ranking metrics.


def test_rank_correlation_matches_scipy_with_ties():
  rng = np.random.RandomState(0)
  a = rng.randint(-4, 5, (4, 30)).astype(np.float32)   # many ties, both signs
  b = rng.randint(-4, 5, (4, 30)).astype(np.float32)
  want = [scipy.stats.spearmanr(np.abs(x), np.abs(y)).statistic for x, y in zip(a, b)]
  np.testing.assert_allclose(agreement.rank_correlation(jnp.asarray(a), jnp.asarray(b)), want,
                             atol=1e-5)
  subset = np.array([3, 0, 17, 8, 29, 11, 5])
  want = [scipy.stats.spearmanr(np.abs(x[subset]), np.abs(y[subset])).statistic
          for x, y in zip(a, b)]
  np.testing.assert_allclose(
      agreement.rank_correlation(jnp.asarray(a), jnp.asarray(b), features=jnp.asarray(subset)),
      want, atol=1e-5)
  per_example = np.stack([rng.permutation(30)[:9] for _ in range(4)])
  want = [scipy.stats.spearmanr(np.abs(x[s]), np.abs(y[s])).statistic
          for x, y, s in zip(a, b, per_example)]
  np.testing.assert_allclose(
      agreement.rank_correlation(jnp.asarray(a), jnp.asarray(b), features=jnp.asarray(per_example)),
      want, atol=1e-5)


def test_average_ranks_match_scipy():
  x = np.random.RandomState(1).randint(0, 6, (3, 40)).astype(np.float32)
  np.testing.assert_allclose(agreement.average_ranks(jnp.asarray(x)),
                             scipy.stats.rankdata(x, axis=-1) - 1)


def _pairwise_reference(a, b):
  a, b = np.abs(np.asarray(a)), np.abs(np.asarray(b))
  out = []
  for ea, eb in zip(a, b):
    pairs = list(itertools.combinations(range(len(ea)), 2))
    out.append(np.mean([np.sign(ea[i] - ea[j]) == np.sign(eb[i] - eb[j]) for i, j in pairs]))
  return np.array(out)


def test_pairwise_rank_agreement_matches_brute_force():
  rng = np.random.RandomState(2)
  a = rng.randint(-3, 4, (3, 25)).astype(np.float32)
  b = rng.randint(-3, 4, (3, 25)).astype(np.float32)
  want = _pairwise_reference(a, b)
  for batch_size in (None, 1, 7):
    np.testing.assert_allclose(
        agreement.pairwise_rank_agreement(jnp.asarray(a), jnp.asarray(b), batch_size=batch_size),
        want, atol=1e-6)
  subset = np.array([4, 1, 20, 9, 13])
  np.testing.assert_allclose(
      agreement.pairwise_rank_agreement(jnp.asarray(a), jnp.asarray(b),
                                        features=jnp.asarray(subset)),
      _pairwise_reference(a[:, subset], b[:, subset]), atol=1e-6)
  np.testing.assert_allclose(
      agreement.pairwise_rank_agreement(jnp.array([[3., 2., 1.]]), jnp.array([[3., 1., 2.]])),
      [2 / 3], atol=1e-6)


# ---------------------------------------------------------------------------------------
# SSIM.


def _smooth_maps(seed, shape=(3, 20, 24)):
  noise = _maps(seed, shape)
  return agreement.gaussian_filter(noise, sigma=2.0, radius=4, padding='edge') * 5 + seed


def test_ssim_matches_skimage():
  skimage_metrics = pytest.importorskip('skimage.metrics')
  a, b = _smooth_maps(0), _smooth_maps(1)
  b = b.at[:, :10].set(a[:, :10] * 3 - 1)  # partly similar

  def unit(h):
    h = np.asarray(h, np.float64)
    return (h - h.min()) / (h.max() - h.min())

  want = [skimage_metrics.structural_similarity(unit(x), unit(y), gaussian_weights=True, sigma=1.5,
                                                use_sample_covariance=False, data_range=1)
          for x, y in zip(a, b)]
  got = agreement.ssim(a, b)
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert np.ptp(want) > 0.05 and min(want) < 0.9  # the cases are not all trivial


def test_ssim_constant_maps():
  flat = jnp.ones((1, 12, 12))
  np.testing.assert_allclose(agreement.ssim(flat, 2 * flat), [1.], atol=1e-6)
  assert float(agreement.ssim(flat, _smooth_maps(0, (1, 12, 12)))[0]) < 0.5


def test_gaussian_filter_matches_scipy():
  ndimage = pytest.importorskip('scipy.ndimage')
  x = np.asarray(_maps(3, (2, 15, 13)))
  want = np.stack([ndimage.gaussian_filter(m.astype(np.float64), 1.5, truncate=5 / 1.5,
                                           mode='nearest') for m in x])
  got = agreement.gaussian_filter(jnp.asarray(x), sigma=1.5, radius=5, padding='edge')
  np.testing.assert_allclose(got, want, atol=1e-5)
  valid = agreement.gaussian_filter(jnp.asarray(x), sigma=1.5, radius=5)
  np.testing.assert_allclose(valid, want[:, 5:-5, 5:-5], atol=1e-5)


# ---------------------------------------------------------------------------------------
# Properties shared by every metric.

ALL = {
    **{name: functools.partial(fn, k=10) for name, fn in TOPK.items()},
    'rank_correlation': agreement.rank_correlation,
    'pairwise_rank_agreement': agreement.pairwise_rank_agreement,
    'ssim': lambda a, b: agreement.ssim(jnp.abs(a).sum(-1), jnp.abs(b).sum(-1)),
}
SHAPE = (2, 12, 12, 2)


@pytest.mark.parametrize('name', ALL)
def test_identical_maps_agree_fully(name):
  a = _maps(4, SHAPE)
  np.testing.assert_allclose(ALL[name](a, a), 1., atol=1e-5)


@pytest.mark.parametrize('name', ALL)
def test_invariant_to_positive_scaling(name):
  a, b = _maps(5, SHAPE), _maps(6, SHAPE)
  np.testing.assert_allclose(ALL[name](a, b), ALL[name](2.5 * a, 0.3 * b), atol=1e-5)


def test_reversed_order():
  f = 9
  a = jnp.arange(1., f + 1)[None]
  b = a[:, ::-1]
  for k in (1, 2, 4):  # k <= F / 2: disjoint top-k sets
    assert float(agreement.feature_agreement(a, b, k)[0]) == 0
    assert float(agreement.sign_agreement(a, b, k)[0]) == 0
  np.testing.assert_allclose(agreement.feature_agreement(a, b, 6), [3 / 6])
  # Only the middle feature keeps its rank.
  np.testing.assert_allclose(agreement.rank_agreement(a, b, f), [1 / f])
  np.testing.assert_allclose(agreement.signed_rank_agreement(a, -b, f), [0.])
  np.testing.assert_allclose(agreement.rank_correlation(a, b), [-1.], atol=1e-6)
  np.testing.assert_allclose(agreement.pairwise_rank_agreement(a, b), [0.])


def test_constant_map_has_undefined_rank_correlation():
  assert np.isnan(agreement.rank_correlation(jnp.ones((1, 5)), _maps(0, (1, 5)))[0])


# ---------------------------------------------------------------------------------------
# All method pairs.


def test_agreement_matrix():
  maps = {'a': _maps(7, SHAPE), 'b': _maps(8, SHAPE), 'c': _maps(9, SHAPE)}
  names = list(maps)
  for metric, kwargs, fn in [
      ('feature_agreement', {'k': 10}, lambda a, b: agreement.feature_agreement(a, b, 10)),
      ('rank_correlation', {}, agreement.rank_correlation)]:
    matrix = agreement.agreement_matrix(maps, metric, **kwargs)
    assert matrix.shape == (2, 3, 3)
    for (i, p), (j, q) in itertools.product(enumerate(names), repeat=2):
      np.testing.assert_allclose(matrix[:, i, j], fn(maps[p], maps[q]), atol=1e-6)
    np.testing.assert_allclose(matrix, matrix.transpose(0, 2, 1), atol=1e-6)
    np.testing.assert_allclose(jnp.diagonal(matrix, axis1=1, axis2=2), 1., atol=1e-6)
  custom = lambda a, b: -jnp.abs(a - b).reshape(a.shape[0], -1).mean(-1)
  matrix = agreement.agreement_matrix(maps, custom)
  np.testing.assert_allclose(matrix[:, 0, 1], custom(maps["a"], maps["b"]), atol=1e-6)
  heat = {name: jnp.abs(m).sum(-1) for name, m in maps.items()}
  np.testing.assert_allclose(agreement.agreement_matrix(heat, 'ssim')[:, 1, 2],
                             agreement.ssim(heat['b'], heat['c']), atol=1e-6)


def test_agreement_matrix_errors():
  maps = {'a': _maps(7, SHAPE), 'b': _maps(8, SHAPE)}
  with pytest.raises(ValueError, match='k is required'):
    agreement.agreement_matrix(maps, 'rank_agreement')
  with pytest.raises(ValueError, match='takes no k'):
    agreement.agreement_matrix(maps, 'rank_correlation', k=3)
  with pytest.raises(ValueError, match='metric'):
    agreement.agreement_matrix(maps, 'kendall')
  with pytest.raises(ValueError, match=r"maps\['b'\]"):
    agreement.agreement_matrix({'a': maps['a'], 'b': maps['b'][:, :5]}, 'rank_correlation')
  with pytest.raises(ValueError, match='heatmaps1'):  # SSIM needs [B, H, W]
    agreement.agreement_matrix(maps, 'ssim')
  with pytest.raises(ValueError, match='one value per example'):
    agreement.agreement_matrix(maps, lambda a, b: a - b)
  with pytest.raises(ValueError, match='non-empty'):
    agreement.agreement_matrix({}, 'ssim')


# ---------------------------------------------------------------------------------------
# Validation and jit.


@pytest.mark.parametrize('name', TOPK)
def test_topk_errors(name):
  fn = TOPK[name]
  a = _maps(0, (2, 4, 4))
  with pytest.raises(ValueError, match=r'k must be in \[1, 16\]'):
    fn(a, a, 17)
  with pytest.raises(ValueError, match='k must be in'):
    fn(a, a, 0)
  with pytest.raises(ValueError, match='Python int'):
    fn(a, a, 2.0)
  with pytest.raises(ValueError, match='same shape'):
    fn(a, a[:, :3], 2)
  with pytest.raises(ValueError, match='maps2 contains NaN'):
    fn(a, a.at[0, 0, 0].set(jnp.nan), 2)
  with pytest.raises(ValueError, match='floating-point'):
    fn(a, a.astype(jnp.int32), 2)
  with pytest.raises(ValueError, match='maps1 must have shape'):
    fn(a[0, 0], a[0, 0], 2)


def test_ranking_errors():
  a = _maps(0, (2, 4, 4))
  with pytest.raises(ValueError, match='features must hold indices'):
    agreement.rank_correlation(a, a, features=jnp.array([0, 16]))
  with pytest.raises(ValueError, match='repeat'):
    agreement.pairwise_rank_agreement(a, a, features=jnp.array([1, 2, 1]))
  with pytest.raises(ValueError, match='features must have shape'):
    agreement.rank_correlation(a, a, features=jnp.zeros((3, 4), jnp.int32))
  with pytest.raises(ValueError, match='integer'):
    agreement.rank_correlation(a, a, features=jnp.array([0., 1.]))
  with pytest.raises(ValueError, match='batch_size'):
    agreement.pairwise_rank_agreement(a, a, batch_size=0)
  with pytest.raises(ValueError, match='heatmaps1 must have rank 3'):
    agreement.ssim(a[..., None], a[..., None])
  with pytest.raises(ValueError, match='at least 11'):
    agreement.ssim(a, a)
  with pytest.raises(ValueError, match='heatmaps2 contains NaN'):
    agreement.ssim(_maps(0, (1, 12, 12)), jnp.full((1, 12, 12), jnp.inf))


def test_metrics_jit_with_static_k():
  a, b = _maps(0), _maps(1)
  jitted = jax.jit(agreement.feature_agreement, static_argnames='k')
  np.testing.assert_allclose(jitted(a, b, k=12), agreement.feature_agreement(a, b, 12))
  np.testing.assert_allclose(jax.jit(agreement.rank_correlation)(a, b),
                             agreement.rank_correlation(a, b))
  h1, h2 = _smooth_maps(0), _smooth_maps(1)
  np.testing.assert_allclose(jax.jit(agreement.ssim)(h1, h2), agreement.ssim(h1, h2), atol=1e-6)
