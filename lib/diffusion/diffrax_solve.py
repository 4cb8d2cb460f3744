"""The reverse VP-SDE and the probability-flow ODE through diffrax (cross-check and adjoints).

diffrax (Kidger 2021) integrates forwards in its time variable, so both equations are
written in s = −t, s from −t* to −t_min:

    SDE  dx = (½β x + β s_θ) ds + √β dW_s        ODE  dx/ds = ½β (x + s_θ)

with β, s_θ evaluated at t = −s (the same coefficients as `samplers.reverse_sde_update`).
`brownian_increments` reads the increments of the very `VirtualBrownianTree` the SDE solve
uses, so `samplers.euler_maruyama(..., dws)` and `solve(..., solver=diffrax.Euler())` can be
compared on one Brownian path.

Scan or diffrax for the differentiable purifier? Measured (2026-12-01, XLA:CPU on 2 shared
cores, jax 0.10.2, diffrax 0.7.2): the input gradient of ‖x_0‖² through 100 reverse steps
from t* = 0.1, an MLP denoiser (768 → 512 → 512 → 768, tanh), batch 8 of 16×16×3, compiled
program (`memory_analysis().temp_size_in_bytes`), median of 5 runs:

    reverse SDE                                       compile    run       temp
    scan, jax.checkpoint per step (purify's remat)    1.6 s      135 ms    2.6 MB
    scan, no checkpointing                            2.7 s      200 ms    6.7 MB
    diffrax Euler + VirtualBrownianTree,
      RecursiveCheckpointAdjoint (default)            9.1 s     3230 ms    0.8 MB
      DirectAdjoint                                  11.0 s     3185 ms   73.1 MB
    PF-ODE
    scan, jax.checkpoint per step                     1.1 s       90 ms    2.5 MB
    diffrax Euler, RecursiveCheckpointAdjoint         5.3 s      308 ms    0.7 MB

(`UnsafeBrownianPath`, the cheap alternative to the tree, cannot be reverse-differentiated.)
The Brownian tree's bisection per evaluation makes diffrax's SDE ~24x slower; its
binomial checkpointing saves the one [B, H, W, C] carry per step that the scan keeps
(2.4 of the 2.6 MB here), which is negligible next to a UNet's activations per step (PAPERS.md
§5: ~187 MB at batch 4). So the purifier runs the plain scan with per-step checkpointing and
keys by `fold_in`; diffrax is the reference solver (other schemes, adaptive steps) and the
cross-check of the scan on one Brownian path.
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import lineax
import numpy as np

from lib.diffusion import samplers
from lib.diffusion.schedules import Schedule

Array = jax.Array
KINDS = ('sde', 'ode')


def brownian_tree(key: Array, times: np.ndarray, shape: tuple[int, ...],
                  tol: float = 1e-4) -> diffrax.VirtualBrownianTree:
  """A Brownian motion W_s on s ∈ [−times[0], −times[-1]] from `key` (diffrax)."""
  return diffrax.VirtualBrownianTree(float(-times[0]), float(-times[-1]), tol=tol, shape=shape,
                                     key=key)


def brownian_increments(tree: diffrax.VirtualBrownianTree, times: np.ndarray) -> Array:
  """[n, *shape] increments W(−t_{i+1}) − W(−t_i) of `tree` on the grid `times` [n + 1]."""
  s = jnp.asarray(-np.asarray(times, np.float64), jnp.float32)
  return jax.vmap(tree.evaluate)(s[:-1], s[1:])


def solve(eps_fn: samplers.EpsFn, schedule: Schedule, x: Array, times: np.ndarray, *,
          kind: str = 'sde', key: Array | None = None, tol: float = 1e-4,
          solver: diffrax.AbstractSolver | None = None,
          adjoint: diffrax.AbstractAdjoint | None = None) -> Array:
  """Integrates the reverse SDE or the PF-ODE from times[0] to times[-1] with diffrax.

  Args:
    eps_fn: `eps_fn(x, labels) -> ε̂`.
    schedule: the schedule.
    x: [B, H, W, C] the state at times[0].
    times: [n + 1] decreasing times; the solver steps exactly on them (`StepTo`).
    kind: 'sde' (needs `key`: the Brownian tree's) or 'ode'.
    key: typed PRNG key of the Brownian motion.
    tol: the Brownian tree's resolution.
    solver: a diffrax solver (default Euler, the sampler's scheme).
    adjoint: a diffrax adjoint (default `RecursiveCheckpointAdjoint`).

  Returns:
    [B, H, W, C] the state at times[-1].
  """
  if kind not in KINDS:
    raise ValueError(f'kind={kind!r} is not valid; expected one of {list(KINDS)}.')
  if kind == 'sde' and key is None:
    raise ValueError("kind='sde' needs key, a typed PRNG key for the Brownian motion.")

  def drift(s, x, args):
    del args
    t = -s
    beta = schedule.beta(t)
    s_theta = samplers.score(eps_fn, schedule, x, t)
    return 0.5 * beta * (x + (2.0 if kind == 'sde' else 1.0) * s_theta)

  terms = diffrax.ODETerm(drift)
  if kind == 'sde':
    diffusion = lambda s, x, args: lineax.DiagonalLinearOperator(
        jnp.broadcast_to(schedule.beta(-s) ** 0.5, x.shape))
    terms = diffrax.MultiTerm(
        terms, diffrax.ControlTerm(diffusion, brownian_tree(key, times, x.shape, tol)))
  s = jnp.asarray(-np.asarray(times, np.float64), jnp.float32)
  sol = diffrax.diffeqsolve(
      terms, solver or diffrax.Euler(), s[0], s[-1], None, x,
      stepsize_controller=diffrax.StepTo(ts=s), max_steps=len(times),
      adjoint=adjoint or diffrax.RecursiveCheckpointAdjoint())
  return sol.ys[-1]
