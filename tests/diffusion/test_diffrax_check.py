"""lib/diffusion/diffrax_solve.py: our Euler–Maruyama scan and diffrax's Euler agree on one
Brownian path (a VirtualBrownianTree from a key), and on the PF-ODE, with a random denoiser."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib.diffusion import Schedule, diffrax_solve, samplers
from tests.diffusion.toys import init_mlp, mlp_denoiser

SCHEDULE = Schedule()
TIMES = samplers.continuous_times(0.1, 20)
PARAMS = init_mlp(0)
EPS_FN = lambda x, t: mlp_denoiser(PARAMS, x, t)
X = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4, 4, 3)), jnp.float32)


def test_sde_scan_and_diffrax_agree_on_one_brownian_path():
  key = jax.random.key(2)

  @jax.jit
  def both(x, key):
    tree = diffrax_solve.brownian_tree(key, TIMES, x.shape)
    ours = samplers.euler_maruyama(EPS_FN, SCHEDULE, x, TIMES,
                                   diffrax_solve.brownian_increments(tree, TIMES))
    return ours, diffrax_solve.solve(EPS_FN, SCHEDULE, x, TIMES, kind='sde', key=key)

  ours, theirs = both(X, key)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  assert float(np.abs(ours - X).max()) > 0.1  # the path moved the state


def test_ode_scan_and_diffrax_agree():
  ours = samplers.sample(samplers.make_probability_flow(EPS_FN, SCHEDULE, TIMES), X, 20,
                         key=jax.random.key(0))
  theirs = diffrax_solve.solve(EPS_FN, SCHEDULE, X, TIMES, kind='ode')
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_bad_arguments_are_value_errors():
  with pytest.raises(ValueError, match='kind'):
    diffrax_solve.solve(EPS_FN, SCHEDULE, X, TIMES, kind='pde')
  with pytest.raises(ValueError, match='key'):
    diffrax_solve.solve(EPS_FN, SCHEDULE, X, TIMES, kind='sde')
