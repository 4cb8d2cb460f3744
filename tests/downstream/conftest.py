"""Shared fixtures: one tiny frozen ViT (compiled programs are shared), small data sets."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lib import data, models
from lib.data import ArrayDataset
from lib.downstream import TapEncoder
from lib.downstream.captioning import normalize_caption

SPECIAL = ('<pad>', '<bos>', '<eos>')
TINTS = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1]],
                 np.float32)


class Encoder:
  """A headless ViT (32x32 inputs, 4x4 patches -> an 8x8 grid of width 32) and its encode."""

  def __init__(self):
    self.model = models.get_model('vit', input_shape=(32, 32, 3), num_classes=None, dim=32,
                                  depth=1, heads=2, mlp_dim=64, patch_size=4)
    self.variables = self.model.init(jax.random.key(0))
    self.encode = TapEncoder(self.model.apply, 'block0')


@pytest.fixture(scope='session')
def encoder() -> Encoder:
  return Encoder()


def tints(split: str, n: int, seed: int) -> ArrayDataset:
  """An easy synthetic set: 4 classes, each a colour tint under uniform noise."""
  rng = np.random.default_rng([seed, ('train', 'test').index(split)])
  labels = rng.integers(0, 4, n).astype(np.int32)
  noise = rng.uniform(0, 1, (n, 32, 32, 3)).astype(np.float32)
  images = 0.6 * TINTS[labels][:, None, None] + 0.4 * noise
  return ArrayDataset(name='tints', split=split, class_names=('red', 'green', 'blue', 'yellow'),
                      arrays={'image': images, 'label': labels})


@pytest.fixture(scope='session')
def tint_data() -> tuple[ArrayDataset, ArrayDataset]:
  return tints('train', 256, 0), tints('test', 128, 0)


def blocks(split: str, n: int, seed: int) -> ArrayDataset:
  """An easy synthetic scene set: one or two tinted squares (red, green or blue) on dark noise.

  Object j lies in the left (j = 0) or right (j = 1) half; fields 'label' (the first square's
  colour), 'segmentation' (0 background, 1 + colour), 'boxes' [N, 2, 4] and 'box_labels'.
  """
  rng = np.random.default_rng([seed, ('train', 'test').index(split), 1])
  images = rng.uniform(0, 0.3, (n, 32, 32, 3)).astype(np.float32)
  segmentation = np.zeros((n, 32, 32), np.int32)
  boxes, box_labels = np.zeros((n, 2, 4), np.float32), np.full((n, 2), -1, np.int32)
  for i in range(n):
    for j in range(rng.integers(1, 3)):
      colour, size = rng.integers(0, 3), rng.integers(8, 14)
      y, x = rng.integers(0, 32 - size), 16 * j + rng.integers(0, 16 - size // 2)
      x = min(x, 32 - size)
      images[i, y:y + size, x:x + size] = TINTS[colour]
      segmentation[i, y:y + size, x:x + size] = colour + 1
      boxes[i, j] = np.array([y, x, y + size, x + size]) / 32
      box_labels[i, j] = colour
  return ArrayDataset(name='blocks', split=split, class_names=('red', 'green', 'blue'),
                      arrays={'image': images, 'label': box_labels[:, 0].copy(),
                              'segmentation': segmentation, 'boxes': boxes,
                              'box_labels': box_labels},
                      categories=('red', 'green', 'blue'))


@pytest.fixture(scope='session')
def block_data() -> tuple[ArrayDataset, ArrayDataset]:
  return blocks('train', 256, 0), blocks('test', 128, 0)


@pytest.fixture(scope='session')
def shapes() -> tuple[ArrayDataset, ArrayDataset]:
  return (data.get_dataset('shapes', 'train', image_size=32, seed=0, num_examples=512),
          data.get_dataset('shapes', 'test', image_size=32, seed=0, num_examples=128))


def with_fields(dataset: ArrayDataset, **arrays: np.ndarray) -> ArrayDataset:
  """`dataset` with extra (or replaced) fields, e.g. token ids."""
  return ArrayDataset(name=dataset.name, split=dataset.split, class_names=dataset.class_names,
                      arrays={**dataset.arrays, **arrays}, categories=dataset.categories)


class WordVocab:
  """A tiny word-level tokenizer: <pad>=0, <bos>=1, <eos>=2, then the sorted words."""

  def __init__(self, texts):
    words = sorted({w for t in texts for w in normalize_caption(t).split()})
    self.tokens = list(SPECIAL) + words
    self.ids = {w: i for i, w in enumerate(self.tokens)}

  def __len__(self) -> int:
    return len(self.tokens)

  def encode(self, texts, length: int, *, bos_eos: bool) -> np.ndarray:
    """int32 [N, length]: (bos) word ids (eos), padded with 0."""
    out = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
      ids = [self.ids[w] for w in normalize_caption(text).split()]
      ids = [1, *ids, 2] if bos_eos else ids
      out[i, :len(ids)] = ids
    return out

  def decode(self, ids) -> str:
    return ' '.join(self.tokens[i] for i in ids)


@pytest.fixture(scope='session')
def block_prototypes(encoder, block_data) -> np.ndarray:
  """[4, E] stand-ins for text embeddings: the mean patch token of background and each colour.

  A patch's class is the segmentation at its centre pixel (training split).
  """
  train, _ = block_data
  tokens = np.asarray(jax.jit(encoder.encode)(encoder.variables, train.arrays['image'])[0])
  patch_labels = train.arrays['segmentation'][:, 2::4, 2::4]          # 8x8 patch centres
  return np.stack([tokens[patch_labels == k].mean(0) for k in range(4)])
