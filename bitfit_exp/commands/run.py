"""`bitfit-run`: train one setting for all seeds (Hydra app; multirun sweeps through its launchers).

    bitfit-run task=rte method=bitfit model=minilm data.dir=../shared/data/glue seeds=[0] train.epochs=1

Every job's config is checked (bitfit_exp.config.compose) before Hydra starts: a bad value is one line, exit 2.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bitfit_exp.commands import fail
from bitfit_exp.config.compose import check_command_line, expand_config_dir
from bitfit_exp.core.config_dir import conf_dir
from bitfit_exp.core.errors import UserError
from bitfit_exp.core.threads import wait_passively


def _needs_hub(cfg) -> bool:
    from bitfit_exp.model.loading import resolve_model_path

    model = resolve_model_path(cfg.model.name_or_path)
    return not cfg.data.get("dir") or not Path(model).exists()


def _settle_data_dir(cfg) -> None:
    """data.dir=auto becomes the local copy it finds, or null (the hub, once the hub is known to answer), and says
    which in one line; the record then names what was read."""
    from bitfit_exp.core.data_dir import no_copy_problem
    from bitfit_exp.core.offline import hub_reachable
    from bitfit_exp.kinds.splits import local_name, with_data_dir

    if cfg.data.get("dir") != "auto":
        return
    cfg.data.dir = with_data_dir(cfg.task, cfg.data).dir  # offline with no copy: UserError
    if cfg.data.dir is None and not cfg.task.get("files") and not hub_reachable():
        raise UserError(no_copy_problem(cfg.task.name, local_name(cfg.task)))
    print(f"data.dir=auto: {cfg.data.dir or 'no local copy; the Hugging Face hub'}", flush=True)


def run() -> None:
    """`bitfit-run`: check the config of every job, then hand the command line to Hydra."""
    wait_passively()  # first: before anything imports torch; local sweep workers inherit it, and so do SLURM jobs
    sys.argv[1:] = expand_config_dir(sys.argv[1:])
    try:
        check_command_line(sys.argv[1:])
    except UserError as e:
        fail(e)
    _run_job()


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def _run_job(cfg: DictConfig) -> float | None:
    """Train one setting (or its lr grid) for every seed; returns the best mean main dev score (for Hydra sweepers)."""
    wait_passively()  # a job started on its own (a SLURM job whose environment does not carry it): before torch
    from bitfit_exp.config.schema import check, normalize
    from bitfit_exp.core.offline import settle_offline_mode
    from bitfit_exp.train.trainer import Stopped

    try:
        check(cfg)  # again: a config from --config-dir, or a job launched by Hydra alone
        normalize(cfg)  # train.grad_clip=1 is the setting of train.grad_clip=1.0, not a second one
        _settle_data_dir(cfg)
        if _needs_hub(cfg):
            settle_offline_mode()
        from bitfit_exp.train.gpu_lease import gpu_for_job
        from bitfit_exp.train.runner import objective, run_job

        with gpu_for_job(cfg.train.device):  # a local sweep's job: a GPU of its own, before torch picks the device
            settings = run_job(cfg)
    except UserError as e:
        fail(e)
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    return objective(settings)
