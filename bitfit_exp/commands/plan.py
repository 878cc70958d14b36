"""`bitfit-plan`: expand a sweep into its jobs, show which seeds are already finished, and estimate GPU-hours.

    bitfit-plan +experiment=table3                 # 256 jobs: done / partial / to run, and hours left
    bitfit-plan +experiment=smoke data.dir=../shared/data/glue
    bitfit-plan +experiment=table3 --todo          # ... and the commands that launch only the unfinished jobs

Estimates use the training throughput (samples/s) measured in existing run records of the same model and
method (else the same model), times the task's train size, epochs and missing seeds; evaluation time is scaled in
from the same records.
"""

import sys

from hydra.errors import HydraException

from bitfit_exp.config.compose import one_line
from bitfit_exp.config.plan import plan, throughput, todo_commands
from bitfit_exp.config.schema import ConfigError
from bitfit_exp.core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    overrides = [a for a in args if a not in ("--multirun", "-m", "--todo")]
    try:
        jobs = plan(overrides)
    except ConfigError as e:
        print("\n".join(f"error: {line}" for line in e.lines), file=sys.stderr)
        return 2
    except (UserError, HydraException) as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    speed = throughput(jobs[0]["runs_dir"]) if jobs else {}
    total, unknown = 0.0, 0
    print(f"{'#':>4}  {'model':<14}{'task':<6}{'method':<13}{'lr':>8}  seeds  {'est. h':>7}")
    for i, job in enumerate(jobs):
        k = job["key"]
        rate = speed.get((k["model"], k["method"], job["packed"])) or speed.get((k["model"], job["packed"]))
        hours = job["samples"] / rate[0] * (1 + rate[1]) / 3600 if rate and job["samples"] else None
        total += hours or 0.0
        unknown += hours is None and job["samples"] > 0
        est = "-" if not job["samples"] else f"{hours:7.2f}" if hours is not None else "      ?"
        lr = f"{k['lr']:g}" if len(job["keys"]) == 1 else f"{len(job['keys'])} lrs"
        print(f"{i:>4}  {k['model']:<14}{k['task']:<6}{k['method']:<13}{lr:>8}  {job['done']}/{job['seeds']}"
              f"    {est:>7}" + ("  packed" if job["packed"] else ""))
    complete = sum(j["done"] == j["seeds"] for j in jobs)
    print(f"{len(jobs)} jobs: {complete} complete, {len(jobs) - complete} to run; estimated {total:.1f} GPU-hours"
          + (f" (+ {unknown} jobs with no measured throughput for their model and mode)" if unknown else ""))
    if "--todo" in args:
        print("\nto launch only the unfinished jobs:" if complete < len(jobs) else "\nnothing to launch")
        for command in todo_commands(jobs):
            print(command)
    return 0
