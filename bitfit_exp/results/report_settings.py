"""The report page's setting cards: per protocol chosen in a table cell (at its chosen lr), its seeds as dots around
mean±std at each learning rate found (the lr sweep curve through the means), its dev curve per epoch and seed, and
the bitfit-run command that reruns it (results.report lays them out).

    settings = table_settings(build_tables(df), expected_seeds=5)
    html = setting_card(settings[0], main_rows_of_its_protocol, {seed: record, ...})

>>> settings_note(3, 5)
'3 of 5 settings drawn (the first of the tables, in their order); bitfit-plot curves SETTING_DIR draws any other.'
"""

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from bitfit_exp.results import analysis
from bitfit_exp.results.labels import TASKS, row_label
from bitfit_exp.results.provenance import rerun_command
from bitfit_exp.results.report_html import esc
from bitfit_exp.results.selection import composed_protocols, flat
from bitfit_exp.results.svg_plots import curve_svg, sweep_svg
from bitfit_exp.results.table_set import BuiltTable
from bitfit_exp.results.tables import COLUMN_NAMES, fmt_cell

MAX_SETTINGS = 120  # setting cards (two SVGs each): a page that opens fast, whatever the runs dir holds


@dataclass
class Setting:
    """A setting card: the protocol of one table cell at its chosen lr."""
    pid: str
    model: str
    task: str
    method: str
    variant: str
    lr: float
    hash: str
    cells: list[str]
    experiment: str | None
    tables: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return f"s-{self.pid}"

def settings_note(drawn: int, total: int) -> str:
    return (f"{drawn} of {total} settings drawn (the first of the tables, in their order); bitfit-plot curves "
            f"SETTING_DIR draws any other.")


def _cell_text(r, expected_seeds: int) -> str:
    return (f"{COLUMN_NAMES.get(r.column, r.column)} "
            f"{fmt_cell(r.mean, r.std, r.n_seeds, expected_seeds, r.n_diverged, r.n_lrs, r.expected_lrs, r.n_no_score)}")


def table_settings(tables: list[BuiltTable], expected_seeds: int) -> list[Setting]:
    """One Setting per protocol chosen in a table cell, in table order (a protocol in several tables once)."""
    settings: dict[str, Setting] = {}
    for t in tables:
        for r in t.selection.best.itertuples(index=False):
            s = settings.get(r.protocol_id)
            if s is None:
                experiment = t.table.experiments.get(r.model) if not r.variant else None
                s = settings[r.protocol_id] = Setting(r.protocol_id, r.model, r.task, r.method, r.variant, r.lr,
                                                      r.hash, [], experiment)
            if t.name not in s.tables:
                s.tables.append(t.name)
            text = _cell_text(r, expected_seeds)
            if text not in s.cells:
                s.cells.append(text)
    return list(settings.values())


def _changes(s: Setting, protocol_json: str) -> dict | None:
    """The flat keys in which a setting's protocol differs from the default config of its cell (None: that config
    cannot be composed, e.g. a task of one's own)."""
    default = composed_protocols([(None, s.model, s.task, s.method)])[(None, s.model, s.task, s.method)]
    if isinstance(default, str):
        return None
    mine, reference = flat(json.loads(protocol_json)), flat(default.config)
    return {k: v for k, v in mine.items() if reference.get(k, object()) != v}


def setting_card(s: Setting, main_rows: pd.DataFrame, records: dict[int, dict]) -> str:
    """The card of one setting: its cells, the seeds per lr (sweep) and the dev curve per epoch and seed."""
    any_record = next(iter(records.values()))
    metric = any_record["main"]["metric"]
    column = any_record["columns"][any_record["main"]["split"]]
    ylabel = f"{TASKS.get(column, column)} dev {metric} ×100"
    per_lr = [(lr, [v for v in g["score"] if math.isfinite(v)], int(g["diverged"].sum()))
              for lr, g in main_rows.groupby("lr", sort=True)]
    series = "dev" if len(any_record["columns"]) == 1 else f"dev {column}"
    curves, diverged = {}, set()
    for seed, record in sorted(records.items()):
        rows = [r for r in analysis.curve_rows(record) if r["series"] == series]
        curves[seed] = [(r["epoch"], r["value"]) for r in rows]
        if record["status"] == "diverged":
            diverged.add(seed)
    changes = {} if s.experiment else _changes(s, main_rows["protocol"].iloc[0])
    command = rerun_command(s.model, s.task, s.method, s.lr, sorted(records), changes or {}, s.experiment)
    own = "" if changes is not None or s.experiment else " (a config of one's own: add --config-dir)"
    lrs = main_rows["lr"].nunique()
    return (f'<div class="card" id="{esc(s.anchor)}"><h4>{esc(row_label(s.model, s.method, s.variant))} · '
            f'{esc(TASKS.get(s.task, s.task))}</h4>'
            f'<div class="meta">{esc("; ".join(s.cells))} · chosen lr {s.lr:g} of {lrs} · setting {esc(s.hash)} · '
            f'protocol {esc(s.pid)} · in {esc(", ".join(s.tables))}</div>'
            f'{sweep_svg(per_lr, s.lr, ylabel)}{curve_svg(curves, ylabel, diverged)}'
            f'<div class="meta">rerun{esc(own)} (+ your data.dir / runs_dir): <code>{esc(command)}</code></div></div>')
