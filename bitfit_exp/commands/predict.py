"""`bitfit-predict`: task patches on files: CSV, TSV, JSONL or Parquet in, the same rows plus predictions out
(which columns are read and added: bitfit_exp.serving.predict).

    bitfit-predict ~/bitfit-runs/minilm/sst2 ~/bitfit-runs/minilm/rte/bitfit --input in.csv --output out.parquet
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from bitfit_exp.commands.engine_options import build_engine, engine_arguments
from bitfit_exp.core.errors import UserError
from bitfit_exp.serving.predict import (
    check_output,
    items_of,
    predictions,
    read_table,
    table_format,
    write_table,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bitfit-predict", description=__doc__.splitlines()[0])
    engine_arguments(p)
    p.add_argument("--input", required=True, type=Path, help="CSV, TSV, JSONL or Parquet file")
    p.add_argument("--output", required=True, type=Path, help="where the rows with predictions go (type by suffix)")
    p.add_argument("--task", help="task of every row (else the --task-column column)")
    p.add_argument("--task-column", default="task")
    p.add_argument("--text-column", help="column of the (first) text; default: the task's own, else `text`")
    p.add_argument("--pair-column", help="column of the second text of pair tasks; default: the task's, else "
                   "`text_pair`")
    p.add_argument("--max-chars", type=int, default=100_000,
                   help="longest text (characters) a row may hold; 0: no limit (texts are cut to the run's "
                   "max_length tokens anyway)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal)")
    args = p.parse_args(argv)
    try:
        table_format(args.output)
        if args.max_chars < 0:
            raise UserError(f"--max-chars={args.max_chars}; give 0 (no limit) or a positive count")
        frame = read_table(args.input)
        check_output(args.output, frame)
        engine = build_engine(args)
        items = items_of(frame, engine, args)
        added = predictions(engine, items, args.progress, table_format(args.output))
        write_table(pd.concat([frame.reset_index(drop=True), added], axis=1), args.output)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(frame)} rows ({', '.join(sorted({i['task'] for i in items}))}) in {engine.forward_passes} forward "
          f"passes -> {args.output}")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
