"""`bitfit-compare`: the same settings trained two ways (e.g. packed vs one by one), side by side per setting
(how settings are matched and compared: bitfit_exp.results.compare).

    bitfit-compare ~/runs-one-by-one ~/runs-packed            # Markdown table; --csv FILE also writes the cells
"""

import argparse
import sys

from bitfit_exp.results.compare import compare_runs, to_markdown


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
        print(f"error: no setting has done records under both {args.runs_a} and {args.runs_b}", file=sys.stderr)
        return 2
    print(to_markdown(cells, args.runs_a, args.runs_b))
    compared = cells.dropna(subset=["within_noise"])
    within = int(compared["within_noise"].astype(bool).sum())
    print(f"\n{within}/{len(compared)} settings within seed noise (|Δ| <= max std)"
          + (f"; {len(cells) - len(compared)} with no finished seed on one side" if len(compared) < len(cells) else ""))
    if args.csv:
        cells.to_csv(args.csv, index=False)
    return 0
