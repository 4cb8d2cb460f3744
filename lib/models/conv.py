"""2-D convolution (NHWC input, HWIO kernel) whose gradients are plain forward convolutions.

XLA:CPU runs a canonical NHWC/HWIO forward convolution fast, but the convolutions JAX's
own transpose rules emit for the gradients run slowly there: the input gradient (kernel
in/out roles swapped in the dimension numbers) and above all the kernel gradient (batch and
feature roles swapped), which gets a bad layout inside `lax.scan`/`lax.map` bodies
(`launch/bench.py --only=conv,pgd` measures both). This module writes both gradients as
canonical NHWC/HWIO convolutions of explicitly transposed operands:

  input gradient:  dx = conv(dy, flip_hw(W) with I/O swapped), dy dilated by the strides
  kernel gradient: dW = conv(x^T [C, H, W, B], dy^T [h, w, B, O]) -> [C, kh, kw, O] -> HWIO,
                   the forward strides becoming the kernel's (rhs) dilation

(the transposition rules of `lax.conv_general_dilated`, with layouts made explicit; the
arithmetic of transposed convolutions: Dumoulin & Visin 2016, arXiv:1603.07285, §4). The
rules' convolutions are calls of this module's own custom-VJP convolution, so the family is
closed under differentiation: second derivatives (grad of grad, Hessian-vector products by
reverse-over-reverse) go through the same fast path. An input (lhs) dilation is applied as
explicit zero insertion (`lax.pad` with interior padding), so every convolution XLA sees has
unit lhs dilation.

A convolution whose stride equals its kernel size without padding (a ViT's patch embedding)
is a matrix product of non-overlapping patches, and is computed as one: XLA:CPU ran the
input gradient of ViT-B/16's 16x16 stride-16 patch embedding 25x slower as a dilated
convolution (launch/bench_prm.py); as a matmul its gradients are matmuls too.

Forward-mode autodiff (`jax.jvp`, `jax.jacfwd`, `jax.hessian`) is not available through a
`jax.custom_vjp` (the patch matmul has it); use reverse mode (`jax.grad`/`jax.vjp`, also for
second derivatives).
Feature groups are not supported (no model here uses them).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

Array = jax.Array
Pads = tuple[tuple[int, int], tuple[int, int]]
Pair = tuple[int, int]
DN = ('NHWC', 'HWIO', 'NHWC')


def conv2d(x: Array, kernel: Array, *, strides: int | Sequence[int] = 1,
           padding: str | Sequence[tuple[int, int]] = 'SAME') -> Array:
  """`lax.conv_general_dilated(x, kernel, strides, padding)` in NHWC/HWIO, with fast gradients.

  Args:
    x: [B, H, W, C] input.
    kernel: [kh, kw, C, O] kernel.
    strides: one int for both spatial axes, or (sh, sw).
    padding: 'SAME', 'VALID' or explicit ((top, bottom), (left, right)) zero padding
      (negative values crop, as in `lax.conv_general_dilated`).

  Returns:
    [B, Ho, Wo, O], equal to `lax.conv_general_dilated` (float rounding aside); its VJP
    and the VJP of that VJP are plain forward convolutions (module docstring).
  """
  strides = _pair(strides)
  if isinstance(padding, str):
    pads = jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if strides == tuple(kernel.shape[:2]) and not any(lo or hi for lo, hi in pads):
    return _patch_matmul(x, kernel)
  return _conv_general(x, kernel, strides, pads, (1, 1), (1, 1))


def _patch_matmul(x: Array, kernel: Array) -> Array:
  """The convolution with strides = kernel size, no padding: non-overlapping patches
  [B, Ho, Wo, kh*kw*C] (trailing rows/columns that fill no patch dropped, as VALID does)
  times the kernel [kh*kw*C, O]."""
  kh, kw, c, o = kernel.shape
  b, ho, wo = x.shape[0], x.shape[1] // kh, x.shape[2] // kw
  patches = x[:, :ho * kh, :wo * kw].reshape(b, ho, kh, wo, kw, c).transpose(0, 1, 3, 2, 4, 5)
  return patches.reshape(b, ho, wo, kh * kw * c) @ kernel.reshape(kh * kw * c, o)


def _pair(v: int | Sequence[int]) -> Pair:
  """(h, w) from one int for both axes or from a pair."""
  if np.ndim(v) == 0:
    return (int(v), int(v))
  a, b = v
  return (int(a), int(b))


def _dilate(n: int, d: int) -> int:
  """Length of an axis of length n after inserting d - 1 zeros between elements."""
  return 0 if n == 0 else 1 + d * (n - 1)


def _conv_general(x: Array, w: Array, strides: Pair, pads: Pads, lhs_dil: Pair,
                  rhs_dil: Pair) -> Array:
  """`conv_general_dilated` in NHWC/HWIO with explicit pads; lhs dilation as zero insertion.

  Args:
    x: [B, H, W, C]; w: [kh, kw, C, O].
    strides, lhs_dil, rhs_dil: (h, w) window strides, input dilation, kernel dilation.
    pads: ((lo, hi), (lo, hi)) padding of the (dilated) input; may be negative.

  Returns:
    [B, Ho, Wo, O].
  """
  if lhs_dil != (1, 1):
    zero = np.zeros((), x.dtype)
    x = jax.lax.pad(x, zero, ((0, 0, 0), (*pads[0], lhs_dil[0] - 1), (*pads[1], lhs_dil[1] - 1),
                              (0, 0, 0)))
    pads = ((0, 0), (0, 0))
  return _conv(x, w, strides, pads, rhs_dil)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x: Array, w: Array, strides: Pair, pads: Pads, rhs_dil: Pair) -> Array:
  """Canonical NHWC/HWIO convolution (unit input dilation) with the explicit-layout VJP."""
  return jax.lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=rhs_dil,
                                      dimension_numbers=DN)


def _conv_fwd(x, w, strides, pads, rhs_dil):
  """Primal output; the residuals are the operands."""
  return _conv(x, w, strides, pads, rhs_dil), (x, w)


def _conv_bwd(strides, pads, rhs_dil, res, dy):
  """dx and dW of `_conv` as `_conv_general` calls (so they are differentiable the same way).

  Padding follows the transposition rules of `lax.conv_general_dilated` (`jax._src.lax.
  convolution._conv_general_vjp_{lhs,rhs}_padding`), specialised to unit input dilation.
  """
  x, w = res
  in_hw, k_hw, out_hw = x.shape[1:3], w.shape[:2], dy.shape[1:3]
  lhs_pads, rhs_pads = [], []
  for a in range(2):
    k = _dilate(k_hw[a], rhs_dil[a])
    out = _dilate(out_hw[a], strides[a])
    lo = pads[a][0]
    before = k - lo - 1
    lhs_pads.append((before, in_hw[a] + k - 1 - out - before))
    rhs_pads.append((lo, out - in_hw[a] + k - lo - 1))
  w_t = w[::-1, ::-1].transpose(0, 1, 3, 2)  # flipped, [kh, kw, O, C]
  dx = _conv_general(dy, w_t, (1, 1), tuple(lhs_pads), strides, rhs_dil)
  dw = _conv_general(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), rhs_dil, tuple(rhs_pads),
                     (1, 1), strides)  # [C, kh, kw, O]
  return dx, dw.transpose(1, 2, 0, 3)


_conv.defvjp(_conv_fwd, _conv_bwd)
