"""Weights from published files: read safetensors, map names, check every shape.

The loaders of published models (CLIP, BERT, a diffusers UNet) are thin name maps on this
module. A name map sends each tensor name of the file to a path in our variables
('params/blocks/0/attn/q/kernel', '/'-joined keys of the nested dict; list entries are
their index) and optionally a transform applied first (`torch_linear`: PyTorch's Linear
[out, in] -> our [in, out]; `torch_conv`: OIHW -> HWIO). Every tensor's shape is checked
against the model's abstract variables; tensors of the model the file lacks ("missing")
and tensors of the file the map does not place ("unexpected") are reported, and are an
error unless the caller allows a partial load.

Files are read with the `safetensors.numpy` API: no pickles, no torch at run time.

    >>> names = {'fc.weight': ('params/head/kernel', torch_linear), 'fc.bias': 'params/head/bias'}
    >>> variables, report = load_safetensors(path, names, model.abstract_variables)
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import safetensors.numpy

from lib.models.core import flatten_with_paths

Transform = Callable[[np.ndarray], np.ndarray]
# A tensor's destination: a variables path, or (path, transform).
Target = str | tuple[str, Transform]
# name -> Target (a tensor absent from the mapping is unexpected), or a function
# name -> Target | None (None: unexpected).
NameMap = Mapping[str, Target] | Callable[[str], Target | None]


def torch_linear(w: np.ndarray) -> np.ndarray:
  """PyTorch `nn.Linear.weight` [out, in] -> a dense kernel [in, out]."""
  return w.T


def torch_conv(w: np.ndarray) -> np.ndarray:
  """PyTorch `nn.Conv2d.weight` [out, in, kh, kw] (OIHW) -> a conv kernel [kh, kw, in, out]."""
  return w.transpose(2, 3, 1, 0)


class LoadReport(NamedTuple):
  """What a load left out.

  Attributes:
    missing: variable paths the file did not provide (kept from `like`).
    unexpected: file tensor names the name map placed nowhere (and no `ignore` pattern
      matched).
  """
  missing: tuple[str, ...]
  unexpected: tuple[str, ...]


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a safetensors file as numpy arrays, name -> array.

  Raises:
    ValueError: the file does not exist.
  """
  if not os.path.isfile(path):
    raise ValueError(f'path={str(path)!r} is not a file; expected a .safetensors file.')
  return safetensors.numpy.load_file(os.fspath(path))


def _target(name_map: NameMap, name: str) -> tuple[str, Transform | None] | None:
  target = name_map(name) if callable(name_map) else name_map.get(name)
  if target is None or isinstance(target, str):
    return None if target is None else (target, None)
  if (isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], str)
      and callable(target[1])):
    return target
  raise ValueError(f'name_map sends {name!r} to {target!r}; expected a variables path or '
                   '(path, transform).')


def load_variables(tensors: Mapping[str, np.ndarray], name_map: NameMap, like: Any, *,
                   partial: bool = False, ignore: Sequence[str] = ()) -> tuple[Any, LoadReport]:
  """Places named tensors into a variables tree shaped like `like`.

  Args:
    tensors: file tensor name -> array (e.g. from `read_safetensors`).
    name_map: where each tensor goes (see the module docstring).
    like: the model's variables, abstract (`model.abstract_variables`) or concrete (e.g.
      `model.init(key)`, whose values fill what the file lacks in a partial load). Loaded
      arrays take its leaves' dtypes.
    partial: allow missing and unexpected tensors (returned in the report) instead of
      raising.
    ignore: `fnmatch` patterns of file tensors to skip silently (e.g. buffers such as
      '*.position_ids').

  Returns:
    `(variables, report)`: the tree of `like` with the file's tensors as numpy arrays.

  Raises:
    ValueError: a map sends a tensor to a path `like` lacks, or two tensors to one path; a
      tensor's shape (after its transform) differs from the model's (the first offending
      tensor is named with both shapes); missing or unexpected tensors without `partial`
      (all listed); a partial load leaves an abstract leaf unfilled.
  """
  slots, treedef = flatten_with_paths(like)
  loaded: dict[str, np.ndarray] = {}
  unexpected = []
  for name in sorted(tensors):
    if any(fnmatch.fnmatchcase(name, p) for p in ignore):
      continue
    target = _target(name_map, name)
    if target is None:
      unexpected.append(name)
      continue
    path, transform = target
    if path not in slots:
      raise ValueError(f'name_map sends {name!r} to {path!r}, which the model does not have; '
                       f'paths look like {next(iter(slots), None)!r}.')
    if path in loaded:
      raise ValueError(f'name_map sends two tensors to {path!r} (the second is {name!r}).')
    value = np.asarray(tensors[name])
    value = value if transform is None else np.asarray(transform(value))
    want = tuple(slots[path].shape)
    if value.shape != want:
      raise ValueError(f'tensor {name!r} has shape {value.shape}'
                       f'{" after its transform" if transform else ""}; the model\'s {path!r} '
                       f'has shape {want}.')
    loaded[path] = value.astype(slots[path].dtype)
  report = LoadReport(tuple(p for p in slots if p not in loaded), tuple(unexpected))
  if not partial and (report.missing or report.unexpected):
    raise ValueError(f'the weights do not match the model: missing {list(report.missing)}, '
                     f'unexpected {list(report.unexpected)} (pass partial=True to accept).')
  unfilled = [p for p in report.missing if isinstance(slots[p], jax.ShapeDtypeStruct)]
  if unfilled:
    raise ValueError(f'a partial load into abstract variables leaves {unfilled} without '
                     'values; pass concrete variables (e.g. model.init(key)) as like.')
  leaves = [loaded.get(p, slots[p]) for p in slots]
  return jax.tree_util.tree_unflatten(treedef, leaves), report


def load_safetensors(path: str | os.PathLike, name_map: NameMap, like: Any, *,
                     partial: bool = False, ignore: Sequence[str] = ()) -> tuple[Any, LoadReport]:
  """`load_variables(read_safetensors(path), name_map, like, ...)`; see there."""
  return load_variables(read_safetensors(path), name_map, like, partial=partial, ignore=ignore)
