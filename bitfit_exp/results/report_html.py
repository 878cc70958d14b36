"""HTML for the report page: one self-contained document (inline CSS, no script, no external resource), a paper
table as an HTML table whose cells are bitfit-tables' own strings, colour-coded, and small helpers. Every text from
records passes through `esc`.

>>> esc('<script>alert("x")</script>')
'&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;'
>>> cell_class("72.0±2.0 (1/4 lrs)", "ours"), cell_class("+0.3 ✓", "Δ"), cell_class("-4.1 ✗", "Δ")
('marked', 'ok', 'bad')
"""

import base64
import io
from html import escape

import matplotlib
import pandas as pd

from bitfit_exp.results.figures import STYLE
from bitfit_exp.results.labels import HEADERS
from bitfit_exp.results.tables import MISSING, TOKEN_COLUMNS, TOKEN_PAPER

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1320px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:22px;margin:4px 0 2px}h2{font-size:18px;margin:30px 0 8px;border-bottom:1px solid #d6dae1;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.summary{color:#4a5363;margin:0 0 10px}.summary b{color:#1d2330}
nav a{margin-right:14px}a{color:#1f4e8c}
div.scroll{overflow-x:auto;max-width:100%}
table.t{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums;margin:6px 0;font-size:12.5px}
table.t th,table.t td{border:1px solid #e1e4ea;padding:2px 6px;text-align:right;white-space:nowrap}
table.t th{background:#eef1f5}
table.t td.l,table.t th.l{text-align:left}
tr.src-paper td{color:#5b6474;font-style:italic;background:#fafbfc}
tr.src-Δ td{font-size:12px}
td.ok{background:#e3f4e6;color:#17612a}td.bad{background:#fbe4e2;color:#9b1c13}
td.marked{background:#fff4d6}td.at-last::after,.legend .at-last::after{content:" ⤴";color:#b35c00}td.diverged{background:#f8d7d3;color:#8a1a10}td.missing{color:#a0a7b3}
.legend span{display:inline-block;padding:1px 7px;margin-right:6px;border:1px solid #e1e4ea;font-size:12px}
details{margin:4px 0 10px}summary{cursor:pointer;color:#1f4e8c}
.notes{font-size:12.5px;color:#3b4352;max-width:1200px}.notes li{margin:1px 0}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #e1e4ea;border-radius:6px;padding:8px 10px;width:624px}
.card h4{margin:0 0 2px;font-size:13.5px}.card .meta{font-size:12px;color:#4a5363}
.card svg{background:#fff}
svg text{font-size:10px;fill:#3b4352}svg .label{font-size:10.5px}svg .warn{fill:#9b1c13}
svg .axis{stroke:#7d8696;stroke-width:1}svg .grid{stroke:#eceef2;stroke-width:1}
code,pre{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#eef1f5;padding:1px 4px;border-radius:3px}
pre{padding:6px 8px;white-space:pre-wrap;word-break:break-all}
figure{background:#fff;border:1px solid #e1e4ea;margin:8px 0;padding:8px;display:inline-block;max-width:100%;
box-sizing:border-box}
figure img{max-width:100%;height:auto}figcaption{font-size:12px;color:#4a5363;max-width:900px}
ul.left{font-size:12.5px}ul.left li{margin:1px 0;word-break:break-word}
table.kv td,table.kv th{text-align:left;white-space:normal;word-break:break-word}
"""

LEFT_COLUMNS = {"Model", "Method", "Source"}
# header -> the column key of bitfit-tables' CSV (the DOM carries it, so a cell can be found by what it holds)
COLUMN_KEYS = {**{v: k for k, v in HEADERS.items()}, **{v: k for k, v in TOKEN_COLUMNS.items()},
               TOKEN_PAPER: "paper"}


def esc(text) -> str:
    return escape(str(text), quote=True)


def cell_class(text: str, source: str) -> str:
    """The colour of a table cell: ✓ ok, ✗ bad, diverged / no score, marked (fewer seeds or lrs than the sweep,
    diverged seeds counted), missing; "" for a plain cell."""
    if text == MISSING or text == "":
        return "missing"
    if source == "Δ":
        return "ok" if text.endswith("✓") else "bad" if text.endswith("✗") else ""
    if text.startswith(("diverged", "no score")):
        return "diverged"
    return "marked" if "(" in text else ""


def table_html(frame: pd.DataFrame, row_keys: list[tuple[str, str, str, str]], links: dict | None = None,
               at_last: dict | None = None) -> str:
    """`frame` (build_table's strings) as an HTML table. `row_keys`: per row (model, method, variant, source) as in
    the CSV; each cell carries data-column (the CSV's column key) and each row its keys. `links`: (model, method,
    variant, column) -> an anchor of the page, for the ours cells; `at_last`: the same keys -> a tooltip, for ours
    cells whose best epoch was the last one (marked by CSS, so that the cell's text stays bitfit-tables')."""
    links, at_last = links or {}, at_last or {}
    head = "".join(f'<th class="{"l" if c in LEFT_COLUMNS else ""}">{esc(c)}</th>' for c in frame.columns)
    rows = []
    for values, (model, method, variant, source) in zip(frame.itertuples(index=False), row_keys, strict=True):
        cells = []
        for column, value in zip(frame.columns, values, strict=True):
            text = str(value)
            key = COLUMN_KEYS.get(column, column)
            if column in LEFT_COLUMNS:
                cells.append(f'<td class="l" data-column="{esc(key)}">{esc(text)}</td>')
                continue
            target = links.get((model, method, variant, key)) if source == "ours" else None
            body = f'<a href="#{esc(target)}">{esc(text)}</a>' if target and text != MISSING else esc(text)
            late = at_last.get((model, method, variant, key)) if source == "ours" else None
            klass = " ".join(c for c in (cell_class(text, source), "at-last" if late else "") if c)
            title = f' title="{esc(late)}"' if late else ""
            cells.append(f'<td class="{klass}" data-column="{esc(key)}"{title}>{body}</td>')
        rows.append(f'<tr class="src-{esc(source)}" data-model="{esc(model)}" data-method="{esc(method)}" '
                    f'data-variant="{esc(variant)}" data-source="{esc(source)}">{"".join(cells)}</tr>')
    return f'<table class="t"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def notes_html(lines: list[str]) -> str:
    """bitfit-tables' notes under a table: paragraphs, and "- " lines as lists."""
    out, items = [], []
    for line in [*lines, ""]:
        if line.startswith("- "):
            items.append(f"<li>{esc(line[2:])}</li>")
            continue
        if items:
            out.append(f"<ul>{''.join(items)}</ul>")
            items = []
        if line:
            out.append(f"<p>{esc(line)}</p>")
    return f'<div class="notes">{"".join(out)}</div>'


def png_figure(fig, caption: str, alt: str) -> str:
    """A matplotlib figure as an inline PNG (base64) with its caption."""
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="png", dpi=80)
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{esc(caption)}</figcaption></figure>')


def bullet_list(lines, limit: int, what: str) -> str:
    """Up to `limit` lines as a list, and how many more there are."""
    lines = list(lines)
    shown = "".join(f"<li>{esc(line)}</li>" for line in lines[:limit])
    more = f"<li>... and {len(lines) - limit} more {esc(what)}</li>" if len(lines) > limit else ""
    return f'<ul class="left">{shown}{more}</ul>' if lines else "<p>none</p>"


def kv_table(rows: list[tuple[str, str]]) -> str:
    return '<table class="t kv">' + "".join(f"<tr><th class='l'>{esc(k)}</th><td>{esc(v)}</td></tr>"
                                            for k, v in rows) + "</table>"


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{body}</main></body></html>\n')
