"""`bitfit-plot`: the paper's figures from run records and bias patches. Every figure is written as <name>.png,
<name>.pdf and <name>.csv (the plotted values).

    bitfit-plot bias-change RUN_DIR... [--out DIR]      # Figure 1: change per bias component and layer (heatmap)
    bitfit-plot curves SETTING_DIR... [--out DIR]       # train/dev metric and loss per epoch, mean ± std over seeds
    bitfit-plot gap --runs-dir DIR [--out DIR]          # generalization gap: train - dev, Full-FT vs BitFit (+ .md)
    bitfit-plot datasize --runs-dir DIR --task squad    # Figure 2 (exact match) and 6 (F1): score by train size
    bitfit-plot datasize --runs-dir DIR --task squad --metric exact_match   # one metric only
    bitfit-plot all --runs-dir DIR --out results/figures

A RUN_DIR / SETTING_DIR is a setting folder (<runs_dir>/<model>/<task>/<method>/lr<lr>-<hash>, holding seed*/) or
one seed folder. The numbers come from bitfit_exp.analysis; figures use matplotlib's Agg canvas (no display).

Only what the run records name is drawn (see bitfit_exp.analysis): every record or patch left out, and every figure
of `all` that fails, is one `warning: <path>: ...` line on stderr, and a figure averaging fewer seeds than its
setting has says so ("2 of 3 seeds: seed 1's patch is missing"; diverged seeds are counted, never averaged). Exit
status: 0 when figures were written (warnings or not); 1 when `all` found inputs but every one was bad; 2 for an
error (nothing to draw from a named folder, no records at all, bad arguments).
"""

import argparse
import os
import sys

from bitfit_exp.core.atomic import check_out_folder
from bitfit_exp.core.errors import UserError
from bitfit_exp.results.figures import cmd_all, cmd_bias_change, cmd_curves, cmd_datasize, cmd_gap


def _warn(warnings) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bitfit-plot", description="The paper's figures from bitfit-run records.")
    sub = p.add_subparsers(dest="command", required=True)
    runs_default = os.environ.get("BITFIT_RUNS_DIR", "~/bitfit-runs")
    b = sub.add_parser("bias-change", help="Figure 1: mean |b0 - bF| per bias component and layer (heatmap)")
    b.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="setting folder (seed*/patch.safetensors) or seed "
                   "folder")
    c = sub.add_parser("curves", help="learning curves (train and dev metric, loss) per setting, mean ± std")
    c.add_argument("run_dirs", nargs="+", metavar="SETTING_DIR", help="setting folder (seed*/record.json) or seed "
                   "folder")
    g = sub.add_parser("gap", help="generalization gap table and figure: train - dev per method")
    d = sub.add_parser("datasize", help="Figure 2: dev score against training-set size (data.train_subset_seed runs), "
                       "one figure per metric of the task")
    d.add_argument("--task", required=True)
    d.add_argument("--metric", default=None, help="only this metric of the task (e.g. exact_match for SQuAD's "
                   "Figure 2, f1 for Figure 6); default: each of the task's metrics")
    a = sub.add_parser("all", help="every figure the records under --runs-dir allow")
    for q in (g, d, a):
        q.add_argument("--runs-dir", default=runs_default, help="root of the run records (default: "
                       "$BITFIT_RUNS_DIR or ~/bitfit-runs)")
    for q in (b, c, g, d, a):
        q.add_argument("--out", default="results/figures", help="folder for <figure>.png/.pdf/.csv")
    args = p.parse_args(argv)
    commands = {"bias-change": lambda: cmd_bias_change(args.run_dirs, args.out),
                "curves": lambda: cmd_curves(args.run_dirs, args.out),
                "gap": lambda: cmd_gap(args.runs_dir, args.out),
                "datasize": lambda: cmd_datasize(args.runs_dir, args.task, args.out, args.metric),
                "all": lambda: cmd_all(args.runs_dir, args.out)}
    try:
        check_out_folder(args.out)
        written, warnings = commands[args.command]()
    except (UserError, FileNotFoundError, ValueError) as e:
        _warn(getattr(e, "warnings", []))
        print(f"error: {e}", file=sys.stderr)
        return 2
    _warn(warnings)
    for path in written:
        print(f"wrote {path}")
    if not written:  # `all` found inputs, and every one was bad: each is reported above
        print(f"error: nothing drawn from {args.runs_dir}: {len(warnings)} bad input(s), listed above",
              file=sys.stderr)
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
