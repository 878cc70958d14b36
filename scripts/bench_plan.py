"""Wall and CPU time of `bitfit-plan` on a sweep (a fresh interpreter each time, as a user runs it: imports, expanding
the sweep, composing and checking every job's config, counting done seeds, estimating), and the number of jobs.

    python scripts/bench_plan.py                          # +experiment=table3 over an empty runs dir
    python scripts/bench_plan.py --records 3              # ... where seeds 0-2 of every setting have a record
    python scripts/bench_plan.py +experiment=table1 --repeat 5

--records K writes a sealed, finished record (with timings, without a patch) for seeds 0..K-1 of every setting of
the sweep into the temporary runs dir first, so that the plan reads them: done seeds, and GPU-hours estimated from
their throughput. The load average is printed with the times: timings on a busy machine are not those of a quiet one.
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the tree timed: its bitfit_exp, also in the timed interpreter
sys.path.insert(0, str(REPO))

from bench_timing import timed  # noqa: E402 (beside this script)

COMMAND = "import sys; from bitfit_exp.commands.plan import main; sys.exit(main())"


def write_records(overrides: list[str], seeds: int) -> int:
    """Finished records for seeds 0..seeds-1 of every setting of the sweep (under its runs_dir); returns how many."""
    from omegaconf import OmegaConf

    from bitfit_exp.config.compose import valid_jobs
    from bitfit_exp.results.records import job_settings, seal, seed_dir, write_json_atomic

    written = 0
    for _, cfg in valid_jobs(overrides):
        for setting in job_settings(cfg):
            config = OmegaConf.to_container(setting, resolve=True)
            for seed in range(seeds):
                row = {"epoch": 1, "dev": {"validation": {"accuracy": 0.5}}}
                record = seal({"status": "finished", "seed": seed, "config": config, "epochs": [row], "best": row,
                               "last": row, "main": {"split": "validation", "metric": "accuracy", "select": "best"},
                               "fingerprints": {"model": "m", "data": {"digest": "d", "splits": {}}},
                               "timings": {"train_samples_per_s": 200.0, "train_s": 100.0, "eval_s": 10.0}})
                write_json_atomic(seed_dir(cfg.runs_dir, record["setting"], seed) / "record.json", record)
                written += 1
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", default=["+experiment=table3"], help="bitfit-plan's overrides")
    p.add_argument("--repeat", type=int, default=3, help="runs to time (default 3)")
    p.add_argument("--records", type=int, default=0, metavar="K", help="seeds with a record per setting first")
    args = p.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory() as runs:
        argv = [*args.overrides, f"runs_dir={runs}"]
        if args.records:
            print(f"{write_records(argv, args.records)} records written")
        times = []
        for i in range(args.repeat):
            load = os.getloadavg()[0]
            wall, cpu, out = timed(COMMAND, argv, env, REPO, "bitfit-plan")
            times.append((wall, cpu))
            print(f"run {i + 1}: wall {wall:.2f} s, CPU {cpu:.2f} s (load average {load:.2f} on {os.cpu_count()} CPUs)")
        jobs = len(out.splitlines()) - 2  # a header, a row per job, a summary
        print(f"{' '.join(args.overrides)}: {jobs} jobs; median wall {statistics.median(w for w, _ in times):.2f} s, "
              f"median CPU {statistics.median(c for _, c in times):.2f} s")
        print(out.splitlines()[-1])


if __name__ == "__main__":
    main()
