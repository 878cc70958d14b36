"""`bitfit-report`: one self-contained HTML page of the results under a runs dir (bitfit_exp.results.report): the
paper's tables as `bitfit-tables` computes them, per-setting seeds and curves, the paper's figures, what was left
out, and provenance.

    bitfit-report ~/bitfit-runs --out results/report      # then open results/report/index.html

Exit status: 0 when the page was written (warnings or not; each is one `warning: ...` line on stderr), 2 for an
error (no such runs dir, no done records, an --out that is a file), with one `error: ...` line and nothing written.
"""

import argparse
import os
import sys

from bitfit_exp.core.atomic import check_out_folder
from bitfit_exp.core.errors import UserError
from bitfit_exp.results.report import MAX_SETTINGS, build_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bitfit-report", description="One HTML page of the results under a runs dir.")
    p.add_argument("runs_dir", nargs="?", default=os.environ.get("BITFIT_RUNS_DIR", "~/bitfit-runs"),
                   metavar="RUNS_DIR", help="root of the run records (default: $BITFIT_RUNS_DIR or ~/bitfit-runs)")
    p.add_argument("--out", default="results/report", help="folder for index.html (default: results/report)")
    p.add_argument("--epoch", choices=["best", "last"], default=None,
                   help="epoch whose scores count (default: each record's train.select), as bitfit-tables --epoch")
    p.add_argument("--expected-seeds", type=int, default=5, help="fewer seeds than this are flagged in the cells")
    p.add_argument("--max-settings", type=int, default=MAX_SETTINGS,
                   help=f"setting cards drawn, in table order (default {MAX_SETTINGS})")
    args = p.parse_args(argv)
    try:
        if args.expected_seeds < 1 or args.max_settings < 0:
            raise UserError("--expected-seeds must be at least 1 and --max-settings at least 0")
        check_out_folder(args.out)
        report = build_report(args.runs_dir, args.out, args.epoch, args.expected_seeds, args.max_settings)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {report.path}: {report.n_records} records, tables {', '.join(report.tables)}, "
          f"{report.n_drawn} of {report.n_settings} settings drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
