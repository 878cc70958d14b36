"""How many threads a training job's torch may use, and OpenMP threads that wait without spinning.

torch sizes its thread pool from the node's cores and OpenMP's idle threads spin: on a busy machine, or on a SLURM
node shared with other jobs, they take the cores from the threads doing the work (the README demo on a shared
2-core box: 1,023 s instead of about 50 s per seed; waiting passively, 8x faster, the same numbers). A job sizes
its pool to what it may use instead, and `bitfit-run` sets `OMP_WAIT_POLICY=PASSIVE` before torch is imported.

>>> job_threads(None, cpus=16, environ={"SLURM_CPUS_PER_TASK": "4"})
4
>>> job_threads(None, cpus=16, environ={}, n_jobs=3)
5
>>> job_threads(2, cpus=16, environ={"OMP_NUM_THREADS": "8"})
2
"""

import os
import sys
from collections.abc import Mapping, MutableMapping

WAIT_POLICY = "OMP_WAIT_POLICY"


def wait_passively(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user set a policy or torch is already imported; True if it was set.

    OpenMP reads the variable once, when torch loads it: set later it would change nothing, and the record (which
    reports the variable) would claim a policy the run did not have."""
    if WAIT_POLICY in environ or "torch" in sys.modules:
        return False
    environ[WAIT_POLICY] = "PASSIVE"
    return True


def cpus_allowed() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a cpuset, SLURM's binding), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS)
        return os.cpu_count() or 1


def count(value: str | None) -> int | None:
    """A positive count from an environment variable: '8', or OpenMP's nested list '4,2' (its outer level); else None.

    >>> count("4,2"), count(" 8 "), count("0"), count("many"), count(None)
    (4, 8, None, None, None)
    """
    try:
        n = int((value or "").split(",")[0])
    except ValueError:
        return None
    return n if n >= 1 else None


def share(cpus: int, n_jobs: int) -> int:
    """One job's share of `cpus` when joblib runs `n_jobs` at once (negative as joblib counts them: -1 = one job per
    CPU, -2 = all but one), at least 1.

    >>> share(16, 4), share(2, 4), share(8, -1), share(8, -3)
    (4, 1, 1, 1)
    """
    at_once = n_jobs if n_jobs > 0 else max(cpus + 1 + n_jobs, 1)
    return max(cpus // at_once, 1)


def job_threads(override: int | None, *, cpus: int, environ: Mapping[str, str], n_jobs: int | None = None) -> int:
    """The intra-op threads of a training job: `override` (train.threads) when set, else the fewest of the CPUs it
    may run on (`cpus`), SLURM's SLURM_CPUS_PER_TASK, its share of them in a local sweep of `n_jobs` parallel jobs,
    and the user's OMP_NUM_THREADS (so a run under `OMP_NUM_THREADS=1` keeps its single thread)."""
    if override is not None:
        return override
    limits = [cpus, count(environ.get("SLURM_CPUS_PER_TASK")), count(environ.get("OMP_NUM_THREADS"))]
    if n_jobs is not None:
        limits.append(share(cpus, n_jobs))
    return max(min(n for n in limits if n is not None), 1)


def local_sweep_jobs() -> int | None:
    """`hydra.launcher.n_jobs` when this process runs a job of a joblib sweep (launcher=local, --multirun), else None
    (a single run, another launcher, or no Hydra at all)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN or "joblib" not in str(hydra.launcher.get("_target_", "")).lower():
        return None
    n_jobs = OmegaConf.select(hydra.launcher, "n_jobs", default=None, throw_on_resolution_failure=False)
    return n_jobs if isinstance(n_jobs, int) and n_jobs != 0 else None


def threads_here(override: int | None) -> int:
    """`job_threads` for this process: its affinity mask, its environment and its place in a local sweep."""
    return job_threads(override, cpus=cpus_allowed(), environ=os.environ, n_jobs=local_sweep_jobs())
