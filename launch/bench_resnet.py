"""Benchmark (b): ResNet-18 (CIFAR stem) training steps/s, this codebase vs plain PyTorch.

JAX: `lib.train.train_step` on `get_model('resnet18')`, jitted with the state donated, as
`lib.train.fit` builds it; each step's metrics are read back to the host (as `run_loop`
does). PyTorch: the same architecture written out in `launch.bench_torch` (no torchvision),
`model.train()`, the same optimizer (SGD, Nesterov momentum 0.9, L2 weight decay 5e-4,
constant learning rate), each step's loss read back with `.item()`. Same batch of 32x32x3
float32 images (NHWC for JAX, NCHW or channels_last for PyTorch). The two are timed in
alternation so that a busy machine slows both alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from launch import bench_common as common
from lib import train as train_lib
from lib.models import get_model

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
RESNET18 = {'widths': (64, 128, 256, 512), 'blocks': (2, 2, 2, 2)}


def _batch(batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {'image': rng.random((batch_size, *IMAGE_SHAPE), np.float32),
          'label': rng.integers(0, NUM_CLASSES, (batch_size,)).astype(np.int32)}


class JaxStep:
  """The codebase's compiled training step for one model configuration."""

  def __init__(self, name: str, batch_size: int, *, schedule: str = 'constant', **model_kwargs):
    self.model = get_model(name, input_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES, **model_kwargs)
    self.optimizer = train_lib.make_optimizer(name='sgd', learning_rate=0.1, num_steps=10_000,
                                              momentum=0.9, weight_decay=5e-4, schedule=schedule)
    init_key, self.base_key = jax.random.split(jax.random.key(0))
    self.state = jax.jit(train_lib.init_state, static_argnums=(0, 1))(self.model, self.optimizer, init_key)
    self.num_params = int(sum(x.size for x in jax.tree.leaves(self.state.variables['params'])))
    self.batches = [jax.tree.map(jnp.asarray, _batch(batch_size, s)) for s in range(2)]
    step = lambda s, b, k: train_lib.train_step(self.model, self.optimizer, s, b, k)
    self.compiled, self.compile_s = common.compile_timed(jax.jit(step, donate_argnums=0), self.state,
                                                         self.batches[0], self.base_key)
    self.flops = common.xla_flops(self.compiled)
    self._t = 0

  def run(self, steps: int = 1) -> int:
    for _ in range(steps):
      self.state, metrics = self.compiled(self.state, self.batches[self._t % 2], self.base_key)
      self._t += 1
      jax.tree.map(np.asarray, metrics)
    return steps


def torch_runner(batch_size: int, widths: Sequence[int], blocks: Sequence[int], *,
                 channels_last: bool = False, compile_step: bool = False) -> tuple[Callable[[], int], dict]:
  """`run()` doing one PyTorch training step, and facts about the setup."""
  import torch  # pylint: disable=g-import-not-at-top
  from launch import bench_torch  # pylint: disable=g-import-not-at-top
  device = bench_torch.torch_device()
  torch.manual_seed(0)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  model = bench_torch.ResNet(num_classes=NUM_CLASSES, widths=widths, blocks=blocks).to(device, memory_format=fmt)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
  step = bench_torch.make_step(model, opt, compile_step=compile_step)
  data = []
  for s in range(2):
    b = _batch(batch_size, s)
    x = torch.from_numpy(b['image']).permute(0, 3, 1, 2).contiguous().to(device, memory_format=fmt)
    data.append((x, torch.from_numpy(b['label']).long().to(device)))
  box = [0]

  def run() -> int:
    loss, _ = step(*data[box[0] % 2])
    box[0] += 1
    loss.item()  # host read (synchronises on GPU)
    return 1

  info = {'device': device, 'threads': torch.get_num_threads(), 'version': torch.__version__,
          'num_params': bench_torch.param_count(model), 'channels_last': channels_last,
          'compiled': compile_step}
  return run, info


def run(*, batch_size: int = 32, widths: Sequence[int] = RESNET18['widths'],
        blocks: Sequence[int] = RESNET18['blocks'], warmup: int = 1, repeats: int = 5,
        channels_last: bool = True, torch_compile: bool = False, log=print) -> dict[str, Any]:
  """Runs benchmark (b); returns a JSON-able dict (rows, config, notes, the JAX step)."""
  arch = 'ResNet-18' if (tuple(widths), tuple(blocks)) == (RESNET18['widths'], RESNET18['blocks']) \
      else f'ResNet widths={tuple(widths)} blocks={tuple(blocks)}'
  log(f'[resnet] compiling the JAX step ({arch}, batch {batch_size}) ...')
  jax_step = JaxStep('resnet18', batch_size, widths=tuple(widths), blocks=tuple(blocks))
  runs: dict[str, Callable[[], int]] = {'jax': jax_step.run}
  infos = {}
  try:
    runs['torch'], infos['torch'] = torch_runner(batch_size, widths, blocks)
    if channels_last:
      runs['torch_cl'], infos['torch_cl'] = torch_runner(batch_size, widths, blocks, channels_last=True)
    if torch_compile:
      log('[resnet] torch.compile (inductor) warm-up ...')
      runs['torch_compiled'], infos['torch_compiled'] = torch_runner(batch_size, widths, blocks,
                                                                     compile_step=True)
  except ImportError as e:
    log(f'[resnet] PyTorch unavailable ({e}); timing JAX only')
  if 'torch' in infos and infos['torch']['num_params'] != jax_step.num_params:
    raise RuntimeError(f"parameter counts differ: JAX {jax_step.num_params}, PyTorch {infos['torch']['num_params']}")
  log(f'[resnet] timing {", ".join(runs)} ({repeats} interleaved repeats) ...')
  t = common.time_interleaved(runs, warmup=warmup, repeats=repeats)
  labels = {'jax': 'JAX (lib.train.train_step, jit)', 'torch': 'PyTorch eager (NCHW)',
            'torch_cl': 'PyTorch eager (channels_last)', 'torch_compiled': 'PyTorch torch.compile'}
  jax_sps = 1 / t['jax'].median
  rows = []
  for k, v in t.items():
    sps = 1 / v.median
    rows.append({'name': labels[k], 'key': k, 'steps_per_s': sps, 'step_s': v.median,
                 'images_per_s': sps * batch_size, 'jax_over_this': jax_sps / sps,
                 'gflops_at_xla_count': jax_step.flops * sps / 1e9 if jax_step.flops else None,
                 'spread': v.spread(), 'timing': v.as_dict()})
  header = ['implementation', 'steps/s', 'step (s)', 'images/s', 'JAX / this', 'GFLOP/s (XLA count)', 'spread']
  table_rows = [[r['name'], r['steps_per_s'], r['step_s'], r['images_per_s'], r['jax_over_this'],
                 r['gflops_at_xla_count'], f"{100 * r['spread']:.0f}%"] for r in rows]
  tinfo = infos.get('torch', {})
  notes = [
      f'{arch} (CIFAR stem), {jax_step.num_params:,} parameters (PyTorch: {tinfo.get("num_params", "-"):,}), '
      f'batch {batch_size} of 32x32x3 float32, 10 classes, train mode (batch statistics).'
      if tinfo else f'{arch}, {jax_step.num_params:,} parameters, batch {batch_size}.',
      'optimizer: SGD lr 0.1 constant, Nesterov momentum 0.9, L2 weight decay 5e-4 (both sides); '
      'JAX also computes accuracy and the global grad norm, PyTorch loss and accuracy.',
      f'JAX: {jax.default_backend()}, compile {jax_step.compile_s:.1f} s (excluded); PyTorch '
      f'{tinfo.get("version", "-")} on {tinfo.get("device", "-")} with {tinfo.get("threads", "-")} threads.',
      f'median of {repeats} interleaved repeats of one step each after {warmup} warm-up step(s).',
  ]
  if not torch_compile:
    notes.append('torch.compile not timed (pass --torch_compile): on this 2-core CPU inductor '
                 'compiles the training graph with g++ for minutes.')
  return {'table': common.table(header, table_rows), 'rows': rows, 'notes': notes,
          'jax_flops_per_step': jax_step.flops, 'jax_compile_s': jax_step.compile_s,
          'config': {'arch': arch, 'widths': list(widths), 'blocks': list(blocks),
                     'batch_size': batch_size, 'warmup': warmup, 'repeats': repeats,
                     'jax_params': jax_step.num_params, 'torch': infos}}
