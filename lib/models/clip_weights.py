"""CLIP weights from safetensors files: Hugging Face `CLIPModel` and OpenAI/open_clip names.

Both layouts go through `lib.models.weights` (shape checks naming the first mismatching
tensor with both shapes; missing and unexpected tensors listed, an error unless
`partial=True`). Our variables: `Clip.abstract_variables` ({'image', 'text', 'logit_scale'}).

Hugging Face (`CLIPModel.save_pretrained(..., safe_serialization=True)`):

  vision_model.embeddings.class_embedding [D]               image/params/cls_token
  vision_model.embeddings.patch_embedding.weight [D,C,P,P]  image/params/patch_embed/kernel (HWIO)
  vision_model.embeddings.position_embedding.weight [T,D]   image/params/pos_embed
  vision_model.pre_layrnorm, post_layernorm                 image/params/pre_norm, norm
  {vision,text}_model.encoder.layers.N.                     {image,text}/params/blocks/N/
    self_attn.{q,k,v,out}_proj, layer_norm1/2,                attn/{q,k,v,out}, ln1/ln2,
    mlp.fc1/fc2                                               mlp/fc1/fc2
  text_model.embeddings.{token,position}_embedding.weight   text/params/{token,pos}_embed
  text_model.final_layer_norm                               text/params/norm
  {visual,text}_projection.weight [E, D]                    {image,text}/params/proj/kernel (.T)
  logit_scale []                                            logit_scale
  (position_ids buffers of older checkpoints are ignored)

OpenAI / open_clip (`model.state_dict()` of `open_clip.create_model('ViT-B-16')` or OpenAI's
`clip.load`, saved as safetensors): `visual.conv1`, `visual.class_embedding`,
`visual.positional_embedding`, `visual.ln_pre`, `visual.ln_post`, `visual.proj` [D, E] (used
as x @ proj: no transpose), `token_embedding`, `positional_embedding`, `ln_final`,
`text_projection` [D, E], `logit_scale`, and `[visual.]transformer.resblocks.N.` with
`ln_1`, `ln_2`, `attn.in_proj_weight` [3D, D] / `attn.in_proj_bias` [3D] (fused q, k, v:
split here), `attn.out_proj`, `mlp.c_fc`, `mlp.c_proj`. OpenAI's scalar entries
`input_resolution`, `context_length`, `vocab_size` are ignored. An open_clip checkpoint
carries no config.json: pass the `ClipConfig` (e.g. `clip.VIT_B16`; OpenAI's checkpoints
pool at the largest token id, `eos_token_id=2` there).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import numpy as np

from lib import validate
from lib.models import weights
from lib.models.clip import Clip, ClipConfig
from lib.models.core import Variables
from lib.models.weights import LoadReport, Target, torch_conv, torch_linear

LAYOUTS = ('hf', 'openclip')
HF_IGNORE = ('*position_ids',)
OPENCLIP_IGNORE = ('input_resolution', 'context_length', 'vocab_size', '*attn_mask')
_LN = {'weight': 'scale', 'bias': 'bias'}


def _linear(path: str, kind: str) -> Target:
  """A PyTorch Linear's 'weight' (transposed into a kernel) or 'bias'."""
  return (f'{path}/kernel', torch_linear) if kind == 'weight' else f'{path}/bias'


def _hf_block(rest: str) -> Target | None:
  """Name inside `encoder.layers.N.` -> target inside 'blocks/N/' (relative)."""
  if m := re.fullmatch(r'self_attn\.(q|k|v|out)_proj\.(weight|bias)', rest):
    return _linear(f'attn/{m[1]}', m[2])
  if m := re.fullmatch(r'layer_norm([12])\.(weight|bias)', rest):
    return f'ln{m[1]}/{_LN[m[2]]}'
  if m := re.fullmatch(r'mlp\.(fc[12])\.(weight|bias)', rest):
    return _linear(f'mlp/{m[1]}', m[2])
  return None


_HF_VISION = {'embeddings.class_embedding': 'cls_token',
              'embeddings.patch_embedding.weight': ('patch_embed/kernel', torch_conv),
              'embeddings.position_embedding.weight': 'pos_embed'}
_HF_TEXT = {'embeddings.token_embedding.weight': 'token_embed',
            'embeddings.position_embedding.weight': 'pos_embed'}
_HF_NORMS = {'vision_model': {'pre_layrnorm': 'pre_norm', 'post_layernorm': 'norm'},
             'text_model': {'final_layer_norm': 'norm'}}


def _under(prefix: str, target: Target | None) -> Target | None:
  """`target` with its path under `prefix` (None stays None)."""
  if target is None:
    return None
  if isinstance(target, str):
    return f'{prefix}/{target}'
  return (f'{prefix}/{target[0]}', target[1])


def hf_name_map(name: str) -> Target | None:
  """A Hugging Face `CLIPModel` tensor name -> our variables path (and transform), or None."""
  if name == 'logit_scale':
    return 'logit_scale'
  if m := re.fullmatch(r'(visual|text)_projection\.weight', name):
    return (f'{"image" if m[1] == "visual" else "text"}/params/proj/kernel', torch_linear)
  m = re.fullmatch(r'(vision_model|text_model)\.(.+)', name)
  if m is None:
    return None
  model, rest = m[1], m[2]
  tower = 'image' if model == 'vision_model' else 'text'
  if b := re.fullmatch(r'encoder\.layers\.(\d+)\.(.+)', rest):
    return _under(f'{tower}/params/blocks/{b[1]}', _hf_block(b[2]))
  if (n := re.fullmatch(r'(\w+)\.(weight|bias)', rest)) and n[1] in _HF_NORMS[model]:
    return f'{tower}/params/{_HF_NORMS[model][n[1]]}/{_LN[n[2]]}'
  return _under(f'{tower}/params', (_HF_VISION if tower == 'image' else _HF_TEXT).get(rest))


def _openclip_block(rest: str) -> Target | None:
  """Name inside `resblocks.N.` (fused q/k/v already split into ':q' etc.) -> relative target."""
  if m := re.fullmatch(r'attn\.in_proj_(weight|bias):(q|k|v)', rest):
    return _linear(f'attn/{m[2]}', m[1])
  if m := re.fullmatch(r'attn\.out_proj\.(weight|bias)', rest):
    return _linear('attn/out', m[1])
  if m := re.fullmatch(r'ln_([12])\.(weight|bias)', rest):
    return f'ln{m[1]}/{_LN[m[2]]}'
  if m := re.fullmatch(r'mlp\.(c_fc|c_proj)\.(weight|bias)', rest):
    return _linear(f'mlp/{"fc1" if m[1] == "c_fc" else "fc2"}', m[2])
  return None


_OPENCLIP_VISION = {'class_embedding': 'cls_token', 'positional_embedding': 'pos_embed',
                    'conv1.weight': ('patch_embed/kernel', torch_conv), 'proj': 'proj/kernel',
                    'ln_pre.weight': 'pre_norm/scale', 'ln_pre.bias': 'pre_norm/bias',
                    'ln_post.weight': 'norm/scale', 'ln_post.bias': 'norm/bias'}
_OPENCLIP_TEXT = {'token_embedding.weight': 'token_embed', 'positional_embedding': 'pos_embed',
                  'text_projection': 'proj/kernel', 'ln_final.weight': 'norm/scale',
                  'ln_final.bias': 'norm/bias'}


def openclip_name_map(name: str) -> Target | None:
  """An OpenAI/open_clip tensor name (fused q/k/v split by `split_fused_qkv`) -> our target."""
  if name == 'logit_scale':
    return 'logit_scale'
  visual = name.startswith('visual.')
  tower, rest = ('image', name[len('visual.'):]) if visual else ('text', name)
  if m := re.fullmatch(r'transformer\.resblocks\.(\d+)\.(.+)', rest):
    return _under(f'{tower}/params/blocks/{m[1]}', _openclip_block(m[2]))
  return _under(f'{tower}/params', (_OPENCLIP_VISION if visual else _OPENCLIP_TEXT).get(rest))


def split_fused_qkv(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Splits each `*.in_proj_weight` [3D, D] / `*.in_proj_bias` [3D] into ':q', ':k', ':v'.

  PyTorch's `nn.MultiheadAttention` stacks the query, key and value projections in that
  order along the first axis. Other tensors pass through.

  Raises:
    ValueError: a fused tensor's first axis is not a multiple of 3 (named, with its shape).
  """
  out = {}
  for name, value in tensors.items():
    if not re.search(r'\.in_proj_(weight|bias)$', name):
      out[name] = value
      continue
    if value.ndim not in (1, 2) or value.shape[0] % 3:
      raise ValueError(f'tensor {name!r} has shape {value.shape}; a fused q/k/v projection '
                       'needs a first axis of 3 x width.')
    for part, chunk in zip('qkv', np.split(value, 3)):
      out[f'{name}:{part}'] = chunk
  return out


def load_clip_weights(path: str | os.PathLike, clip: Clip, *, layout: str = 'hf',
                      partial: bool = False, like: Variables | None = None
                      ) -> tuple[Variables, LoadReport]:
  """Variables of `clip` from one safetensors file in the given layout.

  Args:
    path: a .safetensors file.
    clip: the model the weights are for (its config must match the file's shapes).
    layout: 'hf' (transformers' `CLIPModel`) or 'openclip' (OpenAI / open_clip names).
    partial: accept missing and unexpected tensors (reported) instead of raising.
    like: variables that fill what a partial load leaves out (default: abstract, so a
      partial load that misses a tensor raises).

  Returns:
    `(variables, report)`.

  Raises:
    ValueError: unknown layout; a missing file; a tensor whose shape differs from the
      model's (the first one named, with both shapes); missing or unexpected tensors
      without `partial`.
  """
  validate.check_choice(layout, LAYOUTS, 'layout')
  tensors = weights.read_safetensors(path)
  like = clip.abstract_variables if like is None else like
  if layout == 'hf':
    return weights.load_variables(tensors, hf_name_map, like, partial=partial,
                                  ignore=HF_IGNORE)
  return weights.load_variables(split_fused_qkv(tensors), openclip_name_map, like,
                                partial=partial, ignore=OPENCLIP_IGNORE)


def load_clip(folder: str | os.PathLike, *, partial: bool = False
              ) -> tuple[Clip, Variables, LoadReport]:
  """A Hugging Face CLIP folder (config.json + model.safetensors) -> model and variables.

  Sharded checkpoints (model.safetensors.index.json and its shards) are read too; a
  preprocessor_config.json, if present, gives the pixel normalisation.

  Args:
    folder: a folder written by `CLIPModel.save_pretrained(..., safe_serialization=True)`
      or downloaded from the hub (e.g. openai/clip-vit-base-patch16).
    partial: as in `load_clip_weights`.

  Returns:
    `(clip, variables, report)`.

  Raises:
    ValueError: `folder` is not a folder or lacks config.json / model.safetensors (only
      safetensors are read, never pickles); the config has unsupported options; shapes
      that do not match the config; missing or unexpected tensors without `partial`.
  """
  if not os.path.isdir(folder):
    raise ValueError(f'folder={str(folder)!r} is not a folder; expected one with config.json '
                     'and model.safetensors.')
  preprocessor = os.path.join(folder, 'preprocessor_config.json')
  clip = Clip(ClipConfig.from_hf_config(
      os.path.join(folder, 'config.json'),
      preprocessor if os.path.isfile(preprocessor) else None))
  index = os.path.join(folder, 'model.safetensors.index.json')
  if os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)['weight_map'].values()))
  else:
    shards = ['model.safetensors']
    if not os.path.isfile(os.path.join(folder, shards[0])):
      raise ValueError(f'folder={str(folder)!r} has no model.safetensors (only safetensors '
                       'weights are read; convert a pytorch_model.bin first).')
  tensors = {}
  for shard in shards:
    tensors.update(weights.read_safetensors(os.path.join(folder, shard)))
  variables, report = weights.load_variables(tensors, hf_name_map, clip.abstract_variables,
                                             partial=partial, ignore=HF_IGNORE)
  return clip, variables, report
