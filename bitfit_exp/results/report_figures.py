"""The paper's figures on the report page, drawn by results.figures (as bitfit-plot draws them) and inlined as PNG:
Figure 1 (bias change) for a few settings whose records name patches, the generalization gap, and Figure 2 (dev score
by training-set size). A figure that fails is one warning, never the page.

    html = figures_section(settings, by_hash, root, found, epoch=None, warnings=warnings)

>>> attempt("a figure", lambda: 1 / 0, warnings := [])
''
>>> warnings
['a figure not drawn (ZeroDivisionError: division by zero)']
"""

from functools import partial
from pathlib import Path

import pandas as pd

from bitfit_exp.results import analysis, figures
from bitfit_exp.results.labels import row_label
from bitfit_exp.results.report_html import png_figure
from bitfit_exp.results.report_settings import Setting

MAX_BIAS = 4        # bias-change heatmaps (each reads the setting's patches)
MAX_DATASIZE = 6    # data-size figures
MAX_GAP_GROUPS = 16  # bar groups of the generalization-gap figure


def attempt(what: str, draw, warnings: list[str]) -> str:
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
        parts.append(attempt(f"bias-change figure of {records[0][0].parent.parent}",
                              lambda s=s, records=records: _bias_figure(s, records), warnings))
    if len(with_patches) > MAX_BIAS:
        parts.append(f"<p>{len(with_patches) - MAX_BIAS} more settings have patches: bitfit-plot bias-change "
                     f"SETTING_DIR draws them.</p>")
    runs, more = analysis.run_table(root, epoch, found=[(p, r) for p, r in found])
    warnings += more
    gaps = analysis.gap_summary(runs)
    if not gaps.empty:
        parts.append(attempt("generalization-gap figure", lambda: _gap_figure(gaps), warnings))
    n_size = 0
    for task, rows in runs[runs["subset"] >= 0].groupby("task"):
        if rows["n_train"].nunique() < 2:
            continue
        table = analysis.datasize_summary(rows, task)
        for model, mine in table.groupby("model"):
            n_size += 1
            if n_size > MAX_DATASIZE:
                continue
            parts.append(attempt(f"data-size figure of {model} {task}",
                                  partial(_datasize_figure, mine, model, task), warnings))
    if n_size > MAX_DATASIZE:
        parts.append(f"<p>{n_size - MAX_DATASIZE} more data-size figures: bitfit-plot datasize draws them.</p>")
    body = "".join(parts) or "<p>None: no patches, train-probe metrics or seeded training subsets in the records.</p>"
    return f'<h2 id="figures">The paper\'s figures</h2>{body}'
