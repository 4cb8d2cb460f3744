"""Captions and question/answer pairs describing shapes scenes.

Example caption: "a red triangle, a blue bar and an orange dot on a striped background";
the class object is always named first, and two identical distractors are counted
("a red triangle and two blue bars on a ..."). The class object's colour is unique in its
scene, so "the red object" is unambiguous. Questions per scene, in this order:

  what shape is the <colour> object?   -> class kind, e.g. "triangle"
  what colour is the <kind>?           -> class object colour, e.g. "red"
  how many objects are there?          -> "1", "2" or "3"
  what pattern is the background?      -> "striped", "checkered" or "mottled"
"""

from __future__ import annotations

import numpy as np

from lib.data._shapes_geometry import KINDS
from lib.data._shapes_scene import COLOUR_NAMES, DISTRACTOR_KINDS, TEXTURES, Scenes


def _join(phrases: list[str]) -> str:
  """'a', 'a and b', 'a, b and c'."""
  return phrases[0] if len(phrases) == 1 else f'{", ".join(phrases[:-1])} and {phrases[-1]}'


def _a(phrase: str) -> str:
  """The phrase with its indefinite article: 'a red dot', 'an orange dot'."""
  return f'{"an" if phrase[0] in "aeiou" else "a"} {phrase}'


def _object_phrases(colour: int, kind: int, distractors: list[tuple[bool, int, int]]) -> list[str]:
  """Noun phrases of a scene's objects, class object first.

  Args:
    colour: class object colour index.
    kind: class object kind index (the label).
    distractors: (present, colour index, distractor kind index) per slot.
  """
  phrases = [_a(f'{COLOUR_NAMES[colour]} {KINDS[kind]}')]
  named = [f'{COLOUR_NAMES[c]} {DISTRACTOR_KINDS[k]}' for present, c, k in distractors if present]
  if len(named) == 2 and named[0] == named[1]:
    return phrases + [f'two {named[0]}s']
  return phrases + [_a(name) for name in named]


def describe(scenes: Scenes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Captions and question/answer pairs of n scenes.

  Args:
    scenes: n scene descriptions.

  Returns:
    (caption str [n], question str [n, 4], answer str [n, 4]).
  """
  captions, questions, answers = [], [], []
  rows = zip(scenes.colour.tolist(), scenes.label.tolist(), scenes.texture.tolist(),
             scenes.distractor_present.tolist(), scenes.distractor_colour.tolist(),
             scenes.distractor_kind.tolist())
  for colour, kind, texture, *distractors in rows:
    distractors = list(zip(*distractors))
    objects = _object_phrases(colour, kind, distractors)
    colour_name, kind_name, texture_name = COLOUR_NAMES[colour], KINDS[kind], TEXTURES[texture]
    captions.append(f'{_join(objects)} on a {texture_name} background')
    questions.append((f'what shape is the {colour_name} object?',
                      f'what colour is the {kind_name}?',
                      'how many objects are there?',
                      'what pattern is the background?'))
    count = 1 + sum(present for present, _, _ in distractors)
    answers.append((kind_name, colour_name, str(count), texture_name))
  return np.array(captions), np.array(questions), np.array(answers)
