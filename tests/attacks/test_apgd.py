"""lib/attacks/apgd.py: APGD / APGD-T against torchattacks' `APGD` / `APGDT` and Algorithm 1.

Parity: on the twin CNN with 128 images (`data`), robust accuracy of ours and torchattacks'
within 1 point for CE/DLR × ℓ∞/ℓ2 and APGD-T (independent random starts); and, started
from torchattacks' own random start (recorded from its forward calls), the same loss
trajectory and adversarial examples step by step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchattacks

from lib import iterate
from lib.attacks import _apgd_schedule, apgd, losses, objective
from tests.attacks.conftest import NUM_CLASSES, images

N = 128  # a point of robust accuracy is 1.28 images
STEPS = 20
EPS = {'linf': 2 / 255, 'l2': 0.15}  # robust accuracy ~27% here: both ways can move
TORCH_NORM = {'linf': 'Linf', 'l2': 'L2'}


@pytest.fixture(scope='module')
def data(twin):
  """(x [N, 16, 16, 3], y [N]): labels are the twin's predictions, a quarter of them wrong."""
  x = images(1, N)
  pred = np.asarray(jax.jit(twin.apply)(twin.variables, x).logits.argmax(-1))
  y = np.where(np.arange(N) % 4 == 3, (pred + 1) % NUM_CLASSES, pred).astype(np.int32)
  return x, y


def _accuracy(twin, x, y) -> float:
  return float(np.mean(np.asarray(jax.jit(twin.apply)(twin.variables, x).logits.argmax(-1)) == y))


class _Recorder(torch.nn.Module):
  """Wraps the torch net and keeps every input and logits it sees (torchattacks' iterates)."""

  def __init__(self, net):
    super().__init__()
    self.net, self.inputs, self.logits = net, [], []

  def forward(self, x):
    out = self.net(x)
    self.inputs.append(x.detach().clone())
    self.logits.append(out.detach().clone())
    return out


@pytest.mark.parametrize('norm,loss', [('linf', 'ce'), ('linf', 'dlr'), ('l2', 'ce'),
                                       ('l2', 'dlr')])
def test_robust_accuracy_matches_torchattacks_apgd(twin, data, norm, loss):
  x, y = data
  ours = apgd.apgd(twin.apply, twin.variables, x, y, eps=EPS[norm], norm=norm, steps=STEPS,
                   loss=loss, key=jax.random.key(0))
  ref = torchattacks.APGD(twin.net, norm=TORCH_NORM[norm], eps=EPS[norm], steps=STEPS,
                          loss=loss)(twin.to_torch(x), torch.from_numpy(y.astype(np.int64)))
  acc_ours, acc_ref = _accuracy(twin, ours, y), _accuracy(twin, twin.from_torch(ref), y)
  print(f'APGD-{loss} {norm}: robust accuracy ours {acc_ours:.4f} torchattacks {acc_ref:.4f}')
  assert abs(acc_ours - acc_ref) <= 0.01
  delta = (np.asarray(ours) - x).reshape(N, -1)
  size = np.abs(delta).max(1) if norm == 'linf' else np.linalg.norm(delta, axis=1)
  assert size.max() <= EPS[norm] * (1 + 1e-5)


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_robust_accuracy_matches_torchattacks_apgdt(twin, data, norm):
  x, y = data
  ours = apgd.apgd_targeted(twin.apply, twin.variables, x, y, eps=EPS[norm], norm=norm,
                            steps=STEPS, n_target_classes=NUM_CLASSES - 1, key=jax.random.key(0))
  ref = torchattacks.APGDT(twin.net, norm=TORCH_NORM[norm], eps=EPS[norm], steps=STEPS,
                           n_classes=NUM_CLASSES)(
      twin.to_torch(x), torch.from_numpy(y.astype(np.int64)))
  acc_ours, acc_ref = _accuracy(twin, ours, y), _accuracy(twin, twin.from_torch(ref), y)
  print(f'APGD-T {norm}: robust accuracy ours {acc_ours:.4f} torchattacks {acc_ref:.4f}')
  assert abs(acc_ours - acc_ref) <= 0.01


def _run_from(twin, x, y, x_start, *, norm, loss, target):
  """Our single run from a given start: (final State, StepInfo [STEPS, B], initial loss)."""
  @jax.jit
  def go(x, y, x_start, target):
    pair = apgd.make_apgd(twin.apply, twin.variables, x, y, eps=EPS[norm], norm=norm,
                          steps=STEPS, loss=losses.get_loss(loss), target=target)
    state = pair.init(x_start, key=jax.random.key(0))
    final, info = iterate.run(pair.step, state, STEPS, key=jax.random.key(1))
    return final, info, state.loss_best
  return go(x, y, x_start, target)


@pytest.mark.parametrize('norm,loss,targeted', [('l2', 'dlr', False), ('linf', 'dlr', True)])
def test_same_start_gives_torchattacks_trajectory(twin, data, norm, loss, targeted):
  """From torchattacks' random start, the loss of every iterate and the adversarial
  examples agree (a few float32 divergences allowed: ReLU kinks, ties in the checks)."""
  x, y = data
  recorder = _Recorder(twin.net)
  attack = (torchattacks.APGDT(recorder, norm=TORCH_NORM[norm], eps=EPS[norm], steps=STEPS,
                               n_classes=NUM_CLASSES) if targeted else
            torchattacks.APGD(recorder, norm=TORCH_NORM[norm], eps=EPS[norm], steps=STEPS,
                              loss=loss))
  if targeted:
    attack.n_target_classes = 1
  ref = twin.from_torch(attack(twin.to_torch(x), torch.from_numpy(y.astype(np.int64))))
  # Calls: clean batch [, clean subset (APGD-T's targets)], start, STEPS iterates.
  idx = np.flatnonzero(recorder.logits[0].numpy().argmax(1) == y)
  x_start = twin.from_torch(recorder.inputs[-STEPS - 1])
  ref_logits = np.stack([t.numpy() for t in recorder.logits[-STEPS:]])  # [STEPS, b, K]
  target = None
  if targeted:
    target = np.argsort(recorder.logits[1].numpy(), axis=1)[:, -2].astype(np.int32)
  final, info, _ = _run_from(twin, x[idx], y[idx], x_start, norm=norm, loss=loss,
                             target=target)
  ref_loss = np.stack([np.asarray(losses.get_loss(loss)(jnp.asarray(z), y[idx], target))
                       for z in ref_logits])
  loss_err = np.abs(np.asarray(info.loss) - ref_loss).max(0)
  ours = np.where(np.asarray(final.robust)[:, None, None, None], x[idx], np.asarray(final.x_adv))
  adv_err = np.abs(ours - ref[idx]).reshape(len(idx), -1).max(1)
  print(f'{"APGD-T" if targeted else "APGD-" + loss} {norm}: {len(idx)} examples, max |Δloss| '
        f'{np.median(loss_err):.2e} median / {loss_err.max():.2e} max over examples; max '
        f'|Δx_adv| {np.median(adv_err):.2e} median / {adv_err.max():.2e} max; examples with '
        f'|Δx_adv| > 1e-4: {(adv_err > 1e-4).sum()}')
  assert (loss_err > 1e-4).sum() <= max(1, len(idx) // 20)
  assert (adv_err > 1e-4).sum() <= max(1, len(idx) // 20)
  ref_robust = np.all(np.concatenate([recorder.logits[-STEPS - 1].numpy()[None], ref_logits])
                      .argmax(-1) == y[idx], axis=0)
  assert abs(np.mean(np.asarray(final.robust)) - np.mean(ref_robust)) <= 1 / len(idx)


def test_checkpoints_follow_the_paper():
  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06): at N = 100 whole numbers.
  p, q = [0.0, 0.22], []
  while p[-1] <= 1.0:
    q.append(round(100 * p[-1]))
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  assert _apgd_schedule.checkpoints(100) == tuple(q) == (22, 41, 57, 70, 80, 87, 93, 99)
  for n in (1, 5, 20, 30, 250, 1000):
    w = np.diff((0,) + _apgd_schedule.checkpoints(n))
    assert w[0] == max(int(0.22 * n), 1) and sum(w) <= n
    expected_gaps = np.maximum(w[:-1] - max(int(0.03 * n), 1), max(int(0.06 * n), 1))
    np.testing.assert_array_equal(w[1:], expected_gaps)


def test_step_size_halves_exactly_when_the_conditions_say(twin):
  """η from our scan equals η recomputed from the loss trajectory with the two conditions."""
  x, y = twin.x, twin.y
  final, info, loss0 = _run_from(twin, x, y, jnp.asarray(x), norm='linf', loss='dlr',
                                 target=None)
  loss, eta = np.asarray(info.loss), np.asarray(info.eta)  # [STEPS, B]
  expected = np.full(len(y), 2 * EPS['linf'], np.float32)
  best = best_check = np.asarray(loss0)
  prev, count, halved_check = np.zeros(len(y)), np.zeros(len(y)), np.ones(len(y), bool)
  checks, last, halvings = _apgd_schedule.checkpoints(STEPS), 0, 0
  for k in range(STEPS):
    np.testing.assert_allclose(eta[k], expected, rtol=1e-6)
    count += loss[k] > prev
    prev, best = loss[k], np.maximum(best, loss[k])
    if k + 1 in checks:
      halve = (count <= 0.75 * (k + 1 - last)) | (~halved_check & (best_check >= best))
      expected = np.where(halve, expected / 2, expected)
      halvings += halve.sum()
      halved_check, best_check, count, last = halve, best, np.zeros(len(y)), k + 1
  np.testing.assert_allclose(final.eta, expected, rtol=1e-6)
  assert 0 < halvings < len(y) * len(checks)  # both outcomes occur


def test_compiles_once_for_two_calls_and_vmaps_over_eps_and_keys(twin):
  traces = []

  def apply(params, x, *, key=None):
    traces.append(1)
    return twin.apply(params, x, key=key)

  kw = dict(steps=3, loss='ce', key=jax.random.key(0))
  apgd.apgd(apply, twin.variables, twin.x, twin.y, eps=1 / 255, **kw)
  first = len(traces)
  apgd.apgd(apply, twin.variables, twin.x[::-1].copy(), twin.y[::-1].copy(), eps=3 / 255, **kw)
  print(f'traces of apply: {first} after one call, {len(traces)} after two')
  assert len(traces) == first

  # vmap over ε and keys at once (one program).
  eps = jnp.asarray([0.0, 2 / 255, 16 / 255], jnp.float32)
  keys = jax.random.split(jax.random.key(1), 3)
  advs = jax.vmap(lambda e, k: apgd.apgd(apply, twin.variables, twin.x, twin.y, eps=e, steps=3,
                                         key=k))(eps, keys)
  size = np.abs(np.asarray(advs) - twin.x).reshape(3, len(twin.y), -1).max(-1)
  assert np.all(size <= np.asarray(eps)[:, None] + 1e-6)
  robust = [_accuracy(twin, a, twin.y) for a in advs]
  assert robust[0] == _accuracy(twin, twin.x, twin.y) and robust[0] >= robust[1] >= robust[2]


def _noisy_apply(twin):
  def apply(params, x, *, key=None):
    return twin.apply(params, x + 0.01 * jax.random.normal(key, x.shape, x.dtype))
  return apply


def test_stochastic_model_with_fixed_randomness_and_eot(twin):
  """Fixed randomness: every returned example is misclassified under the attack's draws."""
  apply, key = _noisy_apply(twin), jax.random.key(3)
  out = np.asarray(apgd.apgd(apply, twin.variables, twin.x, twin.y, eps=8 / 255, steps=3,
                             eot=2, key=key, randomness='fixed'))
  logits = objective.over_draws(
      lambda k: objective.logits(apply, twin.variables, jnp.asarray(out), k), key, 2).mean(0)
  changed = np.any(out != twin.x, axis=(1, 2, 3))
  assert changed.any()
  assert np.all(np.asarray(logits.argmax(-1))[changed] != twin.y[changed])


def _call(twin, **kw):
  args = dict(apply=twin.apply, params=twin.variables, x=twin.x, y=twin.y, eps=1 / 255,
              steps=2, key=jax.random.key(0))
  args.update(kw)
  fn = apgd.apgd_targeted if 'n_target_classes' in kw else apgd.apgd
  return fn(args.pop('apply'), args.pop('params'), args.pop('x'), args.pop('y'), **args)


@pytest.mark.parametrize('kw,match', [
    (dict(eps=-0.1), 'eps'),
    (dict(eps=1.5), 'eps'),
    (dict(norm='l1'), 'norm'),
    (dict(loss='hinge'), 'loss'),
    (dict(steps=0), 'steps'),
    (dict(restarts=0), 'restarts'),
    (dict(eot=0), 'eot'),
    (dict(rho=0.0), 'rho'),
    (dict(rho=1.0), 'rho'),
    (dict(n_target_classes=0), 'n_target_classes'),
    (dict(n_target_classes=NUM_CLASSES), 'n_target_classes'),
    (dict(key=None), 'key must be a typed PRNG key.*random_start=True'),
    (dict(random_start='yes'), 'random_start'),
    (dict(randomness='sometimes'), 'randomness'),
    (dict(loss=3), 'loss'),
])
def test_bad_arguments_name_themselves(twin, kw, match):
  with pytest.raises(ValueError, match=match):
    _call(twin, **kw)


def test_bad_inputs_name_themselves(twin):
  with pytest.raises(ValueError, match='x must lie in'):
    _call(twin, x=twin.x + 0.5)
  with pytest.raises(ValueError, match='y must hold class indices'):
    _call(twin, y=np.full_like(twin.y, NUM_CLASSES))
  with pytest.raises(ValueError, match='target must hold class indices'):
    _call(twin, target=np.full_like(twin.y, -1))
  with pytest.raises(ValueError, match='eot=2 .* needs key'):
    _call(twin, apply=_noisy_apply(twin), eot=2, key=None, random_start=False)
