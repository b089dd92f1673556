"""The report's pages, index.html and README.md, rendered from Jinja2 templates (benchmark/report/templates/) out of
one list of sections; a section is a title and blocks: text, lines, a table or figures."""

from dataclasses import dataclass, field

import jinja2


@dataclass(frozen=True)
class Text:
    text: str
    kind: str = "text"


@dataclass(frozen=True)
class Lines:
    lines: list[str]
    kind: str = "lines"


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str]]
    notes: list[int] = field(default_factory=list)  # indexes of footnote-like columns, set small in HTML
    kind: str = "table"


@dataclass(frozen=True)
class Figures:
    stems: list[str]  # each saved as <stem>.png (and <stem>.svg) beside the pages
    link: str = "svg"  # the format each image links to
    kind: str = "figures"


@dataclass(frozen=True)
class Section:
    title: str
    anchor: str  # the section's id in index.html
    blocks: list


def _markdown_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("benchmark.report", "templates"),
                             autoescape=lambda name: bool(name) and name.endswith(".html.jinja"),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["md_cell"] = _markdown_cell
    return env


def render(template: str, title: str, sections: list[Section], data_files: list[str]) -> str:
    """template: "report.html.jinja" or "report.md.jinja"."""
    return _environment().get_template(template).render(title=title, sections=sections, data_files=data_files)
