"""From a command line to checked job configs, with Hydra's public API only: expand a sweep into its jobs, compose
each job's config as the run will, check every one against the schema (bitfit_exp.config.schema).

    bitfit-run task=rte method=bitfit model=minilm data.dir=../shared/data/glue seeds=[0] train.epochs=1

`bitfit-run` and `bitfit-plan` call `valid_jobs` before Hydra starts (Hydra writes its output folder before the job
runs): a bad value is one line and exit code 2, with nothing written. A user's own config folder (`--config-dir
~/my-conf`, or `hydra.searchpath=[file:///home/me/my-conf]`), e.g. with its task/my_task.yaml
(docs/custom-tasks.md), is checked the same way, composed with that folder on the search path; a file there with the
name of a built-in config (task/rte.yaml), which Hydra would never read (the package's configs come first on its
search path), is one line that says to rename it.

>>> [" ".join(job) for job in expand(["task=rte,sst2", "seeds=[0]"])]
['task=rte seeds=[0]', 'task=sst2 seeds=[0]']
"""

import argparse
import copy
import gc
import importlib.resources
import itertools
import multiprocessing
import operator
import sys
from collections.abc import Callable
from functools import cache, reduce
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from bitfit_exp.config.schema import ConfigError, check, normalize, problems, unknown_override_keys
from bitfit_exp.core.config_dir import conf_dir
from bitfit_exp.core.errors import UserError
from bitfit_exp.core.threads import cpus_allowed
from bitfit_exp.results.records import check_runs_dir


def jobs_to_check(argv: list[str]) -> tuple[list[str], bool] | None:
    """(overrides, sweep) of a command line that would run jobs; None for Hydra's informational flags (--help,
    --cfg, --info, ...) and for another primary config (--config-path/--config-name), which the job itself checks.
    A --config-dir becomes a hydra.searchpath override (first on it, as Hydra adds it): composition finds its
    configs as the run will."""
    args, _ = hydra_arguments().parse_known_args(argv)
    modes = [flag for flag, on in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                   ("--info", args.info), ("--shell-completion", args.shell_completion)) if on]
    if len(modes) > 1:  # Hydra raises a ValueError with a traceback
        raise UserError(f"{' and '.join(modes)} cannot be combined (one of --run, --multirun, --cfg, --info, "
                        f"--shell-completion); a sweep's jobs: bitfit-plan with the same keys")
    informational = (args.help, args.hydra_help, args.version, args.cfg, args.info, args.shell_completion,
                     args.experimental_rerun, args.config_path, args.config_name)
    if any(informational):
        return None
    overrides = list(args.overrides)
    if args.config_dir:
        overrides = with_search_dir(overrides, args.config_dir)
    sweep = args.multirun or "hydra.mode=MULTIRUN" in args.overrides
    return overrides, sweep


def with_search_dir(overrides: list[str], config_dir: str) -> list[str]:
    """`overrides` with `config_dir` first on hydra.searchpath (its other entries kept after it); a folder that
    does not exist is a UserError, as in Hydra.

    >>> with_search_dir(["task=my_task"], "/")
    ['task=my_task', 'hydra.searchpath=[file:///]']
    """
    folder = Path(config_dir).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"--config-dir {config_dir}: no such folder")
    parsed = OverridesParser.create().parse_overrides(overrides)
    given = [o for o in parsed if o.key_or_group == "hydra.searchpath"]
    entries = [f"file://{folder}", *(list(given[-1].value()) if given else [])]
    rest = [o.input_line for o in parsed if o.key_or_group != "hydra.searchpath"]
    return [*rest, f"hydra.searchpath=[{','.join(entries)}]"]


def check_not_shadowed(overrides: list[str]) -> None:
    """A UserError when a config file of a folder on hydra.searchpath (a --config-dir) has the name of a built-in
    config: Hydra puts the package's conf/ (and its own configs) before those folders on its search path, so the
    user's task/rte.yaml would never be read and task=rte would silently run the built-in rte."""
    roots = search_roots(overrides)
    if not roots:
        return
    with _initialized():
        builtin = builtin_configs()
        hidden = [(root, name) for root in roots for name in builtin if _file_of(root, name).is_file()]
        if hidden:
            choices = compose("config", return_hydra_config=True).hydra.runtime.choices
            raise UserError(shadowed_problem(hidden, set(choices)))


def search_roots(overrides: list[str]) -> list:
    """The folders (file://, or a plain path) and packages (pkg://) of the hydra.searchpath override, the first one
    as Hydra takes it; the package's own conf/ left out. Nothing for an override Hydra will refuse itself."""
    try:
        given = [o for o in OverridesParser.create().parse_overrides(overrides)
                 if o.key_or_group == "hydra.searchpath" and not o.is_sweep_override()]
    except HydraException:
        return []
    entries = given[0].value() if given else []
    roots = []
    for entry in entries if isinstance(entries, list) else []:
        scheme, sep, rest = str(entry).partition("://")
        if not sep or scheme == "file":
            folder = Path(rest if sep else entry)
            roots += [] if folder.resolve() == Path(conf_dir()).resolve() else [folder]
        elif scheme == "pkg":
            try:
                roots.append(importlib.resources.files(rest))
            except (ImportError, TypeError):  # Hydra warns that this source is not available
                pass
    return roots


def builtin_configs() -> list[str]:
    """The config names (`task/rte`, `hydra/job_logging/default`, `config`) of the sources that come before a
    user's folders on the initialized Hydra's search path: all but the structured configs, which come after."""
    sources = GlobalHydra.instance().config_loader().get_sources()
    return sorted({name for s in sources if s.scheme() != "structured" for name in _configs_of(s)})


def _configs_of(source, group: str = "") -> list[str]:
    """Every config name of a Hydra config source, its groups walked."""
    names = [f"{group}/{n}".lstrip("/") for n in source.list(group, ObjectType.CONFIG)]
    for sub in source.list(group, ObjectType.GROUP):
        names += _configs_of(source, f"{group}/{sub}".lstrip("/"))
    return names


def _file_of(root, name: str):
    """Where a folder (or package) keeps the config file of `name` (`task/rte`: <root>/task/rte.yaml)."""
    return reduce(operator.truediv, f"{name}.yaml".split("/"), root)


def shadowed_problem(hidden: list[tuple[object, str]], default_groups: set[str]) -> str:
    """One line for user config files that built-in ones hide: which, and the fix (another name, selected so).

    >>> print(shadowed_problem([(Path("/c"), "experiment/table3")], {"task"}))  # doctest: +NORMALIZE_WHITESPACE
    /c/experiment/table3.yaml is never read: the built-in experiment/table3.yaml comes first on Hydra's search path;
    rename yours, e.g. to experiment/my_table3.yaml, and select +experiment=my_table3
    """
    files = [str(_file_of(root, name)) for root, name in hidden]
    name = hidden[0][1]
    group, _, leaf = name.rpartition("/")
    renamed = f"{group}/my_{leaf}".lstrip("/")
    plus = "" if group in default_groups else "+"
    select = f", and select {plus}{group}=my_{leaf}" if group else ""
    if len(files) == 1:
        return (f"{files[0]} is never read: the built-in {name}.yaml comes first on Hydra's search path; rename yours, "
                f"e.g. to {renamed}.yaml{select}")
    return (f"{', '.join(files)} are never read: built-in configs of the same names come first on Hydra's search "
            f"path; rename yours, e.g. {name}.yaml to {renamed}.yaml{select}")


def check_command_line(argv: list[str]) -> None:
    """Compose and check every job the command line would run (each job of a sweep, as `bitfit-plan` expands it),
    and that each runs_dir is a writable folder (Hydra writes its output folder there first). Hydra's composition
    errors (task=nope) become one line with the valid choices, as in `bitfit-plan`."""
    jobs = jobs_to_check(argv)  # a missing --config-dir: UserError
    if jobs is None:
        return
    try:
        checked = valid_jobs(*jobs)
    except HydraException as e:
        raise UserError(one_line(str(e))) from None
    for _, cfg in checked:
        if cfg.data.get("dir") == "auto":
            from bitfit_exp.kinds.splits import with_data_dir  # datasets and pyarrow: only when needed

            with_data_dir(cfg.task, cfg.data)  # offline with no local copy: one line before anything is written
    for runs_dir in dict.fromkeys(str(cfg.runs_dir) for _, cfg in checked):
        check_runs_dir(runs_dir)


def expand_config_dir(argv: list[str]) -> list[str]:
    """`argv` with the --config-dir (-cd) folder as an absolute path: Hydra does not expand `~`, and a shell does
    not either in `--config-dir=~/my-conf`.

    >>> import os
    >>> expand_config_dir(["-cd", "~/c", "task=x"]) == ["-cd", os.path.expanduser("~/c"), "task=x"]
    True
    """
    out, after_flag = [], False
    for arg in argv:
        if after_flag:
            arg, after_flag = str(Path(arg).expanduser().absolute()), False
        elif arg in ("--config-dir", "-cd"):
            after_flag = True
        elif arg.startswith(("--config-dir=", "-cd=")):
            flag, _, folder = arg.partition("=")
            arg = f"{flag}={Path(folder).expanduser().absolute()}"
        out.append(arg)
    return out


def expand(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job of the sweep (config's hydra.sweeper.params, command line winning)."""
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    with _initialized():
        cfg = compose("config", overrides=fixed, return_hydra_config=True)
    params = {k: f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()}
    for o in overrides:
        params[o.split("=", 1)[0]] = o
    parsed = parser.parse_overrides(list(params.values()))
    return sweep_jobs(parsed)


def compose_jobs(jobs: list[list[str]]) -> list[DictConfig]:
    """Each job's config as Hydra composes it for the run: composed once per distinct set of config-group choices,
    then the job's value overrides applied in order (`apply_overrides`; table3: 64 compositions, not 256)."""
    parser, parsed, composed, configs = OverridesParser.create(), {}, {}, []
    with _initialized():
        for job in jobs:
            for o in job:  # each override once: a sweep repeats each value in many jobs
                if o not in parsed:
                    parsed[o] = parser.parse_overrides([o])[0]
            overrides = [parsed[o] for o in job]
            # As Hydra's defaults list splits them: a dict value or a key that is no group is a value override.
            # hydra.searchpath (a user's config folder) decides where group choices are found: composed with them.
            groups = [(is_group(o.key_or_group) and not isinstance(o.value(), dict))
                        or o.key_or_group == "hydra.searchpath" for o in overrides]
            choices = tuple(o.input_line for o, group in zip(overrides, groups, strict=True) if group)
            if choices not in composed:
                composed[choices] = compose("config", overrides=list(choices))
            cfg = copy.deepcopy(composed[choices])
            values = [o for o, group in zip(overrides, groups, strict=True) if not group and not o.is_hydra_override()]
            apply_overrides(cfg, values)
            configs.append(cfg)
    return configs


def valid_jobs(overrides: list[str], sweep: bool = True, then: Callable | None = None) -> list[tuple[list[str], Any]]:
    """(overrides, config) of every job (of the sweep, or the single run), each config checked against the schema
    and normalized (schema.normalize, as the run does): ConfigError lists every bad value. A key that no group has
    is named as such even where Hydra refuses it first (`train.epoch=3`); other composition errors are Hydra's
    (HydraException). With `then` (picklable), (overrides, then(overrides, config)) instead, once every job is
    valid, computed by the process that checked the config (`checked_in_parallel`): only its result travels back."""
    check_not_shadowed(overrides)
    try:
        jobs = expand(overrides) if sweep else [overrides]
        done = checked_in_parallel(jobs, then)
        configs = compose_jobs(jobs) if done is None else []
    except HydraException:
        unknown = unknown_override_keys(_value_overrides(overrides))
        if unknown:
            raise ConfigError(unknown) from None
        raise
    except yaml.YAMLError as e:  # a config file of the user's folder that does not parse
        raise ConfigError([yaml_problem(e)]) from None
    if done is not None:
        return list(zip(jobs, done, strict=True))
    check(configs)
    normalized = [normalize(cfg) for cfg in configs]  # hashed as the run will
    return [(job, then(job, cfg) if then else cfg) for job, cfg in zip(jobs, normalized, strict=True)]


# Hydra takes ~50 ms of CPU to compose a config, the schema a few more to check one: a sweep of many jobs (table3: 64
# compositions, 256 checks) is checked by processes forked from this one, one per CPU it may use, each taking at
# least this many jobs.
JOBS_PER_PROCESS = 16


def checked_in_parallel(jobs: list[list[str]], then: Callable | None = None) -> list | None:
    """`valid_jobs`' configs (or what `then` makes of each) of a sweep of many jobs, composed, checked and normalized
    by forked processes, each taking a run of consecutive jobs (jobs that differ only in values share a composition);
    ConfigError when some are not valid. None where not worth it (few jobs, one CPU, no safe fork: the caller does it
    all in turn) and where anything else fails in a process: the caller then does it all again, in turn, raising
    what that raises."""
    workers = min(cpus_allowed(), len(jobs) // JOBS_PER_PROCESS)
    # Forking a process that has loaded torch and Hydra is safe on Linux; elsewhere everything is done in turn.
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods() or sys.platform == "darwin":
        return None
    size = -(-len(jobs) // workers)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            shares = pool.map(_check_share, [(jobs[i:i + size], then) for i in range(0, len(jobs), size)], chunksize=1)
    except OSError:  # no process could be forked (a limit on processes or memory): in turn
        return None
    if any(share is None for share in shares):
        return None
    found = [line for lines, _ in shares for line in lines]
    if found:
        raise ConfigError(list(dict.fromkeys(found)))
    return [result for _, results in shares for result in results]


def _check_share(share: tuple[list[list[str]], Callable | None]) -> tuple[list[str], list] | None:
    """In a forked process: (the problem lines, and when there are none the normalized configs or what `then` makes
    of them) of a run of jobs; None when anything fails (raised again by the parent, which does it all again)."""
    jobs, then = share
    # Hydra and OmegaConf make many objects that point at each other (a node at its parent): at the default
    # threshold the collector runs every 700 of them, a tenth of this process's time. It lives for one sweep.
    gc.set_threshold(100_000, 50, 100)
    try:
        configs = compose_jobs(jobs)
        found = [line for cfg in configs for line in problems(cfg)]
        if found:
            return found, []
        return [], [then(job, normalize(cfg)) if then else normalize(cfg) for job, cfg in zip(jobs, configs, strict=True)]
    except Exception:  # noqa: BLE001 - raised again, as it is, where the parent does the same in turn
        return None


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
    with _initialized():
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
        except HydraException:
            return []
        return [(o.key_or_group, o.value()) for o in parsed
                if not is_group(o.key_or_group) and not o.is_sweep_override() and not o.is_delete()]


def one_line(message: str) -> str:
    """Hydra's multi-line composition errors as one line: the problem, then the valid choices if it lists them."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("Available options"):
        choices = lines[2:lines.index("Config search path:")] if "Config search path:" in lines else lines[2:]
        return f"{lines[0]}; valid: {', '.join(choices)}"
    return lines[0]


def sweep_jobs(overrides: list[Override]) -> list[list[str]]:
    """The cartesian product of parsed overrides, each sweep (`a,b`, `range(...)`, `choice(...)`) expanded in its
    order and the last override of a key winning in the first one's place, as Hydra's basic sweeper runs them."""
    by_key: dict[str, list[str]] = {}
    for o in overrides:
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise UserError(f"{o.input_line}: an interval sweep needs a sweeper plugin; list the values instead")
            by_key[key] = [f"{key}={value}" for value in o.sweep_string_iterator()]
        else:
            by_key[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*by_key.values())]


def apply_overrides(cfg: DictConfig, overrides: list[Override]) -> None:
    """Apply value overrides (`key=v`, `+key=v`, `++key=v`, `~key`) to a composed config in order, with the
    meaning Hydra gives them when it composes: `key=` must exist, `+key=` must not (dicts and lists merge), `++key=`
    sets either way, `~key` deletes (`~key=v` only where the value is v)."""
    for o in overrides:
        key, value = o.key_or_group, o.value()
        if o.is_delete():
            present = OmegaConf.select(cfg, key, throw_on_missing=False)
            if present is None or (value is not None and value != present):
                raise HydraException(f"Could not delete from config. '{key}' does not exist"
                                     + ("" if present is None else f" with value {value!r}"))
            parent, _, leaf = key.rpartition(".")
            with open_dict(cfg):
                del (OmegaConf.select(cfg, parent) if parent else cfg)[leaf]
        elif o.is_add() and OmegaConf.select(cfg, key, throw_on_missing=False) is not None \
                and not isinstance(value, (dict, list)):
            raise HydraException(f"Could not append to config. An item is already at '{key}'.")
        elif o.is_add() or o.is_force_add():
            OmegaConf.update(cfg, key, value, merge=True, force_add=True)
        else:
            try:
                OmegaConf.update(cfg, key, value, merge=True)
            except (KeyError, AttributeError) as e:  # omegaconf's ConfigKeyError/ConfigAttributeError
                raise HydraException(f"Could not override '{key}'. No match in config. To append to your config "
                                     f"use +{o.input_line}\n{e}") from None


@cache
def _groups(parent: str) -> frozenset[str]:
    return frozenset(GlobalHydra.instance().config_loader().list_groups(parent))


def is_group(name: str) -> bool:
    """Whether `name` (`task`, `hydra/launcher`) is a config group of the initialized Hydra's search path."""
    parent, _, leaf = name.rpartition("/")
    return leaf in _groups(parent)


def _initialized():
    """Hydra initialized on the config folder (and a fresh group cache: the search path may differ per call)."""
    _groups.cache_clear()
    return initialize_config_dir(config_dir=conf_dir(), version_base="1.3")


def hydra_arguments() -> argparse.ArgumentParser:
    """The flags of a Hydra app's command line (`hydra.main`), so that a command line can be read before Hydra
    runs it. Hydra's own parser is internal; these are its documented flags."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("overrides", nargs="*")
    for flags in (("--help", "-h"), ("--hydra-help",), ("--version",), ("--resolve",), ("--run", "-r"),
                  ("--multirun", "-m"), ("--shell-completion", "-sc")):
        p.add_argument(*flags, action="store_true")
    for flags in (("--cfg", "-c"), ("--package", "-p"), ("--config-path", "-cp"), ("--config-name", "-cn"),
                  ("--config-dir", "-cd"), ("--experimental-rerun",)):
        p.add_argument(*flags)
    p.add_argument("--info", "-i", nargs="?", const="all")
    return p
