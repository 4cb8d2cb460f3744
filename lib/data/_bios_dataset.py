"""The in-memory text Dataset shared by 'bios' (generated) and 'bias_in_bios' (local files).

A batch is a dict of numpy arrays sharing the leading batch axis B:

- 'text': str [B], one biography with pronouns replaced by they/them/their.
- 'profession': int32 [B], index into PROFESSIONS (the desired task of Henderson et al.).
- 'gender': int32 [B], index into GENDERS: 0 male, 1 female (the coding of the Hugging Face
  `LabHC/bias_in_bios` files; the harmful task).
- 'label': int32 [B], a copy of the field named by the dataset's `task`.

There is no image: `image_shape` is None, so code that builds an image model from
`dataset.image_shape` (e.g. experiments/classifier.py) does not apply; text models read
'text' through a tokeniser (lib/text).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from lib.data._dataset import Batch, check_indices
from lib.validate import check_choice

# The 28 Bias in Bios professions, in the label order of `LabHC/bias_in_bios`.
PROFESSIONS = (
    'accountant', 'architect', 'attorney', 'chiropractor', 'comedian', 'composer', 'dentist',
    'dietitian', 'dj', 'filmmaker', 'interior_designer', 'journalist', 'model', 'nurse',
    'painter', 'paralegal', 'pastor', 'personal_trainer', 'photographer', 'physician', 'poet',
    'professor', 'psychologist', 'rapper', 'software_engineer', 'surgeon', 'teacher',
    'yoga_teacher')
GENDERS = ('male', 'female')
TASKS = {'profession': PROFESSIONS, 'gender': GENDERS}


def check_task(task: str) -> None:
  """Raises ValueError unless `task` is 'profession' or 'gender'."""
  check_choice(task, tuple(TASKS), 'task')


@dataclasses.dataclass(frozen=True, eq=False)
class BiosDataset:
  """A split of biographies held in memory; `get` gathers rows.

  Both label fields are always present; `task` only chooses which one is copied to
  'label' and which class names `class_names` and `num_classes` describe.

  Attributes:
    name: registry name ('bios' or 'bias_in_bios').
    split: split name.
    task: 'profession' (28 classes) or 'gender' (2 classes).
    text: object [N] of str, the biographies.
    profession: int32 [N], index into PROFESSIONS.
    gender: int32 [N], index into GENDERS.
  """

  name: str
  split: str
  task: str
  text: np.ndarray
  profession: np.ndarray
  gender: np.ndarray
  image_shape: ClassVar[None] = None
  profession_names: ClassVar[tuple[str, ...]] = PROFESSIONS
  gender_names: ClassVar[tuple[str, ...]] = GENDERS

  def __post_init__(self):
    check_task(self.task)
    for field in ('text', 'profession', 'gender'):
      values = getattr(self, field)
      if values.shape != self.text.shape[:1] or values.ndim != 1:
        raise ValueError(f'{field} must have shape [{len(self.text)}]; got {values.shape}.')
      values.flags.writeable = False

  @property
  def class_names(self) -> tuple[str, ...]:
    """Names of the classes of `task`."""
    return TASKS[self.task]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.text)

  def get(self, indices: np.ndarray) -> Batch:
    """Gathers the rows at `indices` (int [B]): 'text', 'profession', 'gender', 'label'."""
    indices = check_indices(indices, len(self))
    batch = {'text': np.array(self.text[indices].tolist(), dtype=np.str_),
             'profession': self.profession[indices].astype(np.int32),
             'gender': self.gender[indices].astype(np.int32)}
    batch['label'] = batch[self.task].copy()
    return batch
