"""Markdown tables and the report a run writes."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple


class Section(NamedTuple):
  """One study's part of a report.

  Attributes:
    title: heading.
    body: markdown; relative image links in it are relative to the study's workdir.
  """
  title: str
  body: str

  def relocated(self, subdir: str) -> 'Section':
    """The section with relative image links prefixed by `subdir` (for a parent report)."""
    fix = lambda m: f'![{m[1]}]({m[2] if re.match(r"^(/|[a-z]+:)", m[2]) else os.path.join(subdir, m[2])})'
    return self._replace(body=re.sub(r'!\[([^\]]*)\]\(([^)]+)\)', fix, self.body))


def fmt(value: Any, digits: int = 4) -> str:
  """Formats numbers compactly for tables."""
  if isinstance(value, float):
    return f'{value:.{digits}g}'
  return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured markdown table."""
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def write_report(path: str, title: str, sections: Sequence[Section], *, preamble: str = '') -> str:
  """Writes `# title`, a preamble and one `##` section each to `path`; returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  parts = [f'# {title}\n', preamble.strip() + '\n' if preamble else '']
  parts += [f'## {s.title}\n\n{s.body.strip()}\n' for s in sections]
  with open(path, 'w') as f:
    f.write('\n'.join(p for p in parts if p))
  return path
