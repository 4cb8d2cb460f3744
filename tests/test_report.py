"""lib/report: sections with tables, figures and headline figures; report.md; process 0 only."""

import os

import jax
import numpy as np
import pytest

from lib.report import figures, is_writer, markdown


def _section(**kw):
  return markdown.Section(**{
      'title': 'Study', 'body': 'Intro ![old](old.png).',
      'blocks': [markdown.Table('Scores:', ['method', 'score'], [['a', 0.123456], ['b', 2]]),
                 markdown.Text('Between.'),
                 markdown.Figure('Curves:', 'curves.png')],
      'headline': {'accuracy': 0.91234, 'AUC': '0.80 ± 0.02'}, **kw})


def test_title_body_construction_still_works():
  s = markdown.Section('Title', 'Some *text*.')
  assert (s.title, s.body, s.blocks, s.headline) == ('Title', 'Some *text*.', (), {})
  assert s.render() == 'Some *text*.'


def test_render_puts_body_then_blocks_in_order():
  text = _section().render()
  assert text == '\n\n'.join([
      'Intro ![old](old.png).',
      'Scores:', '| method | score |\n|---|---|\n| a | 0.1235 |\n| b | 2 |',
      'Between.',
      'Curves:', '![curves](curves.png)'])


def test_tables_and_figures_are_structured():
  s = _section()
  assert [t.caption for t in s.tables] == ['Scores:']
  assert s.tables[0].rows[1] == ['b', 2]
  assert [(f.caption, f.path) for f in s.figures] == [('Curves:', 'curves.png')]
  assert list(s.headline) == ['accuracy', 'AUC']


def test_uncaptioned_blocks_render_bare():
  s = markdown.Section('T', blocks=[markdown.Table('', ['x'], [[1]]), markdown.Figure('', 'f.png')])
  assert s.render() == '| x |\n|---|\n| 1 |\n\n![f](f.png)'


def test_table_escapes_pipes_and_line_breaks_in_cells():
  assert markdown.table(['max |Δp|'], [['a\nb'], [r'c \| d']]) == (
      '| max \\|Δp\\| |\n|---|\n| a b |\n| c \\| d |')


def test_relocated_prefixes_relative_images_only():
  s = _section(blocks=[markdown.Text('![a](a.png) ![u](https://x.org/u.png) ![r](/abs/r.png)'),
                       markdown.Figure('c', 'sub/f.png'), markdown.Table('', ['x'], [['y.png']])])
  r = s.relocated('study')
  assert r.body == 'Intro ![old](study/old.png).'
  assert r.blocks[0].markdown == '![a](study/a.png) ![u](https://x.org/u.png) ![r](/abs/r.png)'
  assert r.figures[0].path == 'study/sub/f.png'
  assert r.tables == s.tables and r.headline == s.headline and r.title == s.title
  assert s.figures[0].path == 'sub/f.png'  # the original is unchanged


def test_summary_lists_every_headline_figure_and_says_when_there_are_none():
  rows = markdown.summary([_section(), markdown.Section('Other', 'text')]).split('\n')
  assert rows == ['| study | figure | value |', '|---|---|---|',
                  '| Study | accuracy | 0.9123 |', '| Study | AUC | 0.80 ± 0.02 |',
                  '| Other | — | no headline figures reported |']


def test_write_report_opens_with_summary_then_preamble_then_sections(tmp_path):
  path = markdown.write_report(str(tmp_path / 'sub' / 'report.md'), 'Report',
                               [_section().relocated('study'), markdown.Section('Other', 'x')],
                               preamble='Wall time:\n\n| study | wall time |')
  text = open(path).read()
  lines = text.split('\n')
  assert lines[:3] == ['# Report', '', '| study | figure | value |']
  order = [text.index(s) for s in ('| Study | accuracy |', 'Wall time:', '## Study', 'Scores:',
                                   '![curves](study/curves.png)', '## Other')]
  assert order == sorted(order)


@pytest.mark.parametrize('kwargs, match', [
    ({'title': ''}, 'title'),
    ({'body': 3}, 'body'),
    ({'blocks': ['text']}, r'blocks\[0\]'),
    ({'blocks': [markdown.Table('c', ['a', 'b'], [[1]])]}, r'rows\[0\] has 1 cells; expected 2'),
    ({'blocks': [markdown.Figure('c', '/tmp/x.png')]}, 'relative'),
    ({'blocks': [markdown.Figure('c', 'https://x.org/x.png')]}, 'relative'),
    ({'headline': [('a', 1)]}, 'headline'),
    ({'headline': {'': 1}}, 'headline'),
])
def test_malformed_sections_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    markdown.Section(**{'title': 'T', **kwargs})


def test_sections_are_immutable():
  s = markdown.Section('T', blocks=[markdown.Text('a')])
  with pytest.raises(AttributeError):
    s.title = 'U'
  assert isinstance(s.blocks, tuple)


def _write_everything(directory):
  """Calls every writing function once; returns the paths they returned."""
  images = np.zeros((2, 4, 4, 1), np.float32)
  return [
      figures.training_curves([{'step': 0, 'loss': 1.0}, {'step': 1, 'loss': 0.5}],
                              os.path.join(directory, 'curves.png')),
      figures.image_grid(images, ['a', 'b'], os.path.join(directory, 'grid.png'), cols=2),
      figures.heatmap_grid(images, {'honest 0': [np.zeros((4, 4))]}, ['m'],
                           os.path.join(directory, 'heat.png')),
      figures.line_plot({'s': [(1.0, 0.5), (2.0, 0.7)]}, os.path.join(directory, 'line.png'),
                        xlabel='x', ylabel='y'),
      markdown.write_report(os.path.join(directory, 'out', 'report.md'), 'R', [_section()]),
  ]


def test_process_zero_writes_figures_and_report(tmp_path):
  assert is_writer()
  paths = _write_everything(str(tmp_path))
  assert all(os.path.getsize(p) > 0 for p in paths)


def test_other_processes_write_nothing_but_get_the_paths(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, 'process_index', lambda *a, **k: 1)
  assert not is_writer()
  paths = _write_everything(str(tmp_path))
  assert paths == [str(tmp_path / n) for n in
                   ('curves.png', 'grid.png', 'heat.png', 'line.png', 'out/report.md')]
  assert not os.listdir(tmp_path)
