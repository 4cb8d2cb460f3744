"""CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision"), matching Hugging Face `transformers.CLIPModel`.

A `Clip` is two `PureModel`s and a temperature:

  clip.image  ViT tower on `PatchImages`    [B, H, W, 3] in [0, 1] -> features [B, E]
              (`CLIPVisionModel` + `visual_projection`; taps 'embed', 'block0'.. 'block{L-1}'
              = its L + 1 `hidden_states` [B, 1 + N, D], then 'features')
  clip.text   causal TextTransformer on `Tokens`  {'input_ids', 'attention_mask'} [B, T]
              -> features [B, E]  (`CLIPTextModel` + `text_projection`; taps likewise)
  variables   {'image': image variables, 'text': text variables, 'logit_scale': f32 []}

Features are the projected, unnormalised embeddings of transformers 5's
`get_image_features` / `get_text_features`; `apply` (= `CLIPModel.forward`) normalises them
into `image_embeds` / `text_embeds` and returns `logits_per_image` = exp(logit_scale) x
cosine similarities.

Images are RGB pixels in [0, 1]; the image tower subtracts `config.image_mean` and divides
by `config.image_std` (OpenAI's by default), which transformers leaves to
`CLIPImageProcessor`: feed it `(x - mean) / std` for the same result. Resizing and
cropping are the caller's. Images of any size whose height and width are multiples of the
patch size are accepted: the position embeddings are interpolated with PyTorch's bicubic
kernel (transformers' `interpolate_pos_encoding=True`; nothing changes at the native size).

The image encoder alone, as the pure function feature attacks (PRM) take:

    >>> clip = Clip(VIT_B16)
    >>> variables = clip.init(jax.random.key(0))        # or clip_weights.load_clip(folder)
    >>> encode = image_encoder(clip)                      # all L + 1 hidden states
    >>> out = encode(variables['image'], x)              # Outputs(taps, features [B, E])
    >>> tokens = patch_tokens(out.taps[clip.image_hidden_states[-1]])   # [B, N, D]

Configuration: `ClipConfig` (the fields of Hugging Face's config.json that shape the
model), `ClipConfig.from_hf_config`, and the presets `VIT_B16`, `VIT_L14` (OpenAI's) and
`TINY` (tests and offline runs).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib import validate
from lib.contract import Outputs, Rules
from lib.models.core import PureModel, Variables
from lib.models.inputs import Tokens
from lib.models.text import TextTransformer
from lib.models.vit import PatchImages, ViT, check_pixel_norm

Array = jax.Array
ACTIVATIONS = ('quick_gelu', 'gelu')   # transformers' 'gelu' is the exact (erf) GELU
# OpenAI's image normalisation (CLIPImageProcessor's image_mean / image_std), RGB.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """The options that shape a CLIP model (Hugging Face `CLIPConfig` field names in brackets).

  Attributes:
    image_size: native side S of square images [vision_config.image_size].
    patch_size: patch side P [vision_config.patch_size].
    vision_hidden_size: vision width D [vision_config.hidden_size].
    vision_layers: vision blocks L [vision_config.num_hidden_layers].
    vision_heads: [vision_config.num_attention_heads].
    vision_intermediate_size: vision MLP width [vision_config.intermediate_size].
    vocab_size: token ids V [text_config.vocab_size].
    max_position_embeddings: context length T_max [text_config.max_position_embeddings].
    text_hidden_size: [text_config.hidden_size].
    text_layers: [text_config.num_hidden_layers].
    text_heads: [text_config.num_attention_heads].
    text_intermediate_size: [text_config.intermediate_size].
    eos_token_id: end-of-text id [text_config.eos_token_id]; 2 (OpenAI's legacy value)
      pools at the largest id, anything else at the first `eos_token_id`.
    projection_dim: embedding width E [projection_dim].
    hidden_act: 'quick_gelu' or 'gelu' (exact), both towers [*.hidden_act].
    layer_norm_eps: both towers [*.layer_norm_eps].
    logit_scale_init_value: initial log temperature [logit_scale_init_value].
    num_channels: image channels [vision_config.num_channels].
    image_mean: per-channel pixel mean [preprocessor_config.json image_mean].
    image_std: per-channel pixel standard deviation [preprocessor_config.json image_std].
  """
  image_size: int
  patch_size: int
  vision_hidden_size: int
  vision_layers: int
  vision_heads: int
  vision_intermediate_size: int
  vocab_size: int
  max_position_embeddings: int
  text_hidden_size: int
  text_layers: int
  text_heads: int
  text_intermediate_size: int
  eos_token_id: int
  projection_dim: int
  hidden_act: str = 'quick_gelu'
  layer_norm_eps: float = 1e-5
  logit_scale_init_value: float = 2.6592
  num_channels: int = 3
  image_mean: tuple[float, ...] = CLIP_MEAN
  image_std: tuple[float, ...] = CLIP_STD

  def __post_init__(self):
    for field in dataclasses.fields(self):
      if field.type == 'int':   # annotations are strings (from __future__ import annotations)
        validate.check_int(getattr(self, field.name), field.name,
                           minimum=0 if field.name == 'eos_token_id' else 1)
    validate.check_choice(self.hidden_act, ACTIVATIONS, 'hidden_act')
    validate.check_number(self.layer_norm_eps, 'layer_norm_eps', low=0.0)
    validate.check_number(self.logit_scale_init_value, 'logit_scale_init_value')
    if self.image_size % self.patch_size:
      raise ValueError(f'patch_size={self.patch_size} must divide image_size={self.image_size}.')
    mean, std = check_pixel_norm(self.image_mean, self.image_std, self.num_channels,
                                 ('image_mean', 'image_std'))
    object.__setattr__(self, 'image_mean', mean)
    object.__setattr__(self, 'image_std', std)
    if self.eos_token_id >= self.vocab_size:
      raise ValueError(f'eos_token_id={self.eos_token_id} must be below '
                       f'vocab_size={self.vocab_size}.')

  @property
  def text_pool(self) -> str:
    """'argmax' for the legacy `eos_token_id == 2`, else 'eos' (as transformers decides)."""
    return 'argmax' if self.eos_token_id == 2 else 'eos'

  @classmethod
  def from_hf_config(cls, config: Mapping[str, Any] | str | os.PathLike,
                     preprocessor: Mapping[str, Any] | str | os.PathLike | None = None
                     ) -> ClipConfig:
    """The config of a Hugging Face `CLIPModel` (its config.json, as a dict or a path).

    `preprocessor` (its preprocessor_config.json, optional) gives `image_mean` and
    `image_std` (`do_normalize: false` means none); without it they are OpenAI's.

    Keys the file omits take transformers' defaults (`CLIPTextConfig`, `CLIPVisionConfig`),
    and an old file's `text_config_dict` / `vision_config_dict` wins over `text_config` /
    `vision_config`, as in `CLIPConfig.__init__`. Dropout rates and initialiser settings
    are ignored (they do not change evaluation).

    Raises:
      ValueError: the file is missing or not JSON, `model_type` is not 'clip', an option
        this implementation does not support (an activation other than quick_gelu/gelu,
        towers with different activations or layer-norm epsilons), or a value of the
        wrong type.
    """
    config = _read_json(config) if isinstance(config, (str, os.PathLike)) else dict(config)
    norm = _pixel_norm_of(preprocessor)
    if config.get('model_type', 'clip') != 'clip':
      raise ValueError(f"config has model_type={config['model_type']!r}; expected 'clip' "
                       '(a CLIPModel config.json).')
    text = _tower_config(config, 'text', _HF_TEXT_DEFAULTS)
    vision = _tower_config(config, 'vision', _HF_VISION_DEFAULTS)
    for key in ('hidden_act', 'layer_norm_eps'):
      if text[key] != vision[key]:
        raise ValueError(f'config has text_config.{key}={text[key]!r} and vision_config.{key}='
                         f'{vision[key]!r}; towers with different {key} are not supported.')
    if text['hidden_act'] not in ACTIVATIONS:
      raise ValueError(f"config has hidden_act={text['hidden_act']!r}, which is not supported; "
                       f'expected one of {list(ACTIVATIONS)}.')
    return cls(
        image_size=vision['image_size'], patch_size=vision['patch_size'],
        vision_hidden_size=vision['hidden_size'], vision_layers=vision['num_hidden_layers'],
        vision_heads=vision['num_attention_heads'],
        vision_intermediate_size=vision['intermediate_size'],
        num_channels=vision['num_channels'], vocab_size=text['vocab_size'],
        max_position_embeddings=text['max_position_embeddings'],
        text_hidden_size=text['hidden_size'], text_layers=text['num_hidden_layers'],
        text_heads=text['num_attention_heads'], text_intermediate_size=text['intermediate_size'],
        eos_token_id=text['eos_token_id'], projection_dim=config.get('projection_dim', 512),
        hidden_act=text['hidden_act'], layer_norm_eps=float(text['layer_norm_eps']),
        logit_scale_init_value=float(config.get('logit_scale_init_value', 2.6592)), **norm)


# transformers 5's defaults for keys a config.json may omit.
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8,
                         max_position_embeddings=77, hidden_act='quick_gelu',
                         layer_norm_eps=1e-5, eos_token_id=49407)
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, num_channels=3, image_size=224,
                           patch_size=32, hidden_act='quick_gelu', layer_norm_eps=1e-5)


def _tower_config(config: Mapping[str, Any], tower: str,
                  defaults: dict[str, Any]) -> dict[str, Any]:
  """A tower's options as transformers resolves them: defaults, then `{tower}_config`, or
  (if present) defaults then `{tower}_config_dict`."""
  legacy = config.get(f'{tower}_config_dict')
  given = legacy if legacy is not None else config.get(f'{tower}_config')
  return {**defaults, **(given or {})}


def _pixel_norm_of(preprocessor: Mapping[str, Any] | str | os.PathLike | None
                   ) -> dict[str, Any]:
  """{'image_mean', 'image_std'} from a preprocessor_config.json ({} without one)."""
  if preprocessor is None:
    return {}
  if isinstance(preprocessor, (str, os.PathLike)):
    preprocessor = _read_json(preprocessor)
  if not preprocessor.get('do_normalize', True):
    return {'image_mean': (0.0, 0.0, 0.0), 'image_std': (1.0, 1.0, 1.0)}
  return {key: tuple(preprocessor[key]) for key in ('image_mean', 'image_std')
          if key in preprocessor}


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
  if not os.path.isfile(path):
    raise ValueError(f'config={str(path)!r} is not a file; expected a config.json.')
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'config={str(path)!r} is not valid JSON: {e}.') from e


# OpenAI's ViT-B/16 (openai/clip-vit-base-patch16 on the Hugging Face hub).
VIT_B16 = ClipConfig(image_size=224, patch_size=16, vision_hidden_size=768, vision_layers=12,
                     vision_heads=12, vision_intermediate_size=3072, vocab_size=49408,
                     max_position_embeddings=77, text_hidden_size=512, text_layers=12,
                     text_heads=8, text_intermediate_size=2048, eos_token_id=2,
                     projection_dim=512)
# OpenAI's ViT-L/14 (openai/clip-vit-large-patch14), PRM's second surrogate.
VIT_L14 = ClipConfig(image_size=224, patch_size=14, vision_hidden_size=1024, vision_layers=24,
                     vision_heads=16, vision_intermediate_size=4096, vocab_size=49408,
                     max_position_embeddings=77, text_hidden_size=768, text_layers=12,
                     text_heads=12, text_intermediate_size=3072, eos_token_id=2,
                     projection_dim=768)
# A few-second model for tests and offline runs on 32x32 images; with a trained vocabulary,
# replace vocab_size and eos_token_id by the tokenizer's (`lib.text.clip_tokenizer`).
TINY = ClipConfig(image_size=32, patch_size=8, vision_hidden_size=64, vision_layers=2,
                  vision_heads=4, vision_intermediate_size=128, vocab_size=1024,
                  max_position_embeddings=32, text_hidden_size=64, text_layers=2,
                  text_heads=4, text_intermediate_size=128, eos_token_id=1023,
                  projection_dim=64)


def image_tower(config: ClipConfig, *, name: str = 'clip_image') -> PureModel:
  """The vision tower with its projection: `CLIPVisionModelWithProjection` as a PureModel."""
  def build(rngs):
    return ViT(num_classes=None, in_channels=config.num_channels, image_size=config.image_size,
               patch_size=config.patch_size, dim=config.vision_hidden_size,
               depth=config.vision_layers, heads=config.vision_heads,
               mlp_dim=config.vision_intermediate_size, activation=config.hidden_act,
               epsilon=config.layer_norm_eps, pre_norm=True, patch_bias=False,
               projection_dim=config.projection_dim, interpolate_pos_encoding=True,
               pixel_mean=config.image_mean, pixel_std=config.image_std, rngs=rngs)
  shape = (config.image_size, config.image_size, config.num_channels)
  return PureModel(name, build, PatchImages(shape, config.patch_size))


def text_tower(config: ClipConfig, *, name: str = 'clip_text') -> PureModel:
  """The text tower with its projection: `CLIPTextModelWithProjection` as a PureModel."""
  def build(rngs):
    return TextTransformer(
        num_classes=None, vocab_size=config.vocab_size,
        max_len=config.max_position_embeddings, dim=config.text_hidden_size,
        depth=config.text_layers, heads=config.text_heads,
        mlp_dim=config.text_intermediate_size, norm_first=True, causal=True,
        pool=config.text_pool, eos_token_id=config.eos_token_id,
        projection_dim=config.projection_dim, activation=config.hidden_act,
        epsilon=config.layer_norm_eps, rngs=rngs)
  return PureModel(name, build, Tokens(config.max_position_embeddings, config.vocab_size))


def hidden_state_names(num_layers: int) -> tuple[str, ...]:
  """The taps of a tower's L + 1 hidden states: ('embed', 'block0', ..., 'block{L-1}')."""
  return ('embed', *(f'block{i}' for i in range(num_layers)))


class Clip:
  """CLIP's two towers and its temperature (see the module docstring).

  Args:
    config: the architecture.

  Attributes:
    config: as given.
    image: the image tower (`PureModel` on `PatchImages`).
    text: the text tower (`PureModel` on `Tokens`).
    image_hidden_states: the image tower's hidden-state tap names, in order (L + 1).
    text_hidden_states: the text tower's likewise.
    abstract_variables: `jax.ShapeDtypeStruct` tree of `init`'s result.
  """

  def __init__(self, config: ClipConfig):
    if not isinstance(config, ClipConfig):
      raise ValueError(f'config must be a ClipConfig; got {type(config).__name__}.')
    self.config = config
    self.image = image_tower(config)
    self.text = text_tower(config)
    self.image_hidden_states = hidden_state_names(config.vision_layers)
    self.text_hidden_states = hidden_state_names(config.text_layers)
    self.abstract_variables = {'image': self.image.abstract_variables,
                               'text': self.text.abstract_variables,
                               'logit_scale': jax.ShapeDtypeStruct((), np.float32)}

  def __repr__(self) -> str:
    return f'Clip({self.config})'

  def init(self, key: Array) -> Variables:
    """Fresh variables {'image', 'text', 'logit_scale'} from a typed PRNG key."""
    validate.check_key(key)
    image_key, text_key = jax.random.split(key)
    return {'image': self.image.init(image_key), 'text': self.text.init(text_key),
            'logit_scale': jnp.asarray(self.config.logit_scale_init_value, jnp.float32)}


def _check_variables(variables: Any) -> None:
  if not isinstance(variables, Mapping) or set(variables) != {'image', 'text', 'logit_scale'}:
    got = sorted(variables) if isinstance(variables, Mapping) else type(variables).__name__
    raise ValueError("variables must be a dict with keys ['image', 'logit_scale', 'text'] "
                     f'(from Clip.init or clip_weights.load_clip); got {got}.')


def encode_image(clip: Clip, variables: Variables, images: Array) -> Array:
  """[B, H, W, C] RGB images in [0, 1] -> [B, E] embeddings.

  transformers' `CLIPModel.get_image_features(pixel_values, interpolate_pos_encoding=True)`:
  projected, not normalised.
  """
  _check_variables(variables)
  return clip.image.apply(variables['image'], images).features


def encode_text(clip: Clip, variables: Variables, tokens: Mapping[str, Array]) -> Array:
  """{'input_ids', 'attention_mask'} [B, T] -> [B, E] embeddings (`get_text_features`)."""
  _check_variables(variables)
  return clip.text.apply(variables['text'], tokens).features


def normalize(embeds: Array) -> Array:
  """[B, E] -> [B, E] with unit L2 rows (`embeds / ||embeds||`, as transformers divides)."""
  return embeds / jnp.linalg.norm(embeds, axis=-1, keepdims=True)


def contrastive_logits(image_embeds: Array, text_embeds: Array, logit_scale: Array) -> Array:
  """logits_per_image [Bi, Bt] = exp(logit_scale) * cos(image_i, text_j).

  Args:
    image_embeds: [Bi, E], normalised here (normalised inputs stay as they are).
    text_embeds: [Bt, E], likewise.
    logit_scale: [] the log temperature (`variables['logit_scale']`).

  Returns:
    [Bi, Bt]; its transpose is transformers' `logits_per_text`.
  """
  return jnp.exp(logit_scale) * normalize(image_embeds) @ normalize(text_embeds).T


def clip_loss(logits_per_image: Array) -> Array:
  """The symmetric InfoNCE loss of CLIP pretraining (transformers' `clip_loss`).

  Args:
    logits_per_image: [B, B] logits of matched pairs (image i goes with text i).

  Returns:
    [] mean of the image->text and text->image cross-entropies with targets arange(B).
  """
  if logits_per_image.ndim != 2 or logits_per_image.shape[0] != logits_per_image.shape[1]:
    raise ValueError('logits_per_image must be a square [B, B] matrix of matched pairs; got '
                     f'shape {tuple(logits_per_image.shape)}.')
  labels = jnp.arange(logits_per_image.shape[0])
  ce = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return (ce(logits_per_image) + ce(logits_per_image.T)) / 2


class ClipOutputs(NamedTuple):
  """What `apply` returns (transformers' `CLIPOutput`, without the loss).

  Attributes:
    logits_per_image: [Bi, Bt].
    logits_per_text: [Bt, Bi].
    image_embeds: [Bi, E] normalised.
    text_embeds: [Bt, E] normalised.
    image: the image tower's `Outputs` (taps = hidden states, features unnormalised).
    text: the text tower's `Outputs`.
  """
  logits_per_image: Array
  logits_per_text: Array
  image_embeds: Array
  text_embeds: Array
  image: Outputs
  text: Outputs


def apply(clip: Clip, variables: Variables, images: Array,
          tokens: Mapping[str, Array]) -> ClipOutputs:
  """Both towers and the logits: transformers' `CLIPModel.forward` (with hidden states).

  Args:
    clip: the model.
    variables: {'image', 'text', 'logit_scale'}.
    images: [Bi, H, W, C] RGB in [0, 1] (normalised inside), H and W multiples of the
      patch size.
    tokens: {'input_ids', 'attention_mask'} [Bt, T], T <= max_position_embeddings.
  """
  _check_variables(variables)
  image = clip.image.apply(variables['image'], images)
  text = clip.text.apply(variables['text'], tokens)
  logits = contrastive_logits(image.features, text.features, variables['logit_scale'])
  return ClipOutputs(logits, logits.T, normalize(image.features), normalize(text.features),
                     image, text)


def image_encoder(clip: Clip, *, taps: Sequence[str] | None = None
                  ) -> Callable[..., Outputs]:
  """The image tower as a pure `apply(params, x) -> Outputs`, for feature attacks (PRM).

  Args:
    clip: the model.
    taps: which hidden states to return (names from `clip.image_hidden_states`), or None
      for all L + 1 of them (PRM's features: the pre-LN output and every block's).

  Returns:
    A pure function `encode(params, x, *, key=None, perturb=None, rules=None)` of the image
    variables (`variables['image']`) and images [B, H, W, C] returning
    `Outputs(logits=None, taps={name: [B, 1 + N, D]}, features=[B, E])` (features:
    projected, unnormalised); the keywords act as in `PureModel.apply` (`perturb` adds to
    any tap of `clip.image.tap_names`). The same (clip, taps) gives the same function
    object, so a `jax.jit` of it is compiled once per image shape.

  Raises:
    ValueError: `taps` names a tap the image tower does not have (the valid names are
      listed).
  """
  names = clip.image_hidden_states if taps is None else tuple(taps)
  unknown = [t for t in names if t not in clip.image_hidden_states]
  if unknown or not names:
    raise ValueError(f'taps={list(names)} must be a non-empty subset of the image hidden states '
                     f'{list(clip.image_hidden_states)}; unknown: {unknown}.')
  return _image_encoder(clip, names)


@functools.lru_cache(maxsize=32)
def _image_encoder(clip: Clip, names: tuple[str, ...]) -> Callable[..., Outputs]:
  """One function object per (model, taps), so `jax.jit` of it compiles once per shape."""

  def encode(params: Variables, x: Array, *, key: Array | None = None,
             perturb: Mapping[str, Array] | None = None, rules: Rules | None = None) -> Outputs:
    out = clip.image.apply(params, x, key=key, perturb=perturb, rules=rules)
    return Outputs(None, {t: out.taps[t] for t in names}, out.features)

  return encode


def patch_tokens(hidden_state: Array) -> Array:
  """A vision hidden state [B, 1 + N, D] -> its patch tokens [B, N, D] (class token dropped).

  N = (H / P) * (W / P) in row-major order; reshape to [B, H / P, W / P, D] for dense heads.
  """
  if hidden_state.ndim != 3 or hidden_state.shape[1] < 2:
    raise ValueError('hidden_state must be [B, 1 + N, D] with N >= 1 patch tokens; got shape '
                     f'{tuple(hidden_state.shape)}.')
  return hidden_state[:, 1:]
