"""lib/attacks/pgd.py: parity with torchattacks, restarts, compile-once, vmaps, randomness,
and the ValueErrors of bad input."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchattacks

from lib.attacks import evaluate, projections
from lib.attacks.pgd import fgsm, pgd, random_start

EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 5
EPS_L2, ALPHA_L2 = 0.5, 0.1


def _max_diff(ours, ref) -> float:
  return float(np.abs(np.asarray(ours) - ref).max())


# --- parity with torchattacks (no random start: deterministic, same examples) ---

def test_fgsm_matches_torchattacks(twin):
  ours = fgsm(twin.apply, twin.variables, twin.x, twin.y, eps=EPS)
  ref = torchattacks.FGSM(twin.net, eps=EPS)(twin.to_torch(twin.x), twin.torch_y)
  assert _max_diff(ours, twin.from_torch(ref)) <= 1e-5


def test_pgd_linf_matches_torchattacks(twin):
  ours = pgd(twin.apply, twin.variables, twin.x, twin.y, eps=EPS, step_size=ALPHA, steps=STEPS)
  ref = torchattacks.PGD(twin.net, eps=EPS, alpha=ALPHA, steps=STEPS,
                         random_start=False)(twin.to_torch(twin.x), twin.torch_y)
  assert _max_diff(ours, twin.from_torch(ref)) <= 1e-5


def test_pgd_l2_matches_torchattacks(twin):
  ours = pgd(twin.apply, twin.variables, twin.x, twin.y, eps=EPS_L2, norm='l2',
             step_size=ALPHA_L2, steps=STEPS)
  ref = torchattacks.PGDL2(twin.net, eps=EPS_L2, alpha=ALPHA_L2, steps=STEPS,
                           random_start=False)(twin.to_torch(twin.x), twin.torch_y)
  assert _max_diff(ours, twin.from_torch(ref)) <= 1e-5


def test_targeted_pgd_matches_torchattacks(twin):
  target = ((twin.y + 2) % 5).astype(np.int32)
  ours = pgd(twin.apply, twin.variables, twin.x, twin.y, eps=EPS, step_size=ALPHA, steps=STEPS,
             target=target)
  attack = torchattacks.PGD(twin.net, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False)
  attack.set_mode_targeted_by_function(lambda images, labels: torch.from_numpy(target).long(),
                                       quiet=True)
  ref = attack(twin.to_torch(twin.x), twin.torch_y)
  assert _max_diff(ours, twin.from_torch(ref)) <= 1e-5


# --- the threat model, random starts, vmaps and compile-once ---

@pytest.mark.parametrize('norm,eps', [('linf', EPS), ('l2', EPS_L2)])
def test_random_start_stays_in_the_threat_model_and_weakens_the_model(twin, norm, eps):
  x_adv = pgd(twin.apply, twin.variables, twin.x, twin.y, eps=eps, norm=norm, steps=STEPS,
              random_start=True, key=jax.random.key(0))
  dist = projections.per_example_norm(x_adv - twin.x, norm)
  assert float(dist.max()) <= eps * (1 + 1e-5)
  assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
  clean = evaluate.robust_accuracy(twin.apply, twin.variables, jnp.asarray(twin.x), twin.y)
  robust = evaluate.robust_accuracy(twin.apply, twin.variables, x_adv, twin.y)
  assert float(robust.mean) < float(clean.mean)


def test_random_start_draws_as_torchattacks():
  x = jnp.full((1024, 2, 2, 3), 0.5, jnp.float32)  # far from the box: no clipping
  linf = np.asarray(random_start(jax.random.key(0), x, 0.1, 'linf') - x)
  assert np.abs(linf).max() <= 0.1 and abs(linf.mean()) < 1e-3  # U(-ε, ε) per pixel
  l2 = random_start(jax.random.key(1), x, 0.4, 'l2') - x
  radius = np.asarray(projections.per_example_norm(l2, 'l2')) / 0.4  # r ~ U(0, 1)
  assert radius.max() <= 1 + 1e-6 and abs(radius.mean() - 0.5) < 0.04


def test_two_calls_compile_once_and_eps_can_be_vmapped(twin):
  traces = []

  def counted(params, x, key=None):
    traces.append(1)
    return twin.apply(params, x, key=key)

  kwargs = dict(steps=2, step_size=ALPHA)
  first = pgd(counted, twin.variables, twin.x, twin.y, eps=EPS, **kwargs)
  after_first = len(traces)
  assert after_first > 0
  pgd(counted, twin.variables, 1 - twin.x, twin.y, eps=EPS / 2, **kwargs)
  assert len(traces) == after_first, 'a second call with new values must not re-trace'
  eps = jnp.asarray([0.0, EPS / 2, EPS], jnp.float32)
  batch = jax.vmap(lambda e: pgd(counted, twin.variables, twin.x, twin.y, eps=e, **kwargs))(eps)
  np.testing.assert_array_equal(batch[0], twin.x)
  np.testing.assert_allclose(batch[2], first, atol=1e-6)
  dist = jax.vmap(lambda a: projections.per_example_norm(a - twin.x, 'linf'))(batch).max(1)
  assert np.all(np.asarray(dist) <= np.asarray(eps) + 1e-6)


# --- a one-pixel toy model for restarts and for vmapping over models ---
# logit_1 − logit_0 = s·relu(x − 0.5) + 0.1·relu(0.3 − x) − 1 (label 0). Around x = 0.5 the
# gradient is zero left of 0.5 and the attack succeeds only from a start right of it; around
# x = 0.2 it never succeeds and the loss grows as x decreases.

def _toy(slope, x, key=None):
  del key
  z1 = slope * jax.nn.relu(x[:, 0] - 0.5) + 0.1 * jax.nn.relu(0.3 - x[:, 0])
  return jnp.stack([jnp.ones_like(z1), z1], axis=-1)


TOY_X = np.array([[0.5]] * 8 + [[0.2]] * 8, np.float32)
TOY_Y = np.zeros(16, np.int32)
TOY = functools.partial(pgd, _toy, jnp.float32(20.0), TOY_X, TOY_Y, eps=0.1, steps=1,
                        step_size=0.01, random_start=True, key=jax.random.key(3))


def test_restarts_keep_the_first_success_else_the_highest_loss():
  runs = {r: np.asarray(TOY(restarts=r))[:, 0] for r in (1, 4, 8)}
  success = {r: np.asarray(evaluate.succeeded(_toy(20.0, runs[r][:, None]), TOY_Y))
             for r in runs}
  # Restarts 0..r-1 of a longer run are the shorter run's: success only grows, an example
  # broken by the first restart keeps that restart's point, and the loss only grows.
  assert success[1][:8].any() and not success[1][:8].all()
  assert np.all(success[8] >= success[4]) and np.all(success[4] >= success[1])
  assert success[8][:8].sum() > success[1][:8].sum()
  np.testing.assert_array_equal(runs[8][success[1]], runs[1][success[1]])
  assert not success[8][8:].any()
  assert np.all(runs[8][8:] <= runs[4][8:]) and np.all(runs[4][8:] <= runs[1][8:])
  assert np.any(runs[8][8:] < runs[1][8:])


def test_vmap_over_keys_and_models():
  keys = jax.random.split(jax.random.key(0), 3)
  by_key = jax.vmap(lambda k: pgd(_toy, jnp.float32(20.0), TOY_X, TOY_Y, eps=0.1, steps=1,
                                  step_size=0.01, random_start=True, key=k))(keys)
  assert by_key.shape == (3, 16, 1) and not np.array_equal(by_key[0], by_key[1])
  slopes = jnp.asarray([0.0, 20.0], jnp.float32)
  by_model = jax.vmap(lambda s: pgd(_toy, s, TOY_X, TOY_Y, eps=0.1, steps=1, step_size=0.01,
                                    random_start=True, key=jax.random.key(3)))(slopes)
  np.testing.assert_array_equal(by_model[1], TOY())


# --- stochastic models: fresh and fixed randomness ---

def _noisy_linear(params, x, key=None):
  """Logits x·W + b plus N(0, 1) noise drawn from the model's key (a randomised defence)."""
  z = x.reshape(x.shape[0], -1) @ params['w'] + params['b']
  return z if key is None else z + jax.random.normal(key, z.shape, z.dtype)


LIN = {'w': jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32),
       'b': jnp.zeros(3, jnp.float32)}
LIN_X = np.random.default_rng(1).uniform(size=(32, 4)).astype(np.float32)
LIN_Y = np.asarray(np.argmax(LIN_X @ np.asarray(LIN['w']), -1), np.int32)


def test_fixed_randomness_is_the_attack_on_one_draw():
  key = jax.random.key(7)
  kwargs = dict(eps=0.2, steps=3, step_size=0.1)
  fixed = pgd(_noisy_linear, LIN, LIN_X, LIN_Y, key=key, randomness='fixed', **kwargs)
  one_draw = lambda p, x: _noisy_linear(p, x, key=key)
  np.testing.assert_array_equal(fixed, pgd(one_draw, LIN, LIN_X, LIN_Y, **kwargs))
  fresh = pgd(_noisy_linear, LIN, LIN_X, LIN_Y, key=key, **kwargs)
  assert not np.array_equal(fresh, fixed)
  seen = evaluate.robust_accuracy(_noisy_linear, LIN, fixed, LIN_Y, key=key)
  np.testing.assert_array_equal(seen.correct,
                                evaluate.robust_accuracy(one_draw, LIN, fixed, LIN_Y).correct)


def test_fresh_and_fixed_randomness_share_one_compiled_program():
  """Which key a step takes is traced: the second setting re-uses the first's program."""
  traces = []

  def counted(params, x, key=None):
    traces.append(1)
    return _noisy_linear(params, x, key=key)

  kwargs = dict(eps=0.2, steps=3, step_size=0.1, key=jax.random.key(7))
  fresh = pgd(counted, LIN, LIN_X, LIN_Y, **kwargs)
  after_first = len(traces)
  fixed = pgd(counted, LIN, LIN_X, LIN_Y, randomness='fixed', **kwargs)
  assert len(traces) == after_first and not np.array_equal(fresh, fixed)


def test_eot_averages_model_draws_and_fixed_eot_matches_evaluation_draws():
  key = jax.random.key(2)
  kwargs = dict(eps=0.3, steps=5, step_size=0.1, key=key, eot=4)
  fresh = pgd(_noisy_linear, LIN, LIN_X, LIN_Y, **kwargs)
  clean = evaluate.robust_accuracy(_noisy_linear, LIN, jnp.asarray(LIN_X), LIN_Y, key=key, draws=8)
  attacked = evaluate.robust_accuracy(_noisy_linear, LIN, fresh, LIN_Y, key=key, draws=8)
  assert float(attacked.mean) < float(clean.mean)
  fixed = pgd(_noisy_linear, LIN, LIN_X, LIN_Y, randomness='fixed', **kwargs)
  draws = jax.random.split(key, 4)  # the EOT draws of every step, and of draws=4 evaluation
  per_draw = evaluate.robust_accuracy(_noisy_linear, LIN, fixed, LIN_Y, key=key, draws=4)
  assert per_draw.correct.shape == (4, 32)
  for d, k in enumerate(draws):  # draws=1 evaluates with the key itself
    one = evaluate.robust_accuracy(_noisy_linear, LIN, fixed, LIN_Y, key=k)
    np.testing.assert_array_equal(per_draw.correct[d], one.correct[0])


# --- bad input ---

def _plain(twin):
  return lambda params, x: twin.apply(params, x)


@pytest.mark.parametrize('change,message', [
    (lambda t: dict(eps=-0.1), r'eps must be in \[0.0, 1.0\]'),
    (lambda t: dict(eps=1.5), r'eps must be in \[0.0, 1.0\]'),
    (lambda t: dict(norm='l1'), r"norm='l1' is not valid"),
    (lambda t: dict(loss='hinge'), r"loss='hinge' is not valid"),
    (lambda t: dict(loss=3), r'loss must be a name'),
    (lambda t: dict(steps=0), r'steps must be an integer >= 1'),
    (lambda t: dict(restarts=0), r'restarts must be an integer >= 1'),
    (lambda t: dict(eot=0), r'eot must be an integer >= 1'),
    (lambda t: dict(step_size=-1.0), r'step_size must be in'),
    (lambda t: dict(randomness='frozen'), r"randomness='frozen' is not valid"),
    (lambda t: dict(random_start=True), r'key must be a typed PRNG key.*random_start'),
    (lambda t: dict(restarts=2), r'key must be a typed PRNG key.*restarts=2'),
    (lambda t: dict(eot=2), r'eot=2 averages over model randomness and needs key'),
    (lambda t: dict(key=0), r'key must be a typed PRNG key'),
    (lambda t: dict(x=t.x * 2), r'x must lie in \[0, 1\]'),
    (lambda t: dict(y=t.y + 9), r'y must hold class indices in \[0, 5\)'),
    (lambda t: dict(target=t.y + 9), r'target must hold class indices in \[0, 5\)'),
    (lambda t: dict(apply=_plain(t), key=jax.random.key(0)),
     r'an attack given key calls apply\(params, x, key=...\)'),
    (lambda t: dict(apply=_plain(t), key=jax.random.key(0), random_start=True, eot=2),
     r'takes no keyword'),
    (lambda t: dict(apply=_plain(t), key=jax.random.key(0), random_start=True,
                    randomness='fixed'), r'takes no keyword'),
    (lambda t: dict(randomness='fixed'), r"key must be a typed PRNG key.*randomness='fixed'"),
])
def test_bad_input_is_a_value_error_naming_the_argument(twin, change, message):
  args = dict(apply=twin.apply, x=twin.x, y=twin.y, eps=EPS, steps=1)
  args.update(change(twin))
  apply, x, y = args.pop('apply'), args.pop('x'), args.pop('y')
  with pytest.raises(ValueError, match=message):
    pgd(apply, twin.variables, x, y, **args)


def test_a_key_for_the_random_start_is_fine_for_a_model_without_key():
  plain = lambda params, x: _toy(params, x)
  out = pgd(plain, jnp.float32(20.0), TOY_X, TOY_Y, eps=0.1, steps=1, random_start=True,
            key=jax.random.key(0))
  assert out.shape == TOY_X.shape
