"""Semantic segmentation on a foundation encoder: training-free MaskCLIP and a dense head.

Training-free (MaskCLIP, Zhou, Loy & Dai 2022, "Extract Free Dense Labels from CLIP"):
every patch token is compared with every class text embedding by cosine similarity,
[B, h, w, K], and the scores are resized bilinearly to pixels, [B, H, W, K]. Background is
handled one of two ways (`background_threshold`):

  None     row 0 of `text_embeddings` is a background prompt ("a photo of the background"),
           rows 1..K-1 the classes; label = argmax over the K rows.
  t        the K rows are classes 1..K; a pixel whose best cosine is below t is background 0,
           else label = 1 + argmax (MaskCLIP-style "no class is close enough").

Trained: `DenseHead` (a 1x1 linear layer, or a 3x3 conv + ReLU + 1x1, on frozen patch tokens)
whose per-patch logits are resized bilinearly to the label size and trained with per-pixel
cross-entropy (the mmseg decode-head recipe).

mIoU as mmseg computes it: one confusion matrix accumulated over the whole split, then
IoU_c = TP_c / (TP_c + FP_c + FN_c) for each class, and the mean over the classes whose union
is nonzero (present in the ground truth or the prediction); a class absent from both is
left out (NaN in the per-class vector), not counted as 0 or 1.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lib import validate
from lib.downstream import _layers
from lib.downstream.classification import l2_normalize
from lib.downstream.features import Encode, Features, check_embeddings, check_patch_tokens
from lib.downstream.fitting import encode_features, predictions

Array = jax.Array


def upsample(scores: Array, size: tuple[int, int]) -> Array:
  """Bilinear resize of per-patch scores [B, h, w, K] to [B, H, W, K] (half-pixel centres)."""
  b, _, _, k = scores.shape
  return jax.image.resize(scores, (b, *size, k), method='bilinear')


def patch_text_scores(patch_tokens: Array, text_embeddings: Array) -> Array:
  """Cosine similarity [B, h, w, K] of patch tokens [B, h, w, E] and text rows [K, E]."""
  return l2_normalize(patch_tokens) @ l2_normalize(text_embeddings).T


def label_map(scores: Array, background_threshold: float | None) -> Array:
  """Labels int32 [...] (0 background, c + 1 category c) of text scores [..., K].

  With `background_threshold=None` row 0 is the background prompt and the label is the
  argmax over the K rows (categories are rows 1..K-1); with a threshold t the K rows are the
  categories, and a position whose best score is below t is background.
  """
  label = jnp.argmax(scores, -1).astype(jnp.int32)
  if background_threshold is None:
    return label
  return jnp.where(scores.max(-1) < background_threshold, 0, label + 1)


def maskclip_segment(patch_tokens: Array, text_embeddings: Array, *, size: tuple[int, int],
                     background_threshold: float | None = None) -> Array:
  """Training-free label map [B, H, W] (int32) from patch-text similarity (MaskCLIP).

  Args:
    patch_tokens: [B, h, w, E] (in the text embeddings' space).
    text_embeddings: [K, E] prompt embeddings; see the module docstring for row 0.
    size: (H, W) of the label map.
    background_threshold: None (row 0 is the background prompt) or a cosine threshold t in
      [-1, 1] (rows are classes 1..K; below t is background 0).
  """
  check_patch_tokens(patch_tokens)
  check_embeddings(text_embeddings, patch_tokens.shape[-1], 'text_embeddings')
  if background_threshold is not None:
    validate.check_number(background_threshold, 'background_threshold', low=-1.0, high=1.0)
  validate.check_ints(tuple(size), 'size', minimum=1, length=2)
  scores = upsample(patch_text_scores(patch_tokens, text_embeddings), tuple(size))
  return label_map(scores, background_threshold)


def confusion_matrix(prediction: Any, target: Any, num_classes: int, *,
                     ignore_index: int | None = None) -> np.ndarray:
  """int64 [C, C] counts, rows the ground truth class, columns the predicted class.

  Args:
    prediction: int label maps, any shape.
    target: int ground truth of the same shape; pixels equal to `ignore_index` are skipped.
    num_classes: C; every counted label must lie in [0, C).
    ignore_index: ground-truth value to skip (mmseg's 255), or None.
  """
  validate.check_int(num_classes, 'num_classes', minimum=1)
  prediction, target = np.asarray(prediction), np.asarray(target)
  if prediction.shape != target.shape:
    raise ValueError(f'prediction and target must have the same shape; got {prediction.shape} '
                     f'and {target.shape}.')
  keep = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
  prediction, target = prediction[keep].astype(np.int64), target[keep].astype(np.int64)
  for values, name in ((prediction, 'prediction'), (target, 'target')):
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError(f'{name} must hold labels in [0, {num_classes}); got values in '
                       f'[{values.min()}, {values.max()}].')
  return np.bincount(target * num_classes + prediction,
                     minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(confusion: Any) -> tuple[float, np.ndarray]:
  """(mIoU, per-class IoU [C]) of a confusion matrix [C, C] (mmseg convention).

  IoU_c = TP / (TP + FP + FN); classes with an empty union get NaN and are left out of the
  mean. Raises ValueError when every union is empty (nothing was counted).
  """
  confusion = np.asarray(confusion, np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f'confusion must be a square [C, C] matrix; got {confusion.shape}.')
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  if not np.any(union > 0):
    raise ValueError('confusion is empty: no pixel was counted.')
  iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
  return float(np.nanmean(iou)), iou


def evaluate_segmentation(segment: Callable[[dict[str, Array]], Array], dataset: Any, *,
                          num_classes: int, batch_size: int = 64) -> dict[str, Any]:
  """mIoU of `segment` over a whole split (one confusion matrix over every pixel).

  Args:
    segment: jitted `batch -> int label maps [B, H, W]` (it reads batch['image']).
    dataset: a split with 'segmentation' [N, H, W] in [0, num_classes).
    num_classes: C, background included.
    batch_size: evaluation batch size.

  Returns:
    {'mIoU': float, 'IoU': per-class [C] (NaN for classes absent from both maps),
     'pixel_accuracy': float}.
  """
  validate.check_int(num_classes, 'num_classes', minimum=2)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  check = lambda b, n: _layers.check_int_field(b, 'segmentation', n, shape=b['image'].shape[:3],
                                               low=0, high=num_classes)
  for pred, batch in predictions(segment, dataset, fields=('image',), needs=('segmentation',),
                                 batch_size=batch_size, check=check):
    confusion += confusion_matrix(pred, batch['segmentation'], num_classes)
  miou, iou = mean_iou(confusion)
  return {'mIoU': miou, 'IoU': iou, 'pixel_accuracy': float(np.trace(confusion) / confusion.sum())}


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _maskclip_batch(encode: Encode, params: Any, text: Array, size: tuple[int, int],
                    threshold: float | None, batch: dict) -> Array:
  features = encode_features(encode, params, batch['image'])
  return maskclip_segment(features.patch_tokens, text, size=size,
                          background_threshold=threshold)


def maskclip_miou(encode: Encode, encoder_params: Any, text_embeddings: Array, dataset: Any, *,
                  num_classes: int, background_threshold: float | None = None,
                  batch_size: int = 64) -> dict[str, Any]:
  """`evaluate_segmentation` of training-free MaskCLIP (see `maskclip_segment`)."""
  text_embeddings = jnp.asarray(text_embeddings)
  check_embeddings(text_embeddings, None, 'text_embeddings')
  size = tuple(dataset.image_shape[:2])
  segment = functools.partial(_maskclip_batch, encode, encoder_params, text_embeddings, size,
                              background_threshold)
  return evaluate_segmentation(segment, dataset, num_classes=num_classes, batch_size=batch_size)


@dataclasses.dataclass(frozen=True)
class DenseHead:
  """Per-patch classifier on frozen patch tokens, upsampled to pixels.

  Attributes:
    num_classes: C >= 2, background included ('segmentation' values in [0, C)).
    hidden: 0 for a 1x1 linear layer, else the channels of a 3x3 conv + ReLU before it.
  """
  num_classes: int
  hidden: int = 0
  fields: ClassVar[tuple[str, ...]] = ('segmentation',)

  def __post_init__(self):
    validate.check_int(self.num_classes, 'num_classes', minimum=2)
    validate.check_int(self.hidden, 'hidden', minimum=0)

  def init(self, key: Array, features: Features) -> dict:
    return _layers.patch_head_init(key, features.patch_tokens.shape[-1], self.num_classes,
                                   self.hidden)

  def logits(self, params: dict, features: Features, size: tuple[int, int]) -> Array:
    """Pixel logits [B, H, W, C] of features (patch_tokens [B, h, w, E])."""
    return upsample(_layers.patch_head(params, features.patch_tokens), size)

  def loss(self, params: dict, features: Features,
           batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
    labels = batch['segmentation']
    logits = self.logits(params, features, labels.shape[1:3])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {'pixel_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}

  def check_batch(self, batch: Mapping[str, np.ndarray], name: str) -> None:
    _layers.check_int_field(batch, 'segmentation', name, shape=batch['image'].shape[:3], low=0,
                            high=self.num_classes)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _head_segment(head: DenseHead, encode: Encode, params: dict, batch: dict) -> Array:
  features = encode_features(encode, params['encoder'], batch['image'])
  size = batch['image'].shape[1:3]
  return jnp.argmax(head.logits(params['head'], features, size), -1).astype(jnp.int32)


def head_miou(head: DenseHead, encode: Encode, params: dict, dataset: Any, *,
              batch_size: int = 64) -> dict[str, Any]:
  """`evaluate_segmentation` of a trained `DenseHead` (params: `HeadState.params`)."""
  segment = functools.partial(_head_segment, head, encode, params)
  return evaluate_segmentation(segment, dataset, num_classes=head.num_classes,
                               batch_size=batch_size)
