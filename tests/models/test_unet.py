"""lib.models.unet: parity with diffusers' UNet2DModel, checkpoint loading, configuration
and input errors.

Parity: a tiny random `diffusers.UNet2DModel` (every parameter redrawn, so no layer is
trivially zero or identity) is saved with `save_pretrained(..., safe_serialization=True)`,
loaded with `load_diffusers_unet`, and both predict the noise for the same inputs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
from diffusers import UNet2DModel

from lib.models import unet, unet_weights
from lib.models.unet_config import DDPM_CIFAR10, UNetConfig

TINY = dict(sample_size=8, block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
            down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'),
            up_block_types=('UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'), attention_head_dim=4)
# The other branch of every option: scale-shift time conditioning (mid attention without
# GroupNorm), padding-0 downsampling, [sin, cos] with freq_shift 1, one head per layer,
# centred inputs, a mid-block scale factor, a time-embedding width of its own.
SCALE_SHIFT = TINY | dict(resnet_time_scale_shift='scale_shift', downsample_padding=0,
                          flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None,
                          center_input_sample=True, mid_block_scale_factor=2.0,
                          time_embedding_dim=24, layers_per_block=1)
CONFIGS = {'default': TINY, 'scale_shift': SCALE_SHIFT}
# google/ddpm-cifar10-32's config.json.
DDPM_JSON = {
    '_class_name': 'UNet2DModel', '_diffusers_version': '0.0.4', 'act_fn': 'silu',
    'attention_head_dim': None, 'block_out_channels': [128, 256, 256, 256],
    'center_input_sample': False,
    'down_block_types': ['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'],
    'downsample_padding': 0, 'flip_sin_to_cos': False, 'freq_shift': 1, 'in_channels': 3,
    'layers_per_block': 2, 'mid_block_scale_factor': 1, 'norm_eps': 1e-06,
    'norm_num_groups': 32, 'out_channels': 3, 'sample_size': 32,
    'time_embedding_type': 'positional',
    'up_block_types': ['UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D']}


def torch_unet(options: dict[str, Any], seed: int = 0) -> UNet2DModel:
  """A diffusers UNet2DModel with every parameter redrawn (GroupNorm scales around 1)."""
  torch.manual_seed(seed)
  net = UNet2DModel(**options).eval()
  with torch.no_grad():
    for name, p in net.named_parameters():
      if p.ndim > 1:
        p.copy_(torch.randn_like(p) / np.sqrt(p[0].numel()))
      else:
        p.copy_(0.2 * torch.randn_like(p) + ('norm' in name and name.endswith('weight')))
  return net


def torch_eps(net: UNet2DModel, x: np.ndarray, t: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = net(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).sample
  return out.numpy().transpose(0, 2, 3, 1)


def relative_error(got, want) -> float:
  return float(np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want))


class Twin(NamedTuple):
  options: dict[str, Any]   # the UNet2DModel arguments (an entry of CONFIGS)
  net: UNet2DModel
  folder: Any
  model: Any
  variables: Any
  apply: Any        # jitted model.apply
  traces: list      # one entry per trace of `apply`


@pytest.fixture(scope='module', params=list(CONFIGS))
def twin(request, tmp_path_factory) -> Twin:
  net = torch_unet(CONFIGS[request.param])
  folder = tmp_path_factory.mktemp(request.param)
  net.save_pretrained(folder, safe_serialization=True)
  model = unet.unet_model(unet_weights.read_diffusers_config(folder))
  traces = []

  def apply(variables, batch):
    traces.append(1)
    return model.apply(variables, batch)

  variables = unet_weights.load_diffusers_unet(folder)
  return Twin(CONFIGS[request.param], net, folder, model, variables, jax.jit(apply), traces)


def inputs(twin: Twin, seed: int) -> dict[str, np.ndarray]:
  """Noisy images in [-1, 1] and timesteps: integers, or fractional for 'scale_shift'."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (3, *twin.model.inputs.image_shape)).astype(np.float32)
  if twin.options is SCALE_SHIFT:
    return {'x': x, 't': np.array([0.0, 17.5, 999.0], np.float32)}
  return {'x': x, 't': np.array([0, 17, 999], np.int32)}


def test_parity_with_diffusers(twin):
  batch = inputs(twin, 0)
  with jax.default_matmul_precision('highest'):
    got = twin.apply(twin.variables, batch)
  assert got.logits is None
  assert relative_error(got.features, torch_eps(twin.net, **batch)) <= 1e-5
  assert set(got.taps) == {'down0', 'down1', 'down2', 'mid', 'up0', 'up1', 'up2'}


def test_compiles_once(twin):
  with jax.default_matmul_precision('highest'):
    for seed in (1, 2):
      twin.apply(twin.variables, inputs(twin, seed))
  assert len(twin.traces) == 1


@pytest.mark.slow
@pytest.mark.parametrize('twin', ['scale_shift'], indirect=True)
def test_input_gradient_parity(twin):
  """The gradient through the custom-VJP convolutions and the attention equals torch's
  (slow: compiling the backward pass takes ~10 s of CPU)."""
  batch = inputs(twin, 3)
  weight = np.random.default_rng(4).normal(size=batch['x'].shape).astype(np.float32)
  loss = lambda x: (twin.model.apply(twin.variables, {**batch, 'x': x}).features * weight).sum()
  with jax.default_matmul_precision('highest'):
    got = jax.jit(jax.grad(loss))(batch['x'])
  x = torch.from_numpy(batch['x'].transpose(0, 3, 1, 2)).requires_grad_()
  out = twin.net(x, torch.from_numpy(batch['t'])).sample
  (out * torch.from_numpy(weight.transpose(0, 3, 1, 2))).sum().backward()
  assert relative_error(got, x.grad.numpy().transpose(0, 2, 3, 1)) <= 1e-5


def test_structure(twin):
  scale_shift = twin.options is SCALE_SHIFT
  params = twin.variables['params']
  assert ('group_norm' in params['mid_block']['attentions'][0]) is not scale_shift
  assert params['down_blocks'][0]['downsample']['kernel'].shape == (3, 3, 8, 8)
  assert twin.model.tap_shapes['mid'] == (2, 2, 16)
  assert twin.model.tap_shapes['up2'] == (8, 8, 8)
  assert twin.model.layer_names[:3] == ('time_embedding/linear_1', 'time_embedding/linear_2',
                                        'conv_in')
  assert 'down1/attn0/to_q' in twin.model.layer_names
  assert twin.model.layer_names[-1] == 'conv_out'
  n_torch = sum(p.numel() for p in twin.net.parameters())
  assert sum(leaf.size for leaf in jax.tree.leaves(twin.variables)) == n_torch


def test_old_attention_names_and_pipeline_folder(twin, tmp_path):
  old = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}
  tensors = safetensors.numpy.load_file(str(twin.folder / unet_weights.WEIGHTS_FILE))
  renamed = {}
  for name, value in tensors.items():
    for new, legacy in old.items():
      name = name.replace(f'.{new}.', f'.{legacy}.')
    renamed[name] = value
  assert 'down_blocks.1.attentions.0.proj_attn.weight' in renamed
  (tmp_path / 'unet').mkdir()
  shutil.copy(twin.folder / unet_weights.CONFIG_FILE, tmp_path / 'unet')
  safetensors.numpy.save_file(renamed, str(tmp_path / 'unet' / unet_weights.WEIGHTS_FILE))
  loaded = unet_weights.load_diffusers_unet(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, loaded, twin.variables)


def save_tensors(twin, tmp_path, edit) -> Any:
  tensors = dict(safetensors.numpy.load_file(str(twin.folder / unet_weights.WEIGHTS_FILE)))
  edit(tensors)
  path = tmp_path / 'edited.safetensors'
  safetensors.numpy.save_file(tensors, str(path))
  return path


def test_mismatching_tensor_is_named_with_both_shapes(twin, tmp_path):
  def widen(tensors):
    tensors['mid_block.resnets.1.conv2.weight'] = np.zeros((16, 8, 3, 3), np.float32)
  path = save_tensors(twin, tmp_path, widen)
  config = unet_weights.read_diffusers_config(twin.folder)
  with pytest.raises(ValueError, match=r"'mid_block.resnets.1.conv2.weight' has shape "
                                       r"\(3, 3, 8, 16\) after its transform; the model's "
                                       r"'params/mid_block/resnets/1/conv2/kernel' has shape "
                                       r"\(3, 3, 16, 16\)"):
    unet_weights.load_diffusers_unet(path, config)
  # The same checkpoint against another architecture fails on its first tensor that differs.
  other = dataclasses.replace(config, block_out_channels=(8, 16, 32))
  with pytest.raises(ValueError, match=r"'down_blocks.2.resnets.0.conv1.bias' has shape \(16,\)"):
    unet_weights.load_diffusers_unet(twin.folder, other)


def test_missing_and_unexpected_tensors(twin, tmp_path):
  path = save_tensors(twin, tmp_path, lambda t: t.pop('conv_out.bias'))
  with pytest.raises(ValueError, match=r"missing \['params/conv_out/bias'\]"):
    unet_weights.load_diffusers_unet(path, twin.net.config)
  path = save_tensors(twin, tmp_path, lambda t: t.update(extra=np.zeros(2, np.float32)))
  with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
    unet_weights.load_diffusers_unet(path, twin.net.config)


def test_loader_arguments(twin, tmp_path):
  file = twin.folder / unet_weights.WEIGHTS_FILE
  with pytest.raises(ValueError, match='config must be given'):
    unet_weights.load_diffusers_unet(file)
  with pytest.raises(ValueError, match='config must be a UNetConfig'):
    unet_weights.load_diffusers_unet(file, 'tiny')
  (tmp_path / 'diffusion_pytorch_model.bin').write_bytes(b'')
  shutil.copy(twin.folder / unet_weights.CONFIG_FILE, tmp_path)
  with pytest.raises(ValueError, match='only safetensors checkpoints are loaded'):
    unet_weights.load_diffusers_unet(tmp_path)
  with pytest.raises(ValueError, match='has no config.json'):
    unet_weights.read_diffusers_config(tmp_path / 'nowhere')


@pytest.mark.parametrize('name, batch, message', [
    ('size', {'x': np.zeros((1, 16, 16, 3), np.float32), 't': np.zeros(1, np.int32)},
     r'per-image shape \(H, W, C\) = \(8, 8, 3\)'),
    ('channels', {'x': np.zeros((1, 8, 8, 1), np.float32), 't': np.zeros(1, np.int32)},
     r'per-image shape'),
    ('t rank', {'x': np.zeros((2, 8, 8, 3), np.float32), 't': np.zeros((2, 1), np.int32)},
     r"x\['t'\] must have rank 1"),
    ('t batch', {'x': np.zeros((2, 8, 8, 3), np.float32), 't': np.zeros(3, np.int32)},
     'share the batch size'),
    ('t negative', {'x': np.zeros((1, 8, 8, 3), np.float32), 't': -np.ones(1, np.int32)},
     'non-negative'),
    ('no t', {'x': np.zeros((1, 8, 8, 3), np.float32)}, r"keys \['x', 't'\]"),
])
def test_bad_inputs_raise(twin, name, batch, message):
  with pytest.raises(ValueError, match=message):
    twin.model.apply(twin.variables, batch)


def test_dropout_needs_a_key_in_training():
  config = UNetConfig(sample_size=4, block_out_channels=(4,), down_block_types=('DownBlock2D',),
                      up_block_types=('UpBlock2D',), norm_num_groups=2, layers_per_block=1,
                      mid_block_type=None, dropout=0.1)
  model = unet.unet_model(config)
  assert model.tap_names == ('down0', 'up0')
  variables = jax.tree.map(lambda v: np.zeros(v.shape, v.dtype), model.abstract_variables)
  batch = {'x': np.zeros((1, 4, 4, 3), np.float32), 't': np.zeros(1, np.int32)}
  with pytest.raises(ValueError, match="'down0/resnet0/dropout' is stochastic"):
    model.apply_train(variables, batch)


def test_ddpm_cifar10_preset():
  assert UNetConfig.from_diffusers_config(DDPM_JSON) == DDPM_CIFAR10
  shapes = unet.unet_model(DDPM_CIFAR10).abstract_variables
  assert sum(leaf.size for leaf in jax.tree.leaves(shapes)) == 35_746_307


def test_config_from_json_round_trip(twin):
  config = json.loads((twin.folder / unet_weights.CONFIG_FILE).read_text())
  assert UNetConfig.from_diffusers_config(config) == UNetConfig(**twin.options)


@pytest.mark.parametrize('change, message', [
    (dict(class_embed_type='timestep'), 'class_embed_type'),
    (dict(num_class_embeds=10), 'num_class_embeds'),
    (dict(time_embedding_type='fourier'), 'time_embedding_type'),
    (dict(act_fn='mish'), 'act_fn'),
    (dict(downsample_type='resnet'), 'downsample_type'),
    (dict(upsample_type='resnet'), 'upsample_type'),
    (dict(mid_block_type='UNetMidBlock2DCrossAttn'), 'mid_block_type'),
    (dict(up_block_types=['SkipUpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D']),
     r'up_block_types\[0\]'),
    (dict(up_block_types=['UpBlock2D']), 'one block type per entry'),
    (dict(cross_attention_dim=8), 'cross_attention_dim'),
    (dict(_class_name='UNet2DConditionModel'), '_class_name'),
    (dict(sample_size=None), 'sample_size'),
    (dict(sample_size=36), 'divisible by 8'),
    (dict(norm_num_groups=24), 'norm_num_groups=24 must divide'),
    (dict(attention_head_dim=512), 'attention_head_dim=512 exceeds'),
    (dict(resnet_time_scale_shift='spatial'), 'resnet_time_scale_shift'),
    (dict(dropout=1.0), 'dropout'),
])
def test_unsupported_config_raises(change, message):
  with pytest.raises(ValueError, match=message):
    UNetConfig.from_diffusers_config(DDPM_JSON | change)


def test_unet_model_needs_a_config():
  with pytest.raises(ValueError, match='config must be a UNetConfig'):
    unet.unet_model(DDPM_JSON)


def test_timestep_features_match_diffusers():
  from diffusers.models.embeddings import get_timestep_embedding
  t = np.array([0, 1, 17, 500, 999], np.int32)
  for flip, shift, dim in ((True, 0, 8), (False, 1, 9)):
    want = get_timestep_embedding(torch.from_numpy(t), dim, flip, shift).numpy()
    got = unet.timestep_features(jax.numpy.asarray(t), dim, flip_sin_to_cos=flip,
                                 freq_shift=shift)
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.slow
def test_ddpm_cifar10_parity(tmp_path):
  fields = {f.name: getattr(DDPM_CIFAR10, f.name) for f in dataclasses.fields(UNetConfig)}
  net = torch_unet(fields)
  assert sum(p.numel() for p in net.parameters()) == 35_746_307
  net.save_pretrained(tmp_path, safe_serialization=True)
  variables = unet_weights.load_diffusers_unet(tmp_path)
  model = unet.unet_model(unet_weights.read_diffusers_config(tmp_path))
  x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  t = np.array([3, 999], np.int32)
  with jax.default_matmul_precision('highest'):
    got = jax.jit(model.apply)(variables, {'x': x, 't': t}).features
  assert relative_error(got, torch_eps(net, x, t)) <= 1e-5
