"""Console entry points: `bitfit-run` (train one setting for all seeds) and `bitfit-prefetch` (fill offline caches).

    bitfit-run task=rte method=bitfit model=minilm data.dir=../shared/data/glue seeds=[0] train.epochs=1
    bitfit-prefetch model=bert_base tasks=[rte,mrpc] data.dir=~/glue models_dir=~/models

`bitfit-run` checks the config of every job against bitfit_exp/schema.py before Hydra starts (Hydra writes its
output folder before the job runs): a bad value is one line and exit code 2, with nothing written.
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
    --cfg, --info, ...) and for other config folders or files (--config-dir/-path/-name), which the job itself checks."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    informational = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion, args.experimental_rerun,
                     args.config_path, args.config_name, args.config_dir)
    if any(informational):
        return None
    sweep = args.multirun or "hydra.mode=MULTIRUN" in args.overrides
    return args.overrides, sweep


def _check_before_hydra(argv: list[str]) -> None:
    """Compose and check every job the command line would run (each job of a sweep, as `bitfit-plan` expands it),
    and that each runs_dir is a writable folder (Hydra writes its output folder there first). Hydra's composition
    errors (task=nope) become one line with the valid choices, as in `bitfit-plan`."""
    from hydra.errors import HydraException

    from bitfit_exp.plan import one_line, valid_jobs
    from bitfit_exp.records import check_runs_dir

    jobs = _jobs_to_check(argv)
    if jobs is None:
        return
    try:
        checked = valid_jobs(*jobs)
    except HydraException as e:
        raise UserError(one_line(str(e))) from None
    for runs_dir in dict.fromkeys(str(cfg.runs_dir) for _, cfg in checked):
        check_runs_dir(runs_dir)


def run() -> None:
    """`bitfit-run`: check the config of every job, then hand the command line to Hydra."""
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


def _task_configs(names) -> list[DictConfig]:
    folder = Path(conf_dir()) / "task"
    available = sorted(p.stem for p in folder.glob("*.yaml"))
    names = available if names in ("all", ["all"]) else list(names)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; valid: {', '.join(available)}")
    return [OmegaConf.load(folder / f"{n}.yaml") for n in names]


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="prefetch")
def prefetch(cfg: DictConfig) -> None:
    """Save the model (weights + tokenizer) and every split of the tasks where offline runs can read them."""
    from bitfit_exp.data import load_splits, save_local
    from bitfit_exp.models import save_for_offline

    try:
        root = Path(cfg.data.dir).expanduser()
        for task in _task_configs(OmegaConf.to_container(cfg.tasks) if OmegaConf.is_list(cfg.tasks) else cfg.tasks):
            source = OmegaConf.create({"dir": cfg.data.from_dir, "hub_name": cfg.data.hub_name})
            splits = load_splits(task, source)
            paths = save_local(task, splits, root)
            print(f"{task.name}: {', '.join(f'{p.stem} ({len(splits[p.stem])})' for p in paths)} -> {root / task.name}")
        target = Path(cfg.models_dir).expanduser() / cfg.model.name
        save_for_offline(cfg.model.name_or_path, target)
        print(f"model {cfg.model.name_or_path} -> {target}")
        print(f"offline: bitfit-run model={cfg.model.name} model.name_or_path={target} data.dir={root} ...")
    except UserError as e:
        _fail(e)
