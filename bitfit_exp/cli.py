"""Console entry points: `bitfit-run` (train one setting for all seeds) and `bitfit-prefetch` (fill offline caches).

    bitfit-run task=rte method=bitfit model=minilm data.dir=../shared/data/glue seeds=[0] train.epochs=1
    bitfit-prefetch model=bert_base tasks=[rte,mrpc] data.dir=~/glue models_dir=~/models
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
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2)


def _needs_hub(cfg) -> bool:
    from bitfit_exp.models import resolve_model_path

    model = resolve_model_path(cfg.model.name_or_path)
    return not cfg.data.get("dir") or not Path(model).exists()


def _check_choices(cfg) -> None:
    valid = {"select": ("best", "last"), "padding": ("max_length", "longest"),
             "packed_dropout": ("per_setting", "shared"),
             "compile": ("false", "true", "default", "reduce-overhead", "max-autotune")}
    for key, value in (("select", cfg.train.select), ("padding", cfg.data.padding),
                       ("packed_dropout", cfg.train.packed_dropout), ("compile", str(cfg.train.compile).lower())):
        if value not in valid[key]:
            raise UserError(f"{key}={value!r} is not valid; choose one of {', '.join(valid[key])}")
    if not cfg.seeds:
        raise UserError("seeds is empty; give at least one, e.g. seeds=[0]")


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def run(cfg: DictConfig) -> float | None:
    """Train one setting (or its lr grid) for every seed; returns the best mean main dev score (for Hydra sweepers)."""
    from bitfit_exp.hub import settle_offline_mode
    from bitfit_exp.methods import METHODS
    from bitfit_exp.training import Stopped

    try:
        _check_choices(cfg)
        if cfg.method.name not in METHODS:
            raise UserError(f"unknown method {cfg.method.name!r}; valid: {', '.join(sorted(METHODS))}")
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
