"""A sweep's plan: its jobs, which of their seeds are already done, and the GPU-hours left (used by `bitfit-plan`).

Estimates use the training throughput (samples/s) measured in existing run records of the same model and
method (else the same model), times the task's train size, epochs and missing seeds; evaluation time is scaled in
from the same records.
"""

import json
import shlex
import statistics
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from bitfit_exp.config.compose import valid_jobs
from bitfit_exp.model.fingerprint import of_config
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
        where = (cfg.model.name_or_path, cfg.task.name, str(cfg.data.dir), str(cfg.data.hub_name))
        if where not in identities:
            identities[where] = json.dumps(identity(of_config(cfg)), sort_keys=True)
        variants = [identities[where]]
    return set().union(found.get(None, set()), *(found.get(v, set()) for v in variants))


def plan(overrides: list[str]) -> list[dict]:
    """One entry per job: its settings' keys, seeds finished / in all, and the training samples still to run
    (`samples`: what one process works through; a packed job trains its settings side by side)."""
    jobs, identities = [], {}
    for job, cfg in valid_jobs(overrides):
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
        jobs.append({"key": keys[0], "keys": keys, "seeds": len(seeds) * len(keys), "done": done,
                     "runs_dir": root, "packed": packed, "samples": samples, "overrides": job})
    return jobs


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
