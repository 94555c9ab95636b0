"""HTML building blocks of the reports: escaping, tables, figures, the page with inline CSS.

Every function returns a string of well-formed HTML5 (each non-void element closed); all
text goes through :func:`esc`. Pages load nothing from the network: the style sheet is inline
and images are relative links to PNG files.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "CSS",
    "Section",
    "definition_list",
    "cell",
    "esc",
    "figure",
    "link",
    "note",
    "page",
    "problem",
    "table",
]

CSS = """\
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;
color:#1b1f23;background:#fff;line-height:1.4}
header{background:#24292e;color:#fff;padding:0.8em 1.5em}
header h1{margin:0;font-size:1.5em}
header nav a{color:#c8e1ff;margin-right:1em;text-decoration:none}
main{padding:0 1.5em 2em 1.5em;max-width:1400px}
section{margin-top:1.5em;border-top:1px solid #e1e4e8}
h2{font-size:1.3em;margin:0.8em 0 0.4em 0}
h3{font-size:1.1em;margin:0.8em 0 0.3em 0}
table{border-collapse:collapse;margin:0.4em 0;font-size:0.9em}
th,td{border:1px solid #d1d5da;padding:0.2em 0.5em;text-align:left;vertical-align:top}
thead th{background:#f6f8fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:0.6em 1em 0.6em 0;display:inline-table;vertical-align:top}
figure img{max-width:100%;height:auto;border:1px solid #e1e4e8}
figcaption{display:table-caption;caption-side:bottom;font-size:0.85em;color:#444}
.errors{background:#ffeef0;border:2px solid #cb2431;padding:0.5em 1em;margin-top:1em}
.errors h2{color:#cb2431}
.status-ok{color:#22863a;font-weight:bold}
.status-failed,.status-skipped{color:#cb2431;font-weight:bold}
.note{color:#6a737d;font-style:italic}
.report-problem{background:#fff5b1;border-left:4px solid #dbab09;padding:0.3em 0.6em}
pre{background:#f6f8fa;padding:0.5em;overflow-x:auto;font-size:0.85em}
code{font-size:0.9em}
dl{display:grid;grid-template-columns:max-content auto;gap:0.15em 1em}
dt{font-weight:bold}
dd{margin:0}
footer{color:#6a737d;font-size:0.8em;padding:1em 1.5em;border-top:1px solid #e1e4e8}
"""


def esc(text: object) -> str:
    """``str(text)`` HTML-escaped (quotes too, so it is safe in attributes)."""
    return html.escape(str(text), quote=True)


@dataclass
class Section:
    """One ``<section>`` of a page: anchor id, heading and body (HTML)."""

    id: str
    title: str
    body: str
    css_class: str = ""

    def render(self) -> str:
        cls = f' class="{esc(self.css_class)}"' if self.css_class else ""
        head = f'<section id="{esc(self.id)}"{cls}>\n<h2>{esc(self.title)}</h2>'
        return f"{head}\n{self.body}\n</section>"


def link(href: str, text: object) -> str:
    """``<a href="href">text</a>`` (``href`` relative to the page)."""
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def note(text: object) -> str:
    """A muted paragraph (e.g. "no reference found")."""
    return f'<p class="note">{esc(text)}</p>'


def problem(text: object) -> str:
    """A highlighted paragraph for a part of the report that could not be made."""
    return f'<p class="report-problem">{esc(text)}</p>'


def figure(src: str, alt: str, caption: str = "", caption_html: str = "") -> str:
    """A figure: the image (linked to itself, full size) and its caption.

    ``caption`` is text (escaped); ``caption_html`` is appended as is (already escaped).
    """
    cap = esc(caption) + caption_html
    return (
        f'<figure><a href="{esc(src)}"><img src="{esc(src)}" alt="{esc(alt)}"></a>'
        f"<figcaption>{cap}</figcaption></figure>"
    )


def cell(
    value: object, *, digits: int | None = None, raw: bool = False, key: str | None = None
) -> str:
    """A ``<td>``: numbers right-aligned (``digits`` decimals) with their exact value in
    ``data-value`` (Python ``repr``) and ``key`` in ``data-metric``; ``raw`` inserts ``value``
    unescaped (HTML made by this module)."""
    data = f' data-metric="{esc(key)}"' if key else ""
    if isinstance(value, bool) or value is None:
        return f"<td{data}>{esc('n/a' if value is None else value)}</td>"
    if isinstance(value, (int, float)):
        v = float(value)
        if not math.isfinite(v):
            text = "n/a" if math.isnan(v) else str(v)
        elif digits is None:
            text = f"{value}" if isinstance(value, int) else f"{v:.4g}"
        else:
            text = f"{v:.{digits}f}"
        return f'<td class="num"{data} data-value="{esc(repr(v))}">{esc(text)}</td>'
    return f"<td{data}>{value if raw else esc(value)}</td>"


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    caption: str = "",
    css_class: str = "",
) -> str:
    """A ``<table>``: ``header`` texts (escaped) and rows of ready ``<td>``/``<th>`` cells
    (:func:`cell`)."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    out = [f"<table{cls}>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f'<th scope="col">{esc(h)}</th>' for h in header))
    out.append("</tr></thead>")
    out.append("<tbody>")
    out += ["<tr>" + "".join(row) + "</tr>" for row in rows]
    out += ["</tbody>", "</table>"]
    return "\n".join(out)


def definition_list(items: Iterable[tuple[str, str]]) -> str:
    """``<dl>`` of (term text, definition HTML) pairs; the definitions are not escaped."""
    body = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items)
    return f"<dl>{body}</dl>"


def page(title: str, sections: Sequence[Section], *, footer: str = "") -> str:
    """A whole HTML5 page: title, navigation to the sections, the sections, a footer (HTML)."""
    nav = " ".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(s.render() for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{esc(title)}</h1>\n<nav>{nav}</nav></header>\n"
        f"<main>\n{body}\n</main>\n"
        f"<footer>{footer}</footer>\n</body>\n</html>\n"
    )
