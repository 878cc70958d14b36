"""Paper-style GLUE tables from run records: best learning rate on dev, mean±std over seeds, next to the paper.

    bitfit-tables --runs-dir ~/bitfit-runs --table all --out results/tables

writes <out>/<table>.md (Markdown), .tex (LaTeX booktabs) and .csv (long format, one row per cell) for table1-3 of
the paper (where records exist) and `ours` (every model x method found). The same steps in Python:

    df, warnings = collect("~/bitfit-runs")          # one row per (record, dev split), scores x100
    best = select_best_lr(df)                        # per (model, task, method): the lr with the best dev mean
    rows = TABLES["table3"].rows                     # [(model, method), ...]
    cells = compare(best, rows, load_reference(), table=3)
    write_tables("table3", build_table(best, rows, load_reference(), table=3), cells, "results/tables")

>>> fmt_cell(72.34, 0.93, n_seeds=3, expected_seeds=5)
'72.3±0.9 (3/5 seeds)'
>>> paper_avg({"qnli": 90, "sst2": 92, "mnli_m": 81, "mnli_mm": 83, "cola": 58, "mrpc": 90, "stsb": 89,
...            "rte": 72, "qqp": 83})
82.0
>>> fmt_param(0.0872), fmt_param(100.0)
('0.09%', '100%')
"""

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bitfit_exp.records import CorruptRecord, read_record
from bitfit_exp.reference import load_reference

COLUMNS = ["qnli", "sst2", "mnli_m", "mnli_mm", "cola", "mrpc", "stsb", "rte", "qqp"]
HEADERS = {"qnli": "QNLI", "sst2": "SST-2", "mnli_m": "MNLI-m", "mnli_mm": "MNLI-mm", "cola": "CoLA", "mrpc": "MRPC",
           "stsb": "STS-B", "rte": "RTE", "qqp": "QQP", "avg": "Avg"}
# The paper's Avg: mean over the 8 tasks, MNLI counted once as (m + mm) / 2 (results/paper/README.md).
AVG_WEIGHTS = {c: 0.5 if c.startswith("mnli") else 1.0 for c in COLUMNS}
MODELS = {"bert_base": "BERT-base", "bert_large": "BERT-large", "roberta_base": "RoBERTa-base", "minilm": "MiniLM-L6"}
METHODS = {"full": "Full-FT", "bitfit": "BitFit", "bm2_bq": "bm2,bq", "bm2": "bm2", "bq": "bq", "frozen": "Frozen",
           "rand_uniform": "rand uniform", "rand_rowcol": "rand row/col", "biases": "biases"}
MISSING = "—"
KEY = ["model", "task", "method"]
SETTING = [*KEY, "lr", "hash"]
ROW_COLUMNS = [*SETTING, "seed", "column", "main", "score", "train_score", "pct_encoder", "finished_at", "path"]
BEST_COLUMNS = [*KEY, "column", "mean", "std", "n_seeds", "lr", "hash", "pct_encoder", "train_mean", "n_lrs"]
CSV_COLUMNS = ["model", "method", "column", "mean", "std", "n_seeds", "lr", "paper_mean", "paper_std", "delta",
               "within", "hash", "pct_encoder", "paper_pct"]


@dataclass(frozen=True)
class TableDef:
    title: str
    paper: int | None  # table number in the paper, for the reference numbers
    rows: list[tuple[str, str]]  # (model, method)


TABLES = {
    "table1": TableDef("Table 1: BERT-large, GLUE dev", 1, [("bert_large", "full"), ("bert_large", "bitfit")]),
    "table2": TableDef("Table 2: BERT-base, BERT-large, RoBERTa-base, GLUE dev", 2,
                       [(m, f) for m in ("bert_base", "bert_large", "roberta_base") for f in ("full", "bitfit")]),
    "table3": TableDef("Table 3: BERT-base, subsets of parameters, GLUE dev", 3,
                       [("bert_base", m) for m in ("full", "bitfit", "bm2_bq", "bm2", "bq", "frozen", "rand_uniform",
                                                   "rand_rowcol")]),
}

# -----------------------------------------------------------------------------
# records -> rows


def record_rows(record: dict, path, epoch: str | None = None) -> list[dict]:
    """One row per dev split of a finished record, at `epoch` ("best" | "last"; None: the record's main.select)."""
    setting, main = record["setting"], record["main"]
    row = record[epoch or main["select"]]
    metric = main["metric"]
    if not record["columns"]:
        raise ValueError("no dev splits in 'columns'")
    out = []
    for split, column in record["columns"].items():
        train = (row.get("train") or {}).get(metric)
        out.append({
            "model": setting["model"], "task": setting["task"], "method": setting["method"],
            "lr": float(setting["lr"]), "hash": setting["hash"], "seed": int(record["seed"]), "column": column,
            "main": split == main["split"], "score": 100 * float(row["dev"][split][metric]),
            "train_score": math.nan if train is None else 100 * float(train),
            "pct_encoder": float(record["params"]["pct_encoder"]),
            "finished_at": str((record.get("timings") or {}).get("finished_at") or ""), "path": str(path),
        })
    return out


def collect(runs_dir, epoch: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Every finished <runs_dir>/**/seed*/record.json as rows (see ROW_COLUMNS), plus warnings for what was skipped.

    Corrupt, unfinished or malformed records are skipped with a warning naming the file. A (model, setting hash, seed)
    found twice (e.g. a run folder copied elsewhere under the root) is counted once: the newest finished_at wins.
    """
    if epoch not in (None, "best", "last"):
        raise ValueError(f"epoch must be 'best', 'last' or None, not {epoch!r}")
    warnings, kept = [], {}  # (model, hash, seed) -> (path, finished_at, rows)
    for path in sorted(Path(runs_dir).expanduser().glob("**/seed*/record.json")):
        try:
            record = read_record(path)
        except CorruptRecord as e:
            warnings.append(f"{e}; skipped")
            continue
        if record.get("status") != "finished":
            warnings.append(f"{path}: status {record.get('status')!r}, not finished; skipped")
            continue
        try:
            rows = record_rows(record, path, epoch)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            warnings.append(f"{path}: malformed run record ({type(e).__name__}: {e}); skipped")
            continue
        key = (rows[0]["model"], rows[0]["hash"], rows[0]["seed"])
        if key in kept:
            other, other_done, _ = kept[key]
            newer = rows[0]["finished_at"] > other_done
            keep, drop = (path, other) if newer else (other, path)
            warnings.append(f"{drop}: duplicate of {keep} (setting {key[1]}, seed {key[2]}); counted once, "
                            f"keeping the newer")
            if not newer:
                continue
        kept[key] = (path, rows[0]["finished_at"], rows)
    df = pd.DataFrame([r for _, _, rows in kept.values() for r in rows], columns=ROW_COLUMNS)
    return df.sort_values([*SETTING, "seed"], kind="stable", ignore_index=True), warnings


# -----------------------------------------------------------------------------
# rows -> best lr -> cells


def select_best_lr(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, method): the setting (lr, hash) with the highest mean over seeds of the task's main column.

    Dev-on-dev selection, as in the paper: the same dev scores choose the lr and are reported. Ties go to the smaller
    lr. Returns one row per (model, task, method, column): mean, std (sample std, ddof=1; 0 with one seed), n_seeds,
    lr, hash, pct_encoder, train_mean, n_lrs (how many settings were compared).
    """
    if df.empty:
        return pd.DataFrame(columns=BEST_COLUMNS)
    means = df[df["main"]].groupby(SETTING, as_index=False)["score"].mean()
    means["n_lrs"] = means.groupby(KEY)["score"].transform("size")
    ranked = means.sort_values([*KEY, "score", "lr", "hash"], ascending=[True, True, True, False, True, True])
    chosen = ranked.drop_duplicates(KEY)[[*SETTING, "n_lrs"]]
    picked = df.merge(chosen, on=SETTING)
    out = picked.groupby([*KEY, "column"], as_index=False, sort=False).agg(
        mean=("score", "mean"), std=("score", "std"), n_seeds=("seed", "nunique"), lr=("lr", "first"),
        hash=("hash", "first"), pct_encoder=("pct_encoder", "mean"), train_mean=("train_score", "mean"),
        n_lrs=("n_lrs", "first"))
    out["std"] = out["std"].fillna(0.0)
    return out[BEST_COLUMNS]


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


def compare(best: pd.DataFrame, rows, reference: pd.DataFrame | None = None, table: int | None = None) -> pd.DataFrame:
    """Long format, one row per (model, method, column incl. avg): ours next to the paper (see CSV_COLUMNS).

    delta = ours - paper; within = |delta| <= max(paper std, our std) (paper std NaN: ours only; up to float error);
    NA where either side is missing, and for avg (no std on either side).
    """
    ours = {(r.model, r.method, r.column): r for r in best.itertuples(index=False)}
    paper, paper_pct = paper_cells(reference, table)
    out = []
    for model, method in rows:
        for column in [*COLUMNS, "avg"]:
            hit = ours.get((model, method, column))
            p_mean, p_std = paper.get((model, method, column), (math.nan, math.nan))
            cell = {"model": model, "method": method, "column": column, "paper_mean": p_mean, "paper_std": p_std,
                    "paper_pct": paper_pct.get((model, method), math.nan)}
            if column == "avg":
                present = [ours[(model, method, c)] for c in COLUMNS if (model, method, c) in ours]
                mean = paper_avg({c: ours[(model, method, c)].mean for c in COLUMNS if (model, method, c) in ours})
                cell.update(mean=mean, std=math.nan, lr=math.nan, hash="",
                            n_seeds=min(r.n_seeds for r in present) if not math.isnan(mean) else math.nan,
                            pct_encoder=sum(r.pct_encoder for r in present) / len(present) if present else math.nan)
            elif hit is None:
                cell.update(mean=math.nan, std=math.nan, n_seeds=math.nan, lr=math.nan, hash="", pct_encoder=math.nan)
            else:
                cell.update(mean=hit.mean, std=hit.std, n_seeds=hit.n_seeds, lr=hit.lr, hash=hit.hash,
                            pct_encoder=hit.pct_encoder)
            cell["delta"] = cell["mean"] - p_mean
            noise = [s for s in (p_std, cell["std"]) if not math.isnan(s)]
            within = abs(cell["delta"]) <= max(noise, default=math.nan) + 1e-9  # 90.0 - 90.2 is 0.2000000000000028
            cell["within"] = pd.NA if math.isnan(cell["delta"]) or not noise else within
            out.append(cell)
    df = pd.DataFrame(out, columns=CSV_COLUMNS)
    df["within"] = df["within"].astype("boolean")
    df["n_seeds"] = df["n_seeds"].astype("Int64")
    return df


# -----------------------------------------------------------------------------
# cells -> paper layout


def fmt_cell(mean, std=math.nan, n_seeds=None, expected_seeds=None) -> str:
    if mean is None or math.isnan(mean):
        return MISSING
    text = f"{mean:.1f}" + ("" if std is None or math.isnan(std) else f"±{std:.1f}")
    if n_seeds is not None and not pd.isna(n_seeds) and expected_seeds and n_seeds < expected_seeds:
        text += f" ({int(n_seeds)}/{expected_seeds} seeds)"
    return text


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
    ✓ within noise, ✗ outside). Cells with fewer than `expected_seeds` seeds show the count; so does an Avg built
    from such cells ("(partial seeds)"). Avg only when all 8 tasks are present.
    """
    cells = compare(best, rows, reference, table)
    out = []
    for (model, method), g in cells.groupby(["model", "method"], sort=False):
        g = g.set_index("column")
        label = {"Model": MODELS.get(model, model), "Method": METHODS.get(method, method)}
        ours = {**label, **({"Source": "ours"} if reference is not None else {}),
                "%Param": fmt_param(g.at["avg", "pct_encoder"])}
        for c in COLUMNS:
            ours[HEADERS[c]] = fmt_cell(g.at[c, "mean"], g.at[c, "std"], g.at[c, "n_seeds"], expected_seeds)
        avg_n = g.at["avg", "n_seeds"]
        partial = not pd.isna(avg_n) and avg_n < expected_seeds
        ours["Avg"] = fmt_cell(g.at["avg", "mean"]) + (" (partial seeds)" if partial else "")
        out.append(ours)
        if reference is None or g["paper_mean"].isna().all():
            continue
        blank = {"Model": "", "Method": ""}
        paper = {**blank, "Source": "paper", "%Param": fmt_param(g.at["avg", "paper_pct"])}
        delta = {**blank, "Source": "Δ", "%Param": ""}
        for c in [*COLUMNS, "avg"]:
            paper[HEADERS[c]] = fmt_cell(g.at[c, "paper_mean"], g.at[c, "paper_std"])
            delta[HEADERS[c]] = fmt_delta(g.at[c, "delta"], g.at[c, "within"])
        out += [paper, delta]
    head = ["Model", "Method", *(["Source"] if reference is not None else []), "%Param", *HEADERS.values()]
    return pd.DataFrame(out, columns=head)


# -----------------------------------------------------------------------------
# writers

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


# -----------------------------------------------------------------------------
# command line


def found_rows(best: pd.DataFrame) -> list[tuple[str, str]]:
    """Every (model, method) with records, in the paper's order (unknown names last, alphabetically)."""
    def order(pair):
        model, method = pair
        return (list(MODELS).index(model) if model in MODELS else len(MODELS), model,
                list(METHODS).index(method) if method in METHODS else len(METHODS), method)
    return sorted(set(zip(best["model"], best["method"], strict=True)), key=order)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bitfit-tables", description="Paper-style GLUE tables from bitfit-run records.")
    p.add_argument("--runs-dir", default=os.environ.get("BITFIT_RUNS_DIR", "~/bitfit-runs"),
                   help="root of the run records (default: $BITFIT_RUNS_DIR or ~/bitfit-runs)")
    p.add_argument("--table", choices=["1", "2", "3", "ours", "all"], default="all",
                   help="paper table 1-3, 'ours' (every model x method found) or all (those with records + ours)")
    p.add_argument("--out", default="results/tables", help="folder for <table>.md/.tex/.csv")
    p.add_argument("--epoch", choices=["best", "last"], default=None,
                   help="epoch whose scores count (default: each record's train.select)")
    p.add_argument("--expected-seeds", type=int, default=5, help="fewer seeds than this are flagged in the cells")
    args = p.parse_args(argv)

    df, warnings = collect(args.runs_dir, epoch=args.epoch)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if df.empty:
        print(f"no finished run records under {args.runs_dir}", file=sys.stderr)
        return 1
    best, reference = select_best_lr(df), load_reference()
    found = found_rows(best)
    tables = {**TABLES, "ours": TableDef("Our runs, GLUE dev", None, found)}
    if args.table == "all":
        names = [n for n, t in TABLES.items() if set(t.rows) & set(found)] + ["ours"]
    else:
        names = ["ours" if args.table == "ours" else f"table{args.table}"]
    epoch = f"the {args.epoch} epoch" if args.epoch else "each record's selected epoch"
    for name in names:
        t = tables[name]
        notes = [f"Dev scores x100, mean±std over seeds at {epoch}. Per (model, task, method) the learning rate with "
                 f"the best mean dev score of the task's main column (dev-on-dev selection, as in the paper).",
                 "Avg: mean over the 8 tasks, MNLI counted once as (m + mm) / 2; only when all tasks are present.",
                 f"paper: BitFit (ACL 2022){f', Table {t.paper}' if t.paper else ''}; Δ = ours - paper; "
                 f"✓ |Δ| <= max(paper std, our std), ✗ otherwise."]
        cells = compare(best, t.rows, reference, t.paper)
        table = build_table(best, t.rows, reference, t.paper, args.expected_seeds)
        print(write_tables(name, table, cells, args.out, t.title, notes))
        print(f"wrote {Path(args.out) / name}.md, .tex, .csv\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
