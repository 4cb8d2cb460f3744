"""Attribution methods by name: the function, the scores it supports, what it needs.

Every entry is a `Method`: `method(apply, params, x, target, *, score, key) -> maps` with
its options bound, immutable and equal (and hashed) by value, so a method can be a static
jit argument (e.g. of `lib.attribution.audit.audit`) and rebuilding it never recompiles.

    sal = registry.get('saliency')
    ig = registry.get('integrated_gradients').bind(n_steps=16)
    cam = registry.get('grad_cam').bind(tap='conv3')
    maps = ig(model.apply, variables, x, labels, score='logit_difference')
    methods = registry.build(['saliency', 'grad_cam'], tap='conv3')   # name -> Method

| name | supports | needs a tap | stochastic |
| --- | --- | --- | --- |
| saliency, gradient_x_input, integrated_gradients, occlusion | every score | no | no |
| smoothgrad (of saliency) | every score | no | yes (key) |
| grad_cam, grad_cam_plus_plus, hires_cam | every score | yes | no |
| lrp_epsilon (Zennit's EpsilonPlus composite) | logit, logit_difference | no | no |

To add a method: write it in its own module with the shared signature, add a `Method` to
`_METHODS` below, and test it (parity against Captum where Captum has it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax

from lib.attribution import gradcam, gradients, integrated_gradients, lrp, occlusion
from lib.attribution import scores as scores_lib
from lib.attribution import smoothgrad as smoothgrad_lib

Array = jax.Array


def smoothgrad_saliency(apply: scores_lib.Apply, params: Any, x: Array, target: Array, *,
                        score: str = 'logit', key: Array | None = None,
                        **options: Any) -> Array:
  """SmoothGrad of saliency (`smoothgrad.smoothgrad(gradients.saliency, ...)`)."""
  return smoothgrad_lib.smoothgrad(gradients.saliency, apply, params, x, target, score=score,
                                   key=key, **options)


def lrp_epsilon_plus(apply: scores_lib.Apply, params: Any, x: Array, target: Array, *,
                     score: str = 'logit', key: Array | None = None, eps: float = 1e-6,
                     stabilizer: float = 1e-6) -> Array:
  """LRP with `lrp.epsilon_plus(eps=, stabilizer=)`: z⁺ on convolutions, ε on dense layers."""
  return lrp.lrp(apply, params, x, target, rules=lrp.epsilon_plus(eps=eps, stabilizer=stabilizer),
                 score=score, key=key)


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered attribution method with its options bound.

  Attributes:
    name: the registry name.
    fn: `fn(apply, params, x, target, *, score, key, **options) -> maps`.
    scores: the scores (`scores.SCORES`) it can explain.
    needs_tap: whether it reads a spatial tap (then `tap` must be bound).
    stochastic: whether it needs a PRNG `key`.
    options: the bound keyword options, as sorted (name, value) pairs (hashable values).
  """
  name: str
  fn: Callable[..., Array]
  scores: tuple[str, ...] = scores_lib.SCORES
  needs_tap: bool = False
  stochastic: bool = False
  options: tuple[tuple[str, Any], ...] = ()

  def bind(self, **options: Any) -> Method:
    """This method with more options bound (later values win), e.g. `bind(tap='conv3')`.

    Raises:
      ValueError: an option value that cannot be hashed (it would be a static argument).
    """
    merged = {**dict(self.options), **options}
    for option, value in merged.items():
      try:
        hash(value)
      except TypeError:
        raise ValueError(f'option {option}={value!r} of method {self.name!r} must be hashable '
                         '(a number, string or tuple).') from None
    return dataclasses.replace(self, options=tuple(sorted(merged.items())))

  def supports(self, score: str) -> bool:
    """Whether this method can explain `score`."""
    return score in self.scores

  def __call__(self, apply: scores_lib.Apply, params: Any, x: Array, target: Array, *,
               score: str = 'logit', key: Array | None = None) -> Array:
    if self.needs_tap and 'tap' not in dict(self.options):
      raise ValueError(f'method {self.name!r} reads a model tap: bind it first, e.g. '
                       f"registry.get({self.name!r}).bind(tap='conv3').")
    return self.fn(apply, params, x, target, score=score, key=key, **dict(self.options))


_METHODS: tuple[Method, ...] = (
    Method('saliency', gradients.saliency),
    Method('gradient_x_input', gradients.gradient_x_input),
    Method('integrated_gradients', integrated_gradients.integrated_gradients),
    Method('smoothgrad', smoothgrad_saliency, stochastic=True),
    Method('grad_cam', gradcam.grad_cam, needs_tap=True),
    Method('grad_cam_plus_plus', gradcam.grad_cam_plus_plus, needs_tap=True),
    Method('hires_cam', gradcam.hires_cam, needs_tap=True),
    Method('lrp_epsilon', lrp_epsilon_plus, scores=lrp.LRP_SCORES),
    Method('occlusion', occlusion.occlusion),
)
METHODS: Mapping[str, Method] = {m.name: m for m in _METHODS}
NAMES: tuple[str, ...] = tuple(METHODS)


def get(name: str) -> Method:
  """The registered method `name` (no options bound).

  Raises:
    ValueError: an unknown name (the known ones are listed).
  """
  if name not in METHODS:
    raise ValueError(f'unknown attribution method {name!r}; expected one of {list(NAMES)}.')
  return METHODS[name]


def parse_names(names: str | Iterable[str]) -> tuple[str, ...]:
  """Method names from a comma-separated string ('' or 'all' = every method) or a list.

  Raises:
    ValueError: an unknown or repeated name.
  """
  if isinstance(names, str):
    names = NAMES if names.strip() in ('', 'all') else [n.strip() for n in names.split(',')]
  names = tuple(names)
  for name in names:
    get(name)
  if len(set(names)) != len(names):
    raise ValueError(f'method names must not repeat; got {list(names)}.')
  return names


def build(names: str | Iterable[str], *, tap: str | None = None,
          options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Method]:
  """name -> bound `Method` for each name, in order.

  Args:
    names: as for `parse_names`.
    tap: bound to every method that needs a tap.
    options: method name -> its options (e.g. {'integrated_gradients': {'n_steps': 16}});
      names not selected are ignored.

  Raises:
    ValueError: an unknown name, or a method that needs a tap when `tap` is None.
  """
  methods = {}
  for name in parse_names(names):
    method = get(name)
    if method.needs_tap:
      if not isinstance(tap, str):
        raise ValueError(f'method {name!r} reads a spatial tap; tap must be its name, got '
                         f'{tap!r}.')
      method = method.bind(tap=tap)
    methods[name] = method.bind(**dict((options or {}).get(name, {})))
  return methods
