"""Markdown tables, report sections and the report a run writes.

A study's `run` returns a `Section`: a title, leading `body` text, then `blocks` (`Text`,
`Table` and `Figure` items, rendered in order) and `headline`, the study's headline figures,
which `write_report` gathers into the one table that opens report.md:

  markdown.Section(
      'Classifier', body='ResNet-18 on CIFAR-10, 40000 steps.',
      blocks=[markdown.Table('Final metrics:', ['metric', 'value'], [['test accuracy', 0.93]]),
              markdown.Figure('Training curves:', 'training_curves.png')],
      headline={'test accuracy': '0.930'})
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Union

from lib.report.process import is_writer

_IMAGE_LINK = re.compile(r'!\[([^\]]*)\]\(([^)]+)\)')
_ABSOLUTE = re.compile(r'^(/|[A-Za-z][A-Za-z0-9+.-]*:)')  # a path from the root, or a URL


class Text(NamedTuple):
  """A paragraph of markdown; relative image links in it are relative to the study's workdir."""
  markdown: str


class Table(NamedTuple):
  """A table with its caption, rendered caption first (as `table` renders the rows).

  Attributes:
    caption: markdown shown above the table ('' for none).
    header: column names.
    rows: one sequence of cells (numbers are formatted with `fmt`) per row, each as long as
      `header`.
  """
  caption: str
  header: Sequence[str]
  rows: Sequence[Sequence[Any]]


class Figure(NamedTuple):
  """An image file with its caption, rendered caption first.

  Attributes:
    caption: markdown shown above the image ('' for none).
    path: the image file, relative to the study's workdir (e.g. 'heatmaps.png').
  """
  caption: str
  path: str


Block = Union[Text, Table, Figure]


@dataclasses.dataclass(frozen=True)
class Section:
  """One study's part of a report.

  Attributes:
    title: heading.
    body: markdown shown first; relative image links in it are relative to the study's
      workdir. `Section(title, body)` is a section of free text.
    blocks: `Text`, `Table` and `Figure` items shown after `body`, in order.
    headline: the study's headline figures, name -> value (a number, formatted with `fmt`,
      or a string already formatted, e.g. '0.912 ± 0.011'), in the order to show them.
  """
  title: str
  body: str = ''
  blocks: Sequence[Block] = ()
  headline: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not isinstance(self.title, str) or not self.title.strip():
      raise ValueError(f'title must be a non-empty string; got {self.title!r}.')
    if not isinstance(self.body, str):
      raise ValueError(f'body must be a string of markdown; got {type(self.body).__name__}.')
    for i, block in enumerate(self.blocks):
      _check_block(block, f'blocks[{i}]')
    if not isinstance(self.headline, Mapping):
      raise ValueError('headline must be a mapping from figure name to value; got '
                       f'{type(self.headline).__name__}.')
    for name in self.headline:
      if not isinstance(name, str) or not name.strip():
        raise ValueError(f'headline keys must be non-empty strings; got {name!r}.')
    object.__setattr__(self, 'blocks', tuple(self.blocks))
    object.__setattr__(self, 'headline', dict(self.headline))

  @property
  def tables(self) -> tuple[Table, ...]:
    """The section's `Table` blocks, in order."""
    return tuple(b for b in self.blocks if isinstance(b, Table))

  @property
  def figures(self) -> tuple[Figure, ...]:
    """The section's `Figure` blocks, in order."""
    return tuple(b for b in self.blocks if isinstance(b, Figure))

  def relocated(self, subdir: str) -> Section:
    """The section with relative image paths prefixed by `subdir` (for a parent report)."""
    def fix_path(path: str) -> str:
      return path if _ABSOLUTE.match(path) else os.path.join(subdir, path)

    def fix_links(text: str) -> str:
      return _IMAGE_LINK.sub(lambda m: f'![{m[1]}]({fix_path(m[2])})', text)

    blocks = [Text(fix_links(b.markdown)) if isinstance(b, Text)
              else b._replace(path=fix_path(b.path)) if isinstance(b, Figure) else b
              for b in self.blocks]
    return dataclasses.replace(self, body=fix_links(self.body), blocks=blocks)

  def render(self) -> str:
    """The section's markdown without its heading: `body`, then each block."""
    parts = [self.body.strip()] + [_render_block(b) for b in self.blocks]
    return '\n\n'.join(p for p in parts if p)


def _check_block(block: Any, name: str) -> None:
  """Raises ValueError unless `block` is a well-formed Text, Table or Figure."""
  if isinstance(block, Text):
    if not isinstance(block.markdown, str):
      raise ValueError(f'{name} is a Text whose markdown is not a string: {block.markdown!r}.')
  elif isinstance(block, Table):
    for i, row in enumerate(block.rows):
      if len(row) != len(block.header):
        raise ValueError(f'{name} is a Table whose rows[{i}] has {len(row)} cells; expected '
                         f'{len(block.header)}, one per header column {list(block.header)}.')
  elif isinstance(block, Figure):
    if not isinstance(block.path, str) or not block.path or _ABSOLUTE.match(block.path):
      raise ValueError(f'{name} is a Figure whose path {block.path!r} is not a path relative '
                       "to the study's workdir (e.g. 'heatmaps.png').")
  else:
    raise ValueError(f'{name} must be a markdown.Text, Table or Figure; got '
                     f'{type(block).__name__}.')


def _render_block(block: Block) -> str:
  if isinstance(block, Text):
    return block.markdown.strip()
  if isinstance(block, Table):
    body = table(block.header, block.rows)
  else:
    stem = os.path.splitext(os.path.basename(block.path))[0]
    body = f'![{stem}]({block.path})'
  return f'{block.caption.strip()}\n\n{body}' if block.caption.strip() else body


def fmt(value: Any, digits: int = 4) -> str:
  """Formats numbers compactly for tables."""
  if isinstance(value, float):
    return f'{value:.{digits}g}'
  return str(value)


def _cell(value: Any) -> str:
  """`fmt(value)` made safe inside a table cell: '|' escaped, line breaks as spaces."""
  return re.sub(r'(?<!\\)\|', r'\\|', fmt(value)).replace('\n', ' ')


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured markdown table (a '|' inside a cell is escaped)."""
  lines = ['| ' + ' | '.join(_cell(h) for h in header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(_cell(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def summary(sections: Sequence[Section]) -> str:
  """One table of every section's headline figures: study, figure, value.

  A section without headline figures gets one row saying so.
  """
  rows = []
  for s in sections:
    rows += [[s.title, name, value] for name, value in s.headline.items()]
    if not s.headline:
      rows.append([s.title, '—', 'no headline figures reported'])
  return table(['study', 'figure', 'value'], rows)


def write_report(path: str, title: str, sections: Sequence[Section], *, preamble: str = '') -> str:
  """Writes report.md: `# title`, the headline `summary`, a preamble, one `##` section each.

  Only process 0 writes (`lib.report.process.is_writer`); every process gets `path` back.

  Args:
    path: the markdown file to write.
    title: the report's `#` heading.
    sections: the studies' sections; image paths relative to the directory of `path`.
    preamble: markdown between the summary table and the first section.

  Returns:
    `path`.
  """
  if not is_writer():
    return path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  parts = [f'# {title}', summary(sections), preamble.strip()]
  parts += [f'## {s.title}\n\n{s.render()}' for s in sections]
  with open(path, 'w') as f:
    f.write('\n\n'.join(p for p in parts if p) + '\n')
  return path
