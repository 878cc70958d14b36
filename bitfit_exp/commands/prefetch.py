"""`bitfit-prefetch`: fill offline caches: a model (weights + tokenizer) and every split of the tasks, saved where an
offline run reads them.

    bitfit-prefetch model=bert_base tasks=[rte,mrpc] data.dir=~/glue models_dir=~/models
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from bitfit_exp.commands import fail
from bitfit_exp.config.compose import shadowed_problem
from bitfit_exp.core.config_dir import conf_dir
from bitfit_exp.core.errors import UserError
from bitfit_exp.core.paths import child


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
        for path in sorted(folder.glob("*.yaml")):
            if path.stem in files:  # Hydra reads the first folder's file: this one would never be, as in bitfit-run
                raise UserError(shadowed_problem([(folder.parent, f"task/{path.stem}")], {"task"}))
            files[path.stem] = path
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
    from bitfit_exp.kinds.splits import load_splits, local_folder, local_name, save_local
    from bitfit_exp.model.loading import save_for_offline

    try:
        if cfg.data.dir == "auto":  # auto finds copies; this command makes one, in a folder it must be told
            raise UserError("bitfit-prefetch saves into a folder: data.dir=~/bitfit-data/glue (the default, which "
                            "bitfit-run data.dir=auto finds) or data.dir=/path/to/glue")
        root = Path(cfg.data.dir).expanduser()
        names = OmegaConf.to_container(cfg.tasks, resolve=True) if OmegaConf.is_list(cfg.tasks) else cfg.tasks
        tasks = _task_configs(names, cfg.get("task"))
        target = child(Path(cfg.models_dir).expanduser(), cfg.model.name, "model.name")
        for task in tasks:  # every name checked before anything is fetched or written
            local_folder(task, root)
        for task in tasks:
            source = OmegaConf.create({"dir": cfg.data.from_dir, "hub_name": cfg.data.hub_name})
            splits = load_splits(task, source, carve=False)
            paths = save_local(task, splits, root)
            print(f"{task.name}: {', '.join(f'{p.stem} ({len(splits[p.stem])})' for p in paths)} -> "
                  f"{root / local_name(task)}")
        save_for_offline(cfg.model.name_or_path, target)
        print(f"model {cfg.model.name_or_path} -> {target}")
        print(f"offline: bitfit-run model={cfg.model.name} model.name_or_path={target} data.dir={root} ...")
    except UserError as e:
        fail(e)
