"""fit_head: an interrupted and resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lib import downstream as ds
from lib.downstream import fitting
from lib.downstream.features import check_features


class Interrupted(Exception):
  pass


def _interrupt(state):
  raise Interrupted(f'stopped at step {int(state.step)}')


def test_resumed_finetune_equals_an_uninterrupted_run(encoder, tint_data, tmp_path):
  train, _ = tint_data
  head = ds.LinearHead(num_classes=4)
  run = lambda workdir, **kw: ds.fit_head(
      head, encoder.encode, encoder.variables, train, num_steps=40, batch_size=32, seed=3,
      workdir=str(tmp_path / workdir), learning_rate=3e-2, frozen=ds.FINETUNE,
      checkpoint_every=20, **kw)   # the options of test_classification's run: one compile
  compiled = fitting._jitted_step._cache_size()
  straight = run('straight')
  with pytest.raises(Interrupted, match='step 30'):      # after the checkpoint of step 20
    run('resumed', eval_fn=_interrupt, eval_every=30)
  resumed = run('resumed')
  assert int(resumed.step) == 40
  assert fitting._jitted_step._cache_size() <= compiled + 1     # the three runs share one step
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_encoders_that_break_the_interface_are_refused():
  with pytest.raises(ValueError, match=r'patch_tokens must have shape \[B, h, w, E\]'):
    check_features((np.zeros((2, 16, 8)), np.zeros((2, 8))))
  with pytest.raises(ValueError, match=r'image_embedding must have shape \[B=2, E\]'):
    check_features((np.zeros((2, 4, 4, 8)), np.zeros((3, 8))))


def _halve(params, tokens):
  return tokens / 2


def test_tap_encoder_drops_the_class_token(encoder):
  x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  halve = ds.TapEncoder(encoder.model.apply, 'block0', project=_halve)
  both = jax.jit(lambda v, x: (encoder.encode(v, x), halve(v, x)[0], encoder.model.apply(v, x)))
  (tokens, embedding), halved, out = both(encoder.variables, x)   # one compilation
  assert tokens.shape == (2, 8, 8, 32) and embedding.shape == (2, 32)
  np.testing.assert_array_equal(tokens.reshape(2, 64, 32), out.taps['block0'][:, 1:])
  np.testing.assert_array_equal(embedding, out.features)
  np.testing.assert_allclose(halved, tokens / 2, rtol=1e-6)
  with pytest.raises(ValueError, match="tap 'nope'"):
    ds.TapEncoder(encoder.model.apply, 'nope')(encoder.variables, x)
