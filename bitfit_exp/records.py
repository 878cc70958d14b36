"""Run records: one JSON file per (setting, seed), written atomically, found again to skip finished seeds.

Layout under `runs_dir`:  <model>/<task>/<method>/lr<lr>-<hash>/seed<k>/record.json  (+ patch.safetensors, *.tsv)
The hash covers every config value that changes results, so two settings never share a folder.

>>> from bitfit_exp.records import setting_key
>>> cfg = {"model": {"name": "minilm", "name_or_path": "x"}, "task": {"name": "rte"}, "method": {"name": "bitfit"},
...        "optim": {"lr": 1e-3}, "train": {"batch_size": 8}, "data": {"max_length": 128}}
>>> setting_key(cfg)["dir"]
'minilm/rte/bitfit/lr0.001-002a149c'
"""

import copy
import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

from bitfit_exp.errors import UserError

SCHEMA = 1
RECORD = "record.json"
# Config keys that do not change what a run computes (where it reads/writes, how it reports, which seeds).
NON_RESULT_KEYS = {
    "data": {"dir", "hub_name"},
    "train": {"device", "progress", "predict_test", "save_patch", "eval_batch_size", "checkpoint", "stop_after_epochs", "packed",
              "packed_dropout", "pack_lrs", "compile", "claim_timeout_s"},
    "method": {"lr_grid", "default_lr"},
    "model": {"name"},
    "task": {"train_size"},
}
# Keys added after records existed whose null default reproduces the earlier behaviour: left out of the hash while
# null, so settings run before the key existed keep their folder (and finished seeds are not redone).
NULL_DEFAULT_KEYS = {"data": {"train_subset_seed", "pad_multiple"}}


def result_config(cfg: dict) -> dict:
    """The part of the resolved config that determines a setting's results."""
    out = {}
    for group in ("model", "task", "method", "optim", "train", "data"):
        values = dict(cfg.get(group) or {})
        out[group] = {k: v for k, v in sorted(values.items()) if k not in NON_RESULT_KEYS.get(group, ())
                      and not (v is None and k in NULL_DEFAULT_KEYS.get(group, ()))}
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


def job_settings(cfg) -> list:
    """The settings one job trains: cfg's own, or with train.pack_lrs one per learning rate of method.lr_grid."""
    if not cfg.train.pack_lrs:
        return [cfg]
    if cfg.get("fixed_lr"):
        raise UserError(f"this sweep fixes the learning rate ({cfg.optim.lr:g}); train.pack_lrs would train the whole "
                        f"lr grid instead: use train.packed=true without train.pack_lrs")
    settings = []
    for lr in cfg.method.lr_grid:
        setting = copy.deepcopy(cfg)
        setting.optim.lr = float(lr)
        settings.append(setting)
    return settings


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


CLAIM = "claim.json"


class Claim:
    """An exclusive claim on one seed folder, so two jobs of the same sweep never train the same seed at once.

    Created with O_EXCL; the holder refreshes its mtime (`beat`) while training. An existing claim is taken over
    when it is stale: its job is this SLURM job (a requeue), its process is gone (same host), SLURM says its job
    is no longer queued or running, or its heartbeat is older than `timeout_s`.
    """

    def __init__(self, folder: Path, timeout_s: float):
        self.path, self.timeout_s, self.last = Path(folder) / CLAIM, timeout_s, 0.0

    def _owner(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "since": time.time()}

    def acquire(self) -> dict | None:
        """Take the claim; returns None on success, else the live holder's details."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not self._stale(holder):
                    return holder
                self.path.unlink(missing_ok=True)  # stale: the next O_EXCL create decides who takes it
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._owner(), f)
            self.last = time.time()
            return None
        return self._holder() or {"host": "?", "pid": "?"}

    def _holder(self) -> dict | None:
        try:
            return {**json.loads(self.path.read_text()), "mtime": self.path.stat().st_mtime}
        except (OSError, json.JSONDecodeError):
            return None

    def _stale(self, holder: dict) -> bool:
        job = holder.get("slurm_job_id")
        if job and job == os.environ.get("SLURM_JOB_ID"):
            return True
        if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
            return True
        if job and _slurm_job_gone(job):
            return True
        return time.time() - holder["mtime"] > self.timeout_s

    def beat(self, every_s: float = 30.0) -> None:
        if time.time() - self.last > every_s:
            self.path.touch()
            self.last = time.time()

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _slurm_job_gone(job_id: str) -> bool:
    """True when squeue answers and no longer lists the job; False when unsure (no squeue, error)."""
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%T", "-j", str(job_id)], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    if out.returncode != 0:
        return "Invalid job id" in out.stderr
    return out.stdout.strip() in ("", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED", "NODE_FAIL")


def check_runs_dir(path) -> Path:
    """`path` (~ expanded) as a writable folder, created with its parents if absent; a one-line UserError naming it
    when it is not a folder or cannot be created or written.

    >>> check_runs_dir("conf/config.yaml")
    Traceback (most recent call last):
    bitfit_exp.errors.UserError: conf/config.yaml: runs_dir is not a folder (point runs_dir=... at a folder)
    """
    import tempfile

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: runs_dir is not a folder (point runs_dir=... at a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # the one sure test: permissions, ACLs, read-only mounts, quotas
            pass
    except OSError as e:
        raise UserError(f"{folder}: runs_dir cannot be created or written: {e.strerror or e} "
                        f"(choose another runs_dir=... or fix its permissions)") from None
    return folder
