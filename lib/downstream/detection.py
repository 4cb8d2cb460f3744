"""Open-vocabulary detection on a foundation encoder, and COCO mAP through pycocotools.

Boxes are (y0, x0, y1, x1) in [0, 1] (the `lib.data` convention); detections of a batch are
`Detections(boxes [B, k, 4], scores [B, k], labels [B, k])`, label -1 marking padding.
Category i of the labels is row i of the text embeddings.

  training-free  `zero_shot_detect`: MaskCLIP's label map at patch resolution (each patch
                 takes its most similar text query, background by a background prompt or
                 a cosine threshold, as in `segmentation`); each 4-connected region of one
                 category becomes a box (its patch extent), scored by the region's mean
                 similarity to that query. Host-side (numpy, scipy.ndimage.label), like
                 the NMS of the field's detectors.
  trained        `BoxHead`, CenterNet-lite (Zhou, Wang & Krähenbühl 2019, "Objects as
                 Points") on frozen patch tokens: per patch, K class logits (target: the
                 patch holding an object's box centre; sigmoid focal loss, Lin et al. 2017)
                 and the distances from the patch centre to the box's four edges (L1 at
                 positive patches); decoding keeps 3x3 local maxima of the class scores and
                 the top `max_detections`.

`coco_map` is COCO box mAP (Lin et al. 2014): ground truth and detections become in-memory
`pycocotools` COCO objects (bbox [x, y, w, h] in pixels, area = w * h, no crowd regions)
scored by `COCOeval(..., 'bbox')`: AP averaged over IoU 0.50:0.05:0.95 (mAP), at IoU 0.5
(AP50) and 0.75 (AP75), 101-point interpolation, at most 100 detections per image,
categories without ground truth left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from lib import validate
from lib.downstream import _layers
from lib.downstream.features import Encode, Features, check_embeddings, check_patch_tokens
from lib.downstream.fitting import encode_features, predictions
from lib.downstream.segmentation import label_map, patch_text_scores

Array = jax.Array


class Detections(NamedTuple):
  """Detections of a batch, padded with label -1 (score and box of padding are ignored).

  Attributes:
    boxes: [B, k, 4] (y0, x0, y1, x1) in [0, 1].
    scores: [B, k] confidence (higher first in rank).
    labels: [B, k] int category, -1 for padding.
  """
  boxes: Any
  scores: Any
  labels: Any


def _check_boxes(boxes: np.ndarray, labels: np.ndarray, name: str) -> None:
  if boxes.ndim != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2]:
    raise ValueError(f'{name} boxes must be [N, M, 4] with labels [N, M]; got {boxes.shape} '
                     f'and {labels.shape}.')
  valid = labels >= 0
  b = boxes[valid]
  if b.size and (not np.all(np.isfinite(b)) or np.any(b[:, 2:] < b[:, :2])):
    raise ValueError(f'{name} boxes must be finite (y0, x0, y1, x1) with y1 >= y0, x1 >= x0.')


def _xywh(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(y0, x0, y1, x1) in [0, 1] -> COCO (x, y, w, h) in pixels, float64 [..., 4]."""
  h, w = size
  y0, x0, y1, x1 = np.moveaxis(boxes.astype(np.float64), -1, 0)
  return np.stack([x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h], -1)


def coco_map(gt_boxes: Any, gt_labels: Any, detections: Detections, *,
             image_size: tuple[int, int], num_classes: int) -> dict[str, float]:
  """COCO box mAP of detections against ground truth, through pycocotools.

  Args:
    gt_boxes: [N, M, 4] (y0, x0, y1, x1) in [0, 1], padded.
    gt_labels: [N, M] int in [0, num_classes), -1 for padding.
    detections: `Detections` with boxes [N, k, 4], scores [N, k], labels [N, k] (-1 padding).
    image_size: (H, W) in pixels (boxes are scaled to pixels, as COCO's are).
    num_classes: number of categories.

  Returns:
    {'mAP': AP@[.50:.95], 'AP50', 'AP75'} (0.0 when nothing was detected).

  Raises:
    ValueError: shapes that do not match, labels out of range, no ground-truth box.
  """
  validate.check_int(num_classes, 'num_classes', minimum=1)
  validate.check_ints(tuple(image_size), 'image_size', minimum=1, length=2)
  gt_boxes, gt_labels = np.asarray(gt_boxes), np.asarray(gt_labels)
  boxes, scores, labels = (np.asarray(a) for a in detections)
  _check_boxes(gt_boxes, gt_labels, 'gt')
  _check_boxes(boxes, labels, 'detections')
  if len(boxes) != len(gt_boxes) or scores.shape != labels.shape:
    raise ValueError(f'detections must cover the N={len(gt_boxes)} images with scores the '
                     f'shape of labels; got boxes {boxes.shape}, scores {scores.shape}.')
  for values, name in ((gt_labels, 'gt_labels'), (labels, 'detections.labels')):
    if values.size and (values.max() >= num_classes or values.min() < -1):
      raise ValueError(f'{name} must lie in [-1, {num_classes}); got values in '
                       f'[{values.min()}, {values.max()}].')
  if not np.any(gt_labels >= 0):
    raise ValueError('gt_labels holds no box: mAP is undefined without ground truth.')
  if not np.any(labels >= 0):
    return {'mAP': 0.0, 'AP50': 0.0, 'AP75': 0.0}
  size = tuple(int(s) for s in image_size)
  gt_xywh, det_xywh = _xywh(gt_boxes, size), _xywh(boxes, size)
  images = [{'id': i + 1, 'height': size[0], 'width': size[1]} for i in range(len(gt_boxes))]
  annotations = [{'id': n + 1, 'image_id': int(i) + 1, 'category_id': int(gt_labels[i, j]) + 1,
                  'bbox': gt_xywh[i, j].tolist(),
                  'area': float(gt_xywh[i, j, 2] * gt_xywh[i, j, 3]), 'iscrowd': 0}
                 for n, (i, j) in enumerate(zip(*np.nonzero(gt_labels >= 0)))]
  results = [{'image_id': int(i) + 1, 'category_id': int(labels[i, j]) + 1,
              'bbox': det_xywh[i, j].tolist(), 'score': float(scores[i, j])}
             for i, j in zip(*np.nonzero(labels >= 0))]
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
    gt = COCO()
    gt.dataset = {'images': images, 'annotations': annotations,
                  'categories': [{'id': c + 1, 'name': str(c)} for c in range(num_classes)]}
    gt.createIndex()
    evaluator = COCOeval(gt, gt.loadRes(results), 'bbox')
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  stats = evaluator.stats
  return {'mAP': float(stats[0]), 'AP50': float(stats[1]), 'AP75': float(stats[2])}


def zero_shot_detect(patch_tokens: Any, text_embeddings: Any, *,
                     background_threshold: float | None = None,
                     max_detections: int = 20) -> Detections:
  """Training-free boxes from connected regions of patches labelled alike (numpy).

  Patches are labelled as `segmentation.label_map` labels them (MaskCLIP at patch
  resolution): with `background_threshold=None` row 0 of `text_embeddings` is a background
  prompt and category c is row c + 1; with a threshold the rows are the categories and a
  patch whose best cosine is below it is background. Each 4-connected region of one
  category becomes a box (the region's patch extent) scored by the mean cosine of its
  patches with that category's row.

  Args:
    patch_tokens: [B, h, w, E].
    text_embeddings: [K, E], see above.
    background_threshold: None or a cosine in [-1, 1].
    max_detections: k, the regions kept per image (highest score first).

  Returns:
    `Detections` as numpy arrays, padded to k.
  """
  patch_tokens, text_embeddings = jnp.asarray(patch_tokens), jnp.asarray(text_embeddings)
  check_patch_tokens(patch_tokens)
  check_embeddings(text_embeddings, patch_tokens.shape[-1], 'text_embeddings')
  if background_threshold is not None:
    validate.check_number(background_threshold, 'background_threshold', low=-1.0, high=1.0)
  validate.check_int(max_detections, 'max_detections', minimum=1)
  scores = patch_text_scores(patch_tokens, text_embeddings)
  labels = np.asarray(label_map(scores, background_threshold))
  scores = np.asarray(scores)
  first_category = 1 if background_threshold is None else 0    # row of category 0
  b, h, w, _ = scores.shape
  out = Detections(np.zeros((b, max_detections, 4), np.float32),
                   np.zeros((b, max_detections), np.float32),
                   np.full((b, max_detections), -1, np.int32))
  for i in range(b):
    found = []
    for c in np.unique(labels[i][labels[i] > 0]) - 1:
      regions, _ = ndimage.label(labels[i] == c + 1)
      row = scores[i, ..., c + first_category]
      for r, (ys, xs) in enumerate(ndimage.find_objects(regions), start=1):
        box = (ys.start / h, xs.start / w, ys.stop / h, xs.stop / w)
        found.append((row[regions == r].mean(), c, box))
    found.sort(key=lambda f: -f[0])
    for j, (score, c, box) in enumerate(found[:max_detections]):
      out.boxes[i, j], out.scores[i, j], out.labels[i, j] = box, score, c
  return out


def _patch_centres(h: int, w: int) -> Array:
  """[h * w, 2] (y, x) centres of the patches in [0, 1], row-major."""
  ys, xs = jnp.meshgrid((jnp.arange(h, dtype=jnp.float32) + 0.5) / h,
                        (jnp.arange(w, dtype=jnp.float32) + 0.5) / w, indexing='ij')
  return jnp.stack([ys.ravel(), xs.ravel()], -1)


@dataclasses.dataclass(frozen=True)
class BoxHead:
  """CenterNet-lite box head on frozen patch tokens (see the module docstring).

  Attributes:
    num_classes: K >= 1 categories ('box_labels' in [0, K), -1 padding).
    hidden: 0 for 1x1 outputs, else channels of a 3x3 conv + ReLU before them.
    max_detections: k, detections kept per image when decoding.
    box_weight: weight of the L1 box loss against the focal loss.
  """
  num_classes: int
  hidden: int = 64
  max_detections: int = 20
  box_weight: float = 5.0
  fields: ClassVar[tuple[str, ...]] = ('boxes', 'box_labels')

  def __post_init__(self):
    validate.check_int(self.num_classes, 'num_classes', minimum=1)
    validate.check_int(self.hidden, 'hidden', minimum=0)
    validate.check_int(self.max_detections, 'max_detections', minimum=1)
    validate.check_number(self.box_weight, 'box_weight', low=0.0)

  def init(self, key: Array, features: Features) -> dict:
    # Class bias -log((1 - 0.01) / 0.01): a 1% prior, as RetinaNet initialises focal heads.
    k1, k2 = jax.random.split(key)
    dim = features.patch_tokens.shape[-1]
    return {'cls': _layers.patch_head_init(k1, dim, self.num_classes, self.hidden, bias=-4.6),
            'box': _layers.patch_head_init(k2, dim, 4, self.hidden, bias=0.1)}

  def outputs(self, params: dict, features: Features) -> tuple[Array, Array]:
    """(class logits [B, h*w, K], edge distances [B, h*w, 4] as (top, left, bottom, right))."""
    b, h, w, _ = features.patch_tokens.shape
    cls = _layers.patch_head(params['cls'], features.patch_tokens).reshape(b, h * w, -1)
    box = _layers.patch_head(params['box'], features.patch_tokens).reshape(b, h * w, 4)
    return cls, box

  def loss(self, params: dict, features: Features,
           batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
    _, h, w, _ = features.patch_tokens.shape
    cls, dist = self.outputs(params, features)
    boxes, labels = batch['boxes'], batch['box_labels']
    valid = (labels >= 0).astype(jnp.float32)                                 # [B, M]
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    cell = jnp.clip(jnp.floor(centre * jnp.array([h, w], jnp.float32)).astype(jnp.int32), 0,
                    jnp.array([h - 1, w - 1]))
    at = jax.nn.one_hot(cell[..., 0] * w + cell[..., 1], h * w) * valid[..., None]  # [B, M, P]
    heat = jnp.minimum(jnp.einsum('bmp,bmk->bpk', at, jax.nn.one_hot(labels, self.num_classes)),
                       1.0)
    count = at.sum(1)                                                          # [B, P]
    pc = _patch_centres(h, w)[None, None]                                       # [1,1,P,2]
    target = jnp.concatenate([pc - boxes[:, :, None, :2], boxes[:, :, None, 2:] - pc], -1)
    target = jnp.einsum('bmp,bmpd->bpd', at, target) / jnp.maximum(count, 1.0)[..., None]
    positive = (count > 0).astype(jnp.float32)
    num_pos = jnp.maximum(positive.sum(), 1.0)
    focal = optax.sigmoid_focal_loss(cls, heat, alpha=0.25, gamma=2.0).sum() / num_pos
    l1 = (jnp.abs(dist - target).sum(-1) * positive).sum() / num_pos
    hit = jnp.argmax(cls, -1) == jnp.argmax(heat, -1)
    return focal + self.box_weight * l1, {
        'focal': focal, 'box_l1': l1,
        'centre_accuracy': jnp.where(hit, positive, 0.0).sum() / num_pos}

  def detect(self, params: dict, features: Features) -> Detections:
    """Top-k 3x3-peak detections of a batch (`Detections` of jax arrays, k = max_detections)."""
    b, h, w, _ = features.patch_tokens.shape
    cls, dist = self.outputs(params, features)
    scores = jax.nn.sigmoid(cls).reshape(b, h, w, -1)
    peaks = jax.lax.reduce_window(scores, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1),
                                  'SAME')
    scores = jnp.where(scores == peaks, scores, 0.0).reshape(b, -1)
    k = min(self.max_detections, scores.shape[1])
    top, index = jax.lax.top_k(scores, k)
    patch, label = index // self.num_classes, index % self.num_classes
    pc = _patch_centres(h, w)[patch]                                           # [B, k, 2]
    d = jnp.take_along_axis(dist, patch[..., None], axis=1)
    boxes = jnp.clip(jnp.concatenate([pc - d[..., :2], pc + d[..., 2:]], -1), 0.0, 1.0)
    boxes = jnp.concatenate([boxes[..., :2], jnp.maximum(boxes[..., 2:], boxes[..., :2])], -1)
    return Detections(boxes, top, label.astype(jnp.int32))

  def check_batch(self, batch: Mapping[str, np.ndarray], name: str) -> None:
    labels = np.asarray(batch['box_labels'])
    _layers.check_int_field(batch, 'box_labels', name, shape=(len(batch['image']), None),
                            low=-1, high=self.num_classes)
    if np.shape(batch['boxes']) != (*labels.shape, 4):
      raise ValueError(f"{name}['boxes'] must have shape {(*labels.shape, 4)}; got "
                       f"{np.shape(batch['boxes'])}.")


def evaluate_detection(detect: Callable[[dict[str, Array]], Any], dataset: Any, *,
                       num_classes: int, batch_size: int = 64) -> dict[str, float]:
  """`coco_map` of `detect` (jitted `batch -> Detections`) over a whole split.

  Args:
    detect: reads batch['image'] and returns `Detections` of the batch.
    dataset: a split with 'boxes' [N, M, 4] and 'box_labels' [N, M].
    num_classes: number of categories.
    batch_size: evaluation batch size.
  """
  gt_boxes, gt_labels, found = [], [], []
  for dets, batch in predictions(detect, dataset, fields=('image',),
                                 needs=('boxes', 'box_labels'), batch_size=batch_size):
    gt_boxes.append(batch['boxes'])
    gt_labels.append(batch['box_labels'])
    found.append(dets)
  detections = Detections(*(np.concatenate(parts) for parts in zip(*found)))
  return coco_map(np.concatenate(gt_boxes), np.concatenate(gt_labels), detections,
                  image_size=dataset.image_shape[:2], num_classes=num_classes)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _head_detect(head: BoxHead, encode: Encode, params: dict, batch: dict) -> Detections:
  return head.detect(params['head'], encode_features(encode, params['encoder'], batch['image']))


def head_map(head: BoxHead, encode: Encode, params: dict, dataset: Any, *,
             batch_size: int = 64) -> dict[str, float]:
  """`evaluate_detection` of a trained `BoxHead` (params: `HeadState.params`)."""
  return evaluate_detection(functools.partial(_head_detect, head, encode, params), dataset,
                            num_classes=head.num_classes, batch_size=batch_size)


@functools.partial(jax.jit, static_argnums=0)
def _patch_tokens(encode: Encode, params: Any, batch: dict) -> Array:
  return encode_features(encode, params, batch['image']).patch_tokens


def zero_shot_map(encode: Encode, encoder_params: Any, text_embeddings: Any, dataset: Any, *,
                  num_classes: int, background_threshold: float | None = None,
                  max_detections: int = 20, batch_size: int = 64) -> dict[str, float]:
  """`evaluate_detection` of training-free `zero_shot_detect` over `num_classes` categories."""
  tokens = functools.partial(_patch_tokens, encode, encoder_params)
  detect = lambda batch: zero_shot_detect(tokens(batch), text_embeddings,
                                          background_threshold=background_threshold,
                                          max_detections=max_detections)
  return evaluate_detection(detect, dataset, num_classes=num_classes, batch_size=batch_size)
