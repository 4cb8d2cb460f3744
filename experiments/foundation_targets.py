"""The foundation's downstream targets: every target's clean metric, and trivial baselines.

The inherited-vulnerability study (PRM, Hu et al. 2024) measures the damage an attack on
an open encoder does to the models built on it. This stage builds those models on the
offline foundation (`experiments.foundation`) and measures each one clean, with the
field's metric (`lib.downstream`), on the `shapes` test scenes:

  classification  zero-shot (prompt ensemble), linear probe, full fine-tune   accuracy
  segmentation    MaskCLIP (training-free), dense head on frozen tokens       mIoU
  detection       patch-text boxes (training-free), CenterNet-lite box head  COCO mAP, AP50
  captioning      prefix decoder on frozen patch tokens                      BLEU-4, CIDEr
  vqa             question-guided attention head on frozen tokens            VQA accuracy

Each metric stands beside a trivial baseline computed in the same run from the train split
without looking at the test images: the majority class, all-background segmentation,
the per-category mean box of the train split, the most frequent train caption and the
majority answer of each question slot.

**Encoders.** The trained heads read the foundation's own `encode` (the last block's patch
tokens [B, h, w, D], the projected class-token embedding [B, E]). The training-free targets
compare patch tokens with text embeddings, so theirs must live in the text space: they use
`value_encoder`, MaskCLIP's value-embedding path (Zhou, Loy & Dai 2022): the last
block runs with each patch attending only to itself (the query-key attention dropped, so
the attention output is the patch's own value through the output projection), keeps its
residual and MLP, and its output goes through the final LayerNorm and the visual
projection that pool the class token. The class-token embedding is unchanged.

**Text.** Class prompts for the 10 `shapes` categories (the 8 kinds, 'bar', 'dot') are
`config.templates` through the foundation's tokenizer and text tower, averaged over
templates (CLIP's prompt ensemble); the background prompt is the ensemble of
`config.background_prompts`. Captions and questions are token ids of the same tokenizer; as
it pads with <|endoftext|>, captions pad with an extra id V (the decoder's vocabulary is
V + 1), so that the decoder learns where a caption ends.

**Workdirs.** `workdir/foundation` (pretraining, `foundation.pretrain`) and
`workdir/heads/<name>` per head (`lib.downstream.fit_head`: checkpoints, automatic resume).
A head's config.json records the foundation's config and steps with the head's settings,
so a relaunch after the foundation or a head changed is refused instead of resuming stale
checkpoints (`lib.run_config`; a head's own num_steps may grow).

**Build, then evaluate.** `build(c, workdir) -> Targets` trains (or resumes) everything;
`evaluate(c, targets, test, image_params=None)` measures every target on any test images,
clean or adversarial, optionally with another image tower's parameters in place of the
foundation's (a defended foundation); each target's program compiles once, whatever images
or parameters it is given. The inherited-vulnerability study (`experiments.
foundation_transfer`) calls both on the same folders. `experiments.foundation_targets_report.
section` writes the report from the numbers (`Results`).

Variants: `runlocal` (the foundation's runlocal CLIP; pretraining, every head and every
evaluation took 171 s wall, 291 CPU-seconds, 80 s of it pretraining, on 2 quiet cores,
2026-12-01) and '' (OpenAI's ViT-B/16 from `config.clip_path`).

Launch:
  python -m launch.run --config=experiments/foundation_targets.py:runlocal --workdir=/tmp/ft
  python -m launch.run --config=experiments/foundation_targets.py --workdir=/tmp/ft_full
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import foundation
from experiments import foundation_targets_report as report
from lib import downstream, run_config, validate
from lib.data import ArrayDataset
from lib.models.transformer import ACTIVATIONS
from lib.report import markdown

Array = jax.Array
HEADS = ('probe', 'finetune', 'dense', 'boxes', 'captioner', 'vqa')
METRICS = ('classification', 'segmentation', 'detection', 'captioning', 'vqa')
# Only evaluation reads these: a relaunch may change them (see lib/run_config.py).
RESUMABLE_KEYS = (*foundation.RESUMABLE_KEYS, *(f'num_eval.{m}' for m in METRICS), 'num_figure',
                  'background_prompts')
BACKGROUND_PROMPTS = ('a striped background', 'a checkered background', 'a mottled background')
# Fields of each head's config besides num_steps, batch_size, learning_rate (ints >= 0).
HEAD_SIZES = {'probe': (), 'finetune': (), 'dense': ('hidden',), 'boxes': ('hidden',),
              'captioner': ('dim', 'depth', 'heads', 'mlp_dim'), 'vqa': ('dim',)}


def _head(num_steps: int, batch_size: int, learning_rate: float,
          **sizes: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(num_steps=num_steps, batch_size=batch_size,
                                        learning_rate=learning_rate, **sizes))


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The foundation's config for `arg` ('runlocal' or '') plus the targets' settings."""
  c = foundation.get_config(arg)
  runlocal = 'runlocal' in arg.split(',')
  c.background_prompts = BACKGROUND_PROMPTS
  c.head_seed = 0
  pick = (lambda small, big: small) if runlocal else (lambda small, big: big)
  c.heads = ml_collections.ConfigDict(dict(
      probe=_head(pick(200, 2000), 128, 1e-2),
      finetune=_head(pick(200, 2000), 64, pick(3e-4, 1e-5)),
      dense=_head(pick(1000, 5000), 64, 3e-3, hidden=64),
      boxes=_head(pick(1000, 5000), 64, 3e-3, hidden=64),
      captioner=_head(pick(400, 5000), 64, 1e-3, dim=64, depth=2, heads=4, mlp_dim=128),
      vqa=_head(pick(300, 3000), 64, 3e-3, dim=64)))
  c.num_eval = ml_collections.ConfigDict({m: pick(500, 2000) for m in METRICS})
  c.num_figure = 4     # test scenes in the figure of segmentation maps and boxes
  return c


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks every field of `c` (the foundation's too) before any work.

  Raises:
    ValueError: naming `config.<key>` and what was expected.
  """
  foundation.validate_config(c)
  prompts = c.background_prompts
  if (isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts
      or not all(isinstance(p, str) and p.strip() for p in prompts)):
    raise ValueError('config.background_prompts must be a non-empty tuple of non-empty '
                     f'strings; got {prompts!r}.')
  validate.check_int(c.head_seed, 'config.head_seed', minimum=0)
  if set(c.heads) != set(HEADS):
    raise ValueError(f'config.heads must configure exactly the heads {list(HEADS)}; got '
                     f'{sorted(c.heads)}.')
  for name in HEADS:
    _check_head(c, name)
  if set(c.num_eval) != set(METRICS):
    raise ValueError(f'config.num_eval must give a test-image count for each of {list(METRICS)}'
                     f'; got {sorted(c.num_eval)}.')
  for metric in METRICS:
    validate.check_int(c.num_eval[metric], f'config.num_eval.{metric}', minimum=1)
    if c.num_eval[metric] > c.num_test:
      raise ValueError(f'config.num_eval.{metric}={c.num_eval[metric]} exceeds '
                       f'config.num_test={c.num_test} (the test scenes generated).')
  validate.check_int(c.num_figure, 'config.num_figure', minimum=1)
  if c.num_figure > c.num_test:
    raise ValueError(f'config.num_figure={c.num_figure} exceeds config.num_test={c.num_test}.')


def _check_head(c: ml_collections.ConfigDict, name: str) -> None:
  h, key = c.heads[name], f'config.heads.{name}'
  expected = {'num_steps', 'batch_size', 'learning_rate', *HEAD_SIZES[name]}
  if set(h) != expected:
    raise ValueError(f'{key} must have the fields {sorted(expected)}; got {sorted(h)}.')
  validate.check_int(h.num_steps, f'{key}.num_steps', minimum=1)
  validate.check_int(h.batch_size, f'{key}.batch_size', minimum=1)
  if h.batch_size > c.num_train:
    raise ValueError(f'{key}.batch_size={h.batch_size} exceeds config.num_train={c.num_train}.')
  validate.check_number(h.learning_rate, f'{key}.learning_rate', low=0.0)
  validate.check_positive(h.learning_rate, f'{key}.learning_rate')
  for size in HEAD_SIZES[name]:
    validate.check_int(h[size], f'{key}.{size}', minimum=0 if size == 'hidden' else 1)
  if name == 'captioner' and h.dim % h.heads:
    raise ValueError(f'{key}.heads={h.heads} must divide {key}.dim={h.dim}.')


def _layer_norm(params: dict, x: Array, epsilon: float) -> Array:
  """nnx.LayerNorm (two-pass variance) with params {'scale', 'bias'} over the last axis."""
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + epsilon) * params['scale'] + params['bias']


def _dense(params: dict, x: Array) -> Array:
  return x @ params['kernel'] + params['bias'] if 'bias' in params else x @ params['kernel']


def embed_tokens(params: Any, tokens: Array, epsilon: float) -> Array:
  """Tokens [..., D] -> [..., E] through the final LayerNorm and the visual projection (the
  map CLIP applies to the class token; `params` are the image tower's variables)."""
  p = params['params']
  return _dense(p['proj'], _layer_norm(p['norm'], tokens, epsilon))


@dataclasses.dataclass(frozen=True)
class ValuePath:
  """MaskCLIP's dense tokens from the last block's input (a `TapEncoder.project`).

  Attributes:
    block: index of the last block of the image tower.
    epsilon: the LayerNorm epsilon.
    activation: the MLP activation (a key of `lib.models.transformer.ACTIVATIONS`).
  """
  block: int
  epsilon: float
  activation: str

  def __call__(self, params: Any, tokens: Array) -> Array:
    """Patch tokens [B, h, w, D] entering the last block -> [B, h, w, E] in the text space."""
    b = params['params']['blocks'][self.block]
    x = tokens + _dense(b['attn']['out'], _dense(b['attn']['v'],
                                                 _layer_norm(b['ln1'], tokens, self.epsilon)))
    hidden = ACTIVATIONS[self.activation](_dense(b['mlp']['fc1'],
                                                 _layer_norm(b['ln2'], x, self.epsilon)))
    return embed_tokens(params, x + _dense(b['mlp']['fc2'], hidden), self.epsilon)


def value_encoder(f: foundation.Foundation) -> downstream.TapEncoder:
  """The training-free targets' encoder: MaskCLIP value-path patch tokens [B, h, w, E]."""
  config = f.clip.config
  return downstream.TapEncoder(f.clip.image.apply, f.clip.image_hidden_states[-2],
                               ValuePath(config.vision_layers - 1, config.layer_norm_eps,
                                         config.hidden_act))


def text_embeddings(c: ml_collections.ConfigDict, f: foundation.Foundation,
                    categories: Sequence[str]) -> Array:
  """[1 + K, E] unit rows: the ensemble of the background prompts, then each category's."""
  prompts = jnp.asarray(f.encode_text(list(c.background_prompts)))
  background = downstream.average_prompts(prompts[None])
  classes = downstream.class_embeddings(f.encode_text, list(categories), tuple(c.templates))
  return jnp.concatenate([background, classes])


def first(split: ArrayDataset, n: int) -> ArrayDataset:
  """The first `n` scenes of `split` (the same scenes whatever the split's size)."""
  return dataclasses.replace(split, arrays={k: v[:n] for k, v in split.arrays.items()})


def answer_vocabulary(train: ArrayDataset) -> np.ndarray:
  """The sorted distinct answers of the train split (the VQA head's classes)."""
  return np.unique(train.arrays['answer'])


def with_tokens(split: ArrayDataset, tokenizer: Any,
                answers: np.ndarray | None = None) -> ArrayDataset:
  """`split` plus token ids: 'caption_ids' int32 [N, L] (padding: the extra id V),
  'question_ids' [N, Q, L] (padding <|endoftext|>) and, given the answer vocabulary,
  'answer_ids' [N, Q] (indices into it)."""
  arrays = dict(split.arrays)
  captions = tokenizer(arrays['caption'])
  arrays['caption_ids'] = np.where(captions['attention_mask'] > 0, captions['input_ids'],
                                   tokenizer.vocab_size).astype(np.int32)
  questions = arrays['question']
  arrays['question_ids'] = tokenizer(questions.ravel())['input_ids'].reshape(
      *questions.shape, -1)
  if answers is not None:
    arrays['answer_ids'] = np.searchsorted(answers, arrays['answer']).astype(np.int32)
  return dataclasses.replace(split, arrays=arrays)


class Row(NamedTuple):
  """One clean metric of one target beside its trivial baseline.

  Attributes:
    target: 'classification', 'segmentation', 'detection', 'captioning' or 'vqa'.
    method: how the target is built on the foundation (e.g. 'linear probe').
    metric: the metric's name (e.g. 'mIoU').
    value: the metric on the test scenes.
    baseline: the same metric of the target's trivial predictor.
  """
  target: str
  method: str
  metric: str
  value: float
  baseline: float


class FigureData(NamedTuple):
  """Predictions on the first `num_figure` test scenes, for the figure.

  Attributes:
    images: [n, H, W, 3] in [0, 1].
    segmentation: [n, H, W] ground truth (0 background, c + 1 category c).
    maskclip, dense: [n, H, W] predicted label maps.
    boxes, box_labels: ground truth [n, M, 4] (y0, x0, y1, x1 in [0, 1]) and [n, M] (-1 pad).
    zero_shot, box_head: `lib.downstream.Detections` of the two detectors (numpy).
    categories: names of the categories (label c, segmentation id c + 1).
  """
  images: np.ndarray
  segmentation: np.ndarray
  maskclip: np.ndarray
  dense: np.ndarray
  boxes: np.ndarray
  box_labels: np.ndarray
  zero_shot: downstream.Detections
  box_head: downstream.Detections
  categories: tuple[str, ...]


class Results(NamedTuple):
  """The numbers of one run (what the report is written from).

  Attributes:
    rows: every target's clean metrics (`Row`), in table order.
    source: where the foundation came from ('pretrained' or a folder).
    foundation_steps: its pretraining steps (0 for loaded weights).
    timings: stage -> (wall, CPU) seconds in this run (a resumed stage counts what it
      redid; CPU: this process's time over all its threads).
    figure: `FigureData`.
    captions: (reference, generated) caption of each figure scene.
  """
  rows: list[Row]
  source: str
  foundation_steps: int
  timings: dict[str, tuple[float, float]]
  figure: FigureData
  captions: list[tuple[str, str]]


def foundation_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The foundation's own fields of `c` (what `workdir/foundation/config.json` records)."""
  return ml_collections.ConfigDict({k: c[k] for k in foundation.get_config().keys()})


def fit(c: ml_collections.ConfigDict, f: foundation.Foundation, workdir: str, name: str,
        head: Any, encode: Callable, train: ArrayDataset, *,
        frozen: Sequence[str] = downstream.PROBE, progress: bool = True) -> downstream.HeadState:
  """Trains head `name` (its settings: `config.heads.<name>`) in `workdir/heads/<name>`,
  resuming; refuses a workdir whose head, foundation or seed differ (`lib.run_config`)."""
  h = c.heads[name]
  folder = os.path.join(workdir, 'heads', name)
  record = {'foundation': foundation_config(c).to_dict(), 'foundation_steps': f.steps,
            'head': h.to_dict(), 'head_seed': c.head_seed}
  run_config.prepare_workdir(folder, record,
                             resumable=run_config.RESUMABLE + foundation.RESUMABLE_KEYS)
  return downstream.fit_head(head, encode, f.variables['image'], train, num_steps=h.num_steps,
                             batch_size=h.batch_size, seed=c.head_seed, workdir=folder,
                             frozen=frozen, learning_rate=h.learning_rate,
                             checkpoint_every=c.checkpoint_every, log_every=c.log_every,
                             progress=progress)


class _Timer:
  """Wall and CPU seconds of named stages (CPU: this process's, all threads; on a shared
  machine it tells what the stage would take alone), logged as each ends."""

  def __init__(self):
    self.seconds: dict[str, tuple[float, float]] = {}

  def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
    start, cpu = time.time(), time.process_time()
    out = fn()
    self.seconds[name] = (time.time() - start, time.process_time() - cpu)
    logging.info('foundation targets: %s in %.1f s (CPU %.1f s)', name, *self.seconds[name])
    return out


def majority(values: np.ndarray) -> Any:
  """The most frequent value of a 1-D array (the smallest among ties)."""
  distinct, counts = np.unique(values, return_counts=True)
  return distinct[np.argmax(counts)]


def prior_detections(train: ArrayDataset, n: int, num_classes: int) -> downstream.Detections:
  """The image-blind detector: for every test image, each category's mean train box, scored
  by the category's share of the train boxes."""
  boxes, labels = train.arrays['boxes'], train.arrays['box_labels'].astype(np.int32)
  mean = np.stack([boxes[labels == k].mean(0) if np.any(labels == k) else np.zeros(4)
                   for k in range(num_classes)]).astype(np.float32)
  share = np.array([np.mean(labels[labels >= 0] == k) for k in range(num_classes)], np.float32)
  ids = np.arange(num_classes, dtype=np.int32)
  return downstream.Detections(np.broadcast_to(mean, (n, num_classes, 4)),
                               np.broadcast_to(share, (n, num_classes)),
                               np.where(share > 0, ids, -1)[None].repeat(n, 0))


class Targets(NamedTuple):
  """Every trained target on the foundation: what `evaluate` measures on any test images.

  Attributes:
    foundation: the `foundation.Foundation`.
    text: [1 + K, E] unit rows, the background prompt then each category (`text_embeddings`).
    answers: the VQA answer vocabulary (`answer_vocabulary` of the train split).
    train: the train split with token ids (`with_tokens`), what the baselines read.
    heads: name (`HEADS`) -> (head, trained `downstream.HeadState`).
  """
  foundation: foundation.Foundation
  text: Array
  answers: np.ndarray
  train: ArrayDataset
  heads: dict[str, tuple[Any, downstream.HeadState]]


class Evaluation(NamedTuple):
  """What `evaluate` measured.

  Attributes:
    rows: every target's metric (`Row`), in table order.
    captions: the captioner's generated caption of each captioning test scene.
  """
  rows: list[Row]
  captions: list[str]


def _untimed(name: str, fn: Callable[[], Any]) -> Any:
  del name
  return fn()


def make_heads(c: ml_collections.ConfigDict, f: foundation.Foundation, num_classes: int,
               num_categories: int, answers: np.ndarray) -> dict[str, tuple[Any, tuple[str, ...]]]:
  """name -> (untrained head, frozen patterns) of every trained target.

  Args:
    num_classes: the classification labels' count; num_categories: detection categories
      (segmentation has one more class, background).
  """
  h, tok = c.heads, f.tokenizer
  linear = downstream.LinearHead(num_classes)
  captioner = downstream.Captioner(
      vocab_size=tok.vocab_size + 1, max_len=tok.context_length, bos_id=tok.bos_token_id,
      eos_id=tok.eos_token_id, pad_id=tok.vocab_size, dim=h.captioner.dim,
      depth=h.captioner.depth, heads=h.captioner.heads, mlp_dim=h.captioner.mlp_dim)
  return {'probe': (linear, downstream.PROBE), 'finetune': (linear, downstream.FINETUNE),
          'dense': (downstream.DenseHead(num_categories + 1, hidden=h.dense.hidden),
                    downstream.PROBE),
          'boxes': (downstream.BoxHead(num_categories, hidden=h.boxes.hidden), downstream.PROBE),
          'captioner': (captioner, downstream.PROBE),
          'vqa': (downstream.VQAHead(len(answers), tok.vocab_size, dim=h.vqa.dim,
                                     pad_id=tok.eos_token_id), downstream.PROBE)}


def build(c: ml_collections.ConfigDict, workdir: str, *, progress: bool = True,
          timer: Callable[[str, Callable[[], Any]], Any] = _untimed) -> Targets:
  """Pretrains (or loads) the foundation and trains every head, each resuming in `workdir`
  (instant when everything is trained).

  Args:
    c: the config (`get_config`), validated by the caller.
    workdir: `workdir/foundation` and `workdir/heads/<name>` (see the module docstring).
    progress: report training progress.
    timer: `timer(stage, fn) -> fn()`, e.g. a `_Timer` (default: untimed).
  """
  f = timer('foundation', lambda: foundation.pretrain(foundation_config(c), workdir,
                                                      progress=progress))
  train_split = foundation.load_split(c, 'train')
  answers = answer_vocabulary(train_split)
  train = with_tokens(train_split, f.tokenizer, answers)
  text = timer('text prompts', lambda: text_embeddings(c, f, train.categories))
  heads = {}
  for name, (head, frozen) in make_heads(c, f, train.num_classes, len(train.categories),
                                         answers).items():
    state = timer(f'{name}: train', lambda: fit(c, f, workdir, name, head, f.encode, train,
                                                frozen=frozen, progress=progress))
    heads[name] = (head, state)
  return Targets(f, text, answers, train, heads)


def _trained(targets: Targets, name: str, image_params: Any) -> tuple[Any, dict]:
  """(head, its params) with `image_params` in place of the encoder's when given."""
  head, state = targets.heads[name]
  if image_params is None:
    return head, state.params
  return head, {'encoder': image_params, 'head': state.params['head']}


def evaluate(c: ml_collections.ConfigDict, targets: Targets, test: ArrayDataset, *,
             image_params: Any = None,
             timer: Callable[[str, Callable[[], Any]], Any] = _untimed) -> Evaluation:
  """Every target's metric on `test` (clean or adversarial images), beside its baseline.

  Each target reads the first `config.num_eval.<target>` scenes (all of them when `test`
  has fewer). The programs are `lib.downstream`'s, jitted with the encoder and head static
  and the parameters and images traced: a second call on other images of the same size, or
  with other encoder parameters, compiles nothing.

  Args:
    c: the config.
    targets: `build`'s result.
    test: a `shapes` split (images [N, H, W, 3], uint8 or float in [0, 1]).
    image_params: image-tower variables to use instead of the foundation's (e.g. a defended
      foundation): the training-free targets and every trained head read them in place of
      their encoder, the fine-tuned one included (its head kept); None: each target's own.
    timer: `timer(stage, fn) -> fn()`.

  Returns:
    `Evaluation(rows, captions)`.
  """
  f, train = targets.foundation, targets.train
  test = with_tokens(test, f.tokenizer)
  image = f.variables['image'] if image_params is None else image_params
  part = lambda target: first(test, min(len(test), c.num_eval[target]))

  split = part('classification')
  base = float(np.mean(split.arrays['label'] == majority(train.arrays['label'])))
  zero_shot = timer('zero-shot classification', lambda: downstream.zero_shot_accuracy(
      f.encode, image, f.class_embeddings, split))
  rows = [Row('classification', 'zero-shot (prompts)', 'accuracy', zero_shot, base)]
  for name, method in (('probe', 'linear probe'), ('finetune', 'full fine-tune')):
    head, params = _trained(targets, name, image_params)
    accuracy = timer(f'{name}: eval', lambda: downstream.probe_accuracy(
        head, f.encode, params, split))
    rows.append(Row('classification', method, 'accuracy', accuracy, base))

  split, classes = part('segmentation'), len(targets.text)
  gt = split.arrays['segmentation']
  base, _ = downstream.mean_iou(downstream.confusion_matrix(np.zeros_like(gt), gt, classes))
  maskclip = timer('MaskCLIP segmentation', lambda: downstream.maskclip_miou(
      value_encoder(f), image, targets.text, split, num_classes=classes))
  head, params = _trained(targets, 'dense', image_params)
  dense = timer('dense: eval', lambda: downstream.head_miou(head, f.encode, params, split))
  rows += [Row('segmentation', 'MaskCLIP (training-free)', 'mIoU', maskclip['mIoU'], base),
           Row('segmentation', 'dense head, frozen tokens', 'mIoU', dense['mIoU'], base)]

  split = part('detection')
  categories = len(split.categories)
  base = downstream.coco_map(split.arrays['boxes'], split.arrays['box_labels'].astype(np.int32),
                             prior_detections(train, len(split), categories),
                             image_size=split.image_shape[:2], num_classes=categories)
  zero_shot = timer('zero-shot detection', lambda: downstream.zero_shot_map(
      value_encoder(f), image, targets.text, split, num_classes=categories))
  head, params = _trained(targets, 'boxes', image_params)
  trained = timer('boxes: eval', lambda: downstream.head_map(head, f.encode, params, split))
  rows += [Row('detection', method, metric, result[metric], base[metric])
           for method, result in (('patch-text boxes (training-free)', zero_shot),
                                  ('box head, frozen tokens', trained))
           for metric in ('mAP', 'AP50')]

  split = part('captioning')
  head, params = _trained(targets, 'captioner', image_params)
  metrics, generated = timer('captioner: eval', lambda: downstream.evaluate_captions(
      head, f.encode, params, split, decode=f.tokenizer.decode))
  references = [[str(t)] for t in split.arrays['caption']]
  base = downstream.caption_metrics(references,
                                    [str(majority(train.arrays['caption']))] * len(split))
  rows += [Row('captioning', 'decoder on frozen tokens', m, metrics[m], base[m])
           for m in ('BLEU-4', 'CIDEr')]

  split = part('vqa')
  head, params = _trained(targets, 'vqa', image_params)
  metrics = timer('vqa: eval', lambda: downstream.evaluate_vqa(
      head, f.encode, params, split, answer_vocab=[str(a) for a in targets.answers]))
  truth = split.arrays['answer']
  guess = np.stack([np.full(len(split), majority(train.arrays['answer'][:, j]))
                    for j in range(truth.shape[1])], 1)
  base = downstream.vqa_accuracy(list(guess.ravel()), truth.ravel())
  rows.append(Row('vqa', 'attention head on frozen tokens', 'VQA accuracy',
                  metrics['vqa_accuracy'], base))
  return Evaluation(rows, generated)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _figure_predictions(values: downstream.TapEncoder, encode: downstream.TapEncoder,
                        dense: downstream.DenseHead, boxes: downstream.BoxHead, image_params: Any,
                        dense_params: dict, box_params: dict, text: Array, images: Array
                        ) -> tuple[Array, Array, Array, downstream.Detections]:
  """(value-path tokens, MaskCLIP map, dense-head map, box-head detections) of `images`."""
  size = images.shape[1:3]
  tokens, _ = values(image_params, images)
  features = downstream.Features(*encode(dense_params['encoder'], images))
  dense_map = jnp.argmax(dense.logits(dense_params['head'], features, size), -1)
  box_features = downstream.Features(*encode(box_params['encoder'], images))
  return (tokens, downstream.maskclip_segment(tokens, text, size=size), dense_map,
          boxes.detect(box_params['head'], box_features))


def figure_data(c: ml_collections.ConfigDict, targets: Targets, test: ArrayDataset, *,
                image_params: Any = None) -> FigureData:
  """The two segmenters' and two detectors' predictions on the first `num_figure` scenes of
  `test` (encoder parameters as in `evaluate`)."""
  f = targets.foundation
  scenes = first(test, c.num_figure).get(np.arange(c.num_figure))
  (dense, dense_params), (boxes, box_params) = (_trained(targets, name, image_params)
                                                for name in ('dense', 'boxes'))
  image = f.variables['image'] if image_params is None else image_params
  tokens, maskclip, dense_map, detections = jax.tree.map(np.asarray, _figure_predictions(
      value_encoder(f), f.encode, dense, boxes, image, dense_params, box_params, targets.text,
      jnp.asarray(scenes['image'])))
  return FigureData(scenes['image'], scenes['segmentation'], maskclip, dense_map,
                    scenes['boxes'], scenes['box_labels'],
                    downstream.zero_shot_detect(tokens, targets.text), detections,
                    tuple(test.categories))


def measure(c: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> Results:
  """Pretrains (or loads) the foundation, trains every head, measures every target."""
  timer = _Timer()
  targets = build(c, workdir, progress=progress, timer=timer)
  test = foundation.load_split(c, 'test')
  evaluation = evaluate(c, targets, test, timer=timer)
  figure = timer('figure predictions', lambda: figure_data(c, targets, test))
  captions = [(str(test.arrays['caption'][i]), evaluation.captions[i])
              for i in range(c.num_figure) if i < len(evaluation.captions)]
  f = targets.foundation
  return Results(evaluation.rows, f.source, f.steps, timer.seconds, figure, captions)


def run(c: ml_collections.ConfigDict, workdir: str) -> markdown.Section:
  """Validates `c`, measures every target (resuming), returns the report section."""
  validate_config(c)
  results = measure(c, workdir)
  return report.section(c, results, workdir)
