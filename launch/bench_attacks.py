"""Benchmark (g): `lib.attacks` PGD and APGD vs torchattacks, and an ε × restarts sweep.

Both sides attack the same network with the same weights (the PyTorch mirror's, copied into
the `lib.models` model), in float32, on the same batch, with the same steps:

  attacks  PGD-`pgd_steps` (ℓ∞, ε = 8/255, α = 2/255, no random start: `lib.attacks.pgd.pgd`
           vs `torchattacks.PGD`) and APGD-`apgd_steps` (ℓ∞, ε = 8/255, CE loss, one run from
           a random start: `lib.attacks.apgd.apgd` vs `torchattacks.APGD`) on the small CNN
           (`lib.models` 'cnn', widths 32/64/128, no batch norm) and ResNet-18 ('resnet18',
           CIFAR stem, batch norm in evaluation mode with random statistics);
  sweep    robust accuracy of the small CNN at `len(SWEEP_EPS)` ε values × `restarts`
           restarts of PGD (random start, α = ε/4): one jitted JAX program, `jax.vmap` over ε
           of `pgd(..., restarts=restarts)`, against torchattacks looping over ε and restarts
           (an example counts as robust at ε when no restart breaks it). Its rate is
           "images/s-equivalent": batch × ε values × restarts per second.

Labels are the network's own clean predictions (clean accuracy 1), so robust accuracies
mean something on random weights and inputs. JAX's attacks are cached per (apply, options):
the warm-up call compiles them, and the timed calls reuse the program. Timings alternate the
two sides repeat by repeat (`bench_common.time_interleaved`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from launch import bench_common as common
from launch import bench_pgd

EPS, ALPHA = bench_pgd.EPS, bench_pgd.ALPHA
# Spans the random networks' transition from robust to broken (about 16/255 to 32/255).
SWEEP_EPS = tuple(e / 255 for e in (4, 8, 12, 16, 20, 24, 28, 32))
NUM_CLASSES, IMAGE = bench_pgd.NUM_CLASSES, bench_pgd.IMAGE


class Problem(NamedTuple):
  """One network on both sides and a batch to attack.

  Attributes:
    name: the row label.
    net: the PyTorch mirror (evaluation mode).
    apply: `apply(variables, x) -> logits` of the `lib.models` model (one object: jit cache).
    variables: the model's variables, holding `net`'s weights.
    x: [B, H, W, C] float32 images in [0, 1].
    y: [B] int32 labels (the network's clean predictions).
    logit_diff: max |logits_JAX - logits_torch| on `x` (the weight copy's check).
  """
  name: str
  net: Any
  apply: Callable
  variables: Any
  x: np.ndarray
  y: np.ndarray
  logit_diff: float


def make_problem(name: str, batch_size: int, resnet_arch: dict | None = None) -> Problem:
  """The 'cnn' or 'resnet18' `Problem` at `batch_size` (seeded: the same every call).

  Args:
    name: 'cnn' or 'resnet18'.
    batch_size: images in the batch.
    resnet_arch: {'widths', 'blocks'} of a smaller ResNet (quick runs), or None (ResNet-18).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from launch import bench_torch  # pylint: disable=g-import-not-at-top
  from lib import models  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  if name == 'cnn':
    net = bench_torch.SmallCNN(IMAGE[2], bench_pgd.WIDTHS, NUM_CLASSES).eval()
    model = bench_pgd._model()  # pylint: disable=protected-access
    variables = bench_torch.copy_small_cnn(net, model)
  else:
    arch = resnet_arch or {}
    net = bench_torch.ResNet(num_classes=NUM_CLASSES, **arch).eval()
    bench_torch.randomize_batch_norm(net)
    model = models.get_model('resnet18', input_shape=IMAGE, num_classes=NUM_CLASSES, **arch)
    variables = bench_torch.copy_resnet(net, model)
  apply = lambda v, xa: model.apply(v, xa).logits
  x = np.random.default_rng(0).random((batch_size, *IMAGE), np.float32)
  with torch.no_grad():
    ref = net(_to_torch(x)).numpy()
  ours = np.asarray(jax.jit(apply)(variables, x))
  label = 'small CNN' if name == 'cnn' else 'ResNet-18' if resnet_arch is None else 'ResNet (small)'
  return Problem(label, net, apply, variables, x, ref.argmax(-1).astype(np.int32),
                 float(np.abs(ours - ref).max()))


def _to_torch(x: np.ndarray):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _robust(p: Problem, adv: np.ndarray) -> float:
  """Fraction of `adv` the PyTorch net still classifies as `p.y` (one judge for both sides)."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    pred = p.net(_to_torch(np.asarray(adv, np.float32))).argmax(-1).numpy()
  return float(np.mean(pred == p.y))


def _sides(p: Problem, attack: str, steps: int) -> dict[str, Callable[[], np.ndarray]]:
  """{'JAX', 'torchattacks'} -> `run()` returning [B, H, W, C] adversarial examples."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchattacks  # pylint: disable=g-import-not-at-top
  from lib.attacks import apgd, pgd  # pylint: disable=g-import-not-at-top
  x, y = jnp.asarray(p.x), jnp.asarray(p.y)
  x_t, y_t = _to_torch(p.x), torch.from_numpy(p.y).long()
  if attack == 'PGD':
    ours = lambda: pgd.pgd(p.apply, p.variables, x, y, eps=EPS, steps=steps, step_size=ALPHA)
    ref = torchattacks.PGD(p.net, eps=EPS, alpha=ALPHA, steps=steps, random_start=False)
  else:
    key = jax.random.key(0)
    ours = lambda: apgd.apgd(p.apply, p.variables, x, y, eps=EPS, steps=steps, key=key)
    ref = torchattacks.APGD(p.net, norm='Linf', eps=EPS, steps=steps, n_restarts=1, seed=0)
  return {'JAX': lambda: np.asarray(ours()),
          'torchattacks': lambda: ref(x_t, y_t).detach().permute(0, 2, 3, 1).numpy()}


def _sweep_sides(p: Problem, steps: int, restarts: int) -> dict[str, Callable[[], np.ndarray]]:
  """{'JAX', 'torchattacks'} -> `run()` returning robust accuracy [len(SWEEP_EPS)]."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchattacks  # pylint: disable=g-import-not-at-top
  from lib.attacks import pgd  # pylint: disable=g-import-not-at-top
  x, y = jnp.asarray(p.x), jnp.asarray(p.y)

  @jax.jit
  def robust(variables, eps, key):
    adv = jax.vmap(lambda e: pgd.pgd(p.apply, variables, x, y, eps=e, steps=steps,
                                     step_size=e / 4, random_start=True, restarts=restarts,
                                     key=key))(eps)
    logits = jax.vmap(lambda a: p.apply(variables, a))(adv)
    return jnp.mean(jnp.argmax(logits, -1) == y, axis=-1)

  eps_all, key = jnp.asarray(SWEEP_EPS, jnp.float32), jax.random.key(0)
  x_t, y_t = _to_torch(p.x), torch.from_numpy(p.y).long()

  def torch_robust() -> np.ndarray:
    out = []
    for eps in SWEEP_EPS:
      attack = torchattacks.PGD(p.net, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
      still = torch.ones_like(y_t, dtype=torch.bool)
      for _ in range(restarts):
        adv = attack(x_t, y_t)
        with torch.no_grad():
          still &= p.net(adv).argmax(-1) == y_t
      out.append(still.float().mean().item())
    return np.asarray(out)

  return {'JAX': lambda: np.asarray(robust(p.variables, eps_all, key)),
          'torchattacks': torch_robust}


def _time(sides: dict[str, Callable[[], np.ndarray]], units: int, *, warmup: int,
          repeats: int) -> tuple[dict[str, common.Timing], dict[str, np.ndarray]]:
  """Interleaved timings (seconds per unit) and each side's last output."""
  last: dict[str, np.ndarray] = {}

  def run(name):
    last[name] = sides[name]()
    return units

  t = common.time_interleaved({k: lambda k=k: run(k) for k in sides}, warmup=warmup,
                              repeats=repeats)
  return t, last


def run(*, batch_size: int = 128, resnet_batch: int = 128, pgd_steps: int = 20,
        apgd_steps: int = 100, sweep_batch: int = 32, sweep_steps: int = 20, restarts: int = 5,
        resnet_arch: dict | None = None, warmup: int = 1, repeats: int = 2,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Times every row (module docstring); returns {'rows', 'table', 'notes', 'sweep', ...}.

  Args:
    batch_size: images per attack on the small CNN.
    resnet_batch: images per attack on the ResNet.
    pgd_steps, apgd_steps: attack steps.
    sweep_batch, sweep_steps, restarts: the ε × restarts sweep's batch, PGD steps, restarts.
    resnet_arch: {'widths', 'blocks'} of a smaller ResNet (quick runs), or None (ResNet-18).
    warmup, repeats: untimed and timed calls of each side.
    log: progress messages.
  """
  from launch import bench_torch  # pylint: disable=g-import-not-at-top
  bench_torch.torch_device()  # CPU threads as in the other benchmarks
  rows, timing = [], {}
  for name, batch in (('cnn', batch_size), ('resnet18', resnet_batch)):
    p = make_problem(name, batch, resnet_arch)
    for attack, steps in (('PGD', pgd_steps), ('APGD', apgd_steps)):
      log(f'[bench attacks] {attack}-{steps} on {p.name}, batch {batch} ...')
      t, adv = _time(_sides(p, attack, steps), batch, warmup=warmup, repeats=repeats)
      timing[f'{attack}-{steps} {p.name}'] = {k: v.as_dict() for k, v in t.items()}
      rate = {k: 1 / v.median for k, v in t.items()}
      rows.append([f'{attack}-{steps}, {p.name}, batch {batch}', rate['JAX'],
                   rate['torchattacks'], rate['JAX'] / rate['torchattacks'],
                   _robust(p, adv['JAX']), _robust(p, adv['torchattacks']), p.logit_diff,
                   max(v.spread() for v in t.values())])
  p = make_problem('cnn', sweep_batch)
  units = sweep_batch * len(SWEEP_EPS) * restarts
  log(f'[bench attacks] sweep: {len(SWEEP_EPS)} ε × {restarts} restarts of PGD-{sweep_steps}, '
      f'batch {sweep_batch} ...')
  t, acc = _time(_sweep_sides(p, sweep_steps, restarts), units, warmup=warmup, repeats=repeats)
  timing['sweep'] = {k: v.as_dict() for k, v in t.items()}
  rate = {k: 1 / v.median for k, v in t.items()}
  rows.append([f'{len(SWEEP_EPS)} ε × {restarts} restarts PGD-{sweep_steps}, small CNN, '
               f'batch {sweep_batch}', rate['JAX'], rate['torchattacks'],
               rate['JAX'] / rate['torchattacks'], float(np.mean(acc['JAX'])),
               float(np.mean(acc['torchattacks'])), p.logit_diff,
               max(v.spread() for v in t.values())])
  header = ['attack', 'JAX images/s', 'torchattacks images/s', 'JAX / torchattacks',
            'robust acc JAX', 'robust acc torchattacks', 'max |Δlogits|', 'spread']
  notes = [
      f'ℓ∞ ε = 8/255; PGD α = 2/255 without random start; APGD CE loss, ρ = 0.75, one run; '
      f'float32, same weights and batch on both sides; median of {repeats} interleaved '
      f'repeats after {warmup} warm-up (which compiles the JAX attacks).',
      'robust acc: the PyTorch net\'s accuracy on each side\'s adversarial examples, labels = '
      'the clean predictions (clean accuracy 1); max |Δlogits|: the two networks on the clean '
      'batch.',
      f'sweep: ε/255 ∈ {[round(e * 255) for e in SWEEP_EPS]}, α = ε/4, random start; '
      'JAX one jitted jax.vmap over ε of pgd(restarts=...), torchattacks a Python loop; images/s = '
      'batch × ε values × restarts per second; robust acc averaged over ε.',
  ]
  return {'rows': rows, 'table': common.table(header, rows), 'notes': notes,
          'sweep': {'eps': list(SWEEP_EPS), 'robust_jax': acc['JAX'].tolist(),
                    'robust_torchattacks': acc['torchattacks'].tolist()},
          'timing': timing,
          'config': {'batch_size': batch_size, 'resnet_batch': resnet_batch,
                     'pgd_steps': pgd_steps, 'apgd_steps': apgd_steps,
                     'sweep_batch': sweep_batch,
                     'sweep_steps': sweep_steps, 'restarts': restarts, 'resnet_arch': resnet_arch,
                     'warmup': warmup, 'repeats': repeats}}
