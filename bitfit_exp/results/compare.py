"""The same settings trained two ways (e.g. packed vs one by one), side by side per setting (`bitfit-compare`).

For every (model, task, method, protocol, lr, dev column) present under both runs dirs: mean±std (ddof=1) over the
finished seeds of each, the difference B - A, ✓ when |Δ| <= max(std A, std B) (the tables' "within seed noise" rule),
and Welch's t-test p-value. Diverged seeds are counted next to each side ("n=4, 1 diverged"), never averaged.

Settings are matched by protocol (records.protocol: the result config without the lr, and the checkpoint and data
read) and lr, which is what the setting hash covers: how a run was trained (train.packed, packed_dropout, pack_lrs,
compile, device) is not a result key, so packed and one-by-one runs of one setting match, while a run that differs
in anything that changes results (batch size, epochs, a data slice, another checkpoint) does not, and is counted
as present under one side only.
"""

import math

import pandas as pd
from scipy import stats

from bitfit_exp.results.selection import collect

GROUP = ["model", "task", "method", "protocol_id", "lr", "column"]


CELL_COLUMNS = [*GROUP, "hash", "mean_a", "std_a", "n_a", "diverged_a", "no_score_a", "mean_b", "std_b", "n_b",
                "diverged_b", "no_score_b",
                "delta", "within_noise", "welch_p"]


def _side(rows: pd.DataFrame) -> tuple:
    """Finished scores, their mean and std (NaN below two), how many seeds diverged, and how many finished with no
    score (a metric undefined on their predictions)."""
    scores = rows["score"].dropna().to_numpy()
    mean = float(scores.mean()) if len(scores) else math.nan
    std = float(scores.std(ddof=1)) if len(scores) > 1 else math.nan
    diverged = int(rows["diverged"].sum())
    return scores, mean, std, diverged, len(rows) - len(scores) - diverged


def compare_runs(dir_a, dir_b) -> tuple[pd.DataFrame, list[str]]:
    """One row per setting and dev column found under both (CELL_COLUMNS), and the warnings: skipped files, and how
    many settings lie under one side only."""
    (a, warn_a), (b, warn_b) = collect(dir_a), collect(dir_b)
    right = dict(list(b.groupby(GROUP, sort=False)))
    rows = []
    for key, left in a.groupby(GROUP, sort=True):
        if key not in right:
            continue
        (x, mean_a, sd_a, div_a, none_a), (y, mean_b, sd_b, div_b, none_b) = _side(left), _side(right[key])
        delta = mean_b - mean_a
        p = float(stats.ttest_ind(x, y, equal_var=False).pvalue) if len(x) > 1 and len(y) > 1 else math.nan
        noise = max(s for s in (sd_a, sd_b, 0.0) if not math.isnan(s))
        rows.append({**dict(zip(GROUP, key, strict=True)), "hash": left["hash"].iloc[0],
                     "mean_a": mean_a, "std_a": sd_a, "n_a": len(x), "diverged_a": div_a, "no_score_a": none_a,
                     "mean_b": mean_b, "std_b": sd_b, "n_b": len(y), "diverged_b": div_b, "no_score_b": none_b,
                     "delta": delta,
                     "within_noise": pd.NA if math.isnan(delta) else abs(delta) <= noise, "welch_p": p})
    notes = []
    for name, mine, other in (("A", a, b), ("B", b, a)):
        only = set(map(tuple, mine[GROUP[:-1]].to_numpy())) - set(map(tuple, other[GROUP[:-1]].to_numpy()))
        if only:
            notes.append(f"{len(only)} setting(s) only under {name} (no record of the same protocol and lr under "
                         f"the other): {', '.join(sorted(f'{m}/{t}/{f} lr {lr:g}' for m, t, f, _, lr in only))}")
    return pd.DataFrame(rows, columns=CELL_COLUMNS), warn_a + warn_b + notes


def _fmt_side(mean, std, n, diverged, no_score) -> str:
    """`mean±std (n=2, 1 diverged, 1 no score)`; a side with no score at all says why.

    >>> _fmt_side(88.5, 0.71, 2, 0, 1), _fmt_side(float("nan"), float("nan"), 0, 2, 0)
    ('88.50±0.71 (n=2, 1 no score)', 'diverged (2/2)')
    """
    bad = [f"{diverged} diverged"] * bool(diverged) + [f"{no_score} no score"] * bool(no_score)
    if n == 0 and diverged and not no_score:
        return f"diverged ({diverged}/{diverged})"
    if n == 0:
        return f"no score ({', '.join(bad)})" if bad else "—"
    return f"{mean:.2f}±{std:.2f} (n={', '.join([str(n), *bad])})"


def to_markdown(cells: pd.DataFrame, name_a: str, name_b: str) -> str:
    lines = [f"| model | task | method | lr | column | A: {name_a} | B: {name_b} | Δ (B-A) | Welch p |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in cells.itertuples():
        delta = "—" if pd.isna(r.within_noise) else f"{r.delta:+.2f} {'✓' if r.within_noise else '✗'}"
        lines.append(f"| {r.model} | {r.task} | {r.method} | {r.lr:g} | {r.column} | "
                     f"{_fmt_side(r.mean_a, r.std_a, r.n_a, r.diverged_a, r.no_score_a)} | "
                     f"{_fmt_side(r.mean_b, r.std_b, r.n_b, r.diverged_b, r.no_score_b)} | {delta} | {r.welch_p:.2f} |")
    return "\n".join(lines)
