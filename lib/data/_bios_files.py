"""Bias in Bios read from local files, split 85/5/10 as in Henderson et al. (2023).

Formats, chosen by file suffix:

- '.parquet': the Hugging Face `LabHC/bias_in_bios` files, columns 'hard_text' (str),
  'profession' (int 0-27, in the order of PROFESSIONS) and 'gender' (int, 0 male, 1
  female); other columns are ignored. Read with pyarrow.
- '.jsonl': JSON lines, one record of microsoft/biosbias (its BIOS.pkl list written out
  with `json.dumps` per record): 'title' (a profession string such as 'software_engineer';
  case, spaces and hyphens are normalised), 'gender' ('F' or 'M'), 'raw' (the whole
  biography); other keys ('bio', 'name', 'start_pos', ...) are ignored. The raw records hold
  five titles outside the 28 classes (e.g. 'magician'): pass drop_unknown=True to skip them.

Either column may be an int or a string in either format (gender 'F'/'female' is 1,
'M'/'male' is 0). The text is taken from `text_field` (default 'hard_text' for parquet,
'raw' for JSON lines: the field the authors' code de-pronouns) and its pronouns are
replaced, whole words only and keeping the case ('She' -> 'They', 'HIS' -> 'THEIR'):

  he, she -> they;  him -> them;  his, her -> their;  hers -> theirs;  himself, herself -> themself

'her' is ambiguous (object 'them' or possessive 'their'): it always becomes 'their', as in
the authors' preprocessing. Verb agreement is not changed ('they is'), nor are contractions
('he's' -> "they's").

Every row of every file found is pooled (files in sorted path order), shuffled with
`np.random.default_rng(seed).permutation`, and split: the first floor(0.85 N) rows are
'train', the rows up to floor(0.90 N) 'validation', the rest 'test'. LabHC's own
train/dev/test files are thus pooled and re-split, as the paper does with the raw data.
The pooled rows are cached in memory (the whole LabHC set: about 400k rows, 0.5 GB).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re

import numpy as np

from lib.data._bios_dataset import GENDERS, PROFESSIONS, BiosDataset, check_task
from lib.data._checks import check_int
from lib.validate import check_bool, check_choice

SPLITS = ('train', 'validation', 'test')
SUFFIXES = ('.parquet', '.jsonl')
# Split boundaries in percent of the pooled rows: train [0, 85), validation [85, 90), test.
_SPLIT_PERCENT = {'train': (0, 85), 'validation': (85, 90), 'test': (90, 100)}
_DEFAULT_TEXT_FIELD = {'.parquet': 'hard_text', '.jsonl': 'raw'}
_LABEL_FIELDS = {'.parquet': ('profession', 'gender'), '.jsonl': ('title', 'gender')}
PRONOUNS = {'he': 'they', 'she': 'they', 'him': 'them', 'his': 'their', 'her': 'their',
            'hers': 'theirs', 'himself': 'themself', 'herself': 'themself'}
_PRONOUN_PATTERN = re.compile(r'\b(?:' + '|'.join(PRONOUNS) + r')\b', re.IGNORECASE)
_GENDER_IDS = {'m': 0, 'male': 0, 'f': 1, 'female': 1}
_PROFESSION_IDS = {name: i for i, name in enumerate(PROFESSIONS)}

# One source file with what identifies its contents: (path, size in bytes, mtime in ns).
_FileKey = tuple[str, int, int]


def _same_case(word: str, replacement: str) -> str:
  if len(word) > 1 and word.isupper():
    return replacement.upper()
  return replacement.capitalize() if word[0].isupper() else replacement


def _replacement(match: re.Match) -> str:
  return _same_case(match.group(), PRONOUNS[match.group().lower()])


def replace_pronouns(text: str) -> str:
  """`text` with he/she/him/her/his/hers/himself/herself replaced (see PRONOUNS)."""
  return _PRONOUN_PATTERN.sub(_replacement, text)


def _find_files(path: str | os.PathLike) -> tuple[_FileKey, ...]:
  """The data files at `path` (a file, or a directory searched recursively)."""
  if path is None:
    raise ValueError("path is required for 'bias_in_bios': a .parquet or .jsonl file or a "
                     'directory holding them.')
  root = pathlib.Path(path)
  if root.is_dir():
    files = sorted(file for suffix in SUFFIXES for file in root.rglob(f'*{suffix}'))
    if not files:
      raise ValueError(f'path={str(path)!r} holds no {" or ".join(SUFFIXES)} files.')
  elif root.is_file():
    if root.suffix not in SUFFIXES:
      raise ValueError(f'path={str(path)!r} must end in one of {list(SUFFIXES)}.')
    files = [root]
  else:
    raise ValueError(f'path={str(path)!r} does not exist.')
  return tuple((str(file), file.stat().st_size, file.stat().st_mtime_ns) for file in files)


def _read_parquet(file: str, fields: tuple[str, str, str]) -> list[np.ndarray]:
  """The columns `fields` of a parquet file as numpy arrays."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top  (only this loader needs it)

  names = pq.read_schema(file).names
  missing = [field for field in fields if field not in names]
  if missing:
    raise ValueError(f'{file} lacks column(s) {missing}; it has {names}.')
  table = pq.read_table(file, columns=list(fields))
  return [table.column(field).to_numpy(zero_copy_only=False) for field in fields]


def _read_jsonl(file: str, fields: tuple[str, str, str]) -> list[np.ndarray]:
  """The fields `fields` of every record of a JSON-lines file as numpy arrays."""
  rows = []
  with open(file, encoding='utf-8') as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f'{file}:{number} is not a JSON record: {error}.') from None
      if not isinstance(record, dict):
        raise ValueError(f'{file}:{number} is not a JSON object; got {type(record).__name__}.')
      missing = [field for field in fields if field not in record]
      if missing:
        raise ValueError(f'{file}:{number} lacks field(s) {missing}; it has {sorted(record)}.')
      rows.append([record[field] for field in fields])
  columns = list(zip(*rows)) if rows else [(), (), ()]
  return [np.array(column, dtype=object) for column in columns]


def _as_ints(values: np.ndarray) -> np.ndarray:
  """`values` as int64 when every entry is an integer (e.g. JSON numbers), else unchanged."""
  if values.dtype == object and all(isinstance(value, int) and not isinstance(value, bool)
                                    for value in values):
    return values.astype(np.int64)
  return values


def _profession_ids(values: np.ndarray, file: str) -> np.ndarray:
  """int64 indices into PROFESSIONS; -1 for a title outside them (ints must be in range)."""
  values = _as_ints(values)
  if values.dtype.kind in 'iu':
    if values.size and (values.min() < 0 or values.max() >= len(PROFESSIONS)):
      raise ValueError(f'{file}: profession ids must lie in [0, {len(PROFESSIONS)}); got '
                       f'values in [{values.min()}, {values.max()}].')
    return values.astype(np.int64)
  names = (re.sub(r'[\s-]+', '_', str(value).strip().lower()) for value in values)
  return np.array([_PROFESSION_IDS.get(name, -1) for name in names], dtype=np.int64)


def _gender_ids(values: np.ndarray, file: str) -> np.ndarray:
  """int64 indices into GENDERS from ints 0/1 or strings 'M'/'F'/'male'/'female'."""
  values = _as_ints(values)
  if values.dtype.kind in 'iu':
    ids = values.astype(np.int64)
  else:
    ids = np.array([_GENDER_IDS.get(str(value).strip().lower(), -1) for value in values])
  bad = ~np.isin(ids, range(len(GENDERS)))
  if bad.any():
    found = sorted({str(value) for value in values[bad]})
    raise ValueError(f"{file}: gender must be 0/1 or 'M'/'F'; got {found[:5]}.")
  return ids


def _read_file(file: str, text_field: str | None, drop_unknown: bool) -> list[np.ndarray]:
  """(texts object [n], professions [n], genders [n]) of one file, pronouns replaced."""
  suffix = pathlib.Path(file).suffix
  fields = (text_field or _DEFAULT_TEXT_FIELD[suffix],) + _LABEL_FIELDS[suffix]
  reader = _read_parquet if suffix == '.parquet' else _read_jsonl
  texts, professions, genders = reader(file, fields)
  if any(not isinstance(text, str) for text in texts):
    raise ValueError(f'{file}: every {fields[0]!r} must be a string.')
  profession_ids = _profession_ids(professions, file)
  unknown = profession_ids < 0
  if unknown.any() and not drop_unknown:
    names = sorted({str(name) for name in professions[unknown]})
    raise ValueError(f'{file}: unknown profession(s) {names[:10]}; expected one of '
                     f'{list(PROFESSIONS)}, or pass drop_unknown=True to skip those rows.')
  keep = ~unknown
  text_array = np.empty(int(keep.sum()), dtype=object)
  text_array[:] = [replace_pronouns(text) for text in texts[keep]]
  return [text_array, profession_ids[keep], _gender_ids(genders[keep], file)]


@functools.lru_cache(maxsize=2)
def _pooled(files: tuple[_FileKey, ...], text_field: str | None, drop_unknown: bool,
            seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(texts, professions int32, genders int32) of all files, shuffled with `seed`."""
  parts = [_read_file(file, text_field, drop_unknown) for file, _, _ in files]
  texts, professions, genders = (np.concatenate(column) for column in zip(*parts))
  order = np.random.default_rng(seed).permutation(len(texts))
  return texts[order], professions[order].astype(np.int32), genders[order].astype(np.int32)


def load(split: str, *, image_size: int | None, seed: int, path: str | os.PathLike | None = None,
         task: str = 'profession', text_field: str | None = None,
         drop_unknown: bool = False) -> BiosDataset:
  """Loads a split of Bias in Bios from local files (module docstring).

  Args:
    split: 'train' (85%), 'validation' (5%) or 'test' (10%).
    image_size: must be None (the data set is text).
    seed: seed of the shuffle before splitting, >= 0; every split of one seed is disjoint.
    path: a .parquet or .jsonl file, or a directory searched recursively for them.
    task: 'profession' (28 classes) or 'gender' (2 classes): the field copied to 'label'.
    text_field: the column or key holding the text; None for 'hard_text' (parquet) or 'raw'
      (JSON lines).
    drop_unknown: skip rows whose profession is not one of the 28 (else a ValueError).

  Returns:
    A BiosDataset (text; `image_shape` is None).

  Raises:
    ValueError: for a missing path, no data files or rows, a missing column or field
      (named), an unknown profession or gender value, or a bad argument.
  """
  check_choice(split, SPLITS, 'split')
  if image_size is not None:
    raise ValueError('image_size must be None for the text data set '
                     f"'bias_in_bios'; got {image_size!r}.")
  check_int(seed, 'seed', minimum=0)
  check_task(task)
  check_bool(drop_unknown, 'drop_unknown')
  if text_field is not None and (not isinstance(text_field, str) or not text_field):
    raise ValueError(f'text_field must be a non-empty string or None; got {text_field!r}.')
  texts, professions, genders = _pooled(_find_files(path), text_field, bool(drop_unknown),
                                        int(seed))
  if not len(texts):
    raise ValueError(f'path={str(path)!r} holds no rows of the 28 professions.')
  low, high = (len(texts) * percent // 100 for percent in _SPLIT_PERCENT[split])
  return BiosDataset(name='bias_in_bios', split=split, task=task, text=texts[low:high],
                     profession=professions[low:high], gender=genders[low:high])
