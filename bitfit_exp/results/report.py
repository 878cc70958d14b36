"""One report page from run records: `bitfit-report RUNS_DIR --out DIR` writes DIR/index.html, one self-contained
file (CSS inline, figures as inline SVG and base64 PNG, no script, no network) that opens from disk. It shows

- each table `bitfit-tables` writes (the same cells: results.table_set builds both), colour-coded, with its notes;
- per setting of the tables (up to `max_settings`): its seeds as dots around mean±std at each learning rate (the lr
  sweep curve through the means) and its dev curve per epoch and seed, with the command that reruns it
  (results.report_settings);
- the paper's figures the records allow (bias change, generalization gap, data size; results.report_figures);
- what was left out and why (other protocols, corrupt records, settings not drawn) and provenance (versions, git
  SHAs, devices, device-hours, the commands that reproduce it).

Every record is read once (records.scan); the tables, curves and figures all work from that one read.

    report = build_report("~/bitfit-runs", "results/report")
    print(report.path, report.n_records, report.warnings)

>>> LAST_EPOCH in "Best epoch = last epoch for most seeds of: BERT-base BitFit RTE (3/5 seeds); ..."
True
"""

import gc
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

import bitfit_exp
from bitfit_exp.core.atomic import write_atomic
from bitfit_exp.core.errors import UserError
from bitfit_exp.results import analysis
from bitfit_exp.results.environment import git_state
from bitfit_exp.results.provenance import summarize
from bitfit_exp.results.records import scan
from bitfit_exp.results.report_figures import attempt, figures_section
from bitfit_exp.results.report_html import bullet_list, esc, kv_table, notes_html, page, table_html
from bitfit_exp.results.report_settings import MAX_SETTINGS, setting_card, settings_note, table_settings
from bitfit_exp.results.selection import collect
from bitfit_exp.results.table_set import BuiltTable, build_tables

MAX_LINES = 150     # lines per "left out" list


@dataclass
class Report:
    path: Path
    n_records: int
    n_settings: int
    n_drawn: int
    tables: list[str]
    warnings: list[str] = field(default_factory=list)


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
    cards = "".join(attempt(f"setting card of {s.hash}", lambda s=s: setting_card(s, main_rows[s.pid],
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
