"""Benchmark (f): PGD-20 on the 3-conv CNN, torchattacks vs JAX by convolution path and XLA flag.

The attack: ℓ∞ PGD, ε = 8/255, step α = 2/255, 20 steps, no random start, cross-entropy
(batch mean), each step `x + α·sign(∇)`, projected as torchattacks does (`δ = clip(x' - x,
-ε, ε)`, `x' = clip(x + δ, 0, 1)`). The network: `lib.models` 'cnn' without batch norm,
widths (32, 64, 128), 32×32×3 inputs, 10 classes, holding the weights of its PyTorch mirror
(`launch.bench_torch.SmallCNN`). Batch 128 by default.

Rows, timed in alternation (`time_interleaved`) in one run:

  torchattacks  `torchattacks.PGD` on the PyTorch mirror (a hand-written loop of the same
                steps when torchattacks is not installed);
  JAX           the whole attack as one jitted `lax.scan` with the parameters as arguments,
                with convolutions traced either as `lax.conv_general_dilated` with XLA's own
                gradients (`common.plain_convolutions`, the code before `lib.models.conv`)
                or through `lib.models.conv.conv2d` (the library's path), each without and
                with `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`.

XLA reads its flags once per process, so the JAX rows run in two worker processes (flag off,
flag on; this file's `__main__`) that wait for "run" commands on stdin: only one side
computes at any time, as in `time_interleaved` within one process. The adversarial examples
of every row are compared with torchattacks' (sign steps can flip where a gradient entry is
within float rounding of zero, so a few pixels may differ by multiples of α).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from launch import bench_common as common
from launch import xla_setup

EPS, ALPHA = 8 / 255, 2 / 255
WIDTHS, NUM_CLASSES, IMAGE = (32, 64, 128), 10, (32, 32, 3)
PATHS = ('lax.conv', 'conv2d VJP')  # plain XLA gradients; lib.models.conv


def pgd(apply: Callable, params: Any, x: jax.Array, y: jax.Array, *, steps: int,
        eps: float = EPS, alpha: float = ALPHA) -> tuple[jax.Array, jax.Array]:
  """ℓ∞ PGD without random start, as `torchattacks.PGD`, under one `lax.scan`.

  Args:
    apply: `apply(params, x [B, H, W, C]) -> logits [B, K]`.
    params: the model's variables.
    x: [B, H, W, C] clean images in [0, 1].
    y: [B] int labels.
    steps: attack steps.
    eps, alpha: ℓ∞ radius and step size (pixel units).

  Returns:
    (adversarial images [B, H, W, C], loss before each step [steps]).
  """
  def loss(xa):
    logp = jax.nn.log_softmax(apply(params, xa))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

  def step(xa, _):
    value, grad = jax.value_and_grad(loss)(xa)
    xa = xa + alpha * jnp.sign(grad)
    return jnp.clip(x + jnp.clip(xa - x, -eps, eps), 0.0, 1.0), value

  return jax.lax.scan(step, x, None, length=steps)


def _torch_attack(net, steps: int) -> Callable:
  """`attack(images NCHW, labels) -> adversarial images`: torchattacks, else the same loop."""
  import torch  # pylint: disable=g-import-not-at-top
  try:
    import torchattacks  # pylint: disable=g-import-not-at-top
    return torchattacks.PGD(net, eps=EPS, alpha=ALPHA, steps=steps, random_start=False)
  except ImportError:
    pass

  def attack(x, y):
    xa = x.clone()
    for _ in range(steps):
      xa.requires_grad_(True)
      grad, = torch.autograd.grad(torch.nn.functional.cross_entropy(net(xa), y), xa)
      xa = xa.detach() + ALPHA * grad.sign()
      xa = torch.clamp(x + torch.clamp(xa - x, -EPS, EPS), 0, 1).detach()
    return xa
  return attack


def _model():
  from lib import models  # pylint: disable=g-import-not-at-top
  return models.get_model('cnn', input_shape=IMAGE, num_classes=NUM_CLASSES, widths=WIDTHS,
                          batch_norm=False)


class _Worker:
  """A JAX worker process (one XLA_FLAGS setting) holding both convolution paths compiled."""

  def __init__(self, workdir: str, flag: bool, precision: str):
    self.flag = flag
    user = [f for f in os.environ.get('XLA_FLAGS', '').split()
            if 'xla_cpu_experimental_ynn_fusion_type' not in f]
    env = dict(os.environ, XLA_FLAGS=' '.join(user + [xla_setup.YNN_FLAG] * flag))
    self.log_path = os.path.join(workdir, f'worker_flag{int(flag)}.log')
    self.log = open(self.log_path, 'w')  # pylint: disable=consider-using-with
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'launch.bench_pgd', workdir, str(int(flag)), precision],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

  def ask(self, command: str) -> dict[str, Any]:
    self.proc.stdin.write(command + '\n')
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      with open(self.log_path) as f:
        raise RuntimeError(f'PGD worker (flag {self.flag}) died:\n{f.read()[-3000:]}')
    return json.loads(line)

  def close(self) -> None:
    """Ends the worker (end of its stdin) and waits for it."""
    self.proc.stdin.close()
    self.proc.wait(timeout=60)
    self.log.close()


def run(*, batch_size: int = 128, steps: int = 20, warmup: int = 1, repeats: int = 3,
        log: Callable[[str], None] = print) -> dict[str, Any]:
  """Times PGD in every row (module docstring); returns {'rows', 'table', 'notes', ...}."""
  import torch  # pylint: disable=g-import-not-at-top
  from launch import bench_torch  # pylint: disable=g-import-not-at-top
  device = bench_torch.torch_device()
  torch.manual_seed(0)
  net = bench_torch.SmallCNN(IMAGE[2], WIDTHS, NUM_CLASSES).eval()
  variables = bench_torch.copy_small_cnn(net, _model())
  rng = np.random.default_rng(0)
  x = rng.random((batch_size, *IMAGE), np.float32)
  y = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
  net = net.to(device)
  x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
  y_t = torch.from_numpy(y).long().to(device)
  attack = _torch_attack(net, steps)

  with tempfile.TemporaryDirectory() as workdir:
    leaves = jax.tree.leaves(variables)
    np.savez(os.path.join(workdir, 'problem.npz'), x=x, y=y,
             **{f'leaf{i}': a for i, a in enumerate(leaves)})
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump({'steps': steps}, f)
    log(f'[bench pgd] compiling PGD-{steps} (batch {batch_size}) in two JAX workers ...')
    workers = [_Worker(workdir, flag, str(jax.config.jax_default_matmul_precision))
               for flag in (False, True)]
    try:
      ready = {w.flag: w.ask('ready') for w in workers}
      runs = {'torchattacks': lambda: (attack(x_t, y_t).cpu(), batch_size)[1]}
      for w in workers:
        for path in PATHS:
          runs[(path, w.flag)] = lambda w=w, p=path: (w.ask(f'run {p}'), batch_size)[1]
      log(f'[bench pgd] timing {len(runs)} rows, {repeats} interleaved repeats ...')
      t = common.time_interleaved(runs, warmup=warmup, repeats=repeats)
      ref = attack(x_t, y_t).permute(0, 2, 3, 1).cpu().numpy()
      advs = {(p, w.flag): np.load(w.ask(f'adv {p}')['path']) for w in workers for p in PATHS}
    finally:
      for w in workers:
        w.close()

  def adv_loss(adv: np.ndarray) -> float:
    with torch.no_grad():
      logits = net(torch.from_numpy(adv).permute(0, 3, 1, 2).contiguous().to(device))
      return float(torch.nn.functional.cross_entropy(logits, y_t))

  torch_rate = 1 / t['torchattacks'].median
  rows = [['torchattacks (PyTorch)', torch_rate, 1.0, adv_loss(ref), 0.0, 0.0, None, None,
           t['torchattacks'].spread()]]
  for (path, flag), adv in advs.items():
    diff = np.abs(adv - ref)
    rate = 1 / t[(path, flag)].median
    rows.append([f'JAX, {path}' + (', YNN flag' if flag else ''), rate, rate / torch_rate,
                 adv_loss(adv), float(diff.max()), float(np.mean(diff > 1e-5)),
                 ready[flag]['ynn_fusions'][path], ready[flag]['compile_s'][path],
                 t[(path, flag)].spread()])
  header = [f'PGD-{steps} (batch {batch_size}, 3-conv CNN)', 'images/s', 'vs torchattacks',
            'loss at x_adv', 'max |Δx_adv|', 'pixels differing', 'YNNPACK fusions',
            'compile (s)', 'spread']
  notes = [
      f'ℓ∞ ε=8/255, α=2/255, no random start; median of {repeats} interleaved repeats after '
      f'{warmup} warm-up; JAX: one jitted lax.scan, parameters as arguments.',
      'lax.conv: convolutions with XLA\'s own gradients (as before lib.models.conv); conv2d VJP: '
      'lib.models.conv (gradients as forward convolutions); YNN flag: XLA_FLAGS='
      f'{xla_setup.YNN_FLAG} (worker process); YNNPACK fusions: how many (of any op) the '
      'compiled attack holds.',
      'loss at x_adv: the PyTorch net\'s mean cross-entropy at each row\'s adversarial examples; '
      'Δx_adv: against torchattacks\' examples (a pixel differs where a sign step flipped on a '
      'gradient entry within float rounding of zero).',
  ]
  return {'rows': rows, 'table': common.table(header, rows), 'notes': notes,
          'timing': {str(k): v.as_dict() for k, v in t.items()},
          'config': {'batch_size': batch_size, 'steps': steps, 'warmup': warmup,
                     'repeats': repeats, 'torch_device': device}}


def _serve(workdir: str, flag: str, precision: str) -> None:
  """Worker: compile both paths, then answer 'ready', 'run PATH', 'adv PATH' lines on stdin."""
  jax.config.update('jax_default_matmul_precision', precision)
  model = _model()
  structure = jax.tree.structure(jax.eval_shape(model.init, jax.random.key(0)))
  with np.load(os.path.join(workdir, 'problem.npz')) as data:
    leaves = [jnp.asarray(data[f'leaf{i}']) for i in range(structure.num_leaves)]
    x, y = jnp.asarray(data['x']), jnp.asarray(data['y'])
  with open(os.path.join(workdir, 'config.json')) as f:
    steps = json.load(f)['steps']
  variables = jax.tree.unflatten(structure, leaves)
  apply = lambda v, xa: model.apply(v, xa).logits
  compiled, compile_s, ynn = {}, {}, {}
  for path in PATHS:
    attack = jax.jit(lambda v, x, y: pgd(apply, v, x, y, steps=steps))
    plain = path == 'lax.conv'
    with common.plain_convolutions() if plain else contextlib.nullcontext():
      jaxpr = str(jax.make_jaxpr(attack)(variables, x, y))
      compiled[path], compile_s[path] = common.compile_timed(attack, variables, x, y)
    if ('custom_vjp_call' in jaxpr) == plain:
      raise RuntimeError(f'PGD with {path}: the traced attack has the other convolution path.')
    ynn[path] = compiled[path].as_text().count('"__ynn_fusion"')
  for line in sys.stdin:
    command, _, path = line.strip().partition(' ')
    if command == 'ready':
      reply = {'compile_s': compile_s, 'ynn_fusions': ynn}
    elif command == 'run':
      jax.block_until_ready(compiled[path](variables, x, y))
      reply = {}
    else:
      reply = {'path': os.path.join(workdir, f'adv_flag{flag}_{PATHS.index(path)}.npy')}
      np.save(reply['path'], np.asarray(compiled[path](variables, x, y)[0]))
    print(json.dumps(reply), flush=True)


if __name__ == '__main__':
  _serve(*sys.argv[1:])
