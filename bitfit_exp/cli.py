"""Console entry points: `bitfit-run` (train one setting for all seeds) and `bitfit-prefetch` (fill offline caches).

    bitfit-run task=rte method=bitfit model=minilm data.dir=../shared/data/glue seeds=[0] train.epochs=1
    bitfit-prefetch model=bert_base tasks=[rte,mrpc] data.dir=~/glue models_dir=~/models

`bitfit-run` checks the config of every job against bitfit_exp/schema.py before Hydra starts (Hydra writes its
output folder before the job runs): a bad value is one line and exit code 2, with nothing written. A user's own
config folder (`--config-dir ~/my-conf`, or `hydra.searchpath=[file:///home/me/my-conf]`), e.g. with its
task/my_task.yaml (docs/custom-tasks.md), is checked the same way, composed with that folder on the search path.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from bitfit_exp.errors import UserError

# `${index:${method.lr_grid},${lr_index}}` lets a sweep walk each method's own learning-rate grid.
OmegaConf.register_new_resolver("index", lambda seq, i: seq[int(i)], replace=True)


def conf_dir() -> str:
    """conf/ of a source checkout (editable install), else the copy packaged as bitfit_exp/conf."""
    here = Path(__file__).resolve().parent
    repo = here.parent / "conf"
    return str(repo if (repo / "config.yaml").is_file() else here / "conf")


def _fail(e: UserError):
    print("\n".join(f"error: {line}" for line in str(e).splitlines()), file=sys.stderr)
    raise SystemExit(2)


def _needs_hub(cfg) -> bool:
    from bitfit_exp.models import resolve_model_path

    model = resolve_model_path(cfg.model.name_or_path)
    return not cfg.data.get("dir") or not Path(model).exists()


def _jobs_to_check(argv: list[str]) -> tuple[list[str], bool] | None:
    """(overrides, sweep) of a command line that would run jobs; None for Hydra's informational flags (--help,
    --cfg, --info, ...) and for another primary config (--config-path/--config-name), which the job itself checks.
    A --config-dir becomes a hydra.searchpath override (first on it, as Hydra adds it): composition finds its
    configs as the run will."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    informational = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion, args.experimental_rerun,
                     args.config_path, args.config_name)
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
    from hydra.core.override_parser.overrides_parser import OverridesParser

    folder = Path(config_dir).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"--config-dir {config_dir}: no such folder")
    parsed = OverridesParser.create().parse_overrides(overrides)
    given = [o for o in parsed if o.key_or_group == "hydra.searchpath"]
    entries = [f"file://{folder}", *(list(given[-1].value()) if given else [])]
    rest = [o.input_line for o in parsed if o.key_or_group != "hydra.searchpath"]
    return [*rest, f"hydra.searchpath=[{','.join(entries)}]"]


def _check_before_hydra(argv: list[str]) -> None:
    """Compose and check every job the command line would run (each job of a sweep, as `bitfit-plan` expands it),
    and that each runs_dir is a writable folder (Hydra writes its output folder there first). Hydra's composition
    errors (task=nope) become one line with the valid choices, as in `bitfit-plan`."""
    from hydra.errors import HydraException

    from bitfit_exp.plan import one_line, valid_jobs
    from bitfit_exp.records import check_runs_dir

    jobs = _jobs_to_check(argv)  # a missing --config-dir: UserError
    if jobs is None:
        return
    try:
        checked = valid_jobs(*jobs)
    except HydraException as e:
        raise UserError(one_line(str(e))) from None
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


def run() -> None:
    """`bitfit-run`: check the config of every job, then hand the command line to Hydra."""
    sys.argv[1:] = expand_config_dir(sys.argv[1:])
    try:
        _check_before_hydra(sys.argv[1:])
    except UserError as e:
        _fail(e)
    _run_job()


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def _run_job(cfg: DictConfig) -> float | None:
    """Train one setting (or its lr grid) for every seed; returns the best mean main dev score (for Hydra sweepers)."""
    from bitfit_exp.hub import settle_offline_mode
    from bitfit_exp.schema import check
    from bitfit_exp.training import Stopped

    try:
        check(cfg)  # again: a config from --config-dir, or a job launched by Hydra alone
        if _needs_hub(cfg):
            settle_offline_mode()
        from bitfit_exp.runner import objective, run_job

        settings = run_job(cfg)
    except UserError as e:
        _fail(e)
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    return objective(settings)


def _task_folders() -> list[Path]:
    """The task/ folders of the running Hydra app's config search path (a --config-dir or hydra.searchpath folder
    included), the package's own first."""
    from hydra.core.hydra_config import HydraConfig

    folders = [Path(conf_dir()) / "task"]
    if HydraConfig.initialized():
        folders += [Path(source.path) / "task" for source in HydraConfig.get().runtime.config_sources
                    if source.schema == "file" and source.path]
    return [f for f in dict.fromkeys(folders) if f.is_dir()]


def _task_configs(names, composed=None) -> list[DictConfig]:
    """The task configs named (`all`: every task on the search path); `composed` (the run's task) stands for its
    own name, so a user task selected with task=... is taken as composed."""
    files = {}
    for folder in _task_folders():
        files.update({p.stem: p for p in sorted(folder.glob("*.yaml"))})  # later folders win, as in Hydra
    available = sorted({*files, *([str(composed.name)] if composed is not None else [])})
    names = available if names in ("all", ["all"]) else list(names)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; valid: {', '.join(available)}")
    return [composed if composed is not None and n == composed.name else OmegaConf.load(files[n]) for n in names]


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="prefetch")
def prefetch(cfg: DictConfig) -> None:
    """Save the model (weights + tokenizer) and every split of the tasks where offline runs can read them: the
    splits as read (a task's own files or hub dataset included, columns unchanged), under
    <data.dir>/<local_name>/<split>.parquet; nothing is carved there (data.dev_fraction applies at run time)."""
    from bitfit_exp.data import load_splits, local_name, save_local
    from bitfit_exp.models import save_for_offline

    try:
        root = Path(cfg.data.dir).expanduser()
        names = OmegaConf.to_container(cfg.tasks, resolve=True) if OmegaConf.is_list(cfg.tasks) else cfg.tasks
        for task in _task_configs(names, cfg.get("task")):
            source = OmegaConf.create({"dir": cfg.data.from_dir, "hub_name": cfg.data.hub_name})
            splits = load_splits(task, source, carve=False)
            paths = save_local(task, splits, root)
            print(f"{task.name}: {', '.join(f'{p.stem} ({len(splits[p.stem])})' for p in paths)} -> "
                  f"{root / local_name(task)}")
        target = Path(cfg.models_dir).expanduser() / cfg.model.name
        save_for_offline(cfg.model.name_or_path, target)
        print(f"model {cfg.model.name_or_path} -> {target}")
        print(f"offline: bitfit-run model={cfg.model.name} model.name_or_path={target} data.dir={root} ...")
    except UserError as e:
        _fail(e)
