"""diffusers `UNet2DModel` checkpoints -> variables of `lib.models.unet.unet_model(config)`.

A diffusers model folder holds `config.json` and `diffusion_pytorch_model.safetensors`
(a pipeline folder such as google/ddpm-cifar10-32 may keep them in `unet/`). Tensors go
through `lib.models.weights` with a name map derived from the model's own parameter
paths ('params/down_blocks/1/attentions/0/to_q/kernel' <- 'down_blocks.1.attentions.0.
to_q.weight', transposed from PyTorch's layout), so every shape is checked and a missing or
unexpected tensor is an error. Checkpoints written before diffusers renamed its attention
layers name them `query`/`key`/`value`/`proj_attn`; they load as `to_q`/`to_k`/`to_v`/
`to_out.0`, as diffusers renames them on load. Only safetensors are read, never pickles.

    >>> config = read_diffusers_config('ddpm-cifar10-32')
    >>> model = unet_model(config)
    >>> variables = load_diffusers_unet('ddpm-cifar10-32')
    >>> eps = model.apply(variables, {'x': x, 't': t}).features
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from lib.models import weights
from lib.models.core import Variables, flatten_with_paths
from lib.models.unet import unet_model
from lib.models.unet_config import UNetConfig

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'diffusion_pytorch_model.safetensors'
# Our module names that differ from diffusers' (one of our path parts -> diffusers' dotted).
_MODULES = {'downsample': 'downsamplers.0.conv', 'upsample': 'upsamplers.0.conv',
            'to_out': 'to_out.0'}
_OLD_ATTENTION = re.compile(r'^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$')
_NEW_ATTENTION = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}


def _model_folder(path: str) -> str:
  """The folder holding config.json: `path`, or its `unet/` (a pipeline folder)."""
  unet = os.path.join(path, 'unet')
  if not os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(unet):
    return unet
  return path


def read_diffusers_config(path: str | os.PathLike) -> UNetConfig:
  """The `UNetConfig` of a diffusers model folder (or of a config.json file).

  Raises:
    ValueError: no config.json there, not valid JSON, or a config `UNetConfig` refuses.
  """
  path = os.fspath(path)
  file = os.path.join(_model_folder(path), CONFIG_FILE) if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise ValueError(f'path={path!r} has no {CONFIG_FILE}; expected a diffusers UNet2DModel '
                     'folder or its config.json.')
  try:
    with open(file) as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{file!r} is not valid JSON: {e}.') from e
  return UNetConfig.from_diffusers_config(config)


def _as_config(config: Any) -> UNetConfig:
  if isinstance(config, UNetConfig):
    return config
  if isinstance(config, Mapping):
    return UNetConfig.from_diffusers_config(config)
  raise ValueError(f'config must be a UNetConfig or a config.json dict; got '
                   f'{type(config).__name__}.')


def _weights_file(path: str) -> str:
  """The safetensors file of a model folder (refusing pickled checkpoints)."""
  file = os.path.join(_model_folder(path), WEIGHTS_FILE)
  if not os.path.isfile(file):
    raise ValueError(f'path={path!r} has no {WEIGHTS_FILE}; only safetensors checkpoints are '
                     'loaded (convert a .bin checkpoint with diffusers: save_pretrained(..., '
                     'safe_serialization=True)).')
  return file


def diffusers_name(path: str, ndim: int) -> weights.Target:
  """Our variables path -> (diffusers tensor name, transform), e.g.
  'params/mid_block/attentions/0/to_out/kernel' -> ('mid_block.attentions.0.to_out.0.weight',
  torch_linear); GroupNorm 'scale' -> 'weight'; conv kernels (rank 4) from OIHW.

  Args:
    path: '/'-joined path of a parameter ('params/...').
    ndim: the parameter's rank (picks the layout transform of a kernel).
  """
  *modules, leaf = path.split('/')[1:]
  name = '.'.join(_MODULES.get(m, m) for m in modules)
  if leaf == 'kernel':
    return f'{name}.weight', weights.torch_conv if ndim == 4 else weights.torch_linear
  return f'{name}.{"weight" if leaf == "scale" else leaf}'


def name_map(like: Variables) -> weights.NameMap:
  """The diffusers name map for variables shaped like `like` (old attention names too)."""
  table = {}
  for path, leaf in flatten_with_paths(like)[0].items():
    target = diffusers_name(path, len(leaf.shape))
    name, transform = target if isinstance(target, tuple) else (target, None)
    table[name] = path if transform is None else (path, transform)

  def lookup(tensor_name: str) -> weights.Target | None:
    old = _OLD_ATTENTION.match(tensor_name)
    if old:
      tensor_name = f'{old[1]}.{_NEW_ATTENTION[old[2]]}.{old[3]}'
    return table.get(tensor_name)

  return lookup


def load_diffusers_unet(path: str | os.PathLike,
                        config: UNetConfig | Mapping[str, Any] | None = None) -> Variables:
  """Variables of `unet_model(config)` from a diffusers `UNet2DModel` checkpoint.

  Args:
    path: a diffusers model folder (config.json + diffusion_pytorch_model.safetensors, or
      a pipeline folder with them in `unet/`), or a .safetensors file.
    config: the architecture (`UNetConfig` or a config.json dict); required with a file,
      and with a folder it replaces the folder's config.json (e.g. another `sample_size`).

  Returns:
    {'params': ..., 'batch_stats': {}} with numpy float32 leaves.

  Raises:
    ValueError: a file without `config`; a folder without the safetensors file or
      config.json; a config `UNetConfig` refuses; a tensor whose shape does not match the
      config (the first such tensor is named with both shapes); missing or unexpected
      tensors (listed).
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    file = _weights_file(path)
    config = read_diffusers_config(path) if config is None else _as_config(config)
  elif config is None:
    raise ValueError(f'path={path!r} is not a diffusers folder, so config must be given '
                     '(a UNetConfig or the config.json dict).')
  else:
    file, config = path, _as_config(config)
  like = unet_model(config).abstract_variables
  variables, _ = weights.load_safetensors(file, name_map(like), like)
  return variables
