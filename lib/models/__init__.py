"""Models: defined once in Flax NNX, used through the pure `PureModel` boundary.

    from lib import models
    model = models.get_model('cnn', input_shape=(32, 32, 3), num_classes=10)
    variables = model.init(jax.random.key(0))
    out = model.apply(variables, x)            # Outputs(logits, taps, features)
    out, variables = model.apply_train(variables, x, key=key)

    encoder = models.get_model('vit', input_shape=(32, 32, 3), num_classes=None)
    text = models.get_model('text_transformer', input_shape=(16,), num_classes=2,
                            vocab_size=1000)   # inputs {'input_ids', 'attention_mask'}

Files: `core` (the NNX -> pure boundary), `inputs` (input families: images, tokens, noisy
images), `layers`/`head`/`transformer` (building blocks), one file per architecture,
`weights` (safetensors + name maps + shape checks, for converters of published weights).

Add a model: write an `nnx.Module` whose `__call__(inputs, ctx)` builds from
`lib.models.layers`, records taps with `ctx.tap(name, x)` and returns
`Outputs(logits, features=...)` (`lib.models.head.pooled_outputs`), then register it in
`_REGISTRY` with the input family it takes (or build `PureModel(name, build, inputs)`
directly with any `lib.models.inputs.InputSpec`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

from flax import nnx

from lib import validate
from lib.models.cnn import SmallCNN
from lib.models.core import Context, Outputs, PureModel, Rule, Variables
from lib.models.inputs import Images, InputSpec, NoisyImages, Tokens
from lib.models.resnet import ResNet
from lib.models.text import TextTransformer
from lib.models.vit import ViT
from lib.models.wide_resnet import WideResNet


@dataclasses.dataclass(frozen=True)
class Family:
  """A registered architecture.

  Attributes:
    module: `module(num_classes=, rngs=, **options) -> nnx.Module`; image families also
      take `in_channels`.
    inputs: 'images' (input_shape = (H, W, C)) or 'tokens' (input_shape = (max_len,),
      option `vocab_size`).
    defaults: options `get_model`'s keyword arguments may override.
  """
  module: Callable[..., nnx.Module]
  inputs: str
  defaults: dict[str, Any] = dataclasses.field(default_factory=dict)


_VIT = dict(patch_size=4, dim=192, depth=6, heads=3, mlp_dim=768)
_REGISTRY: dict[str, Family] = {
    'cnn': Family(SmallCNN, 'images'),
    'resnet18': Family(ResNet, 'images'),
    'wrn28_10': Family(WideResNet, 'images', dict(depth=28, widen=10)),
    # image_size defaults to input_shape's (H, W).
    'vit': Family(ViT, 'images', _VIT),
    'vit_b16': Family(ViT, 'images', dict(image_size=224, patch_size=16, dim=768, depth=12,
                                          heads=12, mlp_dim=3072)),
    'text_transformer': Family(TextTransformer, 'tokens', dict(dim=128, depth=2, heads=4,
                                                               mlp_dim=512)),
}


def model_names() -> tuple[str, ...]:
  """Names accepted by `get_model`."""
  return tuple(sorted(_REGISTRY))


def _check_options(name: str, module: Callable[..., nnx.Module], options: dict[str, Any],
                   fixed: tuple[str, ...]) -> None:
  params = inspect.signature(module.__init__).parameters
  valid = sorted(set(params) - {'self', 'rngs', *fixed})
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f'{name!r} has no option {unknown}; valid options: {valid}.')
  missing = sorted(k for k in valid if params[k].default is inspect.Parameter.empty
                   and k not in options)
  if missing:
    raise ValueError(f'{name!r} needs the option(s) {missing}.')


def _check_num_classes(num_classes: Any) -> int | None:
  if num_classes is None or (isinstance(num_classes, int) and not isinstance(num_classes, bool)
                             and num_classes == 0):
    return None
  validate.check_int(num_classes, 'num_classes', minimum=2)
  return int(num_classes)


def get_model(name: str, *, input_shape: tuple[int, ...] | None = None,
              num_classes: int | None = None, **kwargs: Any) -> PureModel:
  """Builds the pure form of a registered model.

  Args:
    name: one of `model_names()`.
    input_shape: per-example input shape: (H, W, C) for image models, (max_len,) for
      'text_transformer'.
    num_classes: number of output logits (an integer >= 2), or None (or 0) for an encoder
      without a head (`Outputs.logits` is None; `Outputs.features` holds the embeddings).
    **kwargs: architecture options of that model (e.g. `widths`, `batch_norm`; `vocab_size`
      for text).

  Raises:
    ValueError: unknown name or option, a missing required option, an input shape the
      model cannot take (wrong rank, non-positive or non-integer entries, too small for the
      network), a class count that is not None, 0 or an integer >= 2, or an option of the
      wrong type or range.
  """
  if not isinstance(name, str) or name not in _REGISTRY:
    raise ValueError(f'model name {name!r} is not valid; expected one of {list(model_names())}.')
  family = _REGISTRY[name]
  num_classes = _check_num_classes(num_classes)
  options = {**family.defaults, **kwargs}
  if family.inputs == 'images':
    if input_shape is None:
      raise ValueError(f'{name!r} takes images: pass input_shape=(H, W, C).')
    inputs = Images(input_shape)
    if family.module is ViT:
      options.setdefault('image_size', inputs.image_shape[:2])
    _check_options(name, family.module, options, ('num_classes', 'in_channels'))
    build = functools.partial(family.module, num_classes=num_classes,
                              in_channels=inputs.image_shape[-1], **options)
  else:
    validate.check_ints(input_shape, 'input_shape', minimum=1, length=1)
    if 'max_len' in kwargs:
      raise ValueError(f'{name!r} takes its max_len from input_shape=(max_len,); drop max_len.')
    options['max_len'] = input_shape[0]
    _check_options(name, family.module, options, ('num_classes',))
    inputs = Tokens(max_len=input_shape[0], vocab_size=options['vocab_size'])
    build = functools.partial(family.module, num_classes=num_classes, **options)
  return PureModel(name, lambda rngs: build(rngs=rngs), inputs, num_classes=num_classes)


__all__ = ['Context', 'Family', 'Images', 'InputSpec', 'NoisyImages', 'Outputs', 'PureModel',
           'Rule', 'Tokens', 'Variables', 'get_model', 'model_names']
