"""Paper-style GLUE tables from run records: best learning rate on dev within one protocol, mean±std over seeds,
next to the paper.

    bitfit-tables --runs-dir ~/bitfit-runs --table all --out results/tables

writes <out>/<table>.md (Markdown), .tex (LaTeX booktabs) and .csv (long format, one row per cell) for table1-3 of
the paper (where records exist), `pos` (the token-level result of section 4: POS accuracy on EWT dev and test next
to the paper's PTB numbers, where POS records exist) and `ours` (every GLUE model x method x protocol found).

Which records make each cell is bitfit_exp.results.selection's job (protocols, the best lr within one, what is left out);
this module turns its choice into cells next to the paper, lays them out as the paper does, and writes them:

    df, warnings = collect("~/bitfit-runs")          # selection: one row per (record, dev split), scores x100
    chosen = table_selection(df, TABLES["table3"])   # selection: the table's protocol and lrs per cell
    cells = compare(chosen.best, chosen.rows, load_reference(), table=3)
    write_tables("table3", build_table(chosen.best, chosen.rows, load_reference(), table=3), cells, "results/tables")

Diverged seeds (a non-finite loss or prediction; `status: diverged`) are results: they are counted in their cell
("61.2±1.1 (1/5 diverged)"), never averaged.

>>> fmt_cell(72.34, 0.93, n_seeds=3, expected_seeds=5)
'72.3±0.9 (3/5 seeds)'
>>> fmt_cell(61.24, 1.1, n_seeds=5, expected_seeds=5, n_diverged=1), fmt_cell(math.nan, n_seeds=5, n_diverged=5)
('61.2±1.1 (1/5 diverged)', 'diverged (5/5)')
>>> paper_avg({"qnli": 90, "sst2": 92, "mnli_m": 81, "mnli_mm": 83, "cola": 58, "mrpc": 90, "stsb": 89,
...            "rte": 72, "qqp": 83})
82.0
>>> fmt_param(0.0872), fmt_param(100.0)
('0.09%', '100%')
"""

import math
from pathlib import Path

import pandas as pd

from bitfit_exp.results.labels import HEADERS, METHODS, MODELS, row_label
from bitfit_exp.results.selection import (
    TABLES,
    Selection,
    TableDef,
)

COLUMNS = ["qnli", "sst2", "mnli_m", "mnli_mm", "cola", "mrpc", "stsb", "rte", "qqp"]


COLUMN_NAMES = {**HEADERS, "pos": "EWT dev", "pos_test": "EWT test"}  # a record column's name in the notes


# The paper's Avg: mean over the 8 tasks, MNLI counted once as (m + mm) / 2 (results/paper/README.md).
AVG_WEIGHTS = {c: 0.5 if c.startswith("mnli") else 1.0 for c in COLUMNS}


MISSING = "—"


CSV_COLUMNS = ["model", "method", "column", "mean", "std", "n_seeds", "lr", "paper_mean", "paper_std", "delta",
               "within", "hash", "pct_encoder", "paper_pct", "variant", "n_diverged", "n_no_score", "n_lrs",
               "expected_lrs", "seeds", "n_at_last"]


def paper_avg(means: dict) -> float:
    """The paper's Avg over the 8 tasks (MNLI once, as (m + mm) / 2); NaN unless every column is present."""
    values = [means.get(c, math.nan) for c in COLUMNS]
    if any(v is None or math.isnan(v) for v in values):
        return math.nan
    return sum(AVG_WEIGHTS[c] * v for c, v in zip(COLUMNS, values, strict=True)) / sum(AVG_WEIGHTS.values())


def paper_cells(reference: pd.DataFrame | None, table: int | None) -> tuple[dict, dict]:
    """(model, method, column) -> (mean, std) and (model, method) -> %Param of the paper's own dev rows."""
    if reference is None:
        return {}, {}
    ref = reference[(reference["split"] == "dev") & (reference["source"] == "this_paper")]
    if table is not None:
        ref = ref[ref["table"] == table]
    cells, pct = {}, {}
    for r in ref.itertuples(index=False):
        cells.setdefault((r.model, r.method, r.task), (float(r.mean), float(r.std)))
        pct.setdefault((r.model, r.method), float(r.param_pct))
    return cells, pct


def table_columns(best: pd.DataFrame) -> list[str]:
    """The GLUE columns, then any other task's dev columns found in `best` (a task of one's own), sorted."""
    return [*COLUMNS, *sorted(set(best["column"]) - set(COLUMNS))]


def _rows3(rows) -> list[tuple[str, str, str]]:
    return [(r[0], r[1], r[2] if len(r) > 2 else "") for r in rows]


def _ours(best: pd.DataFrame) -> dict:
    """(model, method, variant, column) -> best row; several protocols for one cell are an error, never mixed."""
    variants = best["variant"] if "variant" in best else pd.Series("", index=best.index)
    ours = {}
    for r, variant in zip(best.itertuples(index=False), variants, strict=True):
        key = (r.model, r.method, variant, r.column)
        if key in ours:
            raise ValueError(f"{row_label(r.model, r.method, variant)} {r.column}: several protocols; choose one per "
                             f"cell with table_selection or ours_selection")
        ours[key] = r
    return ours


_EMPTY_CELL = {"mean": math.nan, "std": math.nan, "n_seeds": pd.NA, "lr": math.nan, "hash": "",
               "pct_encoder": math.nan, "n_diverged": pd.NA, "n_no_score": pd.NA, "n_lrs": pd.NA,
               "expected_lrs": pd.NA, "seeds": "", "n_at_last": pd.NA}


def _avg_cell(present: list) -> dict:
    mean = paper_avg({r.column: r.mean for r in present})
    return {**_EMPTY_CELL, "mean": mean,
            "n_seeds": min(r.n_seeds for r in present) if not math.isnan(mean) else pd.NA,
            "n_diverged": sum(r.n_diverged + r.n_no_score for r in present) if present else pd.NA,
            "pct_encoder": sum(r.pct_encoder for r in present) / len(present) if present else math.nan}


def compare(best: pd.DataFrame, rows, reference: pd.DataFrame | None = None, table: int | None = None,
            columns=tuple(COLUMNS)) -> pd.DataFrame:
    """Long format, one row per (model, method, variant, column incl. avg): ours next to the paper (CSV_COLUMNS).

    `rows`: (model, method) or (model, method, variant) tuples; `best` has one protocol per cell (select_best_lr's
    rows through table_selection / ours_selection). delta = ours - paper; within = |delta| <= max(paper std, our
    std) (paper std NaN: ours only; up to float error); NA where either side is missing, and for avg. `columns`:
    the GLUE columns and any task of one's own found in `best` (with the paper's avg), or another table's
    columns (no avg), e.g. ("pos", "pos_test").
    """
    ours = _ours(best)
    paper, paper_pct = paper_cells(reference, table)
    glue = list(columns) == COLUMNS
    out = []
    for model, method, variant in _rows3(rows):
        for column in [*table_columns(best), "avg"] if glue else columns:
            p_mean, p_std = paper.get((model, method, column), (math.nan, math.nan))
            cell = {"model": model, "method": method, "variant": variant, "column": column, "paper_mean": p_mean,
                    "paper_std": p_std, "paper_pct": paper_pct.get((model, method), math.nan)}
            hit = ours.get((model, method, variant, column))
            if column == "avg":
                cell.update(_avg_cell([ours[(model, method, variant, c)] for c in table_columns(best)
                                       if (model, method, variant, c) in ours]))
            elif hit is None:
                cell.update(_EMPTY_CELL)
            else:
                cell.update({k: getattr(hit, k) for k in _EMPTY_CELL})
            cell["delta"] = cell["mean"] - p_mean
            noise = [s for s in (p_std, cell["std"]) if not math.isnan(s)]
            within = abs(cell["delta"]) <= max(noise, default=math.nan) + 1e-9  # 90.0 - 90.2 is 0.2000000000000028
            cell["within"] = pd.NA if math.isnan(cell["delta"]) or not noise else within
            out.append(cell)
    df = pd.DataFrame(out, columns=CSV_COLUMNS)
    df["within"] = df["within"].astype("boolean")
    for count in ("n_seeds", "n_diverged", "n_no_score", "n_lrs", "expected_lrs", "n_at_last"):
        df[count] = df[count].astype("Int64")
    return df


def _count(value) -> int:
    return 0 if value is None or pd.isna(value) else int(value)


def fmt_cell(mean, std=math.nan, n_seeds=None, expected_seeds=None, n_diverged=0, n_lrs=None, expected_lrs=None,
             n_no_score=0) -> str:
    """mean±std, marked where it stands on less than the sweep: fewer seeds than expected, diverged seeds (counted,
    not averaged), seeds without a score, fewer lrs compared than the sweep's grid."""
    seeds, diverged, no_score = _count(n_seeds), _count(n_diverged), _count(n_no_score)
    marks = []
    if seeds and diverged == seeds:
        text = f"diverged ({diverged}/{seeds})"
    elif seeds and diverged + no_score == seeds:
        text = f"no score ({no_score}/{seeds}{f', {diverged} diverged' if diverged else ''})"
    elif mean is None or math.isnan(mean):
        return MISSING
    else:
        text = f"{mean:.1f}" + ("" if std is None or math.isnan(std) else f"±{std:.1f}")
        if expected_seeds and seeds and seeds < expected_seeds:
            marks.append(f"{seeds}/{expected_seeds} seeds")
        if diverged:
            marks.append(f"{diverged}/{seeds} diverged")
        if no_score:
            marks.append(f"{no_score}/{seeds} no score")
    if _count(n_lrs) and _count(expected_lrs) and _count(n_lrs) < _count(expected_lrs):
        marks.append(f"{_count(n_lrs)}/{_count(expected_lrs)} lrs")
    return text + (f" ({', '.join(marks)})" if marks else "")


def fmt_param(pct) -> str:
    if pct is None or math.isnan(pct):
        return MISSING
    return "100%" if round(pct, 2) >= 100 else f"{pct:.2f}%"


def fmt_delta(delta, within) -> str:
    if math.isnan(delta):
        return MISSING
    return f"{delta:+.1f}" + ("" if pd.isna(within) else " ✓" if within else " ✗")


def build_table(best: pd.DataFrame, rows, reference: pd.DataFrame | None = None, table: int | None = None,
                expected_seeds: int = 5) -> pd.DataFrame:
    """The paper's layout: Model, Method, [Source,] %Param, QNLI ... QQP, Avg; strings, "—" where missing.

    With a reference, each (model, method) that the paper reports gets three rows: ours, paper and Δ (ours - paper,
    ✓ within noise, ✗ outside). A variant (ours: one row per protocol) is named after the method in brackets.
    Cells are marked where they stand on less (fewer than `expected_seeds` seeds, diverged seeds, fewer lrs than the
    sweep's grid); so is an Avg built from such cells. Avg only when all 8 tasks are present.
    """
    cells = compare(best, rows, reference, table)
    columns = table_columns(best)
    out = []
    for (model, method, variant), g in cells.groupby(["model", "method", "variant"], sort=False):
        g = g.set_index("column")
        label = {"Model": MODELS.get(model, model),
                 "Method": METHODS.get(method, method) + (f" [{variant}]" if variant else "")}
        ours = {**label, **({"Source": "ours"} if reference is not None else {}),
                "%Param": fmt_param(g.at["avg", "pct_encoder"])}
        for c in columns:
            ours[HEADERS.get(c, c)] = fmt_cell(g.at[c, "mean"], g.at[c, "std"], g.at[c, "n_seeds"], expected_seeds,
                                        g.at[c, "n_diverged"], g.at[c, "n_lrs"], g.at[c, "expected_lrs"],
                                        g.at[c, "n_no_score"])
        avg_n, avg_bad = g.at["avg", "n_seeds"], _count(g.at["avg", "n_diverged"])
        partial = not pd.isna(avg_n) and avg_n < expected_seeds
        ours["Avg"] = fmt_cell(g.at["avg", "mean"]) + (" (partial seeds)" if partial else "") + \
            (" (diverged seeds)" if avg_bad and not math.isnan(g.at["avg", "mean"]) else "")
        out.append(ours)
        if reference is None or g["paper_mean"].isna().all():
            continue
        blank = {"Model": "", "Method": ""}
        paper = {**blank, "Source": "paper", "%Param": fmt_param(g.at["avg", "paper_pct"])}
        delta = {**blank, "Source": "Δ", "%Param": ""}
        for c in [*columns, "avg"]:
            paper[HEADERS.get(c, c)] = fmt_cell(g.at[c, "paper_mean"], g.at[c, "paper_std"])
            delta[HEADERS.get(c, c)] = fmt_delta(g.at[c, "delta"], g.at[c, "within"])
        out += [paper, delta]
    head = ["Model", "Method", *(["Source"] if reference is not None else []), "%Param",
            *(HEADERS.get(c, c) for c in columns), "Avg"]
    return pd.DataFrame(out, columns=head)


# conf/task/pos.yaml's eval_splits: {validation: pos, test: pos_test}; the first selects the lr and the epoch.
TOKEN_COLUMNS = {"pos": "EWT dev", "pos_test": "EWT test"}


TOKEN_PAPER = "paper: PTB"


def token_cells(best: pd.DataFrame, rows, reference: pd.DataFrame | None) -> pd.DataFrame:
    """compare's long format for the POS columns; paper_mean on every row of a (model, method) is the paper's PTB
    accuracy (section 4; no std): another data set than ours, so delta and within stay NA."""
    cells = compare(best, rows, columns=tuple(TOKEN_COLUMNS))
    if reference is not None:
        paper = {(r.model, r.method): float(r.mean) for r in reference[reference["task"] == "pos"].itertuples()}
        cells["paper_mean"] = [paper.get((m, f), math.nan) for m, f in zip(cells["model"], cells["method"],
                                                                            strict=True)]
    return cells


def build_token_table(cells: pd.DataFrame, expected_seeds: int = 5) -> pd.DataFrame:
    """One row per (model, method, variant): %Param, our accuracy on EWT dev and test (mean±std, marked as the GLUE
    cells are), and the paper's PTB accuracy ("—" where the paper has no such row)."""
    out = []
    for (model, method, variant), g in cells.groupby(["model", "method", "variant"], sort=False):
        g = g.set_index("column")
        row = {"Model": MODELS.get(model, model), "Method": METHODS.get(method, method) + (f" [{variant}]" if variant
                                                                                            else ""),
               "%Param": fmt_param(g["pct_encoder"].mean())}
        for column, header in TOKEN_COLUMNS.items():
            row[header] = fmt_cell(g.at[column, "mean"], g.at[column, "std"], g.at[column, "n_seeds"], expected_seeds,
                                   g.at[column, "n_diverged"], g.at[column, "n_lrs"], g.at[column, "expected_lrs"],
                                   g.at[column, "n_no_score"])
        row[TOKEN_PAPER] = fmt_cell(g["paper_mean"].iloc[0])
        out.append(row)
    return pd.DataFrame(out, columns=["Model", "Method", "%Param", *TOKEN_COLUMNS.values(), TOKEN_PAPER])


def token_notes(cells: pd.DataFrame, selection: Selection, epoch: str, table: TableDef) -> list[str]:
    experiments = ", ".join(f"+experiment={e}" for e in dict.fromkeys(table.experiments.values()))
    notes = [f"Tagging accuracy x100 over every word (words cut off by data.max_length count as errors), mean±std "
             f"over the finished seeds at {epoch}. Paper rows: records of {experiments}, per cell the lr with the "
             f"best mean EWT dev accuracy (dev-on-dev, as the GLUE tables); rows marked [...] or of other models are "
             f"other protocols found (their own config, e.g. a small CPU run), never mixed into the paper rows.",
             "Ours is Universal Dependencies English-EWT (its PTB-style `xpos` tags, conf/task/pos.yaml), NOT the "
             "Penn Treebank: `paper: PTB` is the paper's PTB POS accuracy (section 4, \"Token-level tasks\"; no ±, "
             "split not stated), another data set, so there is no Δ.", ""]
    notes += lr_notes(cells)
    notes += ["", *last_epoch_note(cells)] if last_epoch_note(cells) else []
    if selection.left_out:
        notes += ["", "Left out:", *(f"- {line}" for line in selection.left_out)]
    return notes


def lr_notes(cells: pd.DataFrame) -> list[str]:
    """Per table row: each cell's chosen lr, the lrs compared and the seeds behind it."""
    lines = []
    for (model, method, variant), g in cells[cells["column"] != "avg"].groupby(["model", "method", "variant"],
                                                                             sort=False):
        g = g.dropna(subset=["n_seeds"])
        if g.empty:
            continue
        parts = []
        for r in g.itertuples(index=False):
            bad = f", {r.n_diverged} diverged" if r.n_diverged else ""
            parts.append(f"{COLUMN_NAMES.get(r.column, r.column)} {r.lr:g} ({r.n_lrs}/{r.expected_lrs} lrs; "
                         f"seeds {r.seeds}{bad})")
        lines.append(f"- {row_label(model, method, variant)}: {'; '.join(parts)}")
    return ["Chosen lr per cell (lrs compared of the sweep's grid; seeds):", *lines] if lines else []


def last_epoch_note(cells: pd.DataFrame) -> list[str]:
    """Cells whose best epoch was the last one (of more than one) for most of their seeds."""
    rows = cells[(cells["column"] != "avg") & cells["n_at_last"].notna()]
    hits = [f"{row_label(r.model, r.method, r.variant)} {COLUMN_NAMES.get(r.column, r.column)} ({r.n_at_last}/{r.n_seeds} "
            f"seeds)" for r in rows.itertuples(index=False) if 2 * r.n_at_last > r.n_seeds]
    if not hits:
        return []
    return [f"Best epoch = last epoch for most seeds of: {', '.join(hits)}; the dev curve may still be rising "
            f"(more train.epochs?)."]


PEFT_TITLE = "BitFit and peft methods under one protocol, GLUE dev"


def peft_notes(cells: pd.DataFrame) -> list[str]:
    """`--table peft`'s notes: what %Param counts, and the models the paper has no BitFit / Full-FT rows for."""
    paper = set(cells.loc[cells["paper_mean"].notna(), "model"])
    without = [MODELS.get(m, m) for m in dict.fromkeys(cells["model"]) if m not in paper]
    notes = ["", "%Param: the trained encoder parameters (LoRA's A and B, IA3's and BEFT's vectors, BitFit's biases) "
                 "over the pre-trained encoder's, the head left out, as the paper counts. The paper rows are its own "
                 "BitFit and Full-FT numbers for the same model (reference only: the paper's Adapters and "
                 "Diff-Pruning rows were copied from other papers, under other protocols)."]
    if without:
        notes.append(f"No paper rows for {', '.join(without)}: the paper reports BERT-base, BERT-large and "
                     f"RoBERTa-base.")
    return notes


def table_notes(cells: pd.DataFrame, selection: Selection, epoch: str, table: TableDef) -> list[str]:
    if table.experiments:
        experiments = ", ".join(f"+experiment={e}" for e in dict.fromkeys(table.experiments.values()))
        scope = (f"records of the table's config ({experiments}), of one checkpoint per row (the one with the most "
                 f"done seeds over the row; a cell with records of another checkpoint only shows {MISSING}); other "
                 f"protocols are left out (listed below)")
    else:
        scope = "one row per protocol found (labelled by the keys that differ between the rows of a model x method)"
    notes = [f"Dev scores x100, mean±std over the finished seeds at {epoch}; {scope}. Per cell the learning rate with "
             f"the best mean dev score of the task's main column among settings that differ only in the lr "
             f"(dev-on-dev selection, as in the paper). Diverged seeds are counted in the cell (\"k/n diverged\"), "
             f"never averaged; an lr with a diverged seed ranks after every lr without one.",
             "Avg: mean over the 8 tasks, MNLI counted once as (m + mm) / 2; only when all tasks are present.",
             f"paper: BitFit (ACL 2022){f', Table {table.paper}' if table.paper else ''}; Δ = ours - paper; "
             f"✓ |Δ| <= max(paper std, our std), ✗ otherwise.", ""]
    notes += lr_notes(cells)
    notes += ["", *last_epoch_note(cells)] if last_epoch_note(cells) else []
    if selection.left_out:
        notes += ["", "Left out (another protocol than this table's):", *(f"- {line}" for line in selection.left_out)]
    return notes


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
       "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "✓": r"\checkmark{}",
       "✗": r"$\times$", "—": "--", "Δ": r"$\Delta$"}


def tex_escape(text) -> str:
    return "".join(TEX.get(ch, ch) for ch in str(text))


def to_markdown(frame: pd.DataFrame, title: str | None = None, notes=()) -> str:
    text = [f"### {title}", ""] if title else []
    left = {"Model", "Method", "Source"}
    text.append("| " + " | ".join(frame.columns) + " |")
    text.append("| " + " | ".join("---" if c in left else "---:" for c in frame.columns) + " |")
    text += ["| " + " | ".join(str(v).replace("|", r"\|") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(text + ([""] + list(notes) if notes else [])) + "\n"


def to_latex(frame: pd.DataFrame, title: str | None = None) -> str:
    """A booktabs table (needs \\usepackage{booktabs,amssymb}); \\midrule between (model, method) blocks."""
    spec = "".join("l" if c in ("Model", "Method", "Source") else "r" for c in frame.columns)
    text = ["% generated by bitfit-tables; needs \\usepackage{booktabs,amssymb}", r"\begin{table*}[t]", r"\centering",
            r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
            " & ".join(tex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    for i, row in enumerate(frame.itertuples(index=False)):
        if i and row[0]:  # a new (model, method) block starts with a labelled row
            text.append(r"\midrule")
        text.append(" & ".join(tex_escape(v) for v in row) + r" \\")
    text += [r"\bottomrule", r"\end{tabular}"]
    if title:
        text.append(rf"\caption{{{tex_escape(title)}}}")
    return "\n".join(text + [r"\end{table*}"]) + "\n"


def write_tables(name: str, table: pd.DataFrame, cells: pd.DataFrame, out_dir="results/tables",
                 title: str | None = None, notes=()) -> str:
    """Write <out_dir>/<name>.md, .tex (from `table`, build_table's output) and .csv (from `cells`, compare's
    output); return the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table, title, notes)
    (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    (out / f"{name}.tex").write_text(to_latex(table, title), encoding="utf-8")
    scores = ["mean", "std", "paper_mean", "paper_std", "delta"]
    cells[CSV_COLUMNS].round(dict.fromkeys(scores, 4)).to_csv(out / f"{name}.csv", index=False)
    return markdown


def unfilled(written: list[str], runs_dir) -> list[str]:
    """One line per paper table that `bitfit-tables --table all` did not write (it writes every one with records):
    which records it lacks and the sweep that makes them.

    >>> unfilled(["table2", "table3"], "~/runs")[0]  # doctest: +ELLIPSIS
    'table1 not written: no GLUE records of BERT-large with Full-FT/BitFit under ~/runs; make them with bitfit-run ...'
    """
    lines = []
    for name, table in TABLES.items():
        if name in written:
            continue
        models = "/".join(dict.fromkeys(MODELS.get(m, m) for m, _ in table.rows))
        methods = "/".join(dict.fromkeys(METHODS.get(f, f) for _, f in table.rows))
        tasks = "GLUE" if name != "pos" else "POS"
        experiments = dict.fromkeys(table.experiments.values())
        sweeps = " and ".join(f"bitfit-run +experiment={e} --multirun" for e in experiments)
        lines.append(f"{name} not written: no {tasks} records of {models} with {methods} under {runs_dir}; "
                     f"make them with {sweeps}")
    return lines
