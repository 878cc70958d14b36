"""What a record stamps about where it ran: package versions, git SHA and dirty flag, host, device, SLURM job id,
torch's CPU threads and OpenMP's wait policy, peft's version.

>>> import torch
>>> env = environment(torch.device("cpu"))
>>> env["device"], sorted(k for k in env if k in ("torch", "transformers", "git_sha"))
('cpu', ['git_sha', 'torch', 'transformers'])
"""

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from bitfit_exp.core.gpus import CUDA_VAR, LEASE_VAR


def _git(*args: str) -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_state() -> dict:
    """The git SHA of this package's checkout and whether tracked files differ from it (None: not a git checkout)."""
    sha = _git("rev-parse", "HEAD")
    return {"git_sha": sha, "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if sha else None}


def environment(device) -> dict:
    """Versions, git state, host, device and CPU threads: what is needed to tell two runs apart later."""
    import datasets
    import torch
    import transformers

    import bitfit_exp

    git = git_state()
    env = {
        "bitfit_exp": bitfit_exp.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "git_sha": git["git_sha"],
        "git_dirty": bool(git["git_dirty"]),  # False, not None, outside a git checkout: as records always said
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "device": str(device),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "gpu_lease": os.environ.get(LEASE_VAR),  # the GPU id a local sweep leased to this job (train.gpu_lease)
        "cuda_visible_devices": os.environ.get(CUDA_VAR),
        "peft": _version("peft"),  # the peft-backed methods' library (model/peft_methods.py); None: not installed
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # None: OpenMP's default (idle threads spin a while)
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env
