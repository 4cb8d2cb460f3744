"""The calibrated harmful loss of MLAC: the best linear re-mapping of the logits, in a box.

Henderson et al. 2023 (§4 "linear mutual information" loss; the authors' `losses.py`,
`linear_adversary_loss`) do not maximise the harmful cross-entropy of the adapted model
directly (a model can make that large by being confidently wrong, which a linear
re-mapping undoes). They solve

    W*(Z) = argmin_{W ∈ [-1, 1]^{C×C}} f(Z, W),   f(Z, W) = (1/B) Σ_i CE(z_i W, y_i)     (1)

for the logits Z [B, C] of the harmful task, and the model maximises f(Z, W*(Z)), the loss
of the best bounded linear adversary reading those logits. The authors solve (1) with
cvxpylayers and differentiate through the solution.

Here (1) is solved natively by accelerated projected gradient (FISTA, Beck & Teboulle
2009, with gradient-based adaptive restart, O'Donoghue & Candès 2015) for a fixed number of
iterations: f is convex in W, its gradient (1/B) Zᵀ(softmax(ZW) − onehot(y)) is Lipschitz
with constant L ≤ ½ λ_max(ZᵀZ / B) (the softmax cross-entropy Hessian is ⪯ ½ I), and the
projection onto the box is a clip. That bound is safe but far too pessimistic once the
softmax saturates (large or separable logits), so the step 1/L̂ adapts: an iterate that
fails the sufficient-decrease test is rejected and L̂ doubled (capped at the bound), an
accepted one shrinks L̂ by 0.7. 500 iterations (the default) reach scipy's L-BFGS-B
optimum to 1e-9 in the objective on random cases (tests/meta/test_calibrate.py); with the
bound alone, 400 iterations left gaps of 3e-4.

**Gradient through the optimum: the envelope theorem.** The value V(Z) = f(Z, W*(Z)) of
this convex box-constrained problem has dV/dZ = ∂f/∂Z at (Z, W*) (Danskin's theorem; the
KKT conditions make ∂f/∂W · dW*/dZ vanish: free coordinates have ∂f/∂W = 0, and active
coordinates do not move under a small change of Z when complementarity is strict).
cvxpylayers' implicit differentiation of W* therefore adds nothing to ∂f/∂Z, and
`calibrated_ce` computes the same gradient by `stop_gradient(W*)` without differentiating
the solver. (W* is not unique, for W + v1ᵀ shifts every logit of an example equally, but
∂f/∂Z = G W*ᵀ is the same for all of them, since the rows of G = ∂f/∂(ZW) sum to 0.) The
test checks dV/dZ against finite differences of V.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def _objective(logits: Array, labels: Array, w: Array) -> Array:
  """f(Z, W) of (1): mean cross-entropy of `logits @ w`."""
  return optax.softmax_cross_entropy_with_integer_labels(logits @ w, labels).mean()


def solve_calibration(logits: Array, labels: Array, *, num_iters: int = 500,
                      bound: float = 1.0) -> Array:
  """W* of (1): the box-constrained re-mapping minimising the cross-entropy (not differentiated).

  Args:
    logits: [B, C] logits Z of the harmful task.
    labels: [B] int labels in [0, C).
    num_iters: FISTA iterations (fixed: one compiled program, vmap-able).
    bound: the box [-bound, bound] of every entry of W (1 in the paper).

  Returns:
    W* [C, C], a constant for differentiation (`stop_gradient` of the inputs).
  """
  z = jax.lax.stop_gradient(logits)
  num_classes = z.shape[-1]
  value_and_grad = jax.value_and_grad(lambda w: _objective(z, labels, w))
  value = lambda w: _objective(z, labels, w)
  lipschitz = 0.5 * jnp.linalg.eigvalsh(z.T @ z / z.shape[0])[-1]
  lipschitz = jnp.maximum(lipschitz, jnp.finfo(z.dtype).tiny)

  def body(_, carry):
    w, y, t, estimate = carry
    f_y, g = value_and_grad(y)
    w_next = jnp.clip(y - g / estimate, -bound, bound)
    d = w_next - y
    # Backtracking without a variable loop: a step that fails the sufficient-decrease test
    # is rejected and retried with a doubled estimate; an accepted one tries a longer step
    # next (the global bound is safe but far too short once the softmax saturates).
    slack = 8 * jnp.finfo(z.dtype).eps * jnp.abs(f_y)  # rounding must not reject a step
    accept = value(w_next) <= f_y + jnp.sum(g * d) + 0.5 * estimate * jnp.sum(d * d) + slack
    restart = jnp.sum(g * (w_next - w)) > 0  # momentum points uphill: restart it
    t_new = 0.5 * (1 + jnp.sqrt(1 + 4 * t * t))
    momentum = jnp.where(restart, jnp.zeros_like(t), (t - 1) / t_new)
    y_next = w_next + momentum * (w_next - w)
    return (jnp.where(accept, w_next, w), jnp.where(accept, y_next, y),
            jnp.where(accept, jnp.where(restart, jnp.ones_like(t), t_new), t),
            jnp.where(accept, estimate * 0.7, jnp.minimum(estimate * 2, lipschitz)))

  eye = jnp.eye(num_classes, dtype=z.dtype)
  one = jnp.ones((), z.dtype)
  w, _, _, _ = jax.lax.fori_loop(0, num_iters, body, (eye, eye, one, lipschitz))
  return w


def calibrated_ce(logits: Array, labels: Array, *, num_iters: int = 500,
                  bound: float = 1.0) -> Array:
  """f(Z, W*(Z)) of (1), differentiable in `logits` by the envelope theorem (module docstring).

  Args:
    logits: [B, C] harmful-task logits.
    labels: [B] int labels in [0, C).
    num_iters, bound: as in `solve_calibration`.

  Returns:
    Scalar: the cross-entropy of the best bounded linear re-mapping of the logits.
  """
  w = solve_calibration(logits, labels, num_iters=num_iters, bound=bound)
  return _objective(logits, labels, w)
