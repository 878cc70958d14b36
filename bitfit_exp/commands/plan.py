"""`bitfit-plan`: expand a sweep into its jobs, show which seeds are already finished, and estimate GPU-hours.

    bitfit-plan +experiment=table3                 # 256 jobs: done / partial / to run, and hours left
    bitfit-plan +experiment=smoke data.dir=../shared/data/glue
    bitfit-plan +experiment=table3 --todo          # ... and the commands that launch only the unfinished jobs
    bitfit-plan --config-dir ~/my-conf task=my_task  # a task of one's own (docs/custom-tasks.md)

Estimates use the training throughput (samples/s) measured in existing run records of the same model and
method (else the same model), times the task's train size, epochs and missing seeds; evaluation time is scaled in
from the same records. A job whose model has no records in its mode (packed or not) yet has no estimate: its row
says `unknown`, and the last line says which model and mode lack records.
"""

import argparse
import sys

from hydra.errors import HydraException

from bitfit_exp.config.compose import one_line, with_search_dir
from bitfit_exp.config.plan import job_hours, plan, summary, throughput, todo_commands
from bitfit_exp.config.schema import ConfigError
from bitfit_exp.core.errors import UserError


def arguments() -> argparse.ArgumentParser:
    """bitfit-run's command line (Hydra overrides, --config-dir, --multirun) plus --todo; --help is a usage text."""
    p = argparse.ArgumentParser(prog="bitfit-plan", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="as for bitfit-run: key=value, group=choice, "
                   "+experiment=NAME, sweeps (a,b)")
    p.add_argument("--todo", action="store_true", help="also print bitfit-run commands for the unfinished jobs")
    p.add_argument("--config-dir", "-cd", metavar="DIR", help="a config folder of one's own, as for bitfit-run")
    p.add_argument("--multirun", "-m", action="store_true", help="accepted as in bitfit-run; every sweep is planned")
    return p


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    try:
        overrides = with_search_dir(args.overrides, args.config_dir) if args.config_dir else args.overrides
        jobs = plan(overrides)
    except ConfigError as e:
        print("\n".join(f"error: {line}" for line in e.lines), file=sys.stderr)
        return 2
    except (UserError, HydraException) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    speed = throughput(jobs[0]["runs_dir"]) if jobs else {}
    hours = [job_hours(job, speed) for job in jobs]
    print(f"{'#':>4}  {'model':<14}{'task':<6}{'method':<13}{'lr':>8}  seeds  {'est. h':>7}")
    for i, (job, h) in enumerate(zip(jobs, hours, strict=True)):
        k = job["key"]
        est = "-" if not job["samples"] else f"{h:7.2f}" if h is not None else "unknown"
        lr = f"{k['lr']:g}" if len(job["keys"]) == 1 else f"{len(job['keys'])} lrs"
        print(f"{i:>4}  {k['model']:<14}{k['task']:<6}{k['method']:<13}{lr:>8}  {job['done']}/{job['seeds']}"
              f"    {est:>7}" + ("  packed" if job["packed"] else ""))
    print(summary(jobs, hours))
    complete = sum(j["done"] == j["seeds"] for j in jobs)
    if args.todo:
        print("\nto launch only the unfinished jobs:" if complete < len(jobs) else "\nnothing to launch")
        for command in todo_commands(jobs):
            print(command)
    return 0
