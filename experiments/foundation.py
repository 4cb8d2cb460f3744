"""The offline foundation: a small CLIP pretrained contrastively on the `shapes` captions.

The inherited-vulnerability studies (PRM, Hu et al. 2024) attack an open foundation encoder
and measure the damage on models built on it. Offline, the foundation is pretrained here:

1. A CLIP-layout BPE vocabulary is trained on the train-split captions
   (`lib.text.clip_tokenizer.train_clip_tokenizer`) and saved in `workdir/foundation/tokenizer`
   (vocab.json + merges.txt), so a relaunch reads the same vocabulary back.
2. A `lib.models.clip.Clip` of `config.model`'s size is trained on (image, caption) pairs
   with the symmetric InfoNCE loss of CLIP (Radford et al. 2021, Fig. 3), AdamW with linear
   warmup and cosine decay, the log temperature clipped at ln 100 as in CLIP. The loop is
   `lib.train.run_loop`: orbax checkpoints in `workdir/foundation`, resumed exactly after a
   kill; a relaunch under another config is refused (`lib.run_config`).
3. Zero-shot classification of the test split's 8 shape kinds measures the result: each
   class embedding is the prompt ensemble of `config.templates` (CLIP §3.1.4: normalised
   prompt embeddings averaged, normalised again; `lib.downstream.classification`).

With `config.clip_path` set, a Hugging Face CLIP folder (config.json, model.safetensors,
vocab.json, merges.txt; e.g. openai/clip-vit-base-patch16) is loaded instead
(`lib.models.load_clip`, `ClipTokenizer.from_folder`) and nothing is trained.

**Duplicate captions.** Scenes with the same class object, distractors and background share
a caption ("a red star on a striped background"): about 9 of 128 examples of a batch share
theirs with another, and half the texts are short phrases ("a red star", below), of which
a batch holds many duplicates. Standard InfoNCE needs no change for them. Identical
captions have identical text embeddings, so their logit columns (image -> text) and rows
(text -> image) are the same function of the parameters; CLIP's loss with one-hot targets
and the multi-positive InfoNCE with targets uniform over identical captions (SupCon's
L_out, Khosla et al. 2020, Eq. 2, on the cross-modal logits) then have the same value and
the same gradient: in every row the targets of a group of tied columns sum to 1 either way,
and the tied rows' targets sum to the same vector. A batch of k identical captions only
raises the loss floor by log k. `tests/test_foundation.py` checks the identity; two
runlocal runs with each loss (texts: caption or 'a <kind>') ended within float rounding of
each other (zero-shot accuracy 0.154 and 0.152, final loss 3.05 and 3.06). The step's
'accuracy' counts a retrieved duplicate caption as right.

**Short texts.** Within a batch, most captions differ in colour, background or
distractors, so matching them barely needs the shape; a fraction `short_caption_rate` of
the texts (drawn from (seed, step)) is the class object's phrase alone ("a red star"),
whose in-batch negatives are mostly other shapes of that colour. Measured (runlocal at
learning rate 2e-3, zero-shot with the colour prompts): 0.16 with captions only (4000
scenes), 0.21 with half of the texts short (10000 scenes), 0.18 with 'a <kind>' as the
short text instead.

This module is a stage, not a study: `pretrain(config, workdir) -> Foundation` is what the
inherited-vulnerability studies call (`experiments.foundation_targets`). Variants:

  runlocal   a 2-layer, width-96 CLIP on 32 px scenes, 600 steps of 128 pairs: zero-shot
             accuracy 0.23 (chance 0.125; 0.24 in a run whose loss summed the same terms
             in another order), 150 CPU-seconds (335 s wall on 2 cores shared by ~10 jobs)
  (empty)    OpenAI's ViT-B/16 from `config.clip_path` at 224 px (download it first:
             `huggingface-cli download openai/clip-vit-base-patch16 --local-dir
             ~/models/clip-vit-base-patch16`); `--config.clip_path=` pretrains instead

    >>> c = foundation.get_config('runlocal')
    >>> f = foundation.pretrain(c, '/tmp/vuln')     # resumes from /tmp/vuln/foundation
    >>> f.zero_shot                                  # accuracy on the 8 shape kinds
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from lib import data as data_lib
from lib import models, run_config, train, validate
from lib.data import ArrayDataset
from lib.downstream import classification as zero_shot_lib
from lib.downstream.features import TapEncoder
from lib.models import clip as clip_lib
from lib.report.process import is_writer
from lib.text.clip_tokenizer import ClipTokenizer, train_clip_tokenizer

Array = jax.Array
# Only evaluation reads these: a relaunch may change them (see lib/run_config.py).
RESUMABLE_KEYS = ('templates', 'num_test')
MAX_LOGIT_SCALE = math.log(100.0)   # CLIP clips exp(logit_scale) at 100
# Prompts in the short texts' own words, one per colour of the `shapes` palette (runlocal's
# prompt ensemble; measured better than one per background: 0.24 against 0.21).
SHAPES_TEMPLATES = tuple(f'a {colour} {{}}' for colour in (
    'red', 'green', 'blue', 'yellow', 'magenta', 'cyan', 'white', 'orange'))
# For a foundation that never saw `shapes` captions (OpenAI's weights).
PHOTO_TEMPLATES = ('a photo of a {}.', 'a drawing of a {}.', 'a photo of a {} shape.',
                   'an illustration of a {}.', 'a {} shape.')
MODEL_INTS = ('patch_size', 'vision_hidden_size', 'vision_layers', 'vision_heads',
              'vision_intermediate_size', 'text_hidden_size', 'text_layers', 'text_heads',
              'text_intermediate_size', 'projection_dim')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """Config for `arg`: 'runlocal', or '' for OpenAI's ViT-B/16 from `clip_path`."""
  variants = run_config.variants(arg, ('runlocal',))
  c = ml_collections.ConfigDict()
  c.clip_path = '~/models/clip-vit-base-patch16'   # '' = pretrain here
  c.dataset = 'shapes'
  c.image_size = 224
  c.data_seed = 0        # generator seed of the scenes
  c.num_train = 10000    # train scenes (captions of the vocabulary and of pretraining)
  c.num_test = 2000      # test scenes of the zero-shot accuracy
  c.vocab_size = 1024    # largest BPE vocabulary trained (shapes captions yield ~610)
  c.context_length = 77  # tokens per caption = the text tower's positions
  c.model = ml_collections.ConfigDict(dict(   # a ViT-S/16-like pair, if pretrained at 224 px
      patch_size=16, vision_hidden_size=384, vision_layers=6, vision_heads=6,
      vision_intermediate_size=1536, text_hidden_size=256, text_layers=4, text_heads=4,
      text_intermediate_size=1024, projection_dim=256, hidden_act='quick_gelu'))
  c.short_caption_rate = 0.5   # texts that are the class object's phrase alone
  c.learning_rate = 5e-4
  c.weight_decay = 0.1
  c.warmup_steps = 500
  c.num_steps = 10000
  c.batch_size = 256
  c.seed = 0             # initialisation and data order
  c.templates = PHOTO_TEMPLATES
  c.checkpoint_every = 500
  c.log_every = 50
  if 'runlocal' in variants:
    # Tuned on 2 shared cores (zero-shot accuracy, 600 steps of 128, colour prompts): width
    # 96 with patch 8 0.21 at learning rate 2e-3, 0.24 at 5e-3; width 64 with patch 4 (1.7x
    # the time) 0.23 at 2e-3; 1200 steps of 64 at 2e-3 0.24.
    c.clip_path, c.image_size, c.context_length = '', 32, 24
    c.model = ml_collections.ConfigDict(dict(
        patch_size=8, vision_hidden_size=96, vision_layers=2, vision_heads=4,
        vision_intermediate_size=192, text_hidden_size=96, text_layers=2, text_heads=4,
        text_intermediate_size=192, projection_dim=96, hidden_act='quick_gelu'))
    c.learning_rate, c.warmup_steps, c.num_steps, c.batch_size = 5e-3, 50, 600, 128
    c.templates = SHAPES_TEMPLATES
    c.checkpoint_every, c.log_every = 100, 20
  return c


_INTS = {'image_size': 32, 'data_seed': 0, 'num_train': 2, 'num_test': 1, 'vocab_size': 514,
         'context_length': 2, 'warmup_steps': 0, 'num_steps': 1, 'batch_size': 2, 'seed': 0,
         'checkpoint_every': 1, 'log_every': 1}  # field -> smallest allowed value


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks every field of `c` before any work (a derived config's extra fields are ignored).

  With `clip_path` set, the folder's files and its config.json are checked too (cheap: the
  weights are not read).

  Raises:
    ValueError: naming `config.<key>` and what was expected.
  """
  validate.check_choice(c.dataset, ('shapes',), 'config.dataset')
  for name, minimum in _INTS.items():
    validate.check_int(c[name], f'config.{name}', minimum=minimum)
  if c.image_size % 8 or c.image_size > 256:
    raise ValueError(f'config.image_size must be a multiple of 8 in [32, 256] (shapes scenes); '
                     f'got {c.image_size}.')
  if c.batch_size > c.num_train:
    raise ValueError(f'config.batch_size={c.batch_size} exceeds config.num_train='
                     f'{c.num_train} (a batch holds distinct scenes).')
  if c.warmup_steps >= c.num_steps:
    raise ValueError(f'config.warmup_steps must be below config.num_steps={c.num_steps}; got '
                     f'{c.warmup_steps}.')
  validate.check_number(c.learning_rate, 'config.learning_rate', low=0.0)
  validate.check_positive(c.learning_rate, 'config.learning_rate')
  validate.check_number(c.weight_decay, 'config.weight_decay', low=0.0)
  validate.check_number(c.short_caption_rate, 'config.short_caption_rate', low=0.0, high=1.0)
  _check_templates(c.templates)
  if not isinstance(c.clip_path, str):
    raise ValueError(f'config.clip_path must be a string (a folder, or "" to pretrain); got '
                     f'{c.clip_path!r}.')
  if c.clip_path:
    _check_clip_folder(c)
  else:
    model_config(c, vocab_size=c.vocab_size, eos_token_id=c.vocab_size - 1)


def _check_templates(templates: Any) -> None:
  if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
    raise ValueError(f"config.templates must be a non-empty tuple of prompts such as "
                     f"('a photo of a {{}}.',); got {templates!r}.")
  for i, template in enumerate(templates):
    if not isinstance(template, str) or template.count('{}') != 1:
      raise ValueError(f"config.templates[{i}] must be a string with one '{{}}' (the class "
                       f'name); got {template!r}.')


def _check_clip_folder(c: ml_collections.ConfigDict) -> None:
  """The files `load` reads exist, and the images fit the model's patch size."""
  folder = os.path.expanduser(c.clip_path)
  if not os.path.isdir(folder):
    raise ValueError(f'config.clip_path={c.clip_path!r} is not a folder; expected a Hugging '
                     'Face CLIP folder (config.json, model.safetensors, vocab.json, merges.txt), '
                     'or "" to pretrain one here.')
  weights = ('model.safetensors', 'model.safetensors.index.json')
  missing = [f for f in ('config.json', 'vocab.json', 'merges.txt')
             if not os.path.isfile(os.path.join(folder, f))]
  if not any(os.path.isfile(os.path.join(folder, f)) for f in weights):
    missing.append('model.safetensors')
  if missing:
    raise ValueError(f'config.clip_path={c.clip_path!r} lacks {missing}; a Hugging Face CLIP '
                     'folder holds config.json, model.safetensors, vocab.json and merges.txt.')
  try:
    patch = clip_lib.ClipConfig.from_hf_config(os.path.join(folder, 'config.json')).patch_size
  except ValueError as e:
    raise ValueError(f'config.clip_path={c.clip_path!r}: {e}') from None
  if c.image_size % patch:
    raise ValueError(f'config.image_size={c.image_size} must be a multiple of the patch size '
                     f'{patch} of the model in config.clip_path.')


def model_config(c: ml_collections.ConfigDict, *, vocab_size: int,
                 eos_token_id: int) -> clip_lib.ClipConfig:
  """The `ClipConfig` pretrained for config `c` with a vocabulary of `vocab_size` ids.

  Raises:
    ValueError: a bad `config.model` field (named), or a patch size that does not divide
      `config.image_size`.
  """
  m = c.model
  if not isinstance(m, ml_collections.ConfigDict):
    raise ValueError(f'config.model must be a ConfigDict of ClipConfig fields; got {m!r}.')
  unknown = set(m) - {*MODEL_INTS, 'hidden_act'}
  if unknown:
    raise ValueError(f'config.model has unknown fields {sorted(unknown)}; expected '
                     f'{[*MODEL_INTS, "hidden_act"]}.')
  for name in MODEL_INTS:
    validate.check_int(m.get(name), f'config.model.{name}', minimum=1)
  for tower in ('vision', 'text'):
    width, heads = m[f'{tower}_hidden_size'], m[f'{tower}_heads']
    if width % heads:
      raise ValueError(f'config.model.{tower}_heads={heads} must divide '
                       f'config.model.{tower}_hidden_size={width}.')
  validate.check_choice(m.get('hidden_act'), clip_lib.ACTIVATIONS, 'config.model.hidden_act')
  if c.image_size % m.patch_size:
    raise ValueError(f'config.model.patch_size={m.patch_size} must divide '
                     f'config.image_size={c.image_size}.')
  return clip_lib.ClipConfig(image_size=c.image_size, vocab_size=vocab_size,
                             max_position_embeddings=c.context_length,
                             eos_token_id=eos_token_id, **m.to_dict())


class Foundation(NamedTuple):
  """A CLIP ready for downstream targets.

  Attributes:
    clip: the model (`lib.models.clip.Clip`).
    variables: its variables {'image', 'text', 'logit_scale'}.
    tokenizer: the `ClipTokenizer` of its text tower.
    zero_shot: top-1 zero-shot accuracy on the `shapes` test split (chance 1/8).
    steps: pretraining steps taken (0 for loaded weights).
    source: 'pretrained' or the folder the weights came from.
    encode: the image encoder as `lib.downstream` heads take it (`TapEncoder` over
      `clip.image.apply`: patch tokens of the last block [B, h, w, D], projected embedding
      [B, E]); its params are `variables['image']`.
    encode_text: texts (list of N strings) -> [N, E] text embeddings (projected, not
      normalised).
    class_embeddings: [8, E] zero-shot class embeddings of the shape kinds (prompt ensemble
      of `templates`, unit rows).
    templates: the prompt templates.
  """
  clip: clip_lib.Clip
  variables: Any
  tokenizer: ClipTokenizer
  zero_shot: float
  steps: int
  source: str
  encode: TapEncoder
  encode_text: Callable[[Sequence[str]], Array]
  class_embeddings: Array
  templates: tuple[str, ...]


def same_caption(input_ids: Array) -> Array:
  """bool [B, B]: whether captions i and j have identical token ids [B, T]."""
  return jnp.all(input_ids[:, None, :] == input_ids[None, :, :], axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_state(clip: clip_lib.Clip, optimizer: optax.GradientTransformation,
                key: Array) -> train.TrainState:
  variables = clip.init(key)
  return train.TrainState(jnp.zeros((), jnp.int32), variables, optimizer.init(variables))


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def train_step(clip: clip_lib.Clip, optimizer: optax.GradientTransformation,
               state: train.TrainState,
               batch: dict[str, Array]) -> tuple[train.TrainState, dict[str, Array]]:
  """One contrastive step on a batch {'image', 'input_ids', 'attention_mask'} (pure).

  Returns:
    (new state, {'loss', 'accuracy' (image->text top-1, a duplicate caption counting as
    right), 'temperature' (exp logit_scale)}).
  """
  tokens = {k: batch[k] for k in ('input_ids', 'attention_mask')}

  def loss_fn(variables):
    logits = clip_lib.apply(clip, variables, batch['image'], tokens).logits_per_image
    return clip_lib.clip_loss(logits), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.variables)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.variables)
  variables = optax.apply_updates(state.variables, updates)
  variables['logit_scale'] = jnp.minimum(variables['logit_scale'], MAX_LOGIT_SCALE)
  hits = jnp.take_along_axis(same_caption(batch['input_ids']),
                             jnp.argmax(logits, axis=1)[:, None], axis=1)
  metrics = {'loss': loss, 'accuracy': hits.mean(),
             'temperature': jnp.exp(variables['logit_scale'])}
  return train.TrainState(state.step + 1, variables, opt_state), metrics


def load_split(c: ml_collections.ConfigDict, split: str) -> ArrayDataset:
  """The configured `shapes` split ('train': `num_train` scenes, 'test': `num_test`)."""
  size = c.num_train if split == 'train' else c.num_test
  return data_lib.get_dataset(c.dataset, split, image_size=c.image_size, seed=c.data_seed,
                              num_examples=size)


def object_phrase(caption: str) -> str:
  """The class object's phrase of a `shapes` caption, which names it first.

  'a red star, a blue bar and a white dot on a striped background' -> 'a red star'.
  """
  return caption.split(' on a ')[0].split(', ')[0].split(' and ')[0]


def captioned(dataset: ArrayDataset, tokenizer: ClipTokenizer) -> ArrayDataset:
  """The images and labels of `dataset` with two texts per image as token ids and masks:
  the caption ('input_ids', 'attention_mask') and its class object's phrase ('short_ids',
  'short_mask')."""
  captions = dataset.arrays['caption']
  full, short = tokenizer(captions), tokenizer([object_phrase(t) for t in captions])
  arrays = {'image': dataset.arrays['image'], 'label': dataset.arrays['label'], **full,
            'short_ids': short['input_ids'], 'short_mask': short['attention_mask']}
  return ArrayDataset(name=dataset.name, split=dataset.split,
                      class_names=dataset.class_names, arrays=arrays)


def pair_batch(pairs: ArrayDataset, step: int, *, batch_size: int, seed: int,
               short_rate: float) -> dict[str, Array]:
  """The batch of `step`: {'image', 'input_ids', 'attention_mask'}, a fraction
  `short_rate` of the texts (drawn from (seed, step)) the class object's phrase instead of
  the caption."""
  batch = data_lib.batch_at(pairs, step, batch_size=batch_size, seed=seed)
  # Stream [seed, 1, step]: apart from batch_at's [seed, epoch] order.
  short = np.random.default_rng([seed, 1, step]).random(batch_size) < short_rate
  pick = lambda a, b: np.where(short[:, None], batch[b], batch[a])
  return {'image': jnp.asarray(batch['image']),
          'input_ids': jnp.asarray(pick('input_ids', 'short_ids')),
          'attention_mask': jnp.asarray(pick('attention_mask', 'short_mask'))}


def _tokenizer(c: ml_collections.ConfigDict, folder: str, captions: np.ndarray) -> ClipTokenizer:
  """The vocabulary saved in `folder` by an earlier launch, else trained on `captions`."""
  if os.path.isfile(os.path.join(folder, 'vocab.json')):
    return ClipTokenizer.from_folder(folder, context_length=c.context_length)
  tokenizer = train_clip_tokenizer(captions, vocab_size=c.vocab_size,
                                   context_length=c.context_length)
  if is_writer():
    tokenizer.save(folder)
  return tokenizer


@functools.partial(jax.jit, static_argnums=0)
def _text_features(clip: clip_lib.Clip, params: Any, tokens: dict[str, Array]) -> Array:
  return clip.text.apply(params, tokens).features


def text_encoder(clip: clip_lib.Clip, variables: Any,
                 tokenizer: ClipTokenizer) -> Callable[[Sequence[str]], Array]:
  """texts (N strings) -> [N, E] text embeddings of `clip` (projected, not normalised)."""
  return lambda texts: _text_features(clip, variables['text'],
                                      jax.tree.map(jnp.asarray, tokenizer(texts)))


@functools.lru_cache(maxsize=8)
def _clip(config: clip_lib.ClipConfig) -> clip_lib.Clip:
  """One `Clip` per config, so a second run in a process reuses the compiled programs."""
  return clip_lib.Clip(config)


@functools.lru_cache(maxsize=8)
def adamw_optimizer(learning_rate: float, num_steps: int, warmup_steps: int,
                    weight_decay: float) -> optax.GradientTransformation:
  """AdamW with warmup and cosine decay; one object per setting (see `_clip`), so a jitted
  step taking it as a static argument compiles once per setting."""
  return train.make_optimizer(name='adamw', learning_rate=learning_rate, num_steps=num_steps,
                              warmup_steps=warmup_steps, weight_decay=weight_decay)


def finish(c: ml_collections.ConfigDict, clip: clip_lib.Clip, variables: Any,
           tokenizer: ClipTokenizer, *, steps: int, source: str) -> Foundation:
  """The `Foundation` of trained or loaded weights, with its zero-shot accuracy measured."""
  test = load_split(c, 'test')
  encode_text = text_encoder(clip, variables, tokenizer)
  templates = tuple(c.templates)
  classes = zero_shot_lib.class_embeddings(encode_text, test.class_names, templates)
  encode = TapEncoder(clip.image.apply, clip.image_hidden_states[-1])
  accuracy = zero_shot_lib.zero_shot_accuracy(encode, variables['image'], classes, test)
  logging.info('foundation (%s): zero-shot accuracy %.4f on %d test scenes', source, accuracy,
               len(test))
  return Foundation(clip, variables, tokenizer, accuracy, steps, source, encode, encode_text,
                    classes, templates)


def _load(c: ml_collections.ConfigDict) -> Foundation:
  """The CLIP of `config.clip_path`, with its zero-shot accuracy."""
  folder = os.path.expanduser(c.clip_path)
  clip, variables, _ = models.load_clip(folder)
  tokenizer = ClipTokenizer.from_folder(folder,
                                        context_length=clip.config.max_position_embeddings)
  return finish(c, clip, variables, tokenizer, steps=0, source=c.clip_path)


def pretrain(c: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> Foundation:
  """Pretrains the foundation in `workdir/foundation` (resuming), or loads `config.clip_path`.

  Args:
    c: the config (`get_config`); validated before anything is built.
    workdir: the study's workdir; this stage writes only under `workdir/foundation`
      (config.json, tokenizer/, checkpoints/, metrics.jsonl, tensorboard/).
    progress: report training progress (`lib.train.progress`).

  Returns:
    The `Foundation`.

  Raises:
    ValueError: a bad config (naming `config.<key>`), or `workdir/foundation` holds a run
      started under another config (the differing keys listed; see `lib.run_config`).
  """
  validate_config(c)
  if c.clip_path:
    return _load(c)
  folder = os.path.join(workdir, 'foundation')
  run_config.prepare_workdir(folder, c, resumable=run_config.RESUMABLE + RESUMABLE_KEYS)
  train_split = load_split(c, 'train')
  tokenizer = _tokenizer(c, os.path.join(folder, 'tokenizer'), train_split.arrays['caption'])
  clip = _clip(model_config(c, vocab_size=tokenizer.vocab_size,
                            eos_token_id=tokenizer.eos_token_id))
  logging.info('foundation: pretraining a CLIP of %d parameters for %d steps in %s',
               sum(x.size for x in jax.tree.leaves(clip.abstract_variables)), c.num_steps,
               folder)
  pairs = captioned(train_split, tokenizer)
  optimizer = adamw_optimizer(c.learning_rate, c.num_steps, c.warmup_steps, c.weight_decay)
  init_key = jax.random.key(c.seed)
  state = train.run_loop(
      init=lambda: _init_state(clip, optimizer, init_key),
      step_fn=lambda s, b: train_step(clip, optimizer, s, b),
      batch_fn=lambda i: pair_batch(pairs, i, batch_size=c.batch_size, seed=c.seed,
                                    short_rate=c.short_caption_rate),
      num_steps=c.num_steps, workdir=folder, checkpoint_every=c.checkpoint_every,
      log_every=c.log_every, progress=progress)
  return finish(c, clip, state.variables, tokenizer, steps=int(state.step), source='pretrained')
