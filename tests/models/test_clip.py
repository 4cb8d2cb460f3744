"""CLIP: parity with transformers' `CLIPModel`, the two checkpoint layouts, bad inputs.

A tiny random `CLIPModel` (every parameter jittered, so no LayerNorm is the identity and no
bias is zero) is saved with `save_pretrained(safe_serialization=True)` and loaded through
`clip_weights.load_clip`; embeddings, logits and every hidden state must agree within a
relative error of 1e-5 at the native resolution and at an interpolated one (our model
takes [0, 1] pixels, transformers' the CLIP-normalised ones). The OpenAI /
open_clip layout is checked by renaming the Hugging Face state dict into open_clip's names
(open_clip is not installed). One compiled program per image size is shared by the tests.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from transformers.models.clip import modeling_clip

from lib import models
from lib.data import get_dataset
from lib.models import clip as clip_lib
from lib.models import clip_weights
from lib.models import vit
from lib.models import weights
from lib.text.clip_tokenizer import train_clip_tokenizer

IMAGE, PATCH, MAX_LEN, VOCAB, EOS = 16, 4, 10, 64, 40
HF_CONFIG = dict(
    projection_dim=16,
    vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, image_size=IMAGE, patch_size=PATCH),
    text_config=dict(vocab_size=VOCAB, hidden_size=24, intermediate_size=40,
                     num_hidden_layers=2, num_attention_heads=2,
                     max_position_embeddings=MAX_LEN, bos_token_id=39, eos_token_id=EOS,
                     pad_token_id=EOS))
# Texts of lengths 10, 4 and 6 padded with the end-of-text id (as CLIP's tokenizer pads).
# The first end-of-text token and the largest id sit at different positions, so the two
# pooling rules of transformers pool different tokens: first EOS at 9, 3, 5; argmax at 6,
# 1, 0.
IDS = np.array([[39, 41, 50, 7, 12, 33, 61, 20, 9, EOS],
                [39, 55, 3, EOS] + [EOS] * 6,
                [39, 12, 13, 14, 15, EOS] + [EOS] * 4], np.int32)
MASK = np.array([[1] * 10, [1] * 4 + [0] * 6, [1] * 6 + [0] * 4], np.int32)
TOKENS = {'input_ids': IDS, 'attention_mask': MASK}
RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(size=(2, IMAGE, IMAGE, 3)).astype(np.float32)
IMAGES_24x20 = RNG.uniform(size=(2, 24, 20, 3)).astype(np.float32)   # 6x5 grid from 4x4


def rel_err(got, want) -> float:
  want = np.asarray(want, np.float64)
  return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def pixel_values(x: np.ndarray) -> torch.Tensor:
  """[0, 1] images as transformers' CLIP takes them: CLIP-normalised, NCHW."""
  mean, std = (np.array(v, np.float32) for v in (clip_lib.CLIP_MEAN, clip_lib.CLIP_STD))
  return torch.from_numpy(((x - mean) / std).transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope='module')
def hf(tmp_path_factory):
  """(torch CLIPModel, folder it was saved to)."""
  torch.manual_seed(0)
  model = transformers.CLIPModel(transformers.CLIPConfig(**HF_CONFIG)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name != 'logit_scale':
        p.add_(0.1 * torch.randn_like(p))
  folder = tmp_path_factory.mktemp('clip_hf')
  model.save_pretrained(folder, safe_serialization=True)
  return model, folder


@pytest.fixture(scope='module')
def ours(hf):
  """(Clip, variables) loaded from the saved folder."""
  clip, variables, report = clip_weights.load_clip(hf[1])
  assert report == weights.LoadReport((), ())
  return clip, variables


@pytest.fixture(scope='module')
def jitted(ours):
  clip = ours[0]
  return jax.jit(lambda v, x, t: clip_lib.apply(clip, v, x, t))


def hf_forward(model, images, tokens, **kwargs):
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(tokens['input_ids']).long(),
                 attention_mask=torch.from_numpy(tokens['attention_mask']).long(),
                 pixel_values=pixel_values(images), output_hidden_states=True, **kwargs)


def check_tower(got, want, hidden_names, want_hidden) -> dict[str, float]:
  errors = {name: rel_err(got.taps[name], h) for name, h in zip(hidden_names, want_hidden)}
  assert len(want_hidden) == len(hidden_names)
  errors['features'] = rel_err(got.features, want)
  assert max(errors.values()) <= 1e-5, errors
  return errors


def test_matches_transformers_at_native_size(hf, ours, jitted):
  model, _ = hf
  clip, variables = ours
  want = hf_forward(model, IMAGES, TOKENS)
  with jax.default_matmul_precision('highest'):
    got = jitted(variables, IMAGES, TOKENS)
  check_tower(got.image, want.vision_model_output.pooler_output, clip.image_hidden_states,
              want.vision_model_output.hidden_states)
  check_tower(got.text, want.text_model_output.pooler_output, clip.text_hidden_states,
              want.text_model_output.hidden_states)
  for field in ('image_embeds', 'text_embeds', 'logits_per_image', 'logits_per_text'):
    assert rel_err(getattr(got, field), getattr(want, field)) <= 1e-5, field
  assert got.image.taps['embed'].shape == (2, (IMAGE // PATCH) ** 2 + 1, 32)


def test_image_encoder_matches_interpolated_transformers(hf, ours):
  model, _ = hf
  clip, variables = ours
  with torch.no_grad():
    want = model.get_image_features(pixel_values=pixel_values(IMAGES_24x20),
                                    interpolate_pos_encoding=True, output_hidden_states=True)
  every = clip_lib.image_encoder(clip, taps=('embed', 'block0', 'block1'))
  assert clip_lib.image_encoder(clip) is every   # one function object: jit compiles once
  encode = jax.jit(clip_lib.image_encoder(clip))
  with jax.default_matmul_precision('highest'):
    got = encode(variables['image'], IMAGES_24x20)
  assert got.logits is None and set(got.taps) == set(clip.image_hidden_states)
  check_tower(got, want.pooler_output, clip.image_hidden_states, want.hidden_states)
  assert clip_lib.patch_tokens(got.taps['block1']).shape == (2, 6 * 5, 32)
  some = jax.eval_shape(clip_lib.image_encoder(clip, taps=['block1']), variables['image'], IMAGES)
  assert set(some.taps) == {'block1'} and some.features.shape == (2, 16)


@pytest.mark.parametrize('size, new_size', [((4, 4), (6, 5)), ((14, 14), (9, 11)),
                                            ((7, 3), (7, 8)), ((5, 5), (1, 2))])
def test_bicubic_resize_is_torch_bicubic(size, new_size):
  x = RNG.normal(size=(2, *size, 8)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                         size=new_size, mode='bicubic', align_corners=False)
  with jax.default_matmul_precision('highest'):
    got = vit.resize_bicubic(x, new_size)
  assert rel_err(got, want.numpy().transpose(0, 2, 3, 1)) <= 1e-6
  pos = RNG.normal(size=(1 + size[0] * size[1], 8)).astype(np.float32)
  assert vit.interpolate_pos_embed(pos, size, size) is pos   # skipped at the native grid


def test_legacy_eos_token_id_pools_at_the_largest_id(hf, ours):
  model, _ = hf
  clip, variables = ours
  legacy = clip_lib.Clip(dataclasses.replace(clip.config, eos_token_id=2))
  assert (clip.config.text_pool, legacy.config.text_pool) == ('eos', 'argmax')
  model.text_model.eos_token_id = 2
  try:
    with torch.no_grad():
      want = model.get_text_features(input_ids=torch.from_numpy(IDS).long(),
                                     attention_mask=torch.from_numpy(MASK).long()).pooler_output
  finally:
    model.text_model.eos_token_id = EOS
  with jax.default_matmul_precision('highest'):
    got = jax.jit(legacy.text.apply)(variables['text'], TOKENS).features
  assert rel_err(got, want) <= 1e-5


def to_openclip(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A Hugging Face CLIP state dict under OpenAI / open_clip names (fused q/k/v)."""
  out = {}
  block = {'layer_norm1': 'ln_1', 'layer_norm2': 'ln_2', 'self_attn.out_proj': 'attn.out_proj',
           'mlp.fc1': 'mlp.c_fc', 'mlp.fc2': 'mlp.c_proj'}
  tower = {'vision_model.embeddings.class_embedding': 'visual.class_embedding',
           'vision_model.embeddings.patch_embedding.weight': 'visual.conv1.weight',
           'vision_model.embeddings.position_embedding.weight': 'visual.positional_embedding',
           'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
           'text_model.embeddings.position_embedding.weight': 'positional_embedding'}
  norms = {'vision_model.pre_layrnorm': 'visual.ln_pre', 'vision_model.post_layernorm':
           'visual.ln_post', 'text_model.final_layer_norm': 'ln_final'}
  for name, value in tensors.items():
    if name in tower:
      out[tower[name]] = value
    elif name.rpartition('.')[0] in norms:
      module, _, kind = name.rpartition('.')
      out[f'{norms[module]}.{kind}'] = value
    elif name == 'visual_projection.weight':
      out['visual.proj'] = np.ascontiguousarray(value.T)
    elif name == 'text_projection.weight':
      out['text_projection'] = np.ascontiguousarray(value.T)
    elif name == 'logit_scale':
      out[name] = value
    elif '.self_attn.q_proj.' in name:
      prefix = 'visual.' if name.startswith('vision') else ''
      layer, kind = name.split('.')[3], name.rpartition('.')[2]
      parts = [tensors[name.replace('q_proj', p)] for p in ('q_proj', 'k_proj', 'v_proj')]
      out[f'{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}'] = np.concatenate(parts)
    elif '.self_attn.k_proj.' not in name and '.self_attn.v_proj.' not in name:
      prefix = 'visual.' if name.startswith('vision') else ''
      layer, rest = name.split('.')[3], '.'.join(name.split('.')[4:])
      module, _, kind = rest.rpartition('.')
      out[f'{prefix}transformer.resblocks.{layer}.{block[module]}.{kind}'] = value
  return out


def test_openclip_names_load_identical_variables(hf, ours, tmp_path):
  clip, variables = ours
  tensors = to_openclip(safetensors.numpy.load_file(str(hf[1] / 'model.safetensors')))
  assert 'visual.transformer.resblocks.1.attn.in_proj_weight' in tensors
  tensors['context_length'] = np.array(MAX_LEN)   # OpenAI's scalar entries are ignored
  path = tmp_path / 'open_clip_model.safetensors'
  safetensors.numpy.save_file(tensors, str(path))
  loaded, report = clip_weights.load_clip_weights(path, clip, layout='openclip')
  assert report == weights.LoadReport((), ())
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_shape_mismatch_names_the_tensor_and_both_shapes(hf, ours):
  wider = clip_lib.Clip(dataclasses.replace(ours[0].config, projection_dim=12))
  with pytest.raises(ValueError, match=r"'text_projection.weight' has shape \(24, 16\) after its "
                                       r"transform; the model's 'text/params/proj/kernel' has "
                                       r'shape \(24, 12\)'):
    clip_weights.load_clip_weights(hf[1] / 'model.safetensors', wider)


def test_missing_and_unexpected_tensors(hf, ours, tmp_path):
  tensors = safetensors.numpy.load_file(str(hf[1] / 'model.safetensors'))
  del tensors['text_model.final_layer_norm.bias']
  tensors['vision_model.extra.weight'] = np.zeros(3, np.float32)
  tensors['text_model.embeddings.position_ids'] = np.arange(MAX_LEN)[None]   # ignored buffer
  folder = tmp_path / 'clip'
  shutil.copytree(hf[1], folder)
  safetensors.numpy.save_file(tensors, str(folder / 'model.safetensors'))
  with pytest.raises(ValueError, match=r"missing \['text/params/norm/bias'\], unexpected "
                                       r"\['vision_model.extra.weight'\]"):
    clip_weights.load_clip(folder)
  clip, variables = ours
  _, report = clip_weights.load_clip_weights(folder / 'model.safetensors', clip, partial=True,
                                             like=variables)
  assert report == weights.LoadReport(('text/params/norm/bias',), ('vision_model.extra.weight',))


def test_missing_files_raise(tmp_path):
  with pytest.raises(ValueError, match='is not a folder'):
    clip_weights.load_clip(tmp_path / 'nope')
  with pytest.raises(ValueError, match='is not a file; expected a config.json'):
    clip_weights.load_clip(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps(HF_CONFIG))
  with pytest.raises(ValueError, match='has no model.safetensors'):
    clip_weights.load_clip(tmp_path)


def test_from_hf_config_reads_the_saved_config(hf):
  config = clip_lib.ClipConfig.from_hf_config(hf[1] / 'config.json')
  assert (config.vision_hidden_size, config.text_hidden_size, config.projection_dim) == (32, 24, 16)
  assert (config.eos_token_id, config.text_pool, config.hidden_act) == (EOS, 'eos', 'quick_gelu')
  # Omitted keys take transformers' defaults (OpenAI's ViT-B/32 text tower).
  default = clip_lib.ClipConfig.from_hf_config({'text_config': {'eos_token_id': 2}})
  assert (default.patch_size, default.vocab_size, default.text_pool) == (32, 49408, 'argmax')
  # An old config.json's *_config_dict wins over *_config (as in CLIPConfig.__init__).
  old = clip_lib.ClipConfig.from_hf_config({'vision_config': {'patch_size': 16},
                                            'vision_config_dict': {'patch_size': 14}})
  assert old.patch_size == 14
  # The pixel normalisation comes from preprocessor_config.json when there is one.
  assert config.image_mean == clip_lib.CLIP_MEAN
  half = clip_lib.ClipConfig.from_hf_config({}, {'image_mean': [0.5] * 3, 'image_std': [0.5] * 3})
  assert half.image_mean == half.image_std == (0.5, 0.5, 0.5)
  plain = clip_lib.ClipConfig.from_hf_config({}, {'do_normalize': False})
  assert (plain.image_mean, plain.image_std) == ((0.0,) * 3, (1.0,) * 3)
  with pytest.raises(ValueError, match=r'image_std must be positive; got \(0, 1, 1\)'):
    clip_lib.ClipConfig.from_hf_config({}, {'image_std': [0, 1, 1]})


@pytest.mark.parametrize('change, message', [
    (dict(model_type='siglip'), "model_type='siglip'"),
    (dict(text_config={'hidden_act': 'relu'}, vision_config={'hidden_act': 'relu'}),
     "hidden_act='relu', which is not supported"),
    (dict(vision_config={'hidden_act': 'gelu'}), 'towers with different hidden_act'),
    (dict(text_config={'layer_norm_eps': 1e-6}), 'towers with different layer_norm_eps'),
    (dict(vision_config={'image_size': 30, 'patch_size': 4}), 'patch_size=4 must divide'),
    (dict(text_config={'vocab_size': 10}), 'eos_token_id=49407 must be below vocab_size=10'),
    (dict(projection_dim='512'), 'projection_dim must be an integer'),
])
def test_unsupported_configs_raise(change, message):
  with pytest.raises(ValueError, match=message):
    clip_lib.ClipConfig.from_hf_config(change)


def test_bad_inputs_raise(ours):
  clip, variables = ours
  with pytest.raises(ValueError, match=r'x is 18x16, which the 4x4 patch grid does not cover'):
    clip_lib.encode_image(clip, variables, np.zeros((1, 18, 16, 3), np.float32))
  with pytest.raises(ValueError, match='must have 3 channels'):
    clip_lib.encode_image(clip, variables, np.zeros((1, 16, 16, 1), np.float32))
  long = {k: np.concatenate([v, v[:, :2]], axis=1) for k, v in TOKENS.items()}
  with pytest.raises(ValueError, match=r"input_ids'\] must have 1 to max_len=10 tokens; got 12"):
    clip_lib.encode_text(clip, variables, long)
  with pytest.raises(ValueError, match=r"unknown: \['block2', 'features'\]"):
    clip_lib.image_encoder(clip, taps=['embed', 'block2', 'features'])
  with pytest.raises(ValueError, match=r"keys \['image', 'logit_scale', 'text'\]"):
    clip_lib.encode_image(clip, variables['image'], IMAGES)


@pytest.mark.parametrize('kwargs, message', [
    (dict(pixel_mean=(0.5, 0.5, 0.5)), 'pixel_mean and pixel_std go together'),
    (dict(pixel_mean=(0.5,), pixel_std=(0.5,)), 'pixel_mean must hold 3 numbers'),
])
def test_bad_pixel_normalisation_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.get_model('vit', input_shape=(16, 16, 3), num_classes=None, patch_size=4, dim=8,
                     depth=1, heads=2, mlp_dim=8, **kwargs)


def test_structure_and_init(ours):
  clip, _ = ours
  assert clip.image_hidden_states == ('embed', 'block0', 'block1')
  assert clip.image.tap_names == ('embed', 'block0', 'block1', 'features')
  assert clip.text.tap_shapes['block1'] == (MAX_LEN, 24)
  assert clip.image.layer_names[-1] == 'proj' and clip.text.layer_names[-1] == 'proj'
  abstract = jax.eval_shape(clip.init, jax.random.key(0))
  assert jax.tree.map(np.shape, abstract) == jax.tree.map(np.shape, clip.abstract_variables)


def test_clip_loss_matches_transformers():
  logits = RNG.normal(size=(4, 4)).astype(np.float32)
  want = modeling_clip.image_text_contrastive_loss(torch.from_numpy(logits.T.copy())).item()
  np.testing.assert_allclose(clip_lib.clip_loss(logits), want, rtol=1e-6)
  with pytest.raises(ValueError, match='square'):
    clip_lib.clip_loss(logits[:3])


def test_tiny_preset_runs_on_shapes_captions():
  """The offline default: TINY with a vocabulary trained on the embedded captions."""
  data = get_dataset('shapes', 'train', image_size=32, seed=0, num_examples=8)
  captions = list(data.arrays['caption'])
  tokenizer = train_clip_tokenizer(captions, vocab_size=600,
                                   context_length=clip_lib.TINY.max_position_embeddings)
  clip = clip_lib.Clip(dataclasses.replace(clip_lib.TINY, vocab_size=tokenizer.vocab_size,
                                           eos_token_id=tokenizer.eos_token_id))
  # Random variables drawn in numpy: compiling `init` costs more than this whole test.
  variables = jax.tree.map(lambda s: RNG.normal(0, 0.05, s.shape).astype(s.dtype),
                           clip.abstract_variables)
  images, tokens = data.arrays['image'].astype(np.float32) / 255, tokenizer(captions)
  out = jax.jit(lambda v: clip_lib.apply(clip, v, images, tokens))(variables)
  assert out.logits_per_image.shape == (8, 8)
  assert np.isfinite(clip_lib.clip_loss(out.logits_per_image))


@pytest.mark.slow
def test_vit_b16_dimensions_match_transformers(tmp_path):
  """Random weights at OpenAI ViT-B/16's dimensions: 1 image, 2 texts of 77 tokens."""
  torch.manual_seed(0)
  config = transformers.CLIPConfig(
      projection_dim=512, vision_config=dict(patch_size=16, image_size=224),
      text_config=dict(eos_token_id=2))
  model = transformers.CLIPModel(config).eval()
  model.save_pretrained(tmp_path, safe_serialization=True)
  clip, variables, _ = clip_weights.load_clip(tmp_path)
  assert clip.config == clip_lib.VIT_B16
  images = RNG.uniform(size=(1, 224, 224, 3)).astype(np.float32)
  ids = np.full((2, 77), 49407, np.int32)
  ids[:, 0] = 49406
  ids[0, 1:6], ids[1, 1:12] = RNG.integers(0, 49406, 5), RNG.integers(0, 49406, 11)
  mask = np.zeros((2, 77), np.int32)
  mask[0, :7], mask[1, :13] = 1, 1
  tokens = {'input_ids': ids, 'attention_mask': mask}
  want = hf_forward(model, images, tokens)
  with jax.default_matmul_precision('highest'):
    got = jax.jit(lambda v, x, t: clip_lib.apply(clip, v, x, t))(variables, images, tokens)
  check_tower(got.image, want.vision_model_output.pooler_output, clip.image_hidden_states,
              want.vision_model_output.hidden_states)
  check_tower(got.text, want.text_model_output.pooler_output, clip.text_hidden_states,
              want.text_model_output.hidden_states)
  assert rel_err(got.logits_per_image, want.logits_per_image) <= 1e-5
