"""Run records: one JSON file per (setting, seed), written atomically, found again to skip finished seeds.

Layout under `runs_dir`:  <model>/<task>/<method>/lr<lr>-<hash>/seed<k>/record.json  (+ patch.safetensors, *.tsv)
The hash covers every config value that changes results, so two settings never share a folder.

>>> from bitfit_exp.records import setting_key
>>> cfg = {"model": {"name": "minilm", "name_or_path": "x"}, "task": {"name": "rte"}, "method": {"name": "bitfit"},
...        "optim": {"lr": 1e-3}, "train": {"batch_size": 8}, "data": {"max_length": 128}}
>>> setting_key(cfg)["dir"]
'minilm/rte/bitfit/lr0.001-002a149c'
"""

import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

SCHEMA = 1
RECORD = "record.json"
# Config keys that do not change what a run computes (where it reads/writes, how it reports, which seeds).
NON_RESULT_KEYS = {
    "data": {"dir", "hub_name"},
    "train": {"device", "progress", "predict_test", "save_patch", "eval_batch_size"},
    "method": {"lr_grid", "default_lr"},
    "model": {"name"},
    "task": {"train_size"},
}


def result_config(cfg: dict) -> dict:
    """The part of the resolved config that determines a setting's results."""
    out = {}
    for group in ("model", "task", "method", "optim", "train", "data"):
        values = dict(cfg.get(group) or {})
        out[group] = {k: v for k, v in sorted(values.items()) if k not in NON_RESULT_KEYS.get(group, ())}
    return out


def setting_key(cfg: dict) -> dict:
    blob = json.dumps(result_config(cfg), sort_keys=True, default=str)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:8]
    lr = cfg["optim"]["lr"]
    return {
        "model": cfg["model"]["name"],
        "task": cfg["task"]["name"],
        "method": cfg["method"]["name"],
        "lr": float(lr),
        "hash": digest,
        "dir": f"{cfg['model']['name']}/{cfg['task']['name']}/{cfg['method']['name']}/lr{float(lr):g}-{digest}",
    }


def seed_dir(runs_dir, key: dict, seed: int) -> Path:
    return Path(runs_dir) / key["dir"] / f"seed{seed}"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CorruptRecord(ValueError):
    pass


def read_record(path: Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorruptRecord(f"{path}: unreadable run record ({e})") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA or "setting" not in record:
        raise CorruptRecord(f"{path}: not a bitfit-exp run record (schema {SCHEMA})")
    return record


def finished(path: Path) -> bool:
    """A seed is finished when its record exists, parses, and says so; anything else is redone."""
    try:
        return read_record(path).get("status") == "finished"
    except CorruptRecord:
        return False


def set_aside(path: Path) -> Path | None:
    """Keep an existing record (overwrite=true) as record.json.replaced-<time> instead of deleting it."""
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target


def _git(*args: str) -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device) -> dict:
    """Versions, git state, host and device: what is needed to tell two runs apart later."""
    import datasets
    import torch
    import transformers

    import bitfit_exp

    env = {
        "bitfit_exp": bitfit_exp.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "device": str(device),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env
