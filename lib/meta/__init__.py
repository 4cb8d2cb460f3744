"""Tamper resistance (Henderson et al. 2023, "Self-Destructing Models"): MLAC and its attacker.

Kernels take the encoder as `apply(params, inputs) -> Outputs` with `features` [B, D] and
the data as arrays; they import neither `lib.models` nor `lib.data`.

Modules:
  adam        Adam (PyTorch semantics) and norm clipping as pure, twice-differentiable functions
  calibrate   the calibrated harmful loss: best linear re-mapping W ∈ [-1, 1]^{C×C} (FISTA),
              differentiated by the envelope theorem
  inner       the simulated fine-tuning attack: K differentiable Adam steps as an (init, step)
              pair, per-step `jax.checkpoint`, first-order option, masked batch sizes
  mlac        the MLAC objective (desired CE − mean calibrated harmful CE over steps and
              adversaries), meta-learned adversary head and learning rate, the outer step as an
              (init, step) pair for `lib.train.run_loop`; K = 0 is AC, no harmful term is
              "desired only"; K <= K_max and adversary weights as batch values, so AC and
              every MLAC model share one compiled step
  attacker    the evaluation's attacker: linear probe / full fine-tune, grid over learning rate,
              steps and batch size with oracle early stopping, re-runs; the grid × seeds vmapped
              as one program per (mode, batch size) for every n (traced) and the re-runs
"""

from lib.meta import adam, attacker, calibrate, inner, mlac

__all__ = ['adam', 'attacker', 'calibrate', 'inner', 'mlac']
