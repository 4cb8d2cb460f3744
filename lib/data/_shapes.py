"""The shapes data set: procedural scenes with labels, evidence masks, boxes and text.

Each image shows one class object whose shape kind is the label (KINDS: circle, square,
triangle, cross, star, ring, crescent, diamond), of a random palette colour (COLOURS),
size 30-50% of the side (the diameter of the disc it fits in), rotated, on a low-saturation
textured background (striped, checkered or mottled), plus 0-2 distractors (bars and dots,
never a class kind) in colours other than the class object's, kept clear of it. Colour and
texture carry no information about the label, so a classifier has to see the shape.

Fields of a batch (see `lib.data._dataset` for dtypes): 'image' [B, S, S, 3], 'label',
'mask' (class object's visible pixels), 'segmentation' (0 background, i + 1 for
`CATEGORIES[i]`: ids 1-8 the class kinds, 9 'bar', 10 'dot'), 'boxes' [B, 3, 4] and
'box_labels' [B, 3] (class object first, then distractors, padded with -1), 'caption',
'question' and 'answer' [B, 4] (see `lib.data._shapes_text`).

Scenes are drawn in chunks of 1024 from `np.random.default_rng([seed, split_stream,
chunk])`, with split streams 0 (train), 1 (validation), 2 (test), so splits never share a
stream, example i does not depend on `num_examples`, and one seed gives the same scenes
at every image size. A split is generated once, when first requested, and cached in memory.
"""

from __future__ import annotations

import functools

import numpy as np

from lib.data import _shapes_render, _shapes_scene, _shapes_text
from lib.data._checks import check_int
from lib.data._dataset import ArrayDataset
from lib.data._shapes_geometry import KINDS
from lib.validate import check_choice

SPLITS = ('train', 'validation', 'test')
DEFAULT_NUM_EXAMPLES = {'train': 10_000, 'validation': 1_000, 'test': 2_000}
IMAGE_SIZES = tuple(range(32, 257, 8))
_SCENE_CHUNK = 1024
_RENDER_PIXELS = 2**18  # Pixels rendered per vectorised pass (bounds temporary memory).


def _sample(seed: int, split: str, num_examples: int) -> _shapes_scene.Scenes:
  """The first `num_examples` scenes of a split's stream."""
  stream = SPLITS.index(split)
  chunks = [_shapes_scene.sample_scenes(np.random.default_rng([seed, stream, chunk]), _SCENE_CHUNK)
            for chunk in range(-(-num_examples // _SCENE_CHUNK))]
  return _shapes_scene.Scenes.concatenate(chunks).take(slice(num_examples))


@functools.lru_cache(maxsize=4)  # A split at 64 px is 12 MB per 1000 images.
def _generate(split: str, image_size: int, seed: int, num_examples: int) -> ArrayDataset:
  scenes = _sample(seed, split, num_examples)
  step = max(1, _RENDER_PIXELS // image_size**2)
  parts = [_shapes_render.render(scenes.take(slice(start, start + step)), image_size)
           for start in range(0, num_examples, step)]
  arrays = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
  arrays['label'] = scenes.label.astype(np.int32)
  arrays['caption'], arrays['question'], arrays['answer'] = _shapes_text.describe(scenes)
  return ArrayDataset(name='shapes', split=split, class_names=KINDS, arrays=arrays,
                      categories=_shapes_scene.CATEGORIES)


def load(split: str, *, image_size: int | None, seed: int,
         num_examples: int | None = None) -> ArrayDataset:
  """Generates (or returns the cached) split of the shapes data set.

  Args:
    split: 'train', 'validation' or 'test'.
    image_size: side S in pixels, a multiple of 8 in [32, 256]; None for 32.
    seed: scene seed, >= 0.
    num_examples: split size; None for DEFAULT_NUM_EXAMPLES[split].

  Returns:
    An ArrayDataset with images [N, S, S, 3] and all annotation fields.
  """
  check_choice(split, SPLITS, 'split')
  image_size = 32 if image_size is None else image_size
  check_choice(image_size, IMAGE_SIZES, 'image_size')
  check_int(seed, 'seed', minimum=0)
  num_examples = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else num_examples
  check_int(num_examples, 'num_examples', minimum=1)
  return _generate(split, int(image_size), int(seed), int(num_examples))
