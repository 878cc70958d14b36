"""A sweep's plan: its jobs, which of their seeds are already done, and the GPU-hours left (used by `bitfit-plan`).

Estimates use the training throughput (samples/s) measured in existing run records of the same model and
method (else the same model), times the task's train size, epochs and missing seeds; evaluation time is scaled in
from the same records. A job whose model has no records in its mode (packed or not) yet has no estimate: its row
says `unknown`, and the last line says which model and mode lack records.
"""

import json
import shlex
import statistics
from collections import defaultdict
from functools import partial
from pathlib import Path

from omegaconf import OmegaConf

from bitfit_exp.config.compose import valid_jobs
from bitfit_exp.model.methods import packable
from bitfit_exp.results.records import (
    RECORD,
    CorruptRecord,
    find_done,
    identity,
    job_settings,
    read_record,
    setting_key,
)


def throughput(runs_dir: Path) -> dict:
    """(model, method, packed) and (model, packed) -> (median train samples/s per setting, median eval seconds per
    train second), from existing records; `packed` separates packed runs, whose settings train concurrently."""
    speeds, evals = defaultdict(list), defaultdict(list)
    for path in runs_dir.glob(f"**/seed*/{RECORD}"):
        try:
            r = read_record(path)
        except CorruptRecord:
            continue
        t, packed = r.get("timings", {}), "packed" in r
        if t.get("train_samples_per_s"):
            for key in ((r["setting"]["model"], r["setting"]["method"], packed), (r["setting"]["model"], packed)):
                speeds[key].append(t["train_samples_per_s"])
                evals[key].append(t["eval_s"] / t["train_s"])
    return {k: (statistics.median(v), statistics.median(evals[k])) for k, v in speeds.items()}


def done_seeds(root: Path, cfg, config: dict, seeds, identities: dict) -> set[int]:
    """The seeds of this setting with a done record (adoptable schema-1 ones included). The records tell which
    checkpoint and data they read; only when they name several is this job's identity needed, and then the data and
    checkpoint are loaded (once per model, task and data folder: `identities` remembers)."""
    found = find_done(root, config, seeds)
    variants = [k for k in found if k is not None]
    if len(variants) > 1:
        # Imported here: it loads numpy and pandas, which only this rare case of a plan needs.
        from bitfit_exp.model.fingerprint import of_config

        where = (cfg.model.name_or_path, cfg.task.name, str(cfg.data.dir), str(cfg.data.hub_name))
        if where not in identities:
            identities[where] = json.dumps(identity(of_config(cfg)), sort_keys=True)
        variants = [identities[where]]
    return set().union(found.get(None, set()), *(found.get(v, set()) for v in variants))


def plan(overrides: list[str]) -> list[dict]:
    """One entry per job: its settings' keys, seeds finished / in all, and the training samples still to run
    (`samples`: what one process works through; a packed job trains its settings side by side)."""
    return [entry for _, entry in valid_jobs(overrides, then=partial(plan_job, identities={}))]


def plan_job(job: list[str], cfg, identities: dict) -> dict:
    """`plan`'s entry for the job of overrides `job` and its checked config (`identities`: as for `done_seeds`)."""
    root = Path(cfg.runs_dir).expanduser()
    size = min(cfg.task.train_size, cfg.data.max_train_samples or cfg.task.train_size)
    packed = bool(cfg.train.packed) and packable(cfg.method.name)
    keys, done, missing = [], 0, 0
    seeds = list(dict.fromkeys(cfg.seeds))
    for setting in job_settings(cfg):
        config = OmegaConf.to_container(setting, resolve=True)
        keys.append(setting_key(config, None))
        finished_here = len(done_seeds(root, cfg, config, seeds, identities))
        done, missing = done + finished_here, missing + len(seeds) - finished_here
    samples = size * cfg.train.epochs * (min(missing, 1) if packed else missing)
    return {"key": keys[0], "keys": keys, "seeds": len(seeds) * len(keys), "done": done, "runs_dir": root,
            "packed": packed, "samples": samples, "overrides": job}


def job_hours(job: dict, speed: dict) -> float | None:
    """GPU-hours of the training `job` has left, at the throughput `speed` measured for its model and mode
    (`throughput`: its method's, else its model's); 0.0 when nothing is left, None when there are no records to
    measure it from."""
    if not job["samples"]:
        return 0.0
    k = job["key"]
    rate = speed.get((k["model"], k["method"], job["packed"])) or speed.get((k["model"], job["packed"]))
    return job["samples"] / rate[0] * (1 + rate[1]) / 3600 if rate else None


def summary(jobs: list[dict], hours: list[float | None]) -> str:
    """The plan's last line: jobs complete and to run, and the GPU-hours left (`job_hours` of each job). Where some
    jobs have no records of their model and mode to measure from, it says so and names them: never an estimate that
    leaves them out as if they cost nothing.

    >>> job = {"key": {"model": "bert_base"}, "packed": False, "done": 0, "seeds": 5, "runs_dir": Path("runs")}
    >>> summary([job], [None])
    '1 jobs: 0 complete, 1 to run; GPU-hours unknown: no records of bert_base (not packed) in runs yet to measure \
throughput from'
    >>> summary([job, {**job, "packed": True}], [None, 0.01])
    '2 jobs: 0 complete, 2 to run; GPU-hours: under 0.1 for 1 job, unknown for 1: no records of bert_base (not \
packed) in runs yet to measure throughput from'
    """
    complete = sum(j["done"] == j["seeds"] for j in jobs)
    head = f"{len(jobs)} jobs: {complete} complete, {len(jobs) - complete} to run; "
    unknown = [j for j, h in zip(jobs, hours, strict=True) if h is None]
    total = sum(h for h in hours if h is not None)
    if not unknown:
        return head + f"estimated {total:.1f} GPU-hours"
    modes = dict.fromkeys(f"{j['key']['model']} ({'packed' if j['packed'] else 'not packed'})" for j in unknown)
    why = f"no records of {', '.join(modes)} in {jobs[0]['runs_dir']} yet to measure throughput from"
    known = sum(bool(h) for h in hours)
    if not known:
        return head + f"GPU-hours unknown: {why}"
    return head + (f"GPU-hours: {f'{total:.1f}' if total >= 0.05 else 'under 0.1'} for {known} job{'s' * (known > 1)}, "
                   f"unknown for {len(unknown)}: {why}")


def todo_commands(jobs: list[dict]) -> list[str]:
    """`bitfit-run ... --multirun` commands that launch only the unfinished jobs: unfinished jobs that differ only in
    the last swept key are merged into one sweep over its values, so resubmitting launches nothing that is done."""
    values: dict[str, set] = {}
    for job in jobs:
        for o in job["overrides"]:
            values.setdefault(o.split("=", 1)[0], set()).add(o)
    last = next((k for k in reversed(values) if len(values[k]) > 1), None)  # the last swept key
    groups: dict[tuple, list[str]] = {}
    for job in (j for j in jobs if j["done"] < j["seeds"]):
        by_key = {o.split("=", 1)[0]: o for o in job["overrides"]}
        rest = tuple(o for k, o in by_key.items() if k != last)
        groups.setdefault(rest, []).extend([by_key[last].split("=", 1)[1]] if last else [])
    return [shlex.join(["bitfit-run", *rest, *([f"{last}={','.join(v)}"] if last else []), "--multirun"])
            for rest, v in groups.items()]
