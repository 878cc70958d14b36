"""`bitfit-tables`: the paper's tables from run records (bitfit_exp.results.tables).

    bitfit-tables --runs-dir ~/bitfit-runs --table all --out results/tables
"""

import argparse
import os
import sys
from pathlib import Path

from bitfit_exp.core.atomic import check_out_folder
from bitfit_exp.core.errors import UserError
from bitfit_exp.results.selection import PEFT_TABLE_METHODS, collect
from bitfit_exp.results.table_set import CHOICES, build_tables
from bitfit_exp.results.tables import unfilled, write_tables


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bitfit-tables", description="Paper-style GLUE tables from bitfit-run records.")
    p.add_argument("--runs-dir", default=os.environ.get("BITFIT_RUNS_DIR", "~/bitfit-runs"),
                   help="root of the run records (default: $BITFIT_RUNS_DIR or ~/bitfit-runs)")
    p.add_argument("--table", choices=CHOICES, default="all",
                   help="paper table 1-3, 'pos' (token-level: POS accuracy next to the paper's PTB numbers), 'ours' "
                        "(every GLUE model x method x protocol found), 'peft' (BitFit, BEFT, LoRA, IA3, Full-FT side "
                        "by side) or all (those with records + ours, + peft when peft methods ran)")
    p.add_argument("--out", default="results/tables", help="folder for <table>.md/.tex/.csv")
    p.add_argument("--epoch", choices=["best", "last"], default=None,
                   help="epoch whose scores count (default: each record's train.select)")
    p.add_argument("--expected-seeds", type=int, default=5, help="fewer seeds than this are flagged in the cells")
    args = p.parse_args(argv)
    try:
        check_out_folder(args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    df, warnings = collect(args.runs_dir, epoch=args.epoch)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if df.empty:
        print(f"no done run records under {args.runs_dir}", file=sys.stderr)
        for line in unfilled([], args.runs_dir) if args.table == "all" else ():
            print(line, file=sys.stderr)
        return 1
    built = build_tables(df, args.table, args.expected_seeds, args.epoch)
    if args.table == "peft" and not built[0].selection.rows:
        print(f"no GLUE records of {', '.join(PEFT_TABLE_METHODS)} under {args.runs_dir}; no peft table",
              file=sys.stderr)
        return 1
    for t in built:
        print(write_tables(t.name, t.frame, t.cells, args.out, t.table.title, t.notes))
        print(f"wrote {Path(args.out) / t.name}.md, .tex, .csv\n")
    for line in unfilled([t.name for t in built], args.runs_dir) if args.table == "all" else ():
        print(line)
    return 0

if __name__ == "__main__":
    sys.exit(main())
