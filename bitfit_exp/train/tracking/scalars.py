"""What a tracker logs, computed from the data a run record holds, so that a live run and a back-filled one log the
same numbers: each epoch's scalars at its global step, the final ones, the flattened config and the tags.

>>> cfg = {"optim": {"lr": 1e-3, "warmup_ratio": 0.0}, "train": {"epochs": 2, "batch_size": 8}}
>>> row = {"epoch": 1, "train_loss": 0.69, "dev": {"validation": {"accuracy": 0.5}}, "train": {"accuracy": 0.6},
...        "train_s": 1.5, "eval_s": 0.5}
>>> step = epoch_step(cfg, 24, 1); step
3
>>> epoch_scalars(row, cfg, 24)
{'train/loss': 0.69, 'train/epoch': 1.0, 'train/lr': 0.001, 'train/probe/accuracy': 0.6, 'dev/validation/accuracy': 0.5, 'time/train_s': 1.5, 'time/eval_s': 0.5}
>>> flat_params({"train": {"epochs": 2, "betas": [0.9, 0.999]}, "seeds": [0]})
{'train.epochs': '2', 'train.betas': '[0.9, 0.999]', 'seeds': '[0]'}
"""

import json
import math

import torch
from omegaconf import OmegaConf

from bitfit_exp.train.packed import seek
from bitfit_exp.train.trainer import lr_schedule


def steps_per_epoch(cfg: dict, n_train: int) -> int:
    return -(-n_train // cfg["train"]["batch_size"])


def epoch_step(cfg: dict, n_train: int, epoch: int) -> int:
    """The global optimizer step at the end of `epoch` (the x axis of every tracker, as in HF Trainer)."""
    return epoch * steps_per_epoch(cfg, n_train)


def lr_at(cfg: dict, n_train: int, step: int) -> float:
    """The learning rate the trainer's schedule holds after `step` steps (its get_last_lr()), from the same schedule
    code (train.trainer.lr_schedule), so warmup is logged as trained."""
    schedule = lr_schedule(torch.optim.SGD([torch.zeros(1)], lr=cfg["optim"]["lr"]),
                           steps_per_epoch(cfg, n_train), OmegaConf.create(cfg))
    seek(schedule, step)
    return float(schedule.get_last_lr()[0])


def epoch_scalars(row: dict, cfg: dict, n_train: int) -> dict[str, float]:
    """One record epoch row as tracker scalars: train loss, epoch, lr, the train-probe metrics, every dev split's
    metrics and the epoch's times."""
    out = {"train/loss": row["train_loss"], "train/epoch": float(row["epoch"]),
           "train/lr": lr_at(cfg, n_train, epoch_step(cfg, n_train, row["epoch"]))}
    out.update({f"train/probe/{m}": v for m, v in (row.get("train") or {}).items()})
    out.update({f"dev/{split}/{m}": v for split, scores in row["dev"].items() for m, v in scores.items()})
    out.update({f"time/{k}": row[k] for k in ("train_s", "eval_s") if row.get(k) is not None})
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def final_scalars(record: dict) -> dict[str, float]:
    """The end of a run: the best epoch and its scores, the chosen epoch and its main metric."""
    main, out = record["main"], {}
    if record.get("best"):
        out["best/epoch"] = float(record["best"]["epoch"])
        out.update({f"best/dev/{split}/{m}": v for split, scores in record["best"]["dev"].items()
                    for m, v in scores.items()})
    chosen = next((row for row in record["epochs"] if row["epoch"] == record.get("chosen_epoch")), None)
    if chosen is not None:
        out["chosen/epoch"] = float(chosen["epoch"])
        out[f"chosen/{main['split']}/{main['metric']}"] = chosen["dev"][main["split"]][main["metric"]]
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The resolved config flattened to dotted keys, values as strings (lists as JSON)."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list | tuple) else str(v)
    return out


def tags(setting: dict, seed: int, fingerprints: dict, git_sha: str | None) -> dict[str, str]:
    """What identifies the run: setting hash, seed, model, task, method, lr, git SHA and the fingerprints of the
    checkpoint and the data read. `bitfit.setting` and `bitfit.seed` key a run in a store (back-fill)."""
    data = fingerprints.get("data")
    return {"bitfit.setting": setting["hash"], "bitfit.seed": str(seed), "bitfit.model": setting["model"],
            "bitfit.task": setting["task"], "bitfit.method": setting["method"], "bitfit.lr": f"{setting['lr']:g}",
            "bitfit.dir": f"{setting['dir']}/seed{seed}", "bitfit.git_sha": str(git_sha),
            "bitfit.model_fingerprint": str(fingerprints.get("model")),
            "bitfit.data_fingerprint": str(data.get("digest") if isinstance(data, dict) else data)}
