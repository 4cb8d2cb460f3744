"""Models: defined once in Flax NNX, used through the pure `PureModel` boundary.

    from lib import models
    model = models.get_model('cnn', input_shape=(32, 32, 3), num_classes=10)
    variables = model.init(jax.random.key(0))
    out = model.apply(variables, x)            # Outputs(logits, taps)
    out, variables = model.apply_train(variables, x)

Add a model: write an `nnx.Module` whose `__call__(x, ctx)` builds from `lib.models.layers`
and records taps with `ctx.tap(name, x)`, then register a builder in `_REGISTRY`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from lib.models.cnn import SmallCNN
from lib.models.core import Context, Outputs, PureModel, Rule, Variables
from lib.models.resnet import ResNet
from lib.models.vit import ViT
from lib.models.wide_resnet import WideResNet

# Registry defaults are keyword arguments that `get_model`'s **kwargs may override.
_REGISTRY: dict[str, Callable[..., Any]] = {
    'cnn': SmallCNN,
    'resnet18': ResNet,
    'wrn28_10': functools.partial(WideResNet, depth=28, widen=10),
    'vit': functools.partial(ViT, image_size=32, patch_size=4, dim=192, depth=6, heads=3,
                             mlp_dim=768),
    'vit_b16': functools.partial(ViT, image_size=224, patch_size=16, dim=768, depth=12,
                                 heads=12, mlp_dim=3072),
}


def model_names() -> tuple[str, ...]:
  """Names accepted by `get_model`."""
  return tuple(sorted(_REGISTRY))


def get_model(name: str, *, input_shape: tuple[int, int, int], num_classes: int,
              **kwargs: Any) -> PureModel:
  """Builds the pure form of a registered model.

  Args:
    name: one of `model_names()`.
    input_shape: (H, W, C) of one input image.
    num_classes: number of output logits.
    **kwargs: architecture options of that model (e.g. `widths`, `batch_norm`).

  Raises:
    ValueError: unknown name, or input shape / class count the model cannot take.
  """
  if name not in _REGISTRY:
    raise ValueError(f'model name {name!r} is not valid; expected one of {list(model_names())}.')
  if len(input_shape) != 3 or min(input_shape) < 1:
    raise ValueError(f'input_shape must be (H, W, C) with positive entries; got {input_shape}.')
  if num_classes < 2:
    raise ValueError(f'num_classes must be at least 2; got {num_classes}.')
  cls = _REGISTRY[name]
  build = lambda rngs: cls(num_classes=num_classes, in_channels=input_shape[-1], rngs=rngs,
                           **kwargs)
  return PureModel(name, build, input_shape, num_classes)


__all__ = ['Context', 'Outputs', 'PureModel', 'Rule', 'Variables', 'get_model', 'model_names']
