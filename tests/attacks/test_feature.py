"""lib/attacks/feature.py: the losses against torch, AdamW and one attack step against
torch.optim.AdamW, the ε bound, PRM on a tiny random CLIP, dynamic scale compiling once,
fresh encoder keys at each step for a stochastic encoder (EOT), the direction of DR, and the
ValueErrors of bad input.

Attacks run on `lib.models.clip`'s TINY config (32 px, 8 px patches, 3 hidden states); one
encoder object and shared static options keep the compiled programs few.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lib.attacks import feature
from lib.contract import Outputs
from lib.meta import adam
from lib.models import clip as clip_lib
from lib.models import vit

STEPS, SCALE, PATCH = 8, (0.5, 1.0), clip_lib.TINY.patch_size
RNG = np.random.default_rng(0)
X = RNG.uniform(size=(2, 32, 32, 3)).astype(np.float32)
X[:, :4] = 0.0          # pixels at the box bounds, as 8-bit images have
X[:, -4:] = 1.0


@pytest.fixture(scope='module')
def tiny():
  """(Clip, image variables, encoder, traces) of the TINY config with random weights; the
  encoder records the image size of every trace in `traces`."""
  clip = clip_lib.Clip(clip_lib.TINY)
  encode, traces = clip_lib.image_encoder(clip), []

  def counted(params, x):
    traces.append(tuple(x.shape[1:3]))
    return encode(params, x)

  return clip, clip.image.init(jax.random.key(0)), counted, traces


def _attack(tiny, x=X, **kwargs):
  """The attack with the tests' shared options (lr 2: traced, so the same program; it uses
  the budget within the few steps)."""
  _, params, encode, _ = tiny
  options = dict(steps=STEPS, lr=2.0, scale=SCALE, patch_size=PATCH, resize=vit.resize_bicubic,
                 key=jax.random.key(1))
  return feature.feature_attack(encode, params, x, **{**options, **kwargs})


def _mean_cosine(tiny, x_adv) -> np.ndarray:
  """[B] PRM loss at the native size / number of layers: the mean cosine with clean."""
  clip, params, encode, _ = tiny
  loss = feature.feature_loss('prm', encode(params, x_adv), encode(params, X),
                              clip.image_hidden_states)
  return np.asarray(loss) / len(clip.image_hidden_states)


# --- the losses and the optimiser against PyTorch ---

def test_losses_equal_a_direct_torch_computation():
  taps = {n: RNG.normal(size=(2, 5, 6)).astype(np.float32) for n in ('a', 'b')}
  clean_taps = {n: RNG.normal(size=(2, 5, 6)).astype(np.float32) for n in ('a', 'b')}
  emb, clean_emb = (RNG.normal(size=(2, 4)).astype(np.float32) for _ in range(2))
  adv, clean = Outputs(None, taps, emb), Outputs(None, clean_taps, clean_emb)
  t = lambda a: torch.from_numpy(a).double()
  cos = torch.nn.functional.cosine_similarity
  want = {
      'prm': sum(cos(t(taps[n]), t(clean_taps[n]), dim=-1).mean(1) for n in taps),
      'embedding': cos(t(emb), t(clean_emb), dim=-1),
      'nrd': -sum(((t(taps[n]) - t(clean_taps[n])) ** 2).mean((1, 2)) for n in taps),
      'dr': sum(t(taps[n]).reshape(2, -1).std(1) for n in taps),
      'dr_authors': -sum(t(taps[n]).reshape(2, -1).std(1) for n in taps),
  }
  for name, ref in want.items():
    got = feature.feature_loss(name, adv, clean, ('a', 'b'))
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_adamw_steps_equal_torch_adamw_on_the_same_gradients():
  """Three steps with gradients of PRM's size (~3e-8, near Adam's eps) and of order one.

  Within float32 rounding of an lr = 0.5 step: torch updates m with `lerp` and takes its bias
  corrections in float64."""
  delta = RNG.normal(size=(2, 3, 4)).astype(np.float32)
  grads = [RNG.normal(size=delta.shape).astype(np.float32) * s for s in (3e-8, 1.0, 3e-8)]
  ours = jnp.asarray(delta)
  state = adam.adam_init(ours)
  ref = torch.nn.Parameter(torch.from_numpy(delta.copy()))
  opt = torch.optim.AdamW([ref], lr=0.5, weight_decay=0.01)
  for g in grads:
    ours, state = feature.adamw_step(ours, jnp.asarray(g), state, lr=0.5, weight_decay=0.01,
                                     betas=(0.9, 0.999), eps=1e-8)
    ref.grad = torch.from_numpy(g)
    opt.step()
    np.testing.assert_allclose(ours, ref.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_attack_steps_equal_torch_on_a_linear_encoder():
  """Two steps of `make_feature_attack` = the authors' loop in PyTorch: δ clamped in the
  forward pass, per-image PRM losses summed, AdamW (from a random δ inside the ball: away
  from PRM's stationary point at δ = 0 and from the clamps' bounds)."""
  w = RNG.normal(size=(3, 5)).astype(np.float32)
  encode = lambda p, x: {'t0': x.reshape(x.shape[0], -1, 3) @ p,
                         't1': jnp.tanh(x.reshape(x.shape[0], -1, 3) @ p)}
  x = RNG.uniform(0.1, 0.9, size=(2, 4, 4, 3)).astype(np.float32)
  delta0 = RNG.uniform(-4, 4, size=x.shape).astype(np.float32)
  eps = 8 / 255
  attack = feature.make_feature_attack(encode, jnp.asarray(w), jnp.asarray(x),
                                       layers=('t0', 't1'), eps=eps)
  state = attack.init(jnp.asarray(delta0) / 255)
  for i in range(2):
    state, _ = attack.step(state, jax.random.key(i))

  wt, xt = torch.from_numpy(w), torch.from_numpy(x)
  delta = torch.nn.Parameter(torch.from_numpy(delta0.copy()))
  opt = torch.optim.AdamW([delta], lr=0.5, weight_decay=0.01)
  feats = lambda im: (im.reshape(2, -1, 3) @ wt, torch.tanh(im.reshape(2, -1, 3) @ wt))
  clean = feats(xt)
  for _ in range(2):
    adv = torch.clamp(xt * 255 + torch.clamp(delta, -8, 8), 0, 255) / 255
    loss = sum(torch.nn.functional.cosine_similarity(a, c, dim=-1).mean(1)
               for a, c in zip(feats(adv), clean)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
  # Adam divides by the gradient's size, so float32 rounding of gradient entries that nearly
  # cancel shows at ~1e-4 of the lr = 0.5 step; the weight decay alone moves δ by ~2e-2.
  np.testing.assert_allclose(state.delta, delta.detach().numpy(), rtol=0, atol=2e-4)


# --- the attack on a tiny CLIP ---

@pytest.mark.parametrize('norm, eps', [('linf', 8 / 255), ('l2', 0.5)])
def test_perturbation_respects_eps_and_the_pixel_box(tiny, norm, eps):
  x_adv = np.asarray(_attack(tiny, norm=norm, eps=eps, scale=None).x_adv)
  assert x_adv.min() >= 0 and x_adv.max() <= 1
  diff = (x_adv - X).reshape(len(X), -1)
  size = np.abs(diff).max(1) if norm == 'linf' else np.linalg.norm(diff, axis=1)
  assert np.all(size <= eps * (1 + 1e-5) + 1e-6), size
  assert np.all(size >= 0.5 * eps), size     # the budget is used


def test_prm_lowers_the_mean_cosine_more_than_random_noise(tiny):
  prm = _mean_cosine(tiny, _attack(tiny, scale=None).x_adv)
  noise = _mean_cosine(tiny, feature.random_noise(X, eps=8 / 255, key=jax.random.key(3)))
  assert np.all(prm < 0.98) and np.all(prm < noise), (prm, noise)


def test_scale_sizes_are_patch_multiples_with_their_share_of_the_range():
  sizes, cuts = feature.scale_sizes((224, 224), (0.5, 1.0), 16)
  assert sizes == tuple((s, s) for s in range(112, 224, 16))
  np.testing.assert_allclose(cuts, np.arange(8, 14) / 14)
  assert feature.scale_sizes((32, 32), (0.5, 1.0), 8) == (((16, 16), (24, 24)), (0.75,))
  assert feature.scale_sizes((32, 32), (1.0, 1.0), 8) == (((32, 32),), ())


def test_dynamic_scale_compiles_once_and_lowers_the_loss(tiny):
  _, params, encode, traces = tiny
  first = _attack(tiny)
  assert {(16, 16), (24, 24)} <= set(traces)   # both sizes are in the program
  assert first.loss.shape == (STEPS, len(X))
  assert np.all(first.loss[-1] < first.loss[0]), first.loss   # at the sizes drawn
  after_first = len(traces)
  _attack(tiny, x=1 - X, eps=4 / 255, lr=0.3, key=jax.random.key(5))
  assert len(traces) == after_first, 'new keys, images, ε or lr must not re-trace'


@pytest.mark.slow  # one more compile of the two-size program, vmapped: ~15-30 s on 2 cores
def test_vmaps_over_keys(tiny):
  """Each key draws its own sizes. (From δ = 0 the first steps follow rounding noise, so a
  vmapped run is not compared with the unbatched one entry by entry.)"""
  keys = jnp.stack([jax.random.key(1), jax.random.key(7)])
  batched = np.asarray(jax.vmap(lambda k: _attack(tiny, key=k).x_adv)(keys))
  assert batched.shape == (2, *X.shape)
  assert np.abs(batched - X).max() <= 8 / 255 + 1e-6
  assert np.abs(batched[0] - batched[1]).max() > 0
  assert np.all(_mean_cosine(tiny, batched[0]) < 1)


def test_stochastic_encoder_gets_fresh_keys_each_step_and_compiles_once(tiny):
  """EOT with fresh draws: every step hands the encoder `eot` new keys (recorded at run
  time), each used for both x and x + δ (so PRM's loss at δ = 0 is the number of layers),
  and new keys, images or ε reuse the compiled program."""
  clip, params, encode, traces = tiny
  seen = []

  def shifted(p, x, *, key):
    """The encoder behind a random circular shift of the image (a randomised defence)."""
    jax.debug.callback(lambda k: seen.append(tuple(np.asarray(k).ravel())),
                       jax.random.key_data(key))
    shift = jax.random.randint(key, (2,), 0, x.shape[1])
    return encode(p, jnp.roll(x, (shift[0], shift[1]), axis=(1, 2)))

  run = lambda **kw: feature.feature_attack(
      shifted, params, kw.pop('x', X), stochastic=True, eot=2, steps=3, lr=2.0, scale=None,
      **{'key': jax.random.key(1), **kw})
  first = run()
  jax.block_until_ready(first.x_adv)
  np.testing.assert_allclose(first.loss[0], len(clip.image_hidden_states), rtol=1e-6)
  counts = {k: seen.count(k) for k in seen}
  assert len(counts) == 3 * 2 and set(counts.values()) == {2}, counts   # clean + adversarial
  after_first = len(traces)
  jax.block_until_ready(run(x=1 - X, eps=4 / 255, key=jax.random.key(5)).x_adv)
  assert len(traces) == after_first, 'new keys, images or ε must not re-trace'
  assert not set(seen[len(seen) // 2:]) & set(counts), 'a new key draws new transformations'


def test_dr_reduces_dispersion_and_the_authors_sign_increases_it(tiny):
  clip, params, encode, _ = tiny
  layers = clip.image_hidden_states
  clean = encode(params, X)
  std = lambda x: np.asarray(feature.feature_loss('dr', encode(params, x), clean, layers))
  reduced = _attack(tiny, loss='dr', scale=None).x_adv
  increased = _attack(tiny, loss='dr_authors', scale=None).x_adv
  assert np.all(std(reduced) < std(X)) and np.all(std(increased) > std(X))


def test_layer_sets_split_vit_b16_states_in_thirds():
  sets = feature.layer_sets(clip_lib.hidden_state_names(12))
  assert sets['early'] == ('embed', 'block0', 'block1', 'block2', 'block3')
  assert sets['middle'] == ('block4', 'block5', 'block6', 'block7')
  assert sets['late'] == ('block8', 'block9', 'block10', 'block11')
  assert len(sets['all']) == 13


# --- bad input ---

@pytest.mark.parametrize('kwargs, message', [
    (dict(layers=('block0', 'nope')), 'layers'),
    (dict(layers='block0'), 'layers'),
    (dict(loss='cosine'), 'loss'),
    (dict(eps=0.0), 'eps'),
    (dict(eps=1.5), 'eps'),
    (dict(eps=-0.1, norm='l2'), 'eps'),
    (dict(steps=0), 'steps'),
    (dict(scale=(0.0, 1.0)), 'scale'),
    (dict(scale=(0.5, 1.5)), 'scale'),
    (dict(scale=(0.9, 0.5)), 'scale'),
    (dict(scale=(0.1, 0.2)), 'scale'),           # below one patch
    (dict(patch_size=4), 'scale'),               # 20 px is no multiple of the 8 px patches
    (dict(patch_size=None), 'patch_size'),
    (dict(key=None), 'key'),
    (dict(scale=None, start='random', key=None), 'key'),
    (dict(start=np.zeros((1, 32, 32, 3), np.float32)), 'start'),
    (dict(betas=(0.9, 1.0)), 'betas'),
    (dict(x=X[:, :30, :30]), 'x'),               # not a patch multiple
    (dict(x=X * 2), 'x'),
    (dict(eot=0), 'eot'),
    (dict(eot=2), 'stochastic'),                 # EOT over a deterministic encoder
    (dict(stochastic=True), 'key'),              # the encoder takes no key
])
def test_bad_input_raises_naming_the_argument(tiny, kwargs, message):
  _, params, encode, _ = tiny
  options = dict(steps=STEPS, scale=SCALE, patch_size=PATCH, key=jax.random.key(1))
  options.update(kwargs)
  x = options.pop('x', X)
  with pytest.raises(ValueError, match=message):
    feature.feature_attack(encode, params, x, **options)


def test_embedding_loss_needs_features():
  encode = lambda p, x: {'t': x.reshape(x.shape[0], -1, 3) * p}
  with pytest.raises(ValueError, match='embedding'):
    feature.feature_attack(encode, jnp.ones(()), X, loss='embedding', scale=None, steps=1)
