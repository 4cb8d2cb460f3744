"""Diffusion kernels for the purification study (issue 9): schedules, training loss,
samplers, purification as a stochastic model, distance and compression analysis.

The denoiser is a function — `eps_fn(x, labels)` for the samplers, `denoiser(params, x,
labels)` for the loss and the purifier — so this package imports neither `lib.models` nor
`lib.data`.

Modules:
  schedules      `Schedule`: discrete DDPM tables and the continuous VP-SDE, time labels
  losses         `eps_loss`: Ho et al.'s simple ε-prediction loss
  samplers       DDPM (fixed_large/small, clip_sample), DDIM (η), reverse VP-SDE
                 (Euler–Maruyama), probability-flow ODE; `(init, step)` pairs from any t
  diffrax_solve  the same SDE/ODE through diffrax (cross-check, adjoints, other solvers)
  purify         `purify`, `Purifier(denoiser, config)`, `PurifiedClassifier(denoiser,
                 classifier, config)`: DiffPure as a model `(params, x, *, key) -> Outputs`
                 for lib.attacks; remat, BPDA
  analysis       distances, spread over noise draws, compression rate, correlations
"""

from lib.diffusion import schedules, losses, samplers, diffrax_solve, purify, analysis
from lib.diffusion.purify import PurifiedClassifier, Purifier, PurifierConfig, PurifierParams
from lib.diffusion.schedules import Schedule

__all__ = ['schedules', 'losses', 'samplers', 'diffrax_solve', 'purify', 'analysis',
           'Schedule', 'Purifier', 'PurifierConfig', 'PurifierParams',
           'PurifiedClassifier']
