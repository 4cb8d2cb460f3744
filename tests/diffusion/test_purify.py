"""lib/diffusion/purify.py: DiffPure as a stochastic model — keys, gradients (exact, finite
differences, BPDA), memory with per-step remat, compile once, lib.attacks on it, bad inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.attacks import evaluate, objective, pgd
from lib.diffusion import (PurifiedClassifier, Purifier, PurifierConfig, PurifierParams, Schedule,
                           analysis, purify)
from tests.diffusion.toys import (IMAGE_SHAPE, init_classifier, init_mlp, linear_classifier,
                                  mlp_denoiser, uniform_images)

CONFIG = PurifierConfig(t_star=0.02, num_steps=4)
PARAMS = PurifierParams(init_mlp(0), init_classifier(1))
X = uniform_images(2, (4, *IMAGE_SHAPE), 0.05, 0.95)
Y = jnp.asarray([0, 1, 2, 0], jnp.int32)
MODEL = PurifiedClassifier(mlp_denoiser, linear_classifier, CONFIG)


@pytest.mark.parametrize('sampler', ['sde', 'ode', 'ddpm', 'ddim'])
def test_every_sampler_purifies_reproducibly(sampler):
  # DDIM (η = 0) with one step: the output is x̂₀ of the forward-noised input, checked below.
  config = PurifierConfig(t_star=0.02, num_steps=1 if sampler == 'ddim' else 4, sampler=sampler)
  run = lambda k: purify.purify(mlp_denoiser, PARAMS.denoiser, X, key=k, config=config)
  a, b, c = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
  assert a.shape == X.shape and bool(jnp.all(jnp.isfinite(a)))
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c).max()) > 1e-3  # the forward noise differs even for 'ode'
  assert float(jnp.abs(a - X).max()) < 1.0   # t* = 0.02: mild noise, a random denoiser
  if sampler == 'ddim':
    # Forward noising with the discrete ᾱ_19 (DiffPure's a[t - 1]) and the key's first half.
    alpha = float(Schedule().alpha_bar_at(19))

    @jax.jit
    def expected(x, key):
      noise = jax.random.normal(jax.random.split(key)[0], x.shape)
      u = alpha ** 0.5 * (2 * x - 1) + (1 - alpha) ** 0.5 * noise
      eps = mlp_denoiser(PARAMS.denoiser, u, jnp.full((4,), 19.0))
      return ((u - (1 - alpha) ** 0.5 * eps) / alpha ** 0.5 + 1) / 2

    np.testing.assert_allclose(a, expected(X, jax.random.key(3)), atol=1e-5)


def _loss(model, params, x, key):
  return jnp.sum(jax.nn.log_softmax(model(params, x, key=key).logits)[jnp.arange(4), Y])


def test_gradient_through_the_attack_objective_matches_finite_differences():
  """The attack library's gradient (objective.loss_and_grad: CE, model key) is exact."""
  key = jax.random.key(7)
  ce = objective.make_loss('ce')
  _, _, grad = jax.jit(lambda x, k: objective.loss_and_grad(MODEL, PARAMS, x, Y, loss=ce,
                                                            key=k))(X, key)
  assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
  direction = jnp.asarray(np.random.default_rng(8).normal(size=X.shape), jnp.float32)
  direction = direction / jnp.linalg.norm(direction)
  h = 1e-2  # X stays inside [0, 1] along ±h·direction
  numeric = (_loss(MODEL, PARAMS, X - h * direction, key)
             - _loss(MODEL, PARAMS, X + h * direction, key)) / (2 * h)  # CE = −log p_y
  np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(numeric), rtol=2e-2)


def test_bpda_forward_purifies_and_backward_is_the_identity():
  bpda_model = PurifiedClassifier(mlp_denoiser, linear_classifier,
                                  PurifierConfig(t_star=0.02, num_steps=4, bpda=True))
  key = jax.random.key(7)
  value, through = jax.value_and_grad(_loss, argnums=2)(bpda_model, PARAMS, X, key)
  np.testing.assert_allclose(value, _loss(MODEL, PARAMS, X, key), rtol=1e-6)
  purified = purify.purify(mlp_denoiser, PARAMS.denoiser, X, key=key, config=CONFIG)
  at_purified = jax.grad(lambda u: jnp.sum(jax.nn.log_softmax(
      linear_classifier(PARAMS.classifier, u))[jnp.arange(4), Y]))(purified)
  np.testing.assert_allclose(through, at_purified, atol=1e-6)


def _temp_bytes(num_steps, remat):
  # The ODE sampler (no noise draws) compiles fastest; every sampler shares `sample`'s remat.
  model = PurifiedClassifier(mlp_denoiser, linear_classifier,
                             PurifierConfig(t_star=0.02, num_steps=num_steps, remat=remat,
                                            sampler='ode'))
  params = PurifierParams(init_mlp(0, hidden=1024), PARAMS.classifier)
  x = jnp.zeros((16, *IMAGE_SHAPE))
  grad = jax.jit(jax.grad(lambda x, k: jnp.sum(model(params, x, key=k).logits)))
  return grad.lower(x, jax.random.key(0)).compile().memory_analysis().temp_size_in_bytes


def test_remat_keeps_memory_flat_in_the_number_of_steps():
  with_remat = [_temp_bytes(n, True) for n in (4, 16)]
  without = [_temp_bytes(n, False) for n in (4, 16)]
  growth = lambda sizes: sizes[1] - sizes[0]
  # Without remat every step stores the denoiser's [16, 1024] activations; with remat only
  # the [16, 48] sample carried between steps (the unavoidable part).
  assert growth(without) > 4 * max(growth(with_remat), 1), (with_remat, without)
  assert with_remat[1] < without[1]


def test_compiles_once_across_keys_and_inputs():
  traces = []

  def counting(params, x, t):
    traces.append(1)
    return mlp_denoiser(params, x, t)

  model = PurifiedClassifier(counting, linear_classifier, CONFIG)
  for seed in range(3):
    model(PARAMS, uniform_images(seed, X.shape), key=jax.random.key(seed))
  # An equal model (same functions and config) hits the same compiled program.
  PurifiedClassifier(counting, linear_classifier, PurifierConfig(t_star=0.02, num_steps=4))(
      PARAMS, X, key=jax.random.key(9))
  assert len(traces) == 1  # one trace of the scanned step body
  for seed in range(2):  # the purifier alone: one more program, compiled once
    purify.purify(counting, PARAMS.denoiser, X, key=jax.random.key(seed), config=CONFIG)
  assert len(traces) == 2


def test_t_star_as_an_argument_compiles_once_and_equals_the_static_config():
  traces = []

  def counting(params, x, t):
    traces.append(1)
    return mlp_denoiser(params, x, t)

  traced = PurifiedClassifier(counting, linear_classifier, PurifierConfig(t_star=None,
                                                                          num_steps=4))
  key = jax.random.key(5)
  logits = {t: traced(PurifierParams(PARAMS.denoiser, PARAMS.classifier, jnp.float32(t)), X,
                      key=key).logits for t in (0.02, 0.05, 0.1)}
  assert len(traces) == 1
  # The grid in float32 from a traced t* against float64 from a static one (MODEL: 0.02).
  np.testing.assert_allclose(logits[0.02], MODEL(PARAMS, X, key=key).logits, rtol=1e-5,
                             atol=1e-5)
  assert float(jnp.abs(logits[0.1] - logits[0.02]).max()) > 1e-3  # t* does change the output
  # The attack library's programs take t* with the params: one PGD program for the grid.
  sizes = []
  for t_star in (0.05, 0.1):
    pgd.pgd(traced, PurifierParams(PARAMS.denoiser, PARAMS.classifier, jnp.float32(t_star)),
            X, Y, eps=0.1, steps=1, key=key, eot=2, randomness='fixed')
    sizes.append(pgd._pgd._cache_size())
  assert sizes[0] == sizes[1] and len(traces) == 1  # (jit reuses the model's trace inside)
  # The purifier alone takes the same params.
  spread = analysis.spread_over_draws(Purifier(mlp_denoiser, traced.config),
                                      PurifierParams(PARAMS.denoiser, None, jnp.float32(0.05)),
                                      X, key=key, draws=2)
  assert float(spread.between_draws.min()) > 0


def test_bad_t_star_arguments_are_value_errors():
  key = jax.random.key(0)
  traced = PurifiedClassifier(mlp_denoiser, linear_classifier,
                              PurifierConfig(t_star=None, num_steps=4))
  with_t = lambda t: PurifierParams(PARAMS.denoiser, PARAMS.classifier, t)
  with pytest.raises(ValueError, match='t_star must be given'):
    traced(PARAMS, X, key=key)
  with pytest.raises(ValueError, match='t_star must be in'):
    traced(with_t(jnp.float32(0.1234)), X, key=key)
  with pytest.raises(ValueError, match='t_star must be a float scalar'):
    traced(with_t(jnp.asarray([0.1, 0.2])), X, key=key)
  with pytest.raises(ValueError, match='t_star is set twice'):
    MODEL(with_t(jnp.float32(0.1)), X, key=key)
  with pytest.raises(ValueError, match='params must be PurifierParams'):
    Purifier(mlp_denoiser, traced.config)(PARAMS.denoiser, X, key=key)
  for kwargs in (dict(), dict(num_steps=4, sampler='ddpm')):
    with pytest.raises(ValueError, match='t_star=None'):
      PurifierConfig(t_star=None, **kwargs)


@pytest.mark.slow
def test_the_attack_library_attacks_it_with_fixed_and_fresh_randomness():
  key = jax.random.key(11)
  kwargs = dict(eps=0.1, steps=2, key=key, eot=2)
  fixed = pgd.pgd(MODEL, PARAMS, X, Y, randomness='fixed', **kwargs)
  fresh = pgd.pgd(MODEL, PARAMS, X, Y, randomness='fresh', **kwargs)
  for x_adv in (fixed, fresh):
    assert float(jnp.abs(x_adv - X).max()) <= 0.1 + 1e-6
  clean = evaluate.robust_accuracy(MODEL, PARAMS, X, Y, key=key, draws=2).mean
  attacked = evaluate.robust_accuracy(MODEL, PARAMS, fixed, Y, key=key, draws=2).mean
  assert float(attacked) <= float(clean)


def test_analysis_of_the_purifier_vmaps_over_noise_draws():
  spread = analysis.spread_over_draws(Purifier(mlp_denoiser, CONFIG), PARAMS.denoiser, X,
                                      key=jax.random.key(0), draws=3)
  assert spread.mean.shape == (4,) and float(spread.between_draws.min()) > 0


@pytest.mark.parametrize('kwargs, name', [
    (dict(t_star=0.0), 't_star'), (dict(t_star=1.5), 't_star'), (dict(t_star=0.1234), 't_star'),
    (dict(num_steps=0), 'num_steps'), (dict(num_steps=2.0), 'num_steps'),
    (dict(sampler='ddpm', t_star=0.01, num_steps=11), 'num_steps'),
    (dict(sampler='heun'), 'sampler'), (dict(num_train_timesteps=4000), 'num_train_timesteps'),
    (dict(t_min=0.2), 't_min'), (dict(variance_type='learned'), 'variance_type'),
    (dict(eta=-0.5), 'eta'), (dict(remat='yes'), 'remat'), (dict(schedule='linear'), 'schedule'),
])
def test_bad_configs_are_value_errors(kwargs, name):
  with pytest.raises(ValueError, match=name):
    PurifierConfig(**kwargs)


def test_bad_calls_are_value_errors():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match='x must have pixels in'):
    MODEL(PARAMS, X * 2 - 0.5, key=key)
  with pytest.raises(ValueError, match='x must have rank 4'):
    MODEL(PARAMS, X[0], key=key)
  with pytest.raises(ValueError, match='key'):
    MODEL(PARAMS, X, key=0)
  with pytest.raises(ValueError, match='config'):
    purify.purify(mlp_denoiser, PARAMS.denoiser, X, key=key, config={'t_star': 0.1})
  with pytest.raises(ValueError, match='denoiser'):
    PurifiedClassifier(None, linear_classifier, CONFIG)
  with pytest.raises(ValueError, match='classifier'):
    PurifiedClassifier(mlp_denoiser, 'wrn', CONFIG)
