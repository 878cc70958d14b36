"""The GPUs of this machine that the jobs of a local sweep share, named as CUDA_VISIBLE_DEVICES names them.

>>> visible_ids("3,5,7"), visible_ids(""), visible_ids("1,-1,2"), visible_ids("GPU-8f2a, 4")
(['3', '5', '7'], [], ['1'], ['GPU-8f2a', '4'])
>>> gpu_pool({"CUDA_VISIBLE_DEVICES": "3,5,7"}), gpu_pool({"BITFIT_GPU_POOL": "3,5,7", "CUDA_VISIBLE_DEVICES": "5"})
(['3', '5', '7'], ['3', '5', '7'])
"""

import os
from collections.abc import MutableMapping

CUDA_VAR = "CUDA_VISIBLE_DEVICES"
# The pool as this process (or the sweep that started it) first saw it: a job whose lease has narrowed
# CUDA_VISIBLE_DEVICES to one id, and the later jobs of the same worker process, still know the whole pool.
POOL_VAR = "BITFIT_GPU_POOL"
LEASE_VAR = "BITFIT_GPU_LEASE"  # the GPU id leased to the running job (results.environment records it)


def visible_ids(value: str) -> list[str]:
    """The GPU ids (indices or UUIDs) of a CUDA_VISIBLE_DEVICES value, in order, each once; as for CUDA, an invalid
    (negative or empty) entry ends the list."""
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break
        ids.append(part)
    return list(dict.fromkeys(ids))


def gpu_pool(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """The GPU ids a local sweep spreads its jobs over: CUDA_VISIBLE_DEVICES when set, else every GPU torch counts
    (through NVML, so CUDA itself stays uninitialised and a job can still narrow what it sees); [] without GPUs.

    The first answer is kept in BITFIT_GPU_POOL, which the sweep's job processes inherit."""
    if POOL_VAR in environ:
        return visible_ids(environ[POOL_VAR])
    if CUDA_VAR in environ:
        ids = visible_ids(environ[CUDA_VAR])
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    environ[POOL_VAR] = ",".join(ids)
    return ids


def jobs_for_gpus(default: int, environ: MutableMapping[str, str] = os.environ) -> int:
    """How many jobs a local sweep runs at once: one per GPU of the pool, else `default` (a CPU-only machine).

    >>> jobs_for_gpus(2, {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}), jobs_for_gpus(2, {"CUDA_VISIBLE_DEVICES": ""})
    (8, 2)
    """
    return len(gpu_pool(environ)) or int(default)
