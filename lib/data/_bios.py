"""The bios data set: generated biographies with a profession, a gender and tunable leakage.

An offline stand-in for Bias in Bios as Henderson et al. (2023) use it: the desired task
is the profession (the 28 Bias in Bios classes, drawn uniformly), the harmful task is the
gender, and pronouns are already they/them/their, so gender can leak only through first
names and gendered words. Two knobs set how much it leaks (text in `lib.data._bios_text`):

- gender_leak in [0, 1]: the probability that the first name is drawn from the gender's
  names (otherwise from all names, female, male and neutral alike) and, separately, that a
  family sentence (in about 30% of biographies whatever the gender) uses gendered words
  ('mother of two' for 'parent of two'). At 0 the text is independent of the gender; at 1
  every name matches the gender.
- gender_correlation in [0, 1]: P(female | profession) = 0.5 + gender_correlation *
  (FEMALE_SHARE[profession] - 0.5), where FEMALE_SHARE is about the share of women per
  profession in Bias in Bios (nurse 0.91, surgeon 0.15). At 0 gender is a fair coin
  independent of the profession, so with gender_leak=0 gender cannot be predicted above
  chance from the text. At the default 0.5 the profession alone predicts gender with about
  61% accuracy (72% at 1), a floor that no profession-preserving model can go below.

Fields of a batch: see `lib.data._bios_dataset` ('text', 'profession', 'gender', 'label').

Biographies are drawn in chunks of 1024 from `np.random.default_rng([seed, split_stream,
chunk])`, split streams 0 (train), 1 (validation), 2 (test), so splits never share a
stream and example i does not depend on `num_examples`. Every biography uses the same
uniform draws whatever the knobs, so changing gender_leak changes only names and family
wording, and changing gender_correlation only flips some genders. A split is generated
once, when first requested, and cached in memory.
"""

from __future__ import annotations

import functools

import numpy as np

from lib.data import _bios_text
from lib.data._bios_dataset import PROFESSIONS, BiosDataset, check_task
from lib.data._checks import check_int
from lib.validate import check_choice, check_number

SPLITS = ('train', 'validation', 'test')
DEFAULT_NUM_EXAMPLES = {'train': 10_000, 'validation': 1_000, 'test': 2_000}
DEFAULT_GENDER_CORRELATION = 0.5
# Approximate share of women per profession in Bias in Bios (De-Arteaga et al., 2019).
FEMALE_SHARE = dict(zip(PROFESSIONS, (
    0.37, 0.24, 0.38, 0.27, 0.21, 0.17, 0.35, 0.93, 0.14, 0.33, 0.81, 0.50, 0.83, 0.91,
    0.46, 0.85, 0.24, 0.46, 0.35, 0.49, 0.49, 0.45, 0.62, 0.10, 0.16, 0.15, 0.60, 0.85)))
_CHUNK = 1024
# Columns drawn per biography besides `_bios_text.DRAWS`: profession, gender.
_LABEL_DRAWS = 2


def _sample_chunk(rng: np.random.Generator, size: int, gender_leak: float,
                  gender_correlation: float) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(texts, professions int32, genders int32) of `size` biographies."""
  u = rng.random((size, _LABEL_DRAWS + len(_bios_text.DRAWS)))
  professions = (u[:, 0] * len(PROFESSIONS)).astype(np.int32)
  shares = np.array([FEMALE_SHARE[name] for name in PROFESSIONS])[professions]
  genders = (u[:, 1] < 0.5 + gender_correlation * (shares - 0.5)).astype(np.int32)
  texts = [_bios_text.biography(row, profession, gender, gender_leak)
           for row, profession, gender in zip(u[:, _LABEL_DRAWS:], professions.tolist(),
                                              genders.tolist())]
  return texts, professions, genders


@functools.lru_cache(maxsize=8)
def _generate(split: str, seed: int, num_examples: int, gender_leak: float,
              gender_correlation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(texts object [N], professions int32 [N], genders int32 [N]) of a split, read-only."""
  stream = SPLITS.index(split)
  chunks = [_sample_chunk(np.random.default_rng([seed, stream, chunk]), _CHUNK, gender_leak,
                          gender_correlation)
            for chunk in range(-(-num_examples // _CHUNK))]
  texts = np.empty(num_examples, dtype=object)
  texts[:] = [text for chunk in chunks for text in chunk[0]][:num_examples]
  professions = np.concatenate([chunk[1] for chunk in chunks])[:num_examples]
  genders = np.concatenate([chunk[2] for chunk in chunks])[:num_examples]
  return texts, professions, genders


def load(split: str, *, image_size: int | None, seed: int, num_examples: int | None = None,
         task: str = 'profession', gender_leak: float = 1.0,
         gender_correlation: float = DEFAULT_GENDER_CORRELATION) -> BiosDataset:
  """Generates (or returns the cached) split of the bios data set.

  Args:
    split: 'train', 'validation' or 'test'.
    image_size: must be None (the data set is text).
    seed: generator seed, >= 0.
    num_examples: split size; None for DEFAULT_NUM_EXAMPLES[split].
    task: 'profession' (28 classes) or 'gender' (2 classes): the field copied to 'label'.
    gender_leak: in [0, 1], how much the text reveals the gender (module docstring).
    gender_correlation: in [0, 1], how strongly the profession predicts the gender.

  Returns:
    A BiosDataset (text; `image_shape` is None).
  """
  check_choice(split, SPLITS, 'split')
  if image_size is not None:
    raise ValueError(f"image_size must be None for the text data set 'bios'; got {image_size!r}.")
  check_int(seed, 'seed', minimum=0)
  num_examples = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else num_examples
  check_int(num_examples, 'num_examples', minimum=1)
  check_task(task)
  check_number(gender_leak, 'gender_leak', low=0, high=1)
  check_number(gender_correlation, 'gender_correlation', low=0, high=1)
  texts, professions, genders = _generate(split, int(seed), int(num_examples), float(gender_leak),
                                          float(gender_correlation))
  return BiosDataset(name='bios', split=split, task=task, text=texts, profession=professions,
                     gender=genders)
