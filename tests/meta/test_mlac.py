"""MLAC: meta-gradients against finite differences, first/second order, checkpointing, memory,
the baselines as options, one program for every K <= K_max and adversary count (runtime K
and adversary weights equal the model compiled for its own K and A), resumable outer
training, and bad inputs."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import train
from lib.meta.mlac import MLACOptions, make_mlac, mlac_grads, mlac_losses
from tests.meta.toys import mlp_apply, mlp_init

D_IN, HIDDEN, DIM, C_D, C_H = 3, 4, 3, 3, 2


def _batch(options: MLACOptions, *, b: int = 6, d_in: int = D_IN, seed: int = 0,
           dtype=np.float32) -> dict:
  rng = np.random.default_rng(seed)
  a, k, m = options.num_adversaries, options.num_steps, options.max_batch
  return {'inputs': rng.normal(size=(b, d_in)).astype(dtype),
          'desired': rng.integers(0, C_D, b).astype(np.int32),
          'harmful': rng.integers(0, C_H, b).astype(np.int32),
          'inner_inputs': rng.normal(size=(a, k, m, d_in)).astype(dtype),
          'inner_harmful': rng.integers(0, C_H, (a, k, m)).astype(np.int32)}


def _params(dtype, *, d_in: int = D_IN, hidden: int = HIDDEN, dim: int = DIM, seed: int = 0):
  keys = jax.random.split(jax.random.key(seed), 3)
  params = {'encoder': mlp_init(keys[0], d_in, hidden, dim, dtype),
            'head': jax.random.normal(keys[1], (dim, C_D), dtype)}
  adversary = {'head': jax.random.normal(keys[2], (dim, C_H), dtype),
               'lr': jnp.asarray(0.05, dtype)}
  return params, adversary


def _random_like(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _dot(a, b):
  return sum(float(jnp.sum(x * y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _axpy(a, x, y):
  return jax.tree.map(lambda u, v: v + a * u, x, y)


FD_OPTIONS = MLACOptions(num_steps=2, num_adversaries=2, batch_sizes=(2, 4),
                         grad_norm_weight=0.5, calibration_iters=1000)


def test_meta_gradient_matches_finite_differences():
  """K = 2, two adversaries, calibrated loss, gradient-norm penalty, second order: float64
  central differences."""
  with jax.enable_x64(True):
    params, adversary = _params(jnp.float64)
    batch = _batch(FD_OPTIONS, dtype=np.float64)
    key = jax.random.key(3)
    # One compiled program: its metrics carry both losses, its outputs both gradients.
    run = jax.jit(lambda p, a: mlac_grads(mlp_apply, FD_OPTIONS, p, a, batch, key=key))
    losses = lambda p, a: (run(p, a)[2]['loss'], run(p, a)[2]['adversary_loss'])
    grads, adversary_grads, _ = run(params, adversary)
    h = 1e-5
    errors = {}
    for name, index, tree, grad in (('defender', 0, params, grads),
                                     ('adversary', 1, adversary, adversary_grads)):
      u = _random_like(tree, seed=index)
      args = lambda s: (_axpy(s, u, params), adversary) if index == 0 else (
          params, _axpy(s, u, adversary))
      fd = (float(losses(*args(h))[index]) - float(losses(*args(-h))[index])) / (2 * h)
      analytic = _dot(grad, u)
      errors[name] = abs(analytic - fd) / max(abs(fd), 1e-3)
      print(f'{name}: analytic {analytic:.10f}  finite differences {fd:.10f}  '
            f'relative error {errors[name]:.1e}')
    assert errors['defender'] < 1e-6 and errors['adversary'] < 1e-6


def _grads(options, params, adversary, batch, key=jax.random.key(3)):
  return jax.jit(lambda p, a: mlac_grads(mlp_apply, options, p, a, batch, key=key)[:2])(
      params, adversary)


@pytest.mark.slow
def test_first_order_differs_and_checkpointing_changes_nothing():
  params, adversary = _params(jnp.float32)
  options = dataclasses.replace(FD_OPTIONS, calibration_iters=200)
  batch = _batch(options)
  second = _grads(options, params, adversary, batch)
  no_checkpoint = _grads(dataclasses.replace(options, checkpoint=False), params, adversary, batch)
  first = _grads(dataclasses.replace(options, first_order=True), params, adversary, batch)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  np.testing.assert_allclose(flat(no_checkpoint), flat(second), rtol=1e-6, atol=1e-8)
  relative = np.linalg.norm(flat(first) - flat(second)) / np.linalg.norm(flat(second))
  print(f'first vs second order: relative difference {relative:.3f}')
  assert np.all(np.isfinite(flat(first))) and relative > 1e-2


@pytest.mark.slow
def test_memory_grows_only_by_the_carry_with_checkpointing():
  """Temp bytes of the compiled meta-gradient at K = 4 and 16 (a wider MLP, batches of 48).

  Checkpointed, each extra inner step stores its carry (parameters and two Adam moments,
  3x the parameters) and nothing else; without, it stores the step's activations and inner
  backward pass too. Measured (XLA:CPU, 2026-12): checkpoint 1.80 MB -> 4.22 MB,
  no checkpoint 4.44 MB -> 15.10 MB.
  """
  d_in, hidden, dim = 32, 256, 32
  params, adversary = _params(jnp.float32, d_in=d_in, hidden=hidden, dim=dim)
  temp = {}
  for checkpoint in (True, False):
    for k in (4, 16):
      options = MLACOptions(num_steps=k, checkpoint=checkpoint, calibration_iters=10)
      batch = _batch(options, b=20, d_in=d_in)
      fn = lambda p, a, b, o=options: mlac_grads(mlp_apply, o, p, a, b, key=jax.random.key(0))[:2]
      compiled = jax.jit(fn).lower(params, adversary, batch).compile()
      temp[checkpoint, k] = compiled.memory_analysis().temp_size_in_bytes
  print('temp bytes (checkpoint, K):', temp)
  per_step = {c: (temp[c, 16] - temp[c, 4]) / 12 for c in (True, False)}
  carry = 3 * 4 * sum(x.size for x in jax.tree.leaves(params['encoder'])) + 3 * 4 * dim * C_H
  assert per_step[True] < 0.3 * per_step[False]
  assert per_step[True] < 1.2 * carry


@pytest.mark.slow
def test_baselines_are_options():
  params, adversary = _params(jnp.float32)
  key = jax.random.key(0)
  censoring = MLACOptions(num_steps=0, num_adversaries=2, batch_sizes=(2, 4),
                          calibration_iters=50)                    # AC: K = 0
  batch = {k: v for k, v in _batch(FD_OPTIONS).items() if not k.startswith('inner')}
  (_, _), metrics = mlac_losses(mlp_apply, censoring, params, adversary, batch, key=key)
  assert metrics['harmful_ce_steps'].shape == (1,)
  desired_only = dataclasses.replace(censoring, harmful_weight=0.0)
  (loss, _), metrics = mlac_losses(mlp_apply, desired_only, params, adversary, batch, key=key)
  assert 'harmful_ce' not in metrics and float(loss) == float(metrics['desired_ce'])
  _, adversary_grads, _ = mlac_grads(mlp_apply, desired_only, params, adversary, batch, key=key)
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(adversary_grads))
  # learned_head=False: a fresh head per step, so the learned initialisation gets no gradient.
  random_head = dataclasses.replace(FD_OPTIONS, learned_head=False, calibration_iters=50)
  _, adversary_grads = _grads(random_head, params, adversary, _batch(FD_OPTIONS))
  assert not np.any(np.asarray(adversary_grads['head'])) and float(adversary_grads['lr']) != 0


@pytest.mark.slow
def test_outer_training_resumes_exactly(tmp_path):
  options = MLACOptions(num_steps=1, num_adversaries=2, batch_sizes=(2, 4), calibration_iters=20)
  mlac = make_mlac(mlp_apply, feature_dim=DIM, num_desired=C_D, num_harmful=C_H, options=options)
  encoder = mlp_init(jax.random.key(1), D_IN, HIDDEN, DIM)
  key = jax.random.key(2)
  step = jax.jit(lambda s, b: mlac.step(s, b, key))
  loop = dict(init=lambda: mlac.init(encoder, key=jax.random.key(0)), step_fn=step,
              batch_fn=lambda t: _batch(options, seed=t), checkpoint_every=1, log_every=1,
              progress=False)
  whole = train.run_loop(num_steps=3, workdir=str(tmp_path / 'a'), **loop)
  train.run_loop(num_steps=1, workdir=str(tmp_path / 'b'), **loop)
  resumed = train.run_loop(num_steps=3, workdir=str(tmp_path / 'b'), **loop)
  assert int(resumed.step) == 3
  for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert float(whole.adversary['lr']) != options.init_lr   # the inner learning rate is learned


@pytest.mark.slow  # four second-order programs on the toy: ~70 s on 2 shared cores
def test_runtime_k_and_adversary_weights_equal_the_own_shape_model():
  """K_max = 2, A_max = 2 with batch K and weights [1, 0] against the model compiled for K
  (one adversary, one batch size, learned head: adversary 0 sees the same data); AC is K = 0.
  One jitted step serves every (K, weights): one trace."""
  params, adversary = _params(jnp.float32)
  shared = MLACOptions(num_steps=2, num_adversaries=2, batch_sizes=(4,), calibration_iters=50)
  batch = _batch(shared)
  key = jax.random.key(3)
  step = jax.jit(lambda p, a, b: mlac_grads(mlp_apply, shared, p, a, b, key=key))
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  for k in (0, 1, 2):
    own = dataclasses.replace(shared, num_steps=k, num_adversaries=1)
    own_batch = dict(batch, inner_inputs=batch['inner_inputs'][:1, :k],
                     inner_harmful=batch['inner_harmful'][:1, :k])
    if k == 0:
      own_batch = {n: v for n, v in own_batch.items() if not n.startswith('inner')}
    expected = mlac_grads(mlp_apply, own, params, adversary, own_batch, key=key)
    got = step(params, adversary, dict(batch, num_steps=np.int32(k),
                                       adversary_weights=np.array([1.0, 0.0], np.float32)))
    np.testing.assert_allclose(float(got[2]['loss']), float(expected[2]['loss']), rtol=1e-6)
    np.testing.assert_allclose(flat(got[:2]), flat(expected[:2]), rtol=1e-5, atol=1e-7)
  assert step._cache_size() == 1


def test_bad_inputs_name_the_argument():
  with pytest.raises(ValueError, match='num_steps'):
    MLACOptions(num_steps=-1)
  with pytest.raises(ValueError, match='init_lr'):
    MLACOptions(init_lr=1.0)
  with pytest.raises(ValueError, match='batch_sizes'):
    MLACOptions(batch_sizes=())
  mlac = make_mlac(mlp_apply, feature_dim=DIM, num_desired=C_D, num_harmful=C_H,
                   options=FD_OPTIONS)
  state = mlac.init(mlp_init(jax.random.key(1), D_IN, HIDDEN, DIM), key=jax.random.key(0))
  bad = dict(_batch(FD_OPTIONS), harmful=np.full(6, 2, np.int32))
  with pytest.raises(ValueError, match='harmful'):
    mlac.step(state, bad, jax.random.key(0))
  short = dict(_batch(FD_OPTIONS))
  short['inner_inputs'] = short['inner_inputs'][:, :1]
  with pytest.raises(ValueError, match='inner_inputs'):
    mlac.step(state, short, jax.random.key(0))
  with pytest.raises(ValueError, match='num_steps'):
    mlac.step(state, dict(_batch(FD_OPTIONS), num_steps=np.int32(3)), jax.random.key(0))
  with pytest.raises(ValueError, match='adversary_weights'):
    mlac.step(state, dict(_batch(FD_OPTIONS), adversary_weights=np.zeros(2, np.float32)),
              jax.random.key(0))


@pytest.mark.slow
def test_one_outer_step_on_bert():
  """BERT_TEST encoder (pooled features): finite metrics and a moved encoder. Its embedding
  rows of unused token ids get zero inner gradients: the safe square root keeps the
  second-order gradient finite there."""
  from lib.models.bert import BERT_TEST, bert_model
  model = bert_model(BERT_TEST, num_classes=None, max_len=8)
  options = MLACOptions(num_steps=2, batch_sizes=(2, 4), calibration_iters=50)
  rng = np.random.default_rng(0)
  tokens = lambda *shape: {'input_ids': rng.integers(1, 100, (*shape, 8)).astype(np.int32),
                           'attention_mask': np.ones((*shape, 8), np.int32)}
  batch = {'inputs': tokens(6), 'desired': rng.integers(0, C_D, 6).astype(np.int32),
           'harmful': rng.integers(0, C_H, 6).astype(np.int32),
           'inner_inputs': tokens(1, 2, 4),
           'inner_harmful': rng.integers(0, C_H, (1, 2, 4)).astype(np.int32)}
  mlac = make_mlac(model.apply, feature_dim=BERT_TEST.hidden_size, num_desired=C_D,
                   num_harmful=C_H, options=options)
  state = mlac.init(model.init(jax.random.key(0)), key=jax.random.key(1))
  new, metrics = jax.jit(lambda s, b: mlac.step(s, b, jax.random.key(2)))(state, batch)
  assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(metrics))
  assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(new))
  moved = [not np.array_equal(np.asarray(a), np.asarray(b))
           for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params))]
  assert any(moved)
