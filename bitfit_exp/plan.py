"""`bitfit-plan`: expand a sweep into its jobs, show which seeds are already finished, and estimate GPU-hours.

    bitfit-plan +experiment=table3                 # 256 jobs: done / partial / to run, and hours left
    bitfit-plan +experiment=smoke data.dir=../shared/data/glue

Estimates use the training throughput (samples/s) measured in existing run records of the same model and
method (else the same model), times the task's train size, epochs and missing seeds; evaluation time is scaled in
from the same records.
"""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from bitfit_exp.cli import conf_dir
from bitfit_exp.records import RECORD, CorruptRecord, finished, read_record, seed_dir, setting_key


def expand(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job of the sweep (config's hydra.sweeper.params, command line winning)."""
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[o for o in overrides if "," not in o], return_hydra_config=True)
    params = {k: f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()}
    for o in overrides:
        params[o.split("=", 1)[0]] = o
    parsed = OverridesParser.create().parse_overrides(list(params.values()))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def throughput(runs_dir: Path) -> dict:
    """(model, method) and (model,) -> (median train samples/s, median eval seconds per train second)."""
    speeds, evals = defaultdict(list), defaultdict(list)
    for path in runs_dir.glob(f"**/seed*/{RECORD}"):
        try:
            r = read_record(path)
        except CorruptRecord:
            continue
        t = r.get("timings", {})
        if t.get("train_samples_per_s"):
            for key in ((r["setting"]["model"], r["setting"]["method"]), (r["setting"]["model"],)):
                speeds[key].append(t["train_samples_per_s"])
                evals[key].append(t["eval_s"] / t["train_s"])
    return {k: (statistics.median(v), statistics.median(evals[k])) for k, v in speeds.items()}


def plan(overrides: list[str]) -> list[dict]:
    jobs, expanded = [], expand(overrides)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        for job in expanded:
            cfg = compose("config", overrides=job)
            key = setting_key(OmegaConf.to_container(cfg, resolve=True))
            root = Path(cfg.runs_dir).expanduser()
            done = [s for s in cfg.seeds if finished(seed_dir(root, key, s) / RECORD)]
            size = min(cfg.task.train_size, cfg.data.max_train_samples or cfg.task.train_size)
            jobs.append({"key": key, "seeds": len(cfg.seeds), "done": len(done), "runs_dir": root,
                         "samples": size * cfg.train.epochs * (len(cfg.seeds) - len(done))})
    return jobs


def main(argv: list[str] | None = None) -> None:
    overrides = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--multirun", "-m")]
    jobs = plan(overrides)
    speed = throughput(jobs[0]["runs_dir"]) if jobs else {}
    total, unknown = 0.0, 0
    print(f"{'#':>4}  {'model':<14}{'task':<6}{'method':<13}{'lr':>8}  seeds  {'est. h':>7}")
    for i, job in enumerate(jobs):
        k = job["key"]
        rate = speed.get((k["model"], k["method"])) or speed.get((k["model"],))
        hours = job["samples"] / rate[0] * (1 + rate[1]) / 3600 if rate and job["samples"] else None
        total += hours or 0.0
        unknown += hours is None and job["samples"] > 0
        est = "-" if not job["samples"] else f"{hours:7.2f}" if hours is not None else "      ?"
        print(f"{i:>4}  {k['model']:<14}{k['task']:<6}{k['method']:<13}{k['lr']:>8g}  {job['done']}/{job['seeds']}"
              f"    {est:>7}")
    complete = sum(j["done"] == j["seeds"] for j in jobs)
    print(f"{len(jobs)} jobs: {complete} complete, {len(jobs) - complete} to run; estimated {total:.1f} GPU-hours"
          + (f" (+ {unknown} jobs with no measured throughput for their model)" if unknown else ""))
