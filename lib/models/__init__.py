"""Models: defined once in Flax NNX, used through the pure `PureModel` boundary.

    from lib import models
    model = models.get_model('cnn', input_shape=(32, 32, 3), num_classes=10)
    variables = model.init(jax.random.key(0))
    out = model.apply(variables, x)            # Outputs(logits, taps, features)
    out, variables = model.apply_train(variables, x, key=key)

    encoder = models.get_model('vit', input_shape=(32, 32, 3), num_classes=None)
    text = models.get_model('text_transformer', input_shape=(16,), num_classes=2,
                            vocab_size=1000)   # inputs {'input_ids', 'attention_mask'}

Published architectures load their real weights (safetensors only):

    unet = models.get_model('ddpm_unet')        # diffusers UNet2DModel, ddpm-cifar10-32 config
    variables = models.load_diffusers_unet('path/to/ddpm-cifar10-32')   # {'x', 't'} -> eps
    bert = models.load_bert('path/to/bert-tiny')         # .model, .variables (HF BertModel)
    clip, variables, report = models.load_clip('path/to/clip-vit-base-patch16')
    encode = models.image_encoder(clip)         # (params, x in [0, 1]) -> Outputs(taps=hidden
                                                # states, features=image embedding)

Files: `core` (the NNX -> pure boundary), `inputs` (input families: images, tokens, noisy
images), `layers`/`head`/`transformer` (building blocks), one file per architecture,
`weights` (safetensors + name maps + shape checks), `*_weights` (each published layout's
name map and loader: `unet_weights` diffusers, `bert_weights` and `clip_weights` Hugging
Face, with open_clip names for CLIP).

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
from lib.models import bert, clip, unet, unet_config
from lib.models.bert_weights import load_bert
from lib.models.clip import Clip, ClipConfig, image_encoder
from lib.models.clip_weights import load_clip, load_clip_weights
from lib.models.cnn import SmallCNN
from lib.models.core import Context, Outputs, PureModel, Rule, Variables
from lib.models.inputs import Images, InputSpec, NoisyImages, Tokens
from lib.models.resnet import ResNet
from lib.models.text import TextTransformer
from lib.models.unet_weights import load_diffusers_unet
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


@dataclasses.dataclass(frozen=True)
class Configured:
  """A published architecture built from its config dataclass (the fields of its config.json).

  Attributes:
    build: `build(config, num_classes, input_shape) -> PureModel`.
    config: the default config (a frozen dataclass); `get_model`'s keyword arguments replace
      its fields, or `config=` replaces it whole.
  """
  build: Callable[[Any, int | None, tuple[int, ...] | None], PureModel]
  config: Any


def _build_unet(config: unet_config.UNetConfig, num_classes: int | None,
                input_shape: tuple[int, ...] | None) -> PureModel:
  if num_classes is not None:
    raise ValueError(f'a denoiser has no classification head; got num_classes={num_classes}.')
  if input_shape is not None:
    validate.check_ints(input_shape, 'input_shape', minimum=1, length=3)
    h, w, c = input_shape
    config = dataclasses.replace(config, sample_size=(h, w), in_channels=c, out_channels=c)
  return unet.unet_model(config)


def _build_bert(config: bert.BertConfig, num_classes: int | None,
                input_shape: tuple[int, ...] | None) -> PureModel:
  if input_shape is not None:
    validate.check_ints(input_shape, 'input_shape', minimum=1, length=1)
  return bert.bert_model(config, num_classes, max_len=None if input_shape is None else input_shape[0])


# Published architectures: get_model(name, input_shape=..., num_classes=..., **config fields).
# CLIP has two towers and its own entry points: `Clip(ClipConfig)`, `load_clip(folder)`.
_CONFIGURED: dict[str, Configured] = {
    'ddpm_unet': Configured(_build_unet, unet_config.DDPM_CIFAR10),
    'bert': Configured(_build_bert, bert.BERT_TINY),
}


def model_names() -> tuple[str, ...]:
  """Names accepted by `get_model`."""
  return tuple(sorted((*_REGISTRY, *_CONFIGURED)))


def _get_configured(name: str, family: Configured, input_shape: tuple[int, ...] | None,
                    num_classes: int | None, kwargs: dict[str, Any]) -> PureModel:
  config = kwargs.pop('config', family.config)
  if type(config) is not type(family.config):
    raise ValueError(f'config of {name!r} must be a {type(family.config).__name__}; got '
                     f'{type(config).__name__}.')
  fields = sorted(f.name for f in dataclasses.fields(config))
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ValueError(f'{name!r} has no option {unknown}; valid options: config and {fields}.')
  return family.build(dataclasses.replace(config, **kwargs), num_classes, input_shape)


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
  if not isinstance(name, str) or name not in model_names():
    raise ValueError(f'model name {name!r} is not valid; expected one of {list(model_names())}.')
  num_classes = _check_num_classes(num_classes)
  if name in _CONFIGURED:
    return _get_configured(name, _CONFIGURED[name], input_shape, num_classes, dict(kwargs))
  family = _REGISTRY[name]
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


__all__ = ['Clip', 'ClipConfig', 'Configured', 'Context', 'Family', 'Images', 'InputSpec',
           'NoisyImages', 'Outputs', 'PureModel', 'Rule', 'Tokens', 'Variables', 'bert', 'clip',
           'get_model', 'image_encoder', 'load_bert', 'load_clip', 'load_clip_weights',
           'load_diffusers_unet', 'model_names', 'unet']
