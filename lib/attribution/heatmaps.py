"""Heatmaps of many methods, scores and models at once (what a study's tables read).

A heatmap is [B, H, W]: |maps| summed over channels for pixel methods, CAMs as they are.
`all_heatmaps` computes every supported (method, score) pair of every model, one jitted
program per (model, method) for all its scores: compiling them together takes about half the
time of one program per score (shared forward passes, one XLA module), and compilation is
most of the time of a small study on CPU.
"""

from __future__ import annotations

import functools

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lib import contract
from lib.attribution import localisation, registry

Array = jax.Array


def heatmap(method: registry.Method, apply: contract.Apply, params: Any, x: Array,
            target: Array, score: str, key: Array | None) -> Array:
  """[B, H, W] heatmap of one method (|maps| summed over channels for pixel methods)."""
  maps = method(apply, params, x, target, score=score, key=key)
  return localisation.to_heatmap(maps) if maps.ndim == 4 else maps


def all_heatmaps(methods: Mapping[str, registry.Method],
                 models: Mapping[str, tuple[contract.Apply, Sequence[str]]], params: Any,
                 x: Array, target: Array,
                 key: Array | None) -> dict[tuple[str, str, str], np.ndarray]:
  """{(model, method, score): [B, H, W]} for every supported method × score of each model.

  Args:
    methods: name -> bound `registry.Method` (e.g. from `registry.build`).
    models: name -> (apply, the scores to explain with it); the models share `params`.
    params: the parameters every model takes.
    x: [B, H, W, C] inputs.
    target: [B] classes to explain.
    key: PRNG key of the stochastic methods (the same for every model and score: common
      random numbers), or None if none is stochastic.

  Returns:
    Host arrays keyed by (model, method, score); pairs a method does not support are absent.
  """
  out = {}
  for model_name, (apply, model_scores) in models.items():
    for name, method in methods.items():
      wanted = [s for s in model_scores if method.supports(s)]
      maps = _maps(params, x, target, key, method=method, apply=apply, scores=tuple(wanted))
      out.update({(model_name, name, s): np.asarray(m) for s, m in zip(wanted, maps)})
  return out


@functools.partial(jax.jit, static_argnames=('method', 'apply', 'scores'))
def _maps(params: Any, x: Array, target: Array, key: Array | None, *,
          method: registry.Method, apply: contract.Apply, scores: tuple[str, ...]) -> list[Array]:
  """One compiled program per (method, model, scores): every score's heatmap together."""
  return [heatmap(method, apply, params, x, target, s, key) for s in scores]
