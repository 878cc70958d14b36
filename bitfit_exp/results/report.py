"""One report page from run records: `bitfit-report RUNS_DIR --out DIR` writes DIR/index.html, one self-contained
file (CSS inline, figures as inline SVG and base64 PNG, no script, no network) that opens from disk. It shows

- each table `bitfit-tables` writes (the same cells: results.table_set builds both), colour-coded, with its notes;
- per setting of the tables (up to `max_settings`): its seeds as dots around mean±std at each learning rate (the lr
  sweep curve through the means) and its dev curve per epoch and seed, with the command that reruns it;
- the paper's figures the records allow (bias change, generalization gap, data size), drawn by results.figures;
- what was left out and why (other protocols, corrupt records, settings not drawn) and provenance (versions, git
  SHAs, devices, device-hours, the commands that reproduce it).

Every record is read once (records.scan); the tables, curves and figures all work from that one read.

    report = build_report("~/bitfit-runs", "results/report")
    print(report.path, report.n_records, report.warnings)

>>> settings_note(3, 5)
'3 of 5 settings drawn (the first of the tables, in their order); bitfit-plot curves SETTING_DIR draws any other.'
"""

import gc
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pandas as pd

import bitfit_exp
from bitfit_exp.core.atomic import write_atomic
from bitfit_exp.core.errors import UserError
from bitfit_exp.results import analysis, figures
from bitfit_exp.results.environment import git_state
from bitfit_exp.results.labels import TASKS, row_label
from bitfit_exp.results.provenance import rerun_command, summarize
from bitfit_exp.results.records import scan
from bitfit_exp.results.report_html import (
    bullet_list,
    esc,
    kv_table,
    notes_html,
    page,
    png_figure,
    table_html,
)
from bitfit_exp.results.selection import collect, composed_protocols, flat
from bitfit_exp.results.svg_plots import curve_svg, sweep_svg
from bitfit_exp.results.table_set import BuiltTable, build_tables
from bitfit_exp.results.tables import COLUMN_NAMES, fmt_cell

MAX_SETTINGS = 120  # setting cards (two SVGs each): a page that opens fast, whatever the runs dir holds
MAX_BIAS = 4        # bias-change heatmaps (each reads the setting's patches)
MAX_DATASIZE = 6    # data-size figures
MAX_GAP_GROUPS = 16  # bar groups of the generalization-gap figure
MAX_LINES = 150     # lines per "left out" list


@dataclass
class Report:
    path: Path
    n_records: int
    n_settings: int
    n_drawn: int
    tables: list[str]
    warnings: list[str] = field(default_factory=list)


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


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def table_summary(t: BuiltTable) -> str:
    """How a table's cells stand: compared with the paper (✓ within noise, ✗ outside), ours only, empty.

    The Avg column is left out of the counts: it summarizes the others."""
    cells = t.cells[t.cells["column"] != "avg"]
    ours = cells["mean"].notna() | (cells["n_seeds"].fillna(0) > 0)
    within = cells["within"].fillna(False).astype(bool)
    compared = cells["delta"].notna()
    parts = [_plural(int(ours.sum()), "cell with records", "cells with records")]
    if compared.any():
        parts.append(f"{int((compared & within).sum())} within noise of the paper (✓), "
                     f"{int((compared & ~within).sum())} outside (✗)")
    return "; ".join(parts) + f"; {int((~ours).sum())} without records."


LAST_EPOCH = "Best epoch = last epoch"  # tables.last_epoch_note's line


def at_last_cells(t: BuiltTable) -> dict:
    """(model, method, variant, column) -> a tooltip, for the cells tables.last_epoch_note names: the best epoch was
    the last one for most of their seeds."""
    rows = t.cells[(t.cells["column"] != "avg") & t.cells["n_at_last"].notna()]
    return {(r.model, r.method, r.variant, r.column): f"best epoch = last epoch for {r.n_at_last}/{r.n_seeds} seeds: "
            f"the dev curve may still be rising (more train.epochs?)" for r in rows.itertuples(index=False)
            if 2 * r.n_at_last > r.n_seeds}


def row_keys(t: BuiltTable) -> list[tuple[str, str, str, str]]:
    """Per row of t.frame: (model, method, variant, source) as the CSV names them (build_table's row order)."""
    keys = []
    for (model, method, variant), g in t.cells.groupby(["model", "method", "variant"], sort=False):
        keys.append((model, method, variant, "ours"))
        if t.name != "pos" and not g["paper_mean"].isna().all():
            keys += [(model, method, variant, "paper"), (model, method, variant, "Δ")]
    if len(keys) != len(t.frame):
        raise ValueError(f"{t.name}: {len(keys)} row keys for {len(t.frame)} rows")
    return keys


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


def _attempt(what: str, draw, warnings: list[str]) -> str:
    """draw() -> html; a failure is one warning naming what was not drawn, and the rest of the page is kept."""
    try:
        return draw()
    except Exception as e:  # any failure of one figure: said on the page and on stderr, never the whole report
        warnings += getattr(e, "warnings", [])
        warnings.append(f"{what} not drawn ({type(e).__name__}: {e})")
        return ""


def _bias_figure(s: Setting, records: list) -> str:
    folder = records[0][0].parent.parent
    table, info = analysis.bias_change_summary(folder, records)
    title = f"Change in bias components: {figures.setting_label(info)}"
    fig, _, _ = figures.plot_bias_change(table, figures._wrap(title))
    return png_figure(fig, f"Figure 1 of the paper for {row_label(s.model, s.method, s.variant)}, {s.task}: mean "
                           f"|b0 − bF| per component and layer ({info['note']}; {folder})", f"bias change {s.task}")


def _gap_figure(gaps: pd.DataFrame) -> str:
    groups = gaps[analysis.GAP_KEY[:-1]].drop_duplicates()
    note = ""
    if len(groups) > MAX_GAP_GROUPS:
        keep = groups.head(MAX_GAP_GROUPS)
        gaps = gaps.merge(keep, on=analysis.GAP_KEY[:-1])
        note = f" The first {MAX_GAP_GROUPS} of {len(groups)} (model, task, training data) groups are shown."
    fig, _, _ = figures.plot_gap(gaps)
    return png_figure(fig, "Generalization gap: train − dev main metric at each record's selected epoch, per "
                           "method at its best lr (bitfit-plot gap draws the same)." + note, "generalization gap")


def _datasize_figure(rows: pd.DataFrame, model: str, task: str) -> str:
    title = f"{figures.model_name(model)}, {figures.task_name(task)}: BitFit vs Full-FT by training-set size"
    fig, _, _ = figures.plot_datasize(rows, title, rows["metric"].iloc[0])
    return png_figure(fig, f"Figure 2 of the paper: dev score by training-set size (nested seeded subsets), {model} "
                           f"{task}; bitfit-plot datasize draws the same.", f"data size {model} {task}")


def figures_section(settings: list[Setting], by_hash: dict, root: Path, found, epoch, warnings: list[str]) -> str:
    parts = []
    with_patches = [s for s in settings if any((r.get("artifacts") or {}).get("patch")
                                               for r in by_hash.get(s.hash, {}).values())]
    with_patches.sort(key=lambda s: s.method != "bitfit")
    for s in with_patches[:MAX_BIAS]:
        paths = by_hash[s.hash]
        records = [(paths[seed]["__path__"], paths[seed]) for seed in sorted(paths)]
        parts.append(_attempt(f"bias-change figure of {records[0][0].parent.parent}",
                              lambda s=s, records=records: _bias_figure(s, records), warnings))
    if len(with_patches) > MAX_BIAS:
        parts.append(f"<p>{len(with_patches) - MAX_BIAS} more settings have patches: bitfit-plot bias-change "
                     f"SETTING_DIR draws them.</p>")
    runs, more = analysis.run_table(root, epoch, found=[(p, r) for p, r in found])
    warnings += more
    gaps = analysis.gap_summary(runs)
    if not gaps.empty:
        parts.append(_attempt("generalization-gap figure", lambda: _gap_figure(gaps), warnings))
    n_size = 0
    for task, rows in runs[runs["subset"] >= 0].groupby("task"):
        if rows["n_train"].nunique() < 2:
            continue
        table = analysis.datasize_summary(rows, task)
        for model, mine in table.groupby("model"):
            n_size += 1
            if n_size > MAX_DATASIZE:
                continue
            parts.append(_attempt(f"data-size figure of {model} {task}",
                                  partial(_datasize_figure, mine, model, task), warnings))
    if n_size > MAX_DATASIZE:
        parts.append(f"<p>{n_size - MAX_DATASIZE} more data-size figures: bitfit-plot datasize draws them.</p>")
    body = "".join(parts) or "<p>None: no patches, train-probe metrics or seeded training subsets in the records.</p>"
    return f'<h2 id="figures">The paper\'s figures</h2>{body}'


def _hours(hours: dict, untimed: int) -> str:
    text = ", ".join(f"{kind} {h:.2f} h" for kind, h in sorted(hours.items())) or "none timed"
    return text + (f" ({untimed} records without timing)" if untimed else "")


def provenance_section(found, runs_dir: Path, out: Path, tables: list[BuiltTable]) -> str:
    p = summarize(found)
    code = git_state()
    rows = [("runs dir", str(runs_dir)), ("records", f"{len(found)}"),
            ("finished between", f"{p['first'] or '?'} and {p['last'] or '?'}"),
            ("device-hours spent", _hours(p["device_hours"], p["untimed"])), ("hosts", str(p["hosts"])),
            ("report written", f"{datetime.now(UTC).isoformat(timespec='seconds')} by bitfit-exp {bitfit_exp.__version__}, git "
                               f"{code['git_sha'] or 'unknown'}{' (uncommitted changes)' if code['git_dirty'] else ''}")]
    counts = [("versions (bitfit_exp, torch, transformers, datasets, python)", p["versions"]),
              ("git SHA of the code that trained", p["git"]), ("devices", p["devices"])]
    lists = "".join(f"<h3>{esc(title)}</h3>" + kv_table([(k, f"{n} records") for k, n in values.items()])
                    for title, values in counts)
    experiments = dict.fromkeys(e for t in tables for m, e in t.table.experiments.items()
                                if m in set(t.selection.best["model"]) and t.name != "ours")
    commands = [f"bitfit-run +experiment={e} --multirun" for e in experiments]
    commands += [f"bitfit-tables --runs-dir {runs_dir} --table all --out results/tables",
                 f"bitfit-plot all --runs-dir {runs_dir} --out results/figures",
                 f"bitfit-report {runs_dir} --out {out}"]
    return (f'<h2 id="provenance">Provenance</h2>{kv_table(rows)}{lists}<h3>Commands that reproduce this page</h3>'
            f'<pre>{esc(chr(10).join(commands))}</pre><p class="notes">Each setting card names its own bitfit-run '
            f'command; add data.dir=... and runs_dir=... as in your runs.</p>')


def left_out_section(tables: list[BuiltTable], warnings: list[str], df: pd.DataFrame, drawn: int,
                     total: int) -> str:
    parts = [f"<h3>Records not read ({len(warnings)})</h3><p class='notes'>Corrupt, unfinished, misplaced or "
             f"duplicate records, patches no record names, figures that failed:</p>"
             + bullet_list(warnings, MAX_LINES, "lines")]
    for t in tables:
        if t.selection.left_out:
            parts.append(f"<h3>{esc(t.table.title)}: other protocols ({len(t.selection.left_out)})</h3>"
                         + bullet_list(t.selection.left_out, MAX_LINES, "lines"))
    shown = {task for t in tables for task in t.selection.best["task"]}
    others = df[~df["task"].isin(shown) & df["main"]].groupby("task")["seed"].size()
    if len(others):
        parts.append("<h3>Tasks in no table</h3>" + bullet_list(
            [f"{task}: {n} records (in the figures where they allow; no table of bitfit-tables shows them)"
             for task, n in others.items()], MAX_LINES, "tasks"))
    if drawn < total:
        parts.append(f"<h3>Settings not drawn</h3><p>{esc(settings_note(drawn, total))}</p>")
    return '<h2 id="left-out">Left out, and why</h2>' + "".join(parts)


def _by_hash(found) -> dict[str, dict[int, dict]]:
    """setting hash -> seed -> record (with its path under "__path__"); a seed found twice: the one finished last."""
    out: dict[str, dict[int, dict]] = {}
    for path, record in found:
        seeds = out.setdefault(record["setting"]["hash"], {})
        seed, when = int(record["seed"]), str((record.get("timings") or {}).get("finished_at") or "")
        old = seeds.get(seed)
        if old is None or when > str((old.get("timings") or {}).get("finished_at") or ""):
            seeds[seed] = {**record, "__path__": path}
    return out


LEGEND = ('<p class="legend"><span class="ok">✓ |Δ| within noise</span><span class="bad">✗ outside</span>'
          '<span class="marked">marked: fewer seeds or lrs than the sweep, diverged seeds</span>'
          '<span class="diverged">diverged / no score</span><span class="at-last">best epoch = last epoch</span>'
          '<span class="missing">— no records</span></p>')


def build_report(runs_dir, out, epoch: str | None = None, expected_seeds: int = 5,
                 max_settings: int = MAX_SETTINGS) -> Report:
    """Write <out>/index.html from the records under `runs_dir` (see the module's docstring); a UserError when
    there is nothing to report."""
    # Every record stays in memory (millions of small objects): at the default thresholds the collector would walk
    # them all again and again, a quarter of the time on 10,000 records, and nothing here makes cycles worth it.
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 1000)
    try:
        return _build_report(runs_dir, out, epoch, expected_seeds, max_settings)
    finally:
        gc.set_threshold(*thresholds)


def _build_report(runs_dir, out, epoch, expected_seeds, max_settings) -> Report:
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"{runs_dir}: no such folder; give the runs_dir of bitfit-run (e.g. ~/bitfit-runs)")
    found, warnings = scan(root)
    warnings += analysis.unclaimed_patches(root, found)
    df, more = collect(root, epoch, found=found)
    warnings += more
    if df.empty:
        raise UserError(f"no done run records under {runs_dir} ({len(warnings)} files not read); run bitfit-run "
                        f"first, or point at the runs_dir it wrote to")
    tables = build_tables(df, "all", expected_seeds, epoch)
    settings = table_settings(tables, expected_seeds)
    by_hash = _by_hash(found)
    main_rows = dict(tuple(df[df["main"]].groupby("protocol_id", sort=False)))
    drawn = [s for s in settings if s.hash in by_hash][:max_settings]
    anchors = {s.pid: s.anchor for s in drawn}
    sections = []
    for t in tables:
        links = {(r.model, r.method, r.variant, r.column): anchors[r.protocol_id]
                 for r in t.selection.best.itertuples(index=False) if r.protocol_id in anchors}
        late = [line for line in t.notes if line.startswith(LAST_EPOCH)]
        rest = [line for line in t.notes[1:] if not line.startswith(LAST_EPOCH)]
        details = (f"{notes_html(late)}<details><summary>notes: chosen lrs, seeds, left out</summary>"
                   f"{notes_html(rest)}</details>")
        sections.append(f'<h3 id="t-{esc(t.name)}">{esc(t.table.title)}</h3><p class="summary">'
                        f'{esc(table_summary(t))}</p><div class="scroll" data-table="{esc(t.name)}">{table_html(t.frame, row_keys(t), links, at_last_cells(t))}'
                        f'</div>{notes_html(t.notes[:1])}{details}')
    cards = "".join(_attempt(f"setting card of {s.hash}", lambda s=s: setting_card(s, main_rows[s.pid],
                                                                                  by_hash[s.hash]), warnings)
                    for s in drawn)
    figure_html = figures_section(settings, by_hash, root, found, epoch, warnings)
    warnings = list(dict.fromkeys(warnings))
    n_finished = sum(r["status"] == "finished" for _, r in found)
    head = (f"<h1>BitFit reproduction report</h1><p class='summary'><b>{len(found)}</b> records "
            f"({n_finished} finished, {len(found) - n_finished} diverged) of <b>{len(by_hash)}</b> settings under "
            f"<code>{esc(root)}</code>; {len(tables)} tables; {_plural(len(warnings), 'file or figure', 'files or figures')} left "
            f"out (<a href='#left-out'>why</a>).</p><nav><a href='#tables'>Tables</a><a href='#settings'>Settings</a>"
            f"<a href='#figures'>Figures</a><a href='#left-out'>Left out</a><a href='#provenance'>Provenance</a>"
            f"</nav>")
    body = (head + f'<h2 id="tables">Tables</h2>{LEGEND}' + "".join(sections)
            + f'<h2 id="settings">Settings</h2><p class="notes">Per table cell: each seed\'s dev score (dots) and '
              f'mean±std per learning rate found for its protocol (the chosen one red; the line is the lr sweep), '
              f'and the dev score per epoch (thin: one seed, dotted: diverged; bold: the mean). '
              f'{esc(settings_note(len(drawn), len(settings)))}</p><div class="cards">{cards}</div>'
            + figure_html + left_out_section(tables, warnings, df, len(drawn), len(settings))
            + provenance_section(found, root, Path(out), tables))
    path = Path(out).expanduser() / "index.html"
    text = page("BitFit reproduction report", body)
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))
    return Report(path, len(found), len(settings), len(drawn), [t.name for t in tables], warnings)
