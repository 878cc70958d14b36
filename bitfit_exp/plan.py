"""`bitfit-plan`: expand a sweep into its jobs, show which seeds are already finished, and estimate GPU-hours.

    bitfit-plan +experiment=table3                 # 256 jobs: done / partial / to run, and hours left
    bitfit-plan +experiment=smoke data.dir=../shared/data/glue
    bitfit-plan +experiment=table3 --todo          # ... and the commands that launch only the unfinished jobs

Estimates use the training throughput (samples/s) measured in existing run records of the same model and
method (else the same model), times the task's train size, epochs and missing seeds; evaluation time is scaled in
from the same records.
"""

import copy
import json
import shlex
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from bitfit_exp.cli import conf_dir
from bitfit_exp.errors import UserError
from bitfit_exp.fingerprint import of_config
from bitfit_exp.methods import packable
from bitfit_exp.records import (
    RECORD,
    CorruptRecord,
    find_done,
    identity,
    job_settings,
    read_record,
    setting_key,
)
from bitfit_exp.schema import ConfigError, check, unknown_override_keys


def expand(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job of the sweep (config's hydra.sweeper.params, command line winning)."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("config", overrides=fixed, return_hydra_config=True)
    params = {k: f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()}
    for o in overrides:
        params[o.split("=", 1)[0]] = o
    parsed = parser.parse_overrides(list(params.values()))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def compose_jobs(jobs: list[list[str]]) -> list[DictConfig]:
    """Each job's config as Hydra composes it for the run: composed once per distinct set of config-group choices,
    then the job's value overrides applied in order by Hydra's own loader step (table3: 64 compositions, not 256)."""
    parser, composed, configs = OverridesParser.create(), {}, []
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        repo = GlobalHydra.instance().config_loader().repository
        for job in jobs:
            overrides = parser.parse_overrides(job)
            # As Hydra's defaults list splits them: a dict value or a key that is no group is a value override.
            # hydra.searchpath (a user's config folder) decides where group choices are found: composed with them.
            is_group = [(repo.group_exists(o.key_or_group) and not isinstance(o.value(), dict))
                        or o.key_or_group == "hydra.searchpath" for o in overrides]
            choices = tuple(o.input_line for o, group in zip(overrides, is_group, strict=True) if group)
            if choices not in composed:
                composed[choices] = compose("config", overrides=list(choices))
            cfg = copy.deepcopy(composed[choices])
            values = [o for o, group in zip(overrides, is_group, strict=True) if not group and not o.is_hydra_override()]
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
            configs.append(cfg)
    return configs


def valid_jobs(overrides: list[str], sweep: bool = True) -> list[tuple[list[str], DictConfig]]:
    """(overrides, config) of every job (of the sweep, or the single run), each config checked against the schema:
    ConfigError lists every bad value. A key that no group has is named as such even where Hydra refuses it first
    (`train.epoch=3`); other composition errors are Hydra's (HydraException)."""
    try:
        jobs = expand(overrides) if sweep else [overrides]
        configs = compose_jobs(jobs)
    except HydraException:
        unknown = unknown_override_keys(_value_overrides(overrides))
        if unknown:
            raise ConfigError(unknown) from None
        raise
    except yaml.YAMLError as e:  # a config file of the user's folder that does not parse
        raise ConfigError([yaml_problem(e)]) from None
    check(configs)
    return list(zip(jobs, configs, strict=True))


def yaml_problem(e: "yaml.YAMLError") -> str:
    """One line for a YAML file that does not parse: where, and what the parser expected.

    >>> try:
    ...     yaml.safe_load("files: [a")
    ... except yaml.YAMLError as e:
    ...     yaml_problem(e)
    "<unicode string>, line 1: not valid YAML (expected ',' or ']', but got '<stream end>')"
    """
    mark = getattr(e, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a config file"
    return f"{where}: not valid YAML ({getattr(e, 'problem', None) or str(e).splitlines()[0]})"


def _value_overrides(overrides: list[str]) -> list[tuple[str, object]]:
    """(key, value) of the overrides that set config values (not group choices, not sweeps, not deletions)."""
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        repo = GlobalHydra.instance().config_loader().repository
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
        except HydraException:
            return []
        return [(o.key_or_group, o.value()) for o in parsed
                if not repo.group_exists(o.key_or_group) and not o.is_sweep_override() and not o.is_delete()]


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


def one_line(message: str) -> str:
    """Hydra's multi-line composition errors as one line: the problem, then the valid choices if it lists them."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("Available options"):
        choices = lines[2:lines.index("Config search path:")] if "Config search path:" in lines else lines[2:]
        return f"{lines[0]}; valid: {', '.join(choices)}"
    return lines[0]


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
