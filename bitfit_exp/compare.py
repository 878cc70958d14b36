"""`bitfit-compare`: the same settings trained two ways (e.g. packed vs one by one), side by side per setting.

    bitfit-compare ~/runs-one-by-one ~/runs-packed            # Markdown table; --csv FILE also writes the cells

For every (model, task, method, lr, dev column) present under both runs dirs: mean±std (ddof=1) over seeds of each,
the difference B - A, ✓ when |Δ| <= max(std A, std B) (the tables' "within seed noise" rule), and Welch's t-test
p-value. Settings are matched by their setting hash, which leaves out how a run was trained (train.packed,
packed_dropout, pack_lrs, compile, device), so packed and one-by-one runs of one setting match.
"""

import argparse
import math
import sys

import pandas as pd
from scipy import stats

from bitfit_exp.tables import collect

GROUP = ["model", "task", "method", "lr", "hash", "column"]


def compare_runs(dir_a, dir_b) -> tuple[pd.DataFrame, list[str]]:
    (a, warn_a), (b, warn_b) = collect(dir_a), collect(dir_b)
    rows = []
    for key, left in a.groupby(GROUP, sort=True):
        right = b
        for col, value in zip(GROUP, key, strict=True):
            right = right[right[col] == value]
        if right.empty:
            continue
        x, y = left["score"].to_numpy(), right["score"].to_numpy()
        sd_a = float(x.std(ddof=1)) if len(x) > 1 else math.nan
        sd_b = float(y.std(ddof=1)) if len(y) > 1 else math.nan
        delta = float(y.mean() - x.mean())
        p = float(stats.ttest_ind(x, y, equal_var=False).pvalue) if len(x) > 1 and len(y) > 1 else math.nan
        noise = max(s for s in (sd_a, sd_b, 0.0) if not math.isnan(s))
        rows.append({**dict(zip(GROUP, key, strict=True)), "mean_a": float(x.mean()), "std_a": sd_a,
                     "n_a": len(x), "mean_b": float(y.mean()), "std_b": sd_b, "n_b": len(y), "delta": delta,
                     "within_noise": abs(delta) <= noise, "welch_p": p})
    return pd.DataFrame(rows), warn_a + warn_b


def to_markdown(cells: pd.DataFrame, name_a: str, name_b: str) -> str:
    lines = [f"| model | task | method | lr | column | A: {name_a} | B: {name_b} | Δ (B-A) | Welch p |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in cells.itertuples():
        lines.append(f"| {r.model} | {r.task} | {r.method} | {r.lr:g} | {r.column} | {r.mean_a:.2f}±{r.std_a:.2f} "
                     f"(n={r.n_a}) | {r.mean_b:.2f}±{r.std_b:.2f} (n={r.n_b}) | {r.delta:+.2f} "
                     f"{'✓' if r.within_noise else '✗'} | {r.welch_p:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_a", help="runs dir A (e.g. one-by-one runs)")
    parser.add_argument("runs_b", help="runs dir B (e.g. packed runs of the same settings)")
    parser.add_argument("--csv", help="also write the compared cells here")
    args = parser.parse_args(argv)
    cells, warnings = compare_runs(args.runs_a, args.runs_b)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if cells.empty:
        print(f"error: no setting has finished records under both {args.runs_a} and {args.runs_b}", file=sys.stderr)
        return 2
    print(to_markdown(cells, args.runs_a, args.runs_b))
    within = int(cells["within_noise"].sum())
    print(f"\n{within}/{len(cells)} settings within seed noise (|Δ| <= max std)")
    if args.csv:
        cells.to_csv(args.csv, index=False)
    return 0
