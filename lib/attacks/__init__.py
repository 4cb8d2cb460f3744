"""Adversarial attacks as pure, jit/vmap-able kernels (issue 8: the library; its study and benchmark follow).

Every attack takes `apply(params, x, **kw)` (returning logits or `lib.contract.Outputs`),
its `params`, inputs `x` in [0, 1], labels `y` and a keyword-only typed PRNG `key`; it
imports neither `lib.models` nor `lib.data`. Iterative attacks are `(init, step)` pairs run
with `lib.iterate.run` under one `jit`.

Modules:
  losses      CE, margin (CW), DLR; untargeted and targeted
  objective   the loss of a model's logits, its input gradient, EOT over the model key
  projections per-example norms, steepest-ascent directions, ε-ball and [0, 1] projections
  pgd         FGSM and PGD (ℓ∞, ℓ2): restarts, targets, EOT, fresh/fixed model randomness
  apgd        APGD and APGD-T (Croce & Hein 2020): step-size halving at checkpoints, momentum
  square      Square attack (Andriushchenko et al. 2020): score-based random search, ℓ∞ and ℓ2
  bpda        BPDA: a non-differentiable preprocessing with a substitute's backward pass
  evaluate    robust accuracy over model draws (mean and worst case); attack success
  ensemble    AutoAttack-style ensemble (APGD-CE, APGD-T, Square; 'rand': EOT APGD), worst case
  checks      sanity checks of an evaluation (Carlini et al. 2019, Tramèr et al. 2020): pass/warn/fail
  feature     feature-level attacks on an encoder alone: PRM (Hu et al. 2024), embedding, NRD,
              DR baselines (AdamW on δ, dynamic scale; a random encoder with EOT, fresh
              draws every step), random noise
"""

from lib.attacks import losses, objective
from lib.attacks import apgd, bpda, evaluate, pgd, projections, square
from lib.attacks import checks, ensemble, feature

__all__ = ['losses', 'objective', 'projections', 'pgd', 'bpda', 'evaluate', 'apgd', 'square',
           'checks', 'ensemble', 'feature']
