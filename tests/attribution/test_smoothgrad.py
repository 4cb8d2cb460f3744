"""SmoothGrad: parity with Captum's NoiseTunnel on identical noise, keys, chunking, errors.

Captum's `NoiseTunnel` draws its noise inside `attribute` with `torch.normal`; it takes no
noise argument. The parity tests seed PyTorch, draw the same tensor NoiseTunnel will draw
(one `torch.normal(0, σ)` of shape [B·n, C, H, W], rows ordered example-major), re-seed,
and run the unmodified NoiseTunnel, so both sides see identical noise.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

from lib.attribution.gradcam import grad_cam
from lib.attribution.gradients import saliency
from lib.attribution.integrated_gradients import integrated_gradients
from lib.attribution.smoothgrad import NT_TYPES, smoothgrad

TOL = 1e-4
SEED = 123


def _captum_noise(mirror, n_samples: int, stdev: float) -> np.ndarray:
  """The noise NoiseTunnel draws after `torch.manual_seed(SEED)`, as [n, B, H, W, C]."""
  b, h, w, c = mirror.x.shape
  torch.manual_seed(SEED)
  noise = torch.normal(0, torch.tensor(stdev).repeat((b * n_samples, c, h, w)))
  return noise.numpy().reshape(b, n_samples, c, h, w).transpose(1, 0, 3, 4, 2)


def _noise_tunnel(attribution, mirror, n_samples, stdev, nt_type, **kwargs) -> np.ndarray:
  torch.manual_seed(SEED)
  ref = NoiseTunnel(attribution).attribute(mirror.to_torch(mirror.x), nt_type=nt_type,
                                      nt_samples=n_samples, stdevs=stdev,
                                      target=mirror.torch_target, **kwargs)
  return mirror.from_torch(ref)


@pytest.mark.parametrize('nt_type', NT_TYPES)
def test_saliency_matches_noise_tunnel(mirror, rel_err, nt_type):
  n, stdev = 6, 0.1
  ours = smoothgrad(saliency, mirror.model.apply, mirror.variables, mirror.x, mirror.target,
                    noise=_captum_noise(mirror, n, stdev), n_samples=n, nt_type=nt_type,
                    score='probability')
  ref = _noise_tunnel(Saliency(mirror.torch_forward('probability')), mirror, n, stdev, nt_type,
                      abs=False)
  assert rel_err(ours, ref) < TOL


def test_integrated_gradients_matches_noise_tunnel(mirror, rel_err):
  n, stdev, steps = 4, 0.15, 8
  baseline = np.full(mirror.x.shape, 0.25, np.float32)
  ours = smoothgrad(integrated_gradients, mirror.model.apply, mirror.variables, mirror.x,
                    mirror.target, noise=_captum_noise(mirror, n, stdev), n_samples=n,
                    baseline=baseline, n_steps=steps, method='gausslegendre')
  ref = _noise_tunnel(IntegratedGradients(mirror.torch_forward('logit')), mirror, n, stdev,
                      'smoothgrad', baselines=mirror.to_torch(baseline), n_steps=steps,
                      method='gausslegendre')
  assert rel_err(ours, ref) < TOL


def test_key_noise_is_reproducible_and_vmappable_over_keys_and_stdevs(mirror):
  args = (saliency, mirror.model.apply, mirror.variables, mirror.x, mirror.target)
  many = jax.jit(jax.vmap(lambda key, stdev: smoothgrad(*args, key=key, stdev=stdev,
                                                        n_samples=5)))
  keys = jax.random.split(jax.random.key(0), 2)
  a = many(keys, np.array([0.2, 0.2], np.float32))
  b = many(keys, np.array([0.2, 0.0], np.float32))
  np.testing.assert_array_equal(a[0], b[0])  # same key, same maps
  assert not np.allclose(a[0], a[1])  # another key, other noise
  np.testing.assert_allclose(b[1], saliency(*args[1:]), rtol=1e-6)  # σ = 0: the method itself


def test_chunked_samples_and_cam_maps(mirror):
  args = (grad_cam, mirror.model.apply, mirror.variables, mirror.x, mirror.target)
  noise = 0.1 * np.random.default_rng(0).normal(size=(5, *mirror.x.shape)).astype(np.float32)
  full = smoothgrad(*args, noise=noise, n_samples=5, tap='conv3', nt_type='vargrad')
  chunked = smoothgrad(*args, noise=noise, n_samples=5, tap='conv3', nt_type='vargrad',
                       sample_batch_size=2)
  assert full.shape == mirror.x.shape[:3]
  np.testing.assert_allclose(chunked, full, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize('kwargs, message', [
    (dict(), 'exactly one of key'),
    (dict(key=jax.random.key(0), noise=np.zeros((25, 3, 16, 16, 3))), 'exactly one of key'),
    (dict(key=np.uint32([0, 1])), 'typed PRNG key'),
    (dict(noise=np.zeros((4, 3, 16, 16, 3), np.float32)), 'noise must have shape'),
    (dict(noise=np.full((25, 3, 16, 16, 3), np.nan, np.float32)), 'noise'),
    (dict(key=jax.random.key(0), n_samples=0), 'n_samples'),
    (dict(key=jax.random.key(0), stdev=-0.1), 'stdev'),
    (dict(key=jax.random.key(0), nt_type='smoothgrad_squared'), 'nt_type'),
    (dict(key=jax.random.key(0), sample_batch_size=0), 'sample_batch_size'),
    (dict(key=jax.random.key(0), score='logits'), 'score'),
    (dict(key=jax.random.key(0), target=np.array([0, 1])), 'target'),
])
def test_bad_inputs(mirror, kwargs, message):
  target = kwargs.pop('target', mirror.target)
  with pytest.raises(ValueError, match=message):
    smoothgrad(saliency, mirror.model.apply, mirror.variables, mirror.x, target, **kwargs)


def test_bad_method_kwargs_surface_as_value_errors(mirror):
  args = (integrated_gradients, mirror.model.apply, mirror.variables, mirror.x, mirror.target)
  with pytest.raises(ValueError, match='baseline'):
    smoothgrad(*args, key=jax.random.key(0), n_samples=2, baseline=np.zeros((5, 5, 3)))
  with pytest.raises(ValueError, match='return_delta'):
    smoothgrad(*args, key=jax.random.key(0), n_samples=2, return_delta=True)
