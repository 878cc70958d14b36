"""`bitfit-track`: back-fill trackers from existing run records (bitfit_exp.train.tracking.backfill); live tracking
during training is `bitfit-run train.report_to=[tensorboard,mlflow,wandb]`.

    bitfit-track ~/bitfit-runs --to mlflow        # then: mlflow ui --backend-store-uri sqlite:///$HOME/bitfit-runs/mlflow.db
    bitfit-track ~/bitfit-runs --to tensorboard   # then: tensorboard --logdir ~/bitfit-runs
"""

import argparse
import os
import sys

from bitfit_exp.commands import fail
from bitfit_exp.core.errors import UserError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bitfit-track", description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", nargs="?", default=os.environ.get("BITFIT_RUNS_DIR", "~/bitfit-runs"),
                        help="root of the run records (default: $BITFIT_RUNS_DIR or ~/bitfit-runs)")
    parser.add_argument("--to", required=True, choices=["mlflow", "tensorboard"],
                        help="mlflow: MLFLOW_TRACKING_URI, default sqlite:///RUNS_DIR/mlflow.db; "
                             "tensorboard: event files in each seed's tb/ folder")
    args = parser.parse_args(argv)
    from bitfit_exp.train.tracking.backfill import backfill

    try:
        done = backfill(args.runs_dir, args.to)
    except UserError as e:
        fail(e)
    for w in done.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{args.to}: {done.logged} runs logged, {done.already} already there"
          + (f", {len(done.warnings)} records skipped (see warnings)" if done.warnings else ""))
    return 0
