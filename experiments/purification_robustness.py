"""Purification robustness (issue 9; Liu & Wei 2025, DiffPure, Lee & Kim 2023; PAPERS.md §2).

How much does diffusion purification (DiffPure) add to a classifier's robustness once the
sampler's randomness is controlled, and does what remains track how much the purifier
compresses its input space?

Status (2026-12-01, third pass): runs end to end and resumes; not yet within the main job's
budget. Compiled programs: t* is a traced argument of the purifier (one program per
evaluation for the whole grid); fresh and fixed randomness share one PGD program (the key a
step takes is a traced choice in lib/attacks/pgd.py); the evaluated images are committed
to the device like the attacks' outputs, so evaluation and purification compile once, not
once per placement. The tiny overrides (tests/test_purification_robustness.TINY) compile 2
purified PGD programs instead of 3, 1 purified evaluation instead of 2, 1 purification
instead of 2, 2 evaluations of the classifier alone instead of 4 (counted with
jax_log_compiles): 96 CPU-s for the whole process (was 106), 7.3 min wall at load ~12; about
90 s on 2 quiet cores, not the 50 s wanted. Left of it: the UNet's init (10 CPU-s, eager
or jitted alike) and step compile, the checks of the classifier alone (4 PGD programs and
Square; ~20 CPU-s, which the robustness study also runs), the BPDA program.
Denoiser (runlocal classifier, clean 0.727 on 128 images; purified clean accuracy at t* =
0.02 / 0.05 / 0.1, 4 draws): trained on max_t 0.1 it sat on the loss plateau (1.0) for all
400 steps: 0.547 / 0.229 / 0.158 (the purifier then only adds noise); on max_t 0.2, 600
steps of batch 16 (loss 0.29): 0.689 / 0.512 / 0.240; on max_t 0.5, the same steps: 0.631 /
0.328 / 0.197. Runlocal takes the max_t 0.2 denoiser and the lower grid 0.02 / 0.05 / 0.1.
Runlocal (measured 2026-12-01 with the classifier read from another folder, as the main
job would; 26 min wall at load 6-13, 804 CPU-s in the stages, so ~7 min on 2 quiet cores,
not 3.5): classifier 0.688 clean on 32 images, 0 under PGD; purified clean 0.688 / 0.418 /
0.184 at t* = 0.02 / 0.05 / 0.1 (8 draws); robust (mean over draws) fresh 0.059 / 0.074 /
0.070, fixed 0.031 / 0.031 / 0.039, BPDA 0.086 / 0.102 / 0.117; the checks at t* = 0.05
pass; compression (random δ) 0.55 / 0.39 / 0.33, Spearman with fixed robust accuracy
−0.866 over 3 t*. Purification keeps clean accuracy only at t* = 0.02, and no t* gains more
than 0.12 over the undefended 0: the runlocal numbers say little about purification yet.
CPU-s per stage: denoiser 126, classifier alone (PGD and checks) 20, t* = 0.02 (every
purified compile) 187, t* = 0.05 with the checks on 8 images 352, t* = 0.1 (no compile)
118. Next: the checks (~235 CPU-s: the purified programs compiled again at the checks'
batch shape, PGD at 2× steps and at 2 restarts, Square) are the largest cut left; a plain t* (three PGD-EOT of 10
steps × EOT 4 through 5 reverse steps on 32 images) costs ~118 CPU-s, so halving EOT or the
steps is the other lever, a protocol choice to document; the denoiser needs more than 600
steps of batch 16 to lift t* = 0.05 (0.42 here; 0.51 on 128 images with the same recipe).
Quiet-machine check (lead, 2026-12-01, load < 2, 16 images and the checks on all 16, the
trained denoiser resumed): wall ≈ CPU for the compile-bound stages (XLA compiles on one
thread): classifier alone 20 s, t* = 0.02 130 s wall / 129 CPU-s (≈100 s of it compiling
the purified programs, ~25 s each), t* = 0.05 with the checks 210 s / 337 CPU-s, t* = 0.1
32 s / 58 CPU-s: 6.6 min plus the denoiser's training, so even at 16 images the study is
~8 min, twice its budget. The next pass must cut compile time per purified program (HLO
size of the remat'd scan through the UNet, XLA:CPU options) and the checks' program count.

Protocol:

1. Train the classifier of `experiments/classifier.py` (same config and code) in
   `workdir/model`, or resume it from `classifier_workdir` when given (the classifier
   study's folder under the same classifier keys; the main job can set it so the classifier
   trains once), as `experiments/robustness.py` does.
2. The denoiser: `config.denoiser.path` loads a diffusers `UNet2DModel` folder (the full
   config: google/ddpm-cifar10-32); without a path, a small diffusers-style UNet is trained
   on the classifier's training images with `lib.diffusion.eps_loss` through
   `lib.train.run_loop` in `workdir/denoiser` (resumable, checkpointed; a relaunch under
   another denoiser or data config is refused, `lib.run_config`), on the steps k ≤
   `denoiser.max_t`·T only (the steps purification at t* ≤ max_t visits: a generic
   ε-model of those noise levels, which knows nothing of the classifier).
3. On the first `num_eval` test images, for the classifier alone: clean accuracy and PGD
   (`attack_steps`, step `attack_step_size`, no random start: Lee & Kim), with the checks of
   `lib.attacks.checks`.
4. For every t* of `t_stars` (threat model `norms`: one for all, or one per t*), the
   purified classifier `PurifiedClassifier(denoiser, classifier, PurifierConfig(t*,
   sampler, sampler_steps))` (a stochastic model: its key is the sampler's noise). With a
   continuous sampler and a fixed `sampler_steps`, t* is an argument of the purifier
   (`PurifierParams.t_star`, traced), so every program (attacks, evaluation, analysis)
   compiles once for the whole grid; otherwise once per t*:
     clean    accuracy over `eval_draws` draws (mean over draws, worst case per image);
     fresh    PGD-EOT (`eot` draws per gradient, a new key every step), exact gradients
              through every sampler step (remat per step), evaluated on `eval_draws`
              draws the attack never saw;
     fixed    the same PGD with one key for every step, evaluated on the very `eot` draws
              the attack saw (Liu & Wei's fixed randomness);
     BPDA     PGD-EOT through the purifier with the identity backward pass (Athalye et al.
              2018), evaluated as `fresh`;
     rand     (`rand_ensemble`) the AutoAttack-style 'rand' ensemble (APGD-CE + APGD-DLR with
              EOT), worst case over `eval_draws` draws;
   distances (l2) between clean, adversarial (the fixed-randomness attack) and purified
   images under one draw ω (the first draw that attack saw), the spread of f_ω(x) over
   `spread_draws` draws, and the compression rate CR_ω(x; δ) = ‖f_ω(x + δ) − f_ω(x)‖₂ /
   ‖δ‖₂ (`lib.diffusion.analysis`) along `compression_directions` random directions of the
   threat model's radius (ℓ∞: random signs; ℓ2: Gaussian) and along the attack directions
   x_adv − x of the fixed-randomness attack, with ω as above.
   The checks (`checks.check_evaluation`) of the fresh-randomness PGD-EOT at `check_t_star`
   on the first `check_num` images (`check_eps_scales`, Square with `check_square_queries`
   on the first evaluation draw).
5. Across the t* of each norm (at least 3): Pearson and Spearman correlation of the mean
   compression rate with robust accuracy under fixed randomness.

`experiments.purification_robustness_report.section` writes the report from the numbers
(`Results`); the time of every stage is measured and reported.

Variants: `runlocal` (the classifier's runlocal CNN on `shapes`; a 0.07M-parameter UNet
trained for 600 steps of batch 16 at learning rate 3e-3 on diffusion times ≤ 0.2; t* ∈
{0.02, 0.05, 0.1}; ℓ∞ 8/255; PGD-EOT 10 steps with EOT 4 through 5 reverse SDE steps; 32
images, 8 evaluation draws; the checks at t* = 0.05 on 8 images); '' (full
scale: WideResNet-28-10 on CIFAR-10 through TFDS, the diffusers DDPM from
`config.denoiser.path`, t* = 0.1 at ℓ∞ 8/255 and 0.075 at ℓ2 0.5, DiffPure's t*·1000 SDE
steps, PGD-EOT 200 steps, EOT 20, step 0.007, no random start, plus the 'rand' ensemble);
the classifier's `digits`, `cifar10`, `wrn` pick data and model (with `runlocal` or alone).

Launch:
  python -m launch.run --config=experiments/purification_robustness.py:runlocal \
      --workdir=/tmp/purif
  python -m launch.run --config=experiments/purification_robustness.py --workdir=/tmp/purif_full \
      --config.data_dir=~/tensorflow_datasets --config.denoiser.path=~/ddpm-cifar10-32
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from experiments import classifier
from experiments import purification_robustness_report as report
from lib import data as data_lib
from lib import models, run_config, train, validate
from lib.attacks import checks, ensemble, evaluate, pgd
from lib.diffusion import (PurifiedClassifier, Purifier, PurifierConfig, PurifierParams,
                           analysis, losses)
from lib.models.core import PureModel
from lib.models.unet_weights import read_diffusers_config
from lib.report import markdown

NORMS = ('linf', 'l2')
# Evaluation-only keys: nothing computed from them is checkpointed, so a relaunch may
# change them (the denoiser's and classifier's training keys may not; see lib/run_config.py).
RESUMABLE_KEYS = ('t_stars', 'norms', 'eot', 'eval_draws', 'spread_draws',
                  'compression_directions', 'check_t_star', 'check_num', 'check_eps_scales',
                  'check_square_queries', 'rand_ensemble', 'ensemble_steps', 'sampler_steps',
                  'attack_steps', 'attack_step_size', 'purification_seed')


def _denoiser_config(runlocal: bool) -> ml_collections.ConfigDict:
  """The denoiser: a diffusers folder to load (`path`), or the small UNet to train."""
  return ml_collections.ConfigDict({
      'path': '',                       # a diffusers UNet2DModel folder; '' trains the UNet below
      'block_out_channels': '8,16,16',  # per level, finest first (DownBlock2D/UpBlock2D)
      'layers_per_block': 1,
      'norm_num_groups': 4,
      # The largest diffusion time trained: steps k ≤ max_t·T only (lib.diffusion.losses);
      # every t* must be at most max_t. 1.0: the whole chain.
      'max_t': 0.2 if runlocal else 1.0,
      'num_steps': 600 if runlocal else 20000,
      'batch_size': 16 if runlocal else 128,
      # 2e-3 left the small UNet on its loss plateau (~0.9) for 400 steps; 1e-2 for 500.
      'learning_rate': 3e-3,
      'warmup_steps': 20 if runlocal else 500,
      'seed': 0,
      'checkpoint_every': 200 if runlocal else 1000,
      'log_every': 20 if runlocal else 100,
  })


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The classifier's config for `arg` plus the denoiser, purifier and attack settings.

  '' (full scale) is the classifier's `cifar10,wrn`; any other argument is passed to the
  classifier as it is (its variants: runlocal, digits, cifar10, wrn). See the module
  docstring.
  """
  c = classifier.get_config(arg or 'cifar10,wrn')
  runlocal = 'runlocal' in arg.split(',')
  c.denoiser = _denoiser_config(runlocal)
  c.t_stars = '0.02,0.05,0.1' if runlocal else '0.1,0.075'  # comma-separated t* grid
  c.norms = 'linf' if runlocal else 'linf,l2'   # one norm for every t*, or one per t*
  c.linf_eps = 8.0                              # ℓ∞ radius in units of 1/255
  c.l2_eps = 0.5                                # ℓ2 radius (pixel units)
  c.sampler = 'sde'                             # lib.diffusion.purify.SAMPLERS
  c.sampler_steps = 5 if runlocal else 0        # reverse steps; 0: DiffPure's t*·1000
  c.num_eval = 32 if runlocal else 512
  c.attack_steps = 10 if runlocal else 200
  c.attack_step_size = 0.007                    # Lee & Kim (pixel units)
  c.eot = 4 if runlocal else 20                 # draws per attack gradient
  c.eval_draws = 8 if runlocal else 10          # evaluation draws (mean and worst case)
  c.spread_draws = 4 if runlocal else 8
  c.compression_directions = 2 if runlocal else 8
  c.check_t_star = 0.05 if runlocal else 0.1    # the t* whose evaluation is checked; 0: none
  c.check_num = 8 if runlocal else 64
  c.check_eps_scales = '0.5,1' if runlocal else '0.25,0.5,1,2'
  c.check_square_queries = 20 if runlocal else 1000
  c.rand_ensemble = not runlocal
  c.ensemble_steps = 100
  c.purification_seed = 0
  # A folder holding the classifier of experiments/classifier.py trained under these very
  # classifier keys (the classifier study's workdir; the main job sets it when the keys
  # agree): it is resumed from there instead of trained again. '' = train in workdir/model.
  c.classifier_workdir = ''
  return c


def _floats(c: ml_collections.ConfigDict, key: str, name: str | None = None) -> list[float]:
  """The comma-separated numbers of `c[key]` (`name`: the key's dotted name in messages)."""
  name = name or f'config.{key}'
  try:
    values = [float(v) for v in str(c[key]).split(',') if v.strip()]
  except ValueError:
    raise ValueError(f'{name} must be comma-separated numbers; got {c[key]!r}.') from None
  if not values:
    raise ValueError(f'{name} must name at least one number; got {c[key]!r}.')
  return values


def channels(c: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The small UNet's `block_out_channels` from `config.denoiser.block_out_channels`."""
  values = _floats(c.denoiser, 'block_out_channels', 'config.denoiser.block_out_channels')
  for v in values:
    if v != int(v) or v < 1:
      raise ValueError(f'config.denoiser.block_out_channels must be positive integers; got '
                       f'{c.denoiser.block_out_channels!r}.')
  return tuple(int(v) for v in values)


class Threat(NamedTuple):
  """One point of the t* grid: the purifier's t* and the threat model it is attacked in."""
  t_star: float
  norm: str
  eps: float


def grid(c: ml_collections.ConfigDict) -> list[Threat]:
  """The t* grid with each t*'s norm and radius (pixel units)."""
  t_stars = _floats(c, 't_stars')
  norms = [n.strip() for n in str(c.norms).split(',')]
  if len(norms) == 1:
    norms = norms * len(t_stars)
  if len(norms) != len(t_stars):
    raise ValueError(f'config.norms must name one norm, or one per t* ({len(t_stars)}); got '
                     f'{c.norms!r}.')
  for n in norms:
    validate.check_choice(n, NORMS, 'config.norms')
  eps = {'linf': c.linf_eps / 255, 'l2': c.l2_eps}
  return [Threat(t, n, eps[n]) for t, n in zip(t_stars, norms)]


def traced_t_star(c: ml_collections.ConfigDict) -> bool:
  """Whether t* is an argument of the purifier (one program for the grid): a continuous
  sampler ('sde', 'ode') with the same `sampler_steps` for every t*. Otherwise (DiffPure's
  t*·1000 steps, or a discrete sampler) every t* is a static setting of its own programs."""
  return c.sampler in ('sde', 'ode') and c.sampler_steps > 0


def purifier_config(c: ml_collections.ConfigDict, t_star: float) -> PurifierConfig:
  """The `PurifierConfig` of t* under `c` (sampler, steps); t_star=None where t* is traced."""
  return PurifierConfig(t_star=None if traced_t_star(c) else t_star, sampler=c.sampler,
                        num_steps=c.sampler_steps or None)


def purifier_params(c: ml_collections.ConfigDict, params: PurifierParams,
                    t_star: float) -> PurifierParams:
  """`params` with t* as the purifier's argument where it is traced (`traced_t_star`)."""
  return params._replace(t_star=jnp.float32(t_star) if traced_t_star(c) else None)


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks every field of `c` before anything is built (the classifier's fields included).

  Raises:
    ValueError: naming the config key and what was expected.
  """
  classifier.validate_config(c)
  _validate_denoiser(c)
  validate.check_number(c.linf_eps, 'config.linf_eps', low=0.0, high=255.0)
  validate.check_positive(c.linf_eps, 'config.linf_eps')
  validate.check_number(c.l2_eps, 'config.l2_eps', low=0.0)
  validate.check_positive(c.l2_eps, 'config.l2_eps')
  threats = grid(c)
  validate.check_int(c.sampler_steps, 'config.sampler_steps', minimum=0)
  for threat in threats:
    try:
      config = purifier_config(c, threat.t_star)
      config.check_t_star(threat.t_star if config.t_star is None else None)
    except ValueError as e:
      raise ValueError(f'config.t_stars / config.sampler / config.sampler_steps: {e}') from e
  for name in ('num_eval', 'attack_steps', 'eot', 'eval_draws', 'compression_directions',
               'check_num', 'check_square_queries', 'ensemble_steps'):
    validate.check_int(c[name], f'config.{name}', minimum=1)
  validate.check_int(c.spread_draws, 'config.spread_draws', minimum=2)
  validate.check_int(c.purification_seed, 'config.purification_seed', minimum=0)
  validate.check_number(c.attack_step_size, 'config.attack_step_size', low=0.0)
  validate.check_positive(c.attack_step_size, 'config.attack_step_size')
  validate.check_bool(c.rand_ensemble, 'config.rand_ensemble')
  if not isinstance(c.classifier_workdir, str):
    raise ValueError(f'config.classifier_workdir must be a folder path or ""; got '
                     f'{c.classifier_workdir!r}.')
  for scale in _floats(c, 'check_eps_scales'):
    validate.check_positive(scale, 'config.check_eps_scales')
  validate.check_number(c.check_t_star, 'config.check_t_star', low=0.0)
  if c.check_t_star and all(abs(t.t_star - c.check_t_star) > 1e-9 for t in threats):
    raise ValueError(f'config.check_t_star={c.check_t_star!r} must be one of config.t_stars '
                     f'({c.t_stars!r}) or 0 (no checks of the purifier).')
  if c.check_num > c.num_eval:
    raise ValueError(f'config.check_num={c.check_num} exceeds config.num_eval={c.num_eval}.')


def max_timestep(c: ml_collections.ConfigDict) -> int:
  """The largest step index the small UNet is trained on, `config.denoiser.max_t`·T.

  k = max_t·T covers the labels of every t* ≤ max_t: the forward noising's k = t*·T − 1 and
  the reverse SDE's label t*·(T − 1) (`lib.diffusion.schedules`).
  """
  schedule = PurifierConfig().schedule
  return min(schedule.start_index(c.denoiser.max_t) + 1, schedule.num_train_timesteps - 1)


def _validate_denoiser(c: ml_collections.ConfigDict) -> None:
  """The `config.denoiser` fields (the small UNet's only when no path is given)."""
  d = c.denoiser
  if not isinstance(d, ml_collections.ConfigDict):
    raise ValueError(f'config.denoiser must be a ConfigDict; got {d!r}.')
  if not isinstance(d.path, str):
    raise ValueError(f'config.denoiser.path must be a string; got {d.path!r}.')
  if c.dataset == 'cifar10' and not d.path:
    raise ValueError('config.denoiser.path must name the diffusers ddpm-cifar10-32 folder on '
                     'CIFAR-10 (the issue\'s protocol); only the small denoiser of other data '
                     'sets is trained here.')
  if d.path:
    return
  widths = channels(c)
  for name, minimum in (('layers_per_block', 1), ('norm_num_groups', 1), ('num_steps', 1),
                        ('batch_size', 1), ('warmup_steps', 0), ('seed', 0),
                        ('checkpoint_every', 1), ('log_every', 1)):
    validate.check_int(d[name], f'config.denoiser.{name}', minimum=minimum)
  if d.warmup_steps >= d.num_steps:
    raise ValueError(f'config.denoiser.warmup_steps must be below config.denoiser.num_steps='
                     f'{d.num_steps}; got {d.warmup_steps}.')
  validate.check_number(d.learning_rate, 'config.denoiser.learning_rate', low=0.0)
  validate.check_positive(d.learning_rate, 'config.denoiser.learning_rate')
  try:
    max_timestep(c)
  except ValueError as e:
    raise ValueError(f'config.denoiser.max_t: {e}') from e
  above = [t.t_star for t in grid(c) if t.t_star > d.max_t]
  if above:
    raise ValueError(f'config.denoiser.max_t={d.max_t!r} must be at least every t* of '
                     f'config.t_stars (the denoiser is trained up to max_t only); got '
                     f'{c.t_stars!r}.')
  if any(w % d.norm_num_groups for w in widths):
    raise ValueError(f'config.denoiser.norm_num_groups={d.norm_num_groups} must divide every '
                     f'entry of config.denoiser.block_out_channels={d.block_out_channels!r}.')
  factor = 2 ** (len(widths) - 1)
  if c.image_size % factor:
    raise ValueError(f'config.image_size={c.image_size} must be divisible by {factor} for '
                     f'{len(widths)} UNet levels (config.denoiser.block_out_channels).')


def check_against_data(c: ml_collections.ConfigDict, num_test: int) -> None:
  """The settings that depend on the data set, checked before training."""
  if c.num_eval > num_test:
    raise ValueError(f'config.num_eval={c.num_eval} exceeds the {num_test} test images.')


# ---------------------------------------------------------------- the denoiser

@dataclasses.dataclass(frozen=True)
class UNetDenoiser:
  """A `lib.models` UNet as the purifier's `denoiser(params, x, labels) -> ε̂` (hashable)."""
  model: PureModel

  def __call__(self, params: Any, x: jax.Array, labels: jax.Array) -> jax.Array:
    """ε̂ [B, H, W, C] of noisy x [B, H, W, C] at float labels [B]."""
    return self.model.apply(params, {'x': x, 't': labels}).features


def small_unet(c: ml_collections.ConfigDict, image_shape: tuple[int, ...]) -> PureModel:
  """The small diffusers-style UNet of `config.denoiser` (attention in the middle block only)."""
  return _small_unet(tuple(image_shape), channels(c), c.denoiser.layers_per_block,
                     c.denoiser.norm_num_groups)


# One model and optimizer object per setting, so the jitted training step compiles once per
# process however often the denoiser stage runs (a relaunch in a notebook, the tests).
@functools.lru_cache(maxsize=8)
def _small_unet(image_shape: tuple[int, ...], widths: tuple[int, ...], layers_per_block: int,
                norm_num_groups: int) -> PureModel:
  return models.get_model('ddpm_unet', input_shape=image_shape, block_out_channels=widths,
                          layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                          attention_head_dim=None, down_block_types=('DownBlock2D',) * len(widths),
                          up_block_types=('UpBlock2D',) * len(widths))


@functools.lru_cache(maxsize=8)
def _denoiser_optimizer(learning_rate: float, num_steps: int,
                        warmup_steps: int) -> optax.GradientTransformation:
  return train.make_optimizer(name='adamw', learning_rate=learning_rate, num_steps=num_steps,
                              warmup_steps=warmup_steps)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=3)
def denoiser_step(denoiser: UNetDenoiser, optimizer: optax.GradientTransformation,
                  max_timestep: int, state: train.TrainState, images: jax.Array,
                  key: jax.Array) -> tuple[train.TrainState, dict[str, jax.Array]]:
  """One step of ε-prediction training on images [B, H, W, C] in [0, 1], steps k ≤ max_timestep."""
  step_key = jax.random.fold_in(key, state.step)
  variables = state.variables

  def loss_fn(params):
    return losses.eps_loss(denoiser, {**variables, 'params': params}, 2 * images - 1,
                           key=step_key, max_timestep=max_timestep)

  loss, grads = jax.value_and_grad(loss_fn)(variables['params'])
  updates, opt_state = optimizer.update(grads, state.opt_state, variables['params'])
  params = optax.apply_updates(variables['params'], updates)
  return train.TrainState(state.step + 1, {**variables, 'params': params}, opt_state), {
      'loss': loss}


_init_state = jax.jit(train.init_state, static_argnums=(0, 1))


def _denoiser_record(c: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the denoiser's checkpoints depend on (recorded in workdir/denoiser/config.json)."""
  data = {k: c[k] for k in ('dataset', 'image_size', 'data_dir', 'data_seed', 'num_train')}
  return {'denoiser': c.denoiser.to_dict(), 'data': data}


def train_denoiser(c: ml_collections.ConfigDict, train_data: Any, workdir: str
                   ) -> tuple[UNetDenoiser, Any]:
  """Trains the small UNet in `workdir/denoiser` (resuming), or loads `config.denoiser.path`."""
  if c.denoiser.path:
    path = os.path.expanduser(c.denoiser.path)
    model = models.unet.unet_model(read_diffusers_config(path))
    if tuple(model.inputs.shape) != tuple(train_data.image_shape):
      raise ValueError(f'config.denoiser.path={c.denoiser.path!r} holds a UNet for images of '
                       f'shape {model.inputs.shape}; the data are {train_data.image_shape}.')
    return UNetDenoiser(model), models.load_diffusers_unet(path)
  folder = os.path.join(workdir, 'denoiser')
  run_config.prepare_workdir(folder, _denoiser_record(c))
  d = c.denoiser
  model = small_unet(c, train_data.image_shape)
  denoiser = UNetDenoiser(model)
  optimizer = _denoiser_optimizer(d.learning_rate, d.num_steps, d.warmup_steps)
  init_key, step_key = jax.random.split(jax.random.key(d.seed))
  state = train.run_loop(
      init=lambda: _init_state(model, optimizer, init_key),
      step_fn=lambda s, images: denoiser_step(denoiser, optimizer, max_timestep(c), s, images,
                                              step_key),
      batch_fn=lambda i: jnp.asarray(data_lib.batch_at(train_data, i, batch_size=d.batch_size,
                                                       seed=d.seed)['image']),
      num_steps=d.num_steps, workdir=folder, checkpoint_every=d.checkpoint_every,
      log_every=d.log_every)
  return denoiser, state.variables


# ---------------------------------------------------------------- measurements

class Seconds(NamedTuple):
  """How long a stage took: wall time, and CPU time of this process (every thread; on a
  shared machine the CPU time is the stage's cost, the wall time also counts others' load)."""
  wall: float
  cpu: float


def _clock() -> Seconds:
  return Seconds(time.time(), time.process_time())


def _since(start: Seconds) -> Seconds:
  now = _clock()
  return Seconds(now.wall - start.wall, now.cpu - start.cpu)


class Accuracy(NamedTuple):
  """Accuracy over evaluation draws: mean over (image, draw) pairs, worst case per image."""
  mean: float
  worst: float


def _accuracy(apply, params, x, y, key=None, draws=1) -> Accuracy:
  result = evaluate.robust_accuracy(apply, params, x, y, key=key, draws=draws)
  return Accuracy(float(result.mean), float(result.worst))


class PointResult(NamedTuple):
  """The numbers of one t* (see the module docstring).

  Attributes:
    threat: t*, norm and radius.
    clean: accuracy of the purified classifier on clean images.
    robust: setting ('fresh', 'fixed', 'bpda', 'rand' if run) -> `Accuracy`.
    distances: name (`analysis.Distances` fields) -> mean over images (ℓ2).
    spread: name (`analysis.Spread` fields) -> mean over images (ℓ2 to the clean image).
    compression: 'random' / 'attack' -> mean compression rate.
    report: the checks of the fresh-randomness evaluation, or None where not run.
    seconds: wall and CPU time of this t*.
  """
  threat: Threat
  clean: Accuracy
  robust: dict[str, Accuracy]
  distances: dict[str, float]
  spread: dict[str, float]
  compression: dict[str, float]
  report: checks.Report | None
  seconds: Seconds


class Results(NamedTuple):
  """The numbers of one run (what the report is written from).

  Attributes:
    clean: the classifier's clean accuracy on the evaluated images.
    chance: 1 / the number of classes.
    undefended: norm -> the classifier's accuracy under the study's PGD at that norm's radius.
    undefended_reports: norm -> `checks.Report` of that PGD on the classifier.
    points: one `PointResult` per t* of the grid, in order.
    correlations: norm -> 'random' / 'attack' -> `analysis.Correlation` of the compression
      rate with fixed-randomness robust accuracy across that norm's t* (norms with ≥ 3 t*).
    timings: stage -> `Seconds`.
  """
  clean: float
  chance: float
  undefended: dict[str, float]
  undefended_reports: dict[str, checks.Report]
  points: list[PointResult]
  correlations: dict[str, dict[str, analysis.Correlation | None]]
  timings: dict[str, Seconds]


class Study(NamedTuple):
  """What every measurement needs: the config, the two models, their params and the images."""
  c: ml_collections.ConfigDict
  denoiser: UNetDenoiser
  classifier: Callable[..., Any]
  params: PurifierParams
  x: jax.Array
  y: jax.Array


def _attack(s: Study, model, threat: Threat, key: jax.Array, randomness: str) -> jax.Array:
  """The study's PGD-EOT (no random start) against `model` (purified) in `threat`."""
  return pgd.pgd(model, s.params, s.x, s.y, eps=threat.eps, norm=threat.norm,
                 steps=s.c.attack_steps, step_size=s.c.attack_step_size, key=key, eot=s.c.eot,
                 randomness=randomness)


def robust_settings(s: Study, model: PurifiedClassifier, threat: Threat, keys: dict[str, Any]
                    ) -> tuple[dict[str, Accuracy], jax.Array]:
  """setting -> accuracy, and the fixed-randomness adversarial examples."""
  c, evaluation = s.c, lambda x, k, n: _accuracy(model, s.params, x, s.y, k, n)
  fresh = _attack(s, model, threat, keys['fresh'], 'fresh')
  fixed = _attack(s, model, threat, keys['fixed'], 'fixed')
  bpda_model = dataclasses.replace(model, config=dataclasses.replace(model.config, bpda=True))
  through_bpda = _attack(s, bpda_model, threat, keys['bpda'], 'fresh')
  out = {'fresh': evaluation(fresh, keys['eval'], c.eval_draws),
         'fixed': evaluation(fixed, keys['fixed'], c.eot),
         'bpda': evaluation(through_bpda, keys['eval'], c.eval_draws)}
  if c.rand_ensemble:
    out['rand'] = rand_ensemble(s, model, threat, keys['rand'])
  return out, fixed


def rand_ensemble(s: Study, model: PurifiedClassifier, threat: Threat,
                  key: jax.Array) -> Accuracy:
  """The 'rand' ensemble's accuracy: worst case over `eval_draws` draws (no mean: NaN)."""
  c = s.c
  result = ensemble.ensemble(model, s.params, s.x, s.y, eps=threat.eps, norm=threat.norm,
                             key=key, version='rand', steps=c.ensemble_steps, eot=c.eot,
                             draws=c.eval_draws)
  return Accuracy(float('nan'), float(np.mean(np.asarray(result.robust))))


def geometry(s: Study, purifier: Purifier, threat: Threat, x_adv: jax.Array, omega: jax.Array,
             key: jax.Array) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
  """(distances, spread, compression) of the purifier; see the module docstring."""
  # The purifier's params: the denoiser's, or PurifierParams with t* where it is traced.
  dparams = (s.params.denoiser if purifier.config.t_star is not None
             else s.params._replace(classifier=None))
  x = s.x
  mean = lambda a: float(np.nanmean(np.asarray(a)))
  dist = analysis.purification_distances(purifier, dparams, x, x_adv, key=omega)
  spread = analysis.spread_over_draws(purifier, dparams, x, key=key, draws=s.c.spread_draws)
  random = analysis.random_perturbations(jax.random.fold_in(key, 1), x, radius=threat.eps,
                                         num=s.c.compression_directions, norm=threat.norm)
  deltas = jnp.concatenate([random, (x_adv - x)[None]])
  rates = analysis.compression_rate(purifier, dparams, x, deltas, key=omega)
  compression = {'random': mean(rates[:-1]), 'attack': mean(rates[-1])}
  return ({k: mean(v) for k, v in dist._asdict().items()},
          {k: mean(v) for k, v in spread._asdict().items()}, compression)


def check_purifier(s: Study, model: PurifiedClassifier, threat: Threat,
                   key: jax.Array) -> checks.Report:
  """`check_evaluation` of the fresh-randomness PGD-EOT on the first `check_num` images."""
  c, n = s.c, s.c.check_num
  return checks.check_evaluation(model, s.params, s.x[:n], s.y[:n], eps=threat.eps, key=key,
                                 norm=threat.norm, steps=c.attack_steps, eot=c.eot,
                                 eval_draws=c.eval_draws,
                                 eps_scales=tuple(_floats(c, 'check_eps_scales')),
                                 square_queries=c.check_square_queries)


def first_draw(key: jax.Array, draws: int) -> jax.Array:
  """The first of the `draws` model keys a fixed-randomness attack with `key` uses
  (`lib.attacks.objective.over_draws`' convention: `key` itself for one draw)."""
  return key if draws == 1 else jax.random.split(key, draws)[0]


def measure_point(s: Study, threat: Threat, index: int) -> PointResult:
  """Every number of one t* (see the module docstring)."""
  start = _clock()
  c = s.c
  base = jax.random.fold_in(jax.random.key(c.purification_seed), index)
  keys = {name: jax.random.fold_in(base, i) for i, name in enumerate(
      ('eval', 'fresh', 'fixed', 'bpda', 'rand', 'geometry', 'checks'))}
  s = s._replace(params=purifier_params(c, s.params, threat.t_star))
  config = purifier_config(c, threat.t_star)
  model = PurifiedClassifier(s.denoiser, s.classifier, config)
  clean = _accuracy(model, s.params, s.x, s.y, keys['eval'], c.eval_draws)
  robust, fixed = robust_settings(s, model, threat, keys)
  omega = first_draw(keys['fixed'], c.eot)
  distances, spread, compression = geometry(s, Purifier(s.denoiser, config), threat, fixed,
                                            omega, keys['geometry'])
  report_ = None
  if c.check_t_star and abs(threat.t_star - c.check_t_star) < 1e-9:
    report_ = check_purifier(s, model, threat, keys['checks'])
  seconds = _since(start)
  logging.info('purification robustness: t*=%g (%s) in %.0f s (%.0f CPU-s)', threat.t_star,
               threat.norm, *seconds)
  return PointResult(threat, clean, robust, distances, spread, compression, report_, seconds)


def correlations(points: list[PointResult]) -> dict[str, dict[str, analysis.Correlation | None]]:
  """norm -> compression kind -> correlation with fixed-randomness robust accuracy (≥ 3 t*).

  None where a series is constant (the correlation is undefined).
  """
  out = {}
  for norm in NORMS:
    mine = [p for p in points if p.threat.norm == norm]
    if len(mine) < 3:
      continue
    accuracy = [p.robust['fixed'].mean for p in mine]
    out[norm] = {}
    for kind in ('random', 'attack'):
      try:
        out[norm][kind] = analysis.correlation([p.compression[kind] for p in mine], accuracy)
      except ValueError:
        out[norm][kind] = None
  return out


def undefended(s: Study, key: jax.Array) -> tuple[dict[str, float], dict[str, checks.Report]]:
  """norm -> the classifier's PGD accuracy, and the checks of that PGD, per norm of the grid."""
  accuracy, reports = {}, {}
  for threat in {t.norm: t for t in grid(s.c)}.values():
    x_adv = pgd.pgd(s.classifier, s.params.classifier, s.x, s.y, eps=threat.eps,
                    norm=threat.norm, steps=s.c.attack_steps, step_size=s.c.attack_step_size)
    accuracy[threat.norm] = _accuracy(s.classifier, s.params.classifier, x_adv, s.y).mean
    reports[threat.norm] = checks.check_evaluation(
        s.classifier, s.params.classifier, s.x, s.y, eps=threat.eps, key=key, norm=threat.norm,
        steps=s.c.attack_steps, eps_scales=tuple(_floats(s.c, 'check_eps_scales')),
        square_queries=s.c.check_square_queries)
  return accuracy, reports


def measure(s: Study, num_classes: int, timings: dict[str, Seconds]) -> Results:
  """Every number of the study (`timings` holds the training stages' seconds already)."""
  start = _clock()
  clean = _accuracy(s.classifier, s.params.classifier, s.x, s.y).mean
  plain, plain_reports = undefended(s, jax.random.key(s.c.purification_seed))
  timings['classifier alone: PGD and checks'] = _since(start)
  points = [measure_point(s, threat, i) for i, threat in enumerate(grid(s.c))]
  for p in points:
    timings[f'purifier t*={p.threat.t_star:g} ({p.threat.norm})'] = p.seconds
  return Results(clean, 1 / num_classes, plain, plain_reports, points, correlations(points),
                 timings)


def run(c: ml_collections.ConfigDict, workdir: str) -> markdown.Section:
  """Trains the classifier and the denoiser (resuming), measures; returns the section."""
  validate_config(c)
  built = classifier.build(c)
  train_data, test_data, model, _ = built
  check_against_data(c, len(test_data))
  timings = {}
  start = _clock()
  state = classifier.fit(c, built, c.classifier_workdir or os.path.join(workdir, 'model'))
  timings['classifier training'] = _since(start)
  start = _clock()
  denoiser, dparams = train_denoiser(c, train_data, workdir)
  timings['denoiser training'] = _since(start)
  batch = test_data.get(np.arange(c.num_eval))
  # Committed to the device like every program's outputs (the attacks' x_adv), so the
  # programs called on both (evaluation, purification) compile once, not once per placement.
  device = jax.devices()[0]
  study = Study(c, denoiser, model.apply, PurifierParams(dparams, state.variables),
                jax.device_put(batch['image'], device), jax.device_put(batch['label'], device))
  results = measure(study, test_data.num_classes, timings)
  return report.section(c, results, workdir)
