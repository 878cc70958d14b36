"""`bitfit-tables`: the paper's tables from run records (bitfit_exp.results.tables).

    bitfit-tables --runs-dir ~/bitfit-runs --table all --out results/tables
"""

import argparse
import os
import sys
from pathlib import Path

from bitfit_exp.core.atomic import check_out_folder
from bitfit_exp.core.errors import UserError
from bitfit_exp.model.peft_methods import PEFT_TYPES
from bitfit_exp.results.reference import load_reference, load_token_reference
from bitfit_exp.results.selection import (
    GLUE_TASKS,
    PEFT_TABLE_METHODS,
    TABLES,
    TableDef,
    collect,
    found_rows,
    ours_selection,
    peft_selection,
    select_best_lr,
    table_selection,
    with_other_protocols,
)
from bitfit_exp.results.tables import (
    PEFT_TITLE,
    build_table,
    build_token_table,
    compare,
    peft_notes,
    table_notes,
    token_cells,
    token_notes,
    unfilled,
    write_tables,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bitfit-tables", description="Paper-style GLUE tables from bitfit-run records.")
    p.add_argument("--runs-dir", default=os.environ.get("BITFIT_RUNS_DIR", "~/bitfit-runs"),
                   help="root of the run records (default: $BITFIT_RUNS_DIR or ~/bitfit-runs)")
    p.add_argument("--table", choices=["1", "2", "3", "pos", "ours", "peft", "all"], default="all",
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
        for line in unfilled([], set(), False, args.runs_dir) if args.table == "all" else ():
            print(line, file=sys.stderr)
        return 1
    # GLUE and one's own sentence(-pair) tasks; QA and tagging have tables and figures of their own
    glue = df[df["task"].isin(GLUE_TASKS) | ((df["kind"] == "sequence") & ~df["task"].isin(TABLES["pos"].tasks))]
    best, reference = select_best_lr(glue), load_reference()
    found = set(found_rows(best))
    if args.table == "all":
        names = [n for n, t in TABLES.items() if n != "pos" and set(t.rows) & found]
        names += ["pos"] if df["task"].isin(TABLES["pos"].tasks).any() else []
        names += [] if glue.empty else ["ours"]
        names += ["peft"] if glue["method"].isin(PEFT_TYPES).any() else []
    else:
        names = [args.table if args.table in ("ours", "pos", "peft") else f"table{args.table}"]
    epoch = f"the {args.epoch} epoch" if args.epoch else "each record's selected epoch"
    for name in names:
        if name == "pos":
            t = TABLES[name]
            selection = with_other_protocols(df, t)
            cells = token_cells(selection.best, selection.rows, load_token_reference())
            table, notes = build_token_table(cells, args.expected_seeds), token_notes(cells, selection, epoch, t)
        else:
            if name == "ours":
                t, selection = TableDef("Our runs, GLUE dev", None, []), ours_selection(best)
            elif name == "peft":
                t, selection = TableDef(PEFT_TITLE, None, []), peft_selection(best)
                if not selection.rows:
                    print(f"no GLUE records of {', '.join(PEFT_TABLE_METHODS)} under {args.runs_dir}; no peft "
                          f"table", file=sys.stderr)
                    return 1
            else:
                t = TABLES[name]
                selection = table_selection(df, t)
            cells = compare(selection.best, selection.rows, reference, t.paper)
            table = build_table(selection.best, selection.rows, reference, t.paper, args.expected_seeds)
            notes = table_notes(cells, selection, epoch, t) + (peft_notes(cells) if name == "peft" else [])
        print(write_tables(name, table, cells, args.out, t.title, notes))
        print(f"wrote {Path(args.out) / name}.md, .tex, .csv\n")
    for line in unfilled(names, found, "pos" in names, args.runs_dir) if args.table == "all" else ():
        print(line)
    return 0

if __name__ == "__main__":
    sys.exit(main())
