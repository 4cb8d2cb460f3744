"""lib/attacks/losses.py against torchattacks' formulas and the definitions."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lib.attacks import losses

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 7)).astype(np.float32) * 3
LABELS = np.array([0, 3, 6, 2, 2, 5], np.int32)
TARGET = np.array([1, 0, 2, 2 + 1, 6, 4], np.int32)


def _torch_dlr(x, y):  # torchattacks.APGD.dlr_loss
  x_sorted, ind_sorted = x.sort(dim=1)
  ind = (ind_sorted[:, -1] == y).float()
  u = torch.arange(x.shape[0])
  return -(x[u, y] - x_sorted[:, -2] * ind - x_sorted[:, -1] * (1. - ind)) / (
      x_sorted[:, -1] - x_sorted[:, -3] + 1e-12)


def _torch_dlr_targeted(x, y, y_target):  # torchattacks.APGDT.dlr_loss_targeted
  x_sorted, _ = x.sort(dim=1)
  u = torch.arange(x.shape[0])
  return -(x[u, y] - x[u, y_target]) / (
      x_sorted[:, -1] - .5 * (x_sorted[:, -3] + x_sorted[:, -4]) + 1e-12)


def test_dlr_matches_torchattacks():
  t = torch.from_numpy(LOGITS)
  ref = _torch_dlr(t, torch.from_numpy(LABELS).long()).numpy()
  np.testing.assert_allclose(losses.dlr(jnp.asarray(LOGITS), LABELS), ref, rtol=1e-6, atol=1e-6)
  ref_t = _torch_dlr_targeted(t, torch.from_numpy(LABELS).long(),
                              torch.from_numpy(TARGET).long()).numpy()
  np.testing.assert_allclose(losses.dlr(jnp.asarray(LOGITS), LABELS, TARGET), ref_t, rtol=1e-6,
                             atol=1e-6)


def test_ce_matches_torch_cross_entropy():
  ref = torch.nn.functional.cross_entropy(torch.from_numpy(LOGITS), torch.from_numpy(LABELS).long(),
                                          reduction='none').numpy()
  np.testing.assert_allclose(losses.ce(jnp.asarray(LOGITS), LABELS), ref, rtol=1e-6)
  ref_t = torch.nn.functional.cross_entropy(torch.from_numpy(LOGITS),
                                            torch.from_numpy(TARGET).long(), reduction='none')
  np.testing.assert_allclose(losses.ce(jnp.asarray(LOGITS), LABELS, TARGET), -ref_t.numpy(),
                             rtol=1e-6)


def test_margin_is_positive_exactly_when_the_attack_succeeds():
  z = jnp.asarray(LOGITS)
  untargeted = np.asarray(losses.margin(z, LABELS))
  np.testing.assert_array_equal(untargeted > 0, LOGITS.argmax(-1) != LABELS)
  targeted = np.asarray(losses.margin(z, LABELS, TARGET))
  np.testing.assert_array_equal(targeted > 0, LOGITS.argmax(-1) == TARGET)


@pytest.mark.parametrize('name', sorted(losses.LOSSES))
def test_losses_ignore_logit_shifts(name):
  z = jnp.asarray(LOGITS)
  shifted = losses.get_loss(name)(z + 100.0, LABELS)
  base = losses.get_loss(name)(z, LABELS)
  np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-4)


def test_dlr_ignores_logit_scale():
  z = jnp.asarray(LOGITS)
  np.testing.assert_allclose(losses.dlr(10 * z, LABELS), losses.dlr(z, LABELS), rtol=1e-5)


def test_unknown_loss_names_the_choices():
  with pytest.raises(ValueError, match=r"loss='hinge' is not valid; expected one of \['ce', 'dlr', 'margin'\]"):
    losses.get_loss('hinge')
