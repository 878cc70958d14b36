"""The paper's figures drawn from bitfit_exp.results.analysis (matplotlib's Agg canvas, no display): every figure is
written as <name>.png, <name>.pdf and <name>.csv (the plotted values). `bitfit-plot` (commands/plot.py) is the
command.

Only what the run records name is drawn: every record or patch left out, and every figure of `all` that fails, is
returned as a warning line, and a figure averaging fewer seeds than its setting has says so ("2 of 3 seeds: seed
1's patch is missing"; diverged seeds are counted, never averaged).

>>> method_name("bitfit"), task_name("sst2")
('BitFit', 'SST-2')
"""

import math
from functools import partial
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bitfit_exp.core.errors import UserError
from bitfit_exp.results import analysis
from bitfit_exp.results.labels import METHODS, MODELS, TASKS
from bitfit_exp.results.records import scan

STYLE = {
    "font.family": "serif", "font.serif": ["DejaVu Serif"], "mathtext.fontset": "dejavuserif",
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
    "legend.fontsize": 10, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "savefig.dpi": 200, "savefig.bbox": "tight", "pdf.fonttype": 42,
}


COLORS = {"bitfit": "#1f77b4", "full": "#d62728"}  # BitFit blue, Full-FT red, everything else from the cycle


SERIES_STYLE = {"train": "--", "dev": "-"}


# The paper's notation (Appendix A.1), as mathtext for the heatmap rows
MATH_LABELS = {"b_q": r"$\mathbf{b}_{q}$", "b_k": r"$\mathbf{b}_{k}$", "b_v": r"$\mathbf{b}_{v}$",
               "b_m1": r"$\mathbf{b}_{m1}$", "b_LN1": r"$\mathbf{b}_{LN1}$", "b_m2": r"$\mathbf{b}_{m2}$",
               "b_m3": r"$\mathbf{b}_{m3}$", "b_LN2": r"$\mathbf{b}_{LN2}$"}


METRIC_NAMES = {"accuracy": "accuracy", "f1": "F1", "exact_match": "exact match", "matthews": "Matthews corr.",
                "spearman": "Spearman corr.", "pearson": "Pearson corr.", "loss": "loss"}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def model_name(model: str) -> str:
    return MODELS.get(model, model)


def method_name(method: str) -> str:
    return METHODS.get(method, method)


def task_name(task: str) -> str:
    return TASKS.get(task, task.upper())


def metric_name(metric: str | None) -> str:
    return METRIC_NAMES.get(metric, metric or "score")


def setting_label(info: dict) -> str:
    lr = "" if info.get("lr") is None or math.isnan(info["lr"]) else f", lr {info['lr']:g}"
    n = info.get("n_train")
    size = f", {n:,} train ex." if n else ""
    return f"{model_name(info['model'])}, {task_name(info['task'])}, {method_name(info['method'])}{lr}{size}"


def file_stem(kind: str, info: dict, run_dir=None) -> str:
    parts = [kind, info["model"], info["task"], info["method"]]
    if info.get("lr") is not None and not math.isnan(info["lr"]):
        parts.append(f"lr{info['lr']:g}")
    if info.get("hash"):
        parts.append(info["hash"])
    if info.get("seed_folder") and run_dir is not None:
        parts.append(Path(run_dir).name)
    return "_".join(str(p).replace("/", "-").replace(":", "-") for p in parts)


def save(fig: Figure, data: pd.DataFrame, out_dir, name: str, index: bool = False) -> list[Path]:
    """Write <out_dir>/<name>.png, .pdf and .csv (the plotted values); return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf", out / f"{name}.csv"]
    with matplotlib.rc_context(STYLE):
        fig.savefig(paths[0])
        fig.savefig(paths[1])
    data.to_csv(paths[2], index=index, float_format="%.6g")
    return paths


def plot_bias_change(table: pd.DataFrame, title: str, annotate: bool | None = None):
    """Figure 1: rows b_q (top) ... b_LN2, columns layers 1..L and Avg; colour = mean |b0 - bF|.

    Returns (fig, ax, image); image.get_array() holds exactly table.values (NaN masked)."""
    values = table.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    annotate = n_cols <= 14 if annotate is None else annotate
    with matplotlib.rc_context(STYLE):
        fig = new_figure(max(5.0, 0.62 * n_cols + 2.6), 0.42 * n_rows + 1.6)
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", vmin=0,
                          vmax=np.nanmax(values) if np.isfinite(values).any() else 1)
        ax.set_xticks(range(n_cols), [str(c) for c in table.columns])
        ax.set_yticks(range(n_rows), [MATH_LABELS.get(str(r), str(r)) for r in table.index])
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        if str(table.columns[-1]) == "Avg":
            ax.axvline(n_cols - 1.5, color="white", linewidth=4)
        ax.set_xlabel("Layer")
        ax.set_ylabel("Bias component")
        ax.set_title(title)
        if annotate:
            top = np.nanmax(values) if np.isfinite(values).any() and np.nanmax(values) > 0 else 1.0
            decimals = max(0, 2 - math.floor(math.log10(top)))  # 3 significant digits for the largest cell
            for i in range(n_rows):
                for j in range(n_cols):
                    v = values[i, j]
                    if np.isfinite(v):
                        ax.text(j, i, f"{v:.{decimals}f}", ha="center", va="center", fontsize=8,
                                color="white" if v > 0.6 * top else "#202020")
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.set_label(r"$\frac{1}{\dim(\mathbf{b})}\,\|\mathbf{b}_0 - \mathbf{b}_F\|_1$")
    return fig, ax, image


def _band(ax, x, mean, sd, color, style, label, alpha=0.18, marker="o"):
    x, mean, sd = np.asarray(x, float), np.asarray(mean, float), np.asarray(sd, float)
    line, = ax.plot(x, mean, linestyle=style, color=color, marker=marker, markersize=4, label=label)
    if np.any(sd > 0):
        ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=alpha, linewidth=0)
    return line


def plot_curves(per_seed: pd.DataFrame, summary: pd.DataFrame, title: str, metric: str | None = None):
    """Left: the main metric on the train probe (dashed) and dev (solid) per epoch; right: mean training loss.

    Bold lines are the mean over the finished seeds with a ±1 std band; thin lines are the single seeds, dotted with
    an x at their last epoch for diverged seeds (not in the mean). Returns (fig, axes); the bold lines carry label
    "<series> mean" and their data equal summary's mean column."""
    status = per_seed.get("status", pd.Series(analysis.FINISHED, index=per_seed.index))
    n_seeds = per_seed.loc[status == analysis.FINISHED, "seed"].nunique()
    n_diverged = per_seed.loc[status == analysis.DIVERGED, "seed"].nunique()
    with matplotlib.rc_context(STYLE):
        fig = new_figure(10, 3.8)
        axes = fig.subplots(1, 2)
        score_series = [s for s in per_seed["series"].unique() if s != "train loss"]
        palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        panels = [(axes[0], score_series), (axes[1], ["train loss"])]
        for ax, names in panels:
            for k, series in enumerate(names):
                color = palette[k % len(palette)]
                style = SERIES_STYLE.get(series.split()[0], "-") if series != "train loss" else "-"
                for _, one in per_seed[(per_seed["series"] == series) & (status == analysis.FINISHED)].groupby("seed"):
                    ax.plot(one["epoch"], one["value"], color=color, linestyle=style, linewidth=0.8, alpha=0.35)
                for _, one in per_seed[(per_seed["series"] == series) & (status == analysis.DIVERGED)].groupby("seed"):
                    finite = np.flatnonzero(one["value"].notna().to_numpy())
                    if len(finite):  # the x marks the last epoch before the divergence
                        ax.plot(one["epoch"], one["value"], color=color, linestyle=":", linewidth=1.0, alpha=0.6,
                                marker="x", markevery=[int(finite[-1])], gid="diverged")
                s = summary[summary["series"] == series].sort_values("epoch")
                if s.empty:
                    continue
                label = f"{series} mean" + (f" ± std ({n_seeds} seeds)" if n_seeds > 1 else "")
                _band(ax, s["epoch"], s["mean"], s["std"], color, style, label).set_gid(f"{series} mean")
            if n_diverged:
                ax.plot([], [], color="grey", linestyle=":", marker="x", label=f"{n_diverged} diverged seed"
                        f"{'s' if n_diverged > 1 else ''} (not in the mean)")
            if not per_seed.loc[per_seed["series"].isin(names), "value"].notna().any():
                ax.text(0.5, 0.5, "no finite values (every seed diverged)", transform=ax.transAxes, ha="center",
                        color="grey")
            ax.set_xlabel("Epoch")
            epochs = sorted(per_seed["epoch"].unique())
            ax.set_xticks(epochs)
            ax.legend(loc="best")
            ax.grid(alpha=0.25)
        axes[0].set_ylabel(f"{metric_name(metric)} (×100)")
        axes[0].set_title("Train (probe) and dev score")
        axes[1].set_ylabel("mean training loss")
        axes[1].set_title("Training loss")
        fig.suptitle(title)
    return fig, axes


def gap_frame(table: pd.DataFrame, show_model: bool = True, show_task: bool = True) -> pd.DataFrame:
    """gap_summary's table with a readable group label (model, task, training data) per row."""
    out = table.copy()
    out["group"] = [_group_label(r, show_model, show_task) for r in out.itertuples(index=False)]
    return out


def _group_label(r, show_model: bool = True, show_task: bool = True) -> str:
    parts = ([model_name(r.model)] if show_model else []) + ([task_name(r.task)] if show_task else [])
    if r.n_train >= 0:
        parts += [f"{r.n_train:,} train ex.", "first rows" if r.subset < 0 else f"subset seed {r.subset}"]
    return "\n".join(parts)


def plot_gap(table: pd.DataFrame, title: str | None = None):
    """Grouped bars: per (model, task, training data) one bar per method, height gap_mean, error bar gap_std.

    Returns (fig, ax, bars) where bars maps method -> its BarContainer (heights equal gap_mean)."""
    models, tasks = table["model"].unique(), table["task"].unique()
    if title is None:
        common = [model_name(models[0])] if len(models) == 1 else []
        common += [task_name(tasks[0])] if len(tasks) == 1 else []
        title = "Generalization gap" + (f" ({', '.join(common)})" if common else "") + \
            "\ntrain − dev score at the selected epoch, mean ± std over seeds" + diverged_note(table)
    frame = gap_frame(table, len(models) > 1, len(tasks) > 1)
    groups = list(dict.fromkeys(frame["group"]))
    methods = [m for m in ("full", "bitfit") if m in set(frame["method"])]
    methods += sorted(set(frame["method"]) - set(methods))
    width = 0.8 / max(1, len(methods))
    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    with matplotlib.rc_context(STYLE):
        fig = new_figure(max(6.0, 1.5 * len(groups) + 2.5), 4.4)
        ax = fig.add_subplot()
        bars = {}
        for k, method in enumerate(methods):
            rows = frame[frame["method"] == method].set_index("group")
            x = [i + (k - (len(methods) - 1) / 2) * width for i, g in enumerate(groups) if g in rows.index]
            present = [g for g in groups if g in rows.index]
            heights = rows.loc[present, "gap_mean"].to_numpy(float)
            errors = rows.loc[present, "gap_std"].to_numpy(float)
            diverged = int(rows.loc[present, "n_diverged"].sum()) if "n_diverged" in rows else 0
            label = method_name(method) + (f" ({diverged} diverged)" if diverged else "")
            bars[method] = ax.bar(x, np.nan_to_num(heights), width, yerr=np.nan_to_num(errors), capsize=3,
                                  label=label, color=COLORS.get(method, palette[k % len(palette)]), alpha=0.9)
            ax.bar_label(bars[method], labels=["diverged" if math.isnan(h) else f"{h:.1f}" for h in heights],
                         padding=2, fontsize=9)
        ax.set_xticks(range(len(groups)), groups)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("train − dev score (×100)")
        ax.set_xlabel("Training data" if len(models) == 1 and len(tasks) == 1 else "")
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.grid(axis="y", alpha=0.25)
        ax.margins(y=0.12)
    return fig, ax, bars


def diverged_note(table: pd.DataFrame, unit: str = "seeds") -> str:
    """A title's extra line '<k> diverged <unit>, not in the means' when the table counts diverged runs, else ''."""
    n = int(table["n_diverged"].sum()) if "n_diverged" in table and len(table) else 0
    return f"\n{n} diverged {unit if n > 1 else unit.rstrip('s')}, not in the means" if n else ""


def plot_datasize(table: pd.DataFrame, title: str, metric: str | None = None):
    """Figure 2: dev score against training-set size (log x), one line per method (and lr), ±1 std band.

    Returns (fig, ax, lines) where lines maps a label to its Line2D (data equal the table's n_train, mean)."""
    lines = {}
    keys = table[["method", "lr", "family"]].drop_duplicates()
    order = {"full": 0, "bitfit": 1}
    keys = keys.sort_values("method", key=lambda s: s.map(lambda m: order.get(m, 2)))
    palette = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    per_method = keys.groupby("method")["lr"].transform("size")
    with matplotlib.rc_context(STYLE):
        fig = new_figure(7.5, 4.2)
        ax = fig.add_subplot()
        for k, (key, many) in enumerate(zip(keys.itertuples(index=False), per_method, strict=True)):
            rows = table[(table["method"] == key.method) & (table["lr"] == key.lr) & (table["family"] == key.family)]
            rows = rows.sort_values("n_train")
            label = f"{method_name(key.method)} (lr {key.lr:g})" + (f" [{key.family}]" if many > 1 else "")
            diverged = int(rows["n_diverged"].sum()) if "n_diverged" in rows else 0
            label += f", {diverged} diverged" if diverged else ""
            color = COLORS.get(key.method, palette[k % len(palette)]) if many == 1 else palette[k % len(palette)]
            lines[label] = _band(ax, rows["n_train"], rows["mean"], rows["std"], color, "-", label)
        ax.set_xscale("log")
        sizes = sorted(table["n_train"].unique())
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("Training examples (nested subsets, log scale)")
        ax.set_ylabel(f"dev {metric_name(metric)} (×100)")
        ax.set_title(title + diverged_note(table, "runs"))
        low, high = (int(table["n"].min()), int(table["n"].max())) if len(table) else (0, 0)
        runs = f"{low}" if low == high else f"{low}–{high}"
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title=f"mean ± std\n({runs} runs per point)",
                  alignment="left")
        ax.grid(alpha=0.25)
    return fig, ax, lines


def draw_bias_change(run_dir, out, records=None) -> tuple[list[Path], list[str]]:
    """Figure 1 of one setting (or seed) folder; its CSV says how many seeds it averages and why others are left
    out. Returns (paths written, warnings)."""
    table, info = analysis.bias_change_summary(run_dir, records)
    head = f"Change in bias components: {setting_label(info)}"
    title = f"{_wrap(head)}\n{info['note']}" if info["left_out"] else _wrap(f"{head} ({info['note']})")
    if info["layers_note"]:
        title += f"\n{info['layers_note']}"
    fig, _, _ = plot_bias_change(table, title)
    data = table.assign(n_seeds=info["n_seeds"], of_seeds=info["of_seeds"], left_out="; ".join(info["left_out"]),
                        layers=info["layers_note"] or "one column per layer")
    return save(fig, data, out, file_stem("bias_change", info, run_dir), index=True), info["warnings"]


def draw_curves(run_dir, out, records=None) -> tuple[list[Path], list[str]]:
    """Learning curves of one setting (or seed) folder. Returns (paths written, warnings)."""
    per_seed, summary, info = analysis.curves(run_dir, records)
    title = _wrap(f"Learning curves: {setting_label(info)} ({info['note']}; selected: {info['select']})")
    fig, _ = plot_curves(per_seed, summary, title, info.get("metric"))
    # Bold lines: rows with seed "mean" (value = mean over the finished seeds, std, n); thin lines: one row per seed
    # with its status (a diverged seed's null metrics are empty cells).
    data = pd.concat([summary.rename(columns={"mean": "value"}).assign(seed="mean", status=analysis.FINISHED),
                      per_seed], ignore_index=True)[["series", "metric", "seed", "status", "epoch", "value", "std",
                                                     "n"]]
    return save(fig, data, out, file_stem("curves", info, run_dir)), info["warnings"]


def cmd_bias_change(run_dirs, out) -> tuple[list[Path], list[str]]:
    return _each(run_dirs, lambda run_dir: draw_bias_change(run_dir, out))


def cmd_curves(run_dirs, out) -> tuple[list[Path], list[str]]:
    return _each(run_dirs, lambda run_dir: draw_curves(run_dir, out))


def _each(run_dirs, draw) -> tuple[list[Path], list[str]]:
    written, warnings = [], []
    for run_dir in run_dirs:
        paths, more = draw(run_dir)
        written += paths
        warnings += more
    return written, warnings


def _mean_std(mean: float, sd: float) -> str:
    return "—" if math.isnan(mean) else f"{mean:.1f}±{sd:.1f}"


def gap_markdown(table: pd.DataFrame) -> str:
    lines = ["| Model | Task | Train data | Method | lr | seeds | train | dev | train − dev |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in table.itertuples(index=False):
        data = "all" if r.n_train < 0 else f"{r.n_train:,}" + (" (first rows)" if r.subset < 0 else
                                                                 f" (subset seed {r.subset})")
        seeds = f"{r.n_seeds}" + (f" (+{r.n_diverged} diverged)" if r.n_diverged else "")
        lines.append(f"| {model_name(r.model)} | {task_name(r.task)} | {data} | {method_name(r.method)} | {r.lr:g} | "
                     f"{seeds} | {_mean_std(r.train_mean, r.train_std)} | {_mean_std(r.dev_mean, r.dev_std)} | "
                     f"{_mean_std(r.gap_mean, r.gap_std)} |")
    return "\n".join(lines) + "\n"


def cmd_gap(runs_dir, out, table: pd.DataFrame | None = None) -> tuple[list[Path], list[str]]:
    warnings = []
    if table is None:
        table, warnings = analysis.gap_table(runs_dir)
    if table.empty:
        raise analysis.NothingToDraw(f"no finished run records with a train metric under {runs_dir}", warnings)
    fig, _, _ = plot_gap(table)
    written = save(fig, table, out, "generalization_gap")
    md = Path(out) / "generalization_gap.md"
    md.write_text("Generalization gap: main metric x100 at each record's selected epoch, mean±std over the finished "
                  "seeds (diverged seeds are counted, not averaged); per row the lr with the best mean dev score.\n\n"
                  + gap_markdown(table), encoding="utf-8")
    return [*written, md], warnings


def cmd_datasize(runs_dir, task, out, metric: str | None = None,
                 runs: pd.DataFrame | None = None) -> tuple[list[Path], list[str]]:
    """Figure 2 per model of `task`: one figure per metric of the task (SQuAD: exact match = the paper's Figure 2,
    F1 = its Figure 6), or only `metric`. A task with several metrics names each file after its metric
    (datasize_<model>_<task>_<metric>); one with a single metric keeps datasize_<model>_<task>. `runs`:
    analysis.run_table's rows, if already read. Returns (paths written, warnings)."""
    warnings = []
    if runs is None:
        runs, warnings = analysis.run_table(runs_dir)
    mine = runs[(runs["task"] == task) & (runs["subset"] >= 0)]
    if mine.empty:
        raise analysis.NothingToDraw(f"no runs with data.train_subset_seed set for task {task} under {runs_dir}",
                                     warnings)
    metrics = analysis.datasize_metrics(mine)
    written = []
    for name in [metric] if metric else metrics:
        table = analysis.datasize_summary(mine, task, name)
        suffix = f"_{table['metric'].iloc[0]}" if len(metrics) > 1 else ""
        for model, rows in table.groupby("model"):
            title = f"{model_name(model)}, {task_name(task)}: BitFit vs Full-FT by training-set size"
            fig, _, _ = plot_datasize(rows, title, rows["metric"].iloc[0])
            written += save(fig, rows, out, f"datasize_{model}_{task}{suffix}")
    return written, warnings


def _attempt(where, what: str, draw, written: list, warnings: list) -> None:
    """Run draw() -> (paths, warnings), adding to `written` and `warnings`; a failure becomes one warning naming
    `where`, so one bad setting does not cost the others their figures."""
    try:
        paths, more = draw()
    except Exception as e:  # any failure: reported by path with its type, and the other figures still drawn
        warnings += getattr(e, "warnings", [])
        warnings.append(f"{where}: {what} not drawn ({type(e).__name__}: {e})")
        return
    written += paths
    warnings += more


def cmd_all(runs_dir, out) -> tuple[list[Path], list[str]]:
    """Everything the records allow: bias change per setting whose finished records name patches, curves per
    setting, the gap table and a data-size figure per task with seeded-subset runs. Every bad input (a corrupt or
    misplaced record, an unclaimed or unreadable patch, a figure that fails) is one warning naming its path; the
    rest is drawn. Returns (paths written, warnings)."""
    root = Path(runs_dir).expanduser()
    found, warnings = scan(root)
    warnings += analysis.unclaimed_patches(root, found)
    if not found and not warnings:
        raise UserError(f"no run records or patches under {runs_dir}")
    written: list[Path] = []
    for folder, records in analysis.by_setting(found).items():
        if any((r.get("artifacts") or {}).get("patch") for _, r in records):
            _attempt(folder, "bias-change figure", partial(draw_bias_change, folder, out, records), written, warnings)
        _attempt(folder, "learning curves", partial(draw_curves, folder, Path(out) / "curves", records), written,
                 warnings)
    runs, more = analysis.run_table(root, found=found)
    warnings += more
    gaps = analysis.gap_summary(runs)
    if not gaps.empty:
        _attempt(root, "generalization gap", partial(cmd_gap, root, out, gaps), written, warnings)
    subsets = runs[runs["subset"] >= 0]
    for task, rows in subsets.groupby("task"):
        if rows["n_train"].nunique() > 1:
            _attempt(root, f"data-size figure of {task}", partial(cmd_datasize, root, task, out, runs=rows), written,
                     warnings)
    return written, warnings


def _wrap(title: str, width: int = 70) -> str:
    if len(title) <= width or ": " not in title:
        return title
    head, tail = title.split(": ", 1)
    return f"{head}:\n{tail}"
