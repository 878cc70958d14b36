"""GPU leases: each job of a local sweep (launcher=local, --multirun) runs on a GPU of its own.

Before torch picks its device, a job leases one free id of the machine's GPU pool (core.gpus.gpu_pool), sees only
that GPU (CUDA_VISIBLE_DEVICES=<id>) and gives the lease back when it ends. A job that finds every GPU leased waits,
saying so once, instead of sharing one.

A lease is an exclusive `flock` on the id's lock file in the machine's lease folder. The kernel drops it when its
process exits, however it exits, so a killed job's GPU is free at once: no heartbeat or timeout as for seed claims
(train.claims), which must also hold across machines and SLURM requeues, where no lock is shared; a GPU lease never
leaves its machine.

CUDA reads CUDA_VISIBLE_DEVICES once per process, and joblib runs a sweep's jobs in a few reused worker processes:
a worker whose job ran on a GPU can run its later jobs on that GPU only. So it leases that id again, and a released
id stays kept for its worker's next job for a while (KEEP_S, and only while that worker lives): a job of another
sweep, or a new worker, takes a free id that nobody waits for first.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> mine, other, third = GpuLease(folder, ["3", "5"]), GpuLease(folder, ["3", "5"]), GpuLease(folder, ["3", "5"])
>>> mine.try_acquire(), other.try_acquire(), third.try_acquire()
('3', '5', None)
>>> mine.release(); third.try_acquire()  # kept for its last holder, but that is this process
'3'
>>> other.release(); third.release()
"""

import contextlib
import fcntl
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bitfit_exp.core.errors import UserError
from bitfit_exp.core.gpus import CUDA_VAR, LEASE_VAR, gpu_pool
from bitfit_exp.core.threads import local_sweep_jobs
from bitfit_exp.train.claims import pid_alive

DIR_VAR = "BITFIT_GPU_LEASE_DIR"
POLL_S = 0.5
KEEP_S = 30.0  # a worker starts its next job within seconds; a GPU idles this long at most for one that has none
_bound: str | None = None  # the GPU this process's CUDA is bound to, once a job of it has leased one


def lease_folder(environ=os.environ) -> Path:
    """Where this machine's GPU lock files live: $BITFIT_GPU_LEASE_DIR, else a folder of the user's in the temp dir,
    named after the machine (a temp dir shared between machines keeps their leases apart)."""
    if environ.get(DIR_VAR):
        return Path(environ[DIR_VAR])
    return Path(tempfile.gettempdir()) / f"bitfit-gpu-leases-{os.getuid()}@{socket.gethostname()}"


class GpuLease:
    """One job's lease on one GPU id out of `ids`, through one lock file per id in `folder`. The file says who holds
    the id (pid, host, since: for the line of a job that waits), or, once released, which worker it is kept for."""

    def __init__(self, folder: Path, ids: list[str]):
        self.folder, self.ids = Path(folder), list(ids)
        self.gpu: str | None = None
        self._file = None

    def _path(self, gpu: str) -> Path:
        return self.folder / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock"

    def _open(self, gpu: str):
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._path(gpu), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise UserError(f"cannot use the GPU lease folder {self.folder}: {e.strerror or e}; set {DIR_VAR} to a "
                            f"writable local folder") from None
        return os.fdopen(fd, "r+")

    def try_acquire(self) -> str | None:
        """Lease the first free id of `ids` that is not kept for another worker, and return it; else None."""
        for gpu in self.ids:
            f = self._open(gpu)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            if kept_for_another(_parse(f.read())):
                f.close()  # closing drops the lock
                continue
            self._write(f, {"gpu": gpu, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
            self.gpu, self._file = gpu, f
            return gpu
        return None

    @staticmethod
    def _write(f, content: dict) -> None:
        f.seek(0)
        f.truncate()
        f.write(json.dumps(content))
        f.flush()

    def holders(self) -> dict[str, dict]:
        """id -> what its lock file says: its holder, or the worker it is kept for ({} when neither is known)."""
        out = {}
        for gpu in self.ids:
            try:
                out[gpu] = _parse(self._path(gpu).read_text())
            except OSError:
                out[gpu] = {}
        return out

    def acquire(self, say: Callable[[str], None] = print, poll_s: float = POLL_S, why: str = "") -> str:
        """Lease a free id, waiting while there is none (saying so once: who holds each, and `why`)."""
        waited = False
        while (gpu := self.try_acquire()) is None:
            if not waited:
                say(waiting_line(self.holders()) + why)
                waited = True
            time.sleep(poll_s)
        return gpu

    def release(self) -> None:
        """Give the lease back, kept for this worker's next job (the lock file stays: removing it would race with a
        job locking it)."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self._write(self._file, {"gpu": self.gpu, "kept_for": os.getpid(), "host": socket.gethostname(),
                                     "released": time.time()})
        self._file.close()  # closing drops the lock
        self.gpu = self._file = None


def _parse(text: str) -> dict:
    try:
        content = json.loads(text or "{}")
    except ValueError:
        return {}
    return content if isinstance(content, dict) else {}


def kept_for_another(content: dict, now: float | None = None) -> bool:
    """Whether a free id's lock file keeps it for another worker process: one that released it less than KEEP_S ago
    and still lives (on another host, where its pid says nothing, only the time counts).

    >>> kept_for_another({"kept_for": os.getpid(), "host": socket.gethostname(), "released": time.time()})
    False
    >>> kept_for_another({"kept_for": os.getppid(), "host": socket.gethostname(), "released": time.time()})
    True
    >>> kept_for_another({"kept_for": os.getppid(), "host": socket.gethostname(), "released": time.time() - KEEP_S})
    False
    """
    holder, here = content.get("kept_for"), content.get("host") == socket.gethostname()
    if holder is None or (here and holder == os.getpid()):
        return False
    if (now or time.time()) - float(content.get("released") or 0) >= KEEP_S:
        return False
    return pid_alive(holder) if here else True


def waiting_line(holders: dict[str, dict]) -> str:
    """The line of a job that waits for one of `holders`' GPUs.

    >>> waiting_line({"3": {"pid": 11}, "5": {"kept_for": 12}, "7": {}})
    'gpu: no free GPU (GPU 3: leased by pid 11; GPU 5: kept for the next job of pid 12; GPU 7: leased); waiting'
    """
    def state(h: dict) -> str:
        if "pid" in h:
            return f"leased by pid {h['pid']}"
        return f"kept for the next job of pid {h['kept_for']}" if "kept_for" in h else "leased"

    return f"gpu: no free GPU ({'; '.join(f'GPU {g}: {state(h)}' for g, h in holders.items())}); waiting"


def leases_gpu(device: str, in_local_sweep: bool, pool: list[str]) -> bool:
    """Whether a job leases a GPU: one of a local sweep, on a machine with GPUs, whose train.device lets the runner
    choose the GPU (auto or cuda; cuda:N names one itself, cpu and mps use none).

    >>> leases_gpu("auto", True, ["0", "1"]), leases_gpu("cpu", True, ["0"]), leases_gpu("cuda:1", True, ["0", "1"])
    (True, False, False)
    >>> leases_gpu("cuda", False, ["0", "1"]), leases_gpu("auto", True, [])
    (False, False)
    """
    return in_local_sweep and device in ("auto", "cuda") and bool(pool)


@contextlib.contextmanager
def gpu_for_job(device: str, say: Callable[[str], None] = print) -> Iterator[str | None]:
    """Run one job on a GPU of its own when it `leases_gpu`: lease one (waiting for a free one), make it the only
    visible GPU (CUDA_VISIBLE_DEVICES=<id>, BITFIT_GPU_LEASE=<id>) while the job runs, then give it back whether
    the job ends or fails. Yields the id, or None with nothing changed."""
    global _bound
    in_sweep = local_sweep_jobs() is not None
    if not leases_gpu(device, in_sweep, gpu_pool() if in_sweep else []):
        yield None
        return
    if _bound is None:
        lease, why = GpuLease(lease_folder(), gpu_pool()), ""
    else:
        lease, why = GpuLease(lease_folder(), [_bound]), f" for GPU {_bound}, the one this worker's CUDA is bound to"
    gpu = _bound = lease.acquire(say, why=why)
    before = {name: os.environ.get(name) for name in (CUDA_VAR, LEASE_VAR)}
    os.environ[CUDA_VAR] = os.environ[LEASE_VAR] = gpu
    say(f"gpu: leased GPU {gpu} (CUDA_VISIBLE_DEVICES={gpu})")
    try:
        yield gpu
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        lease.release()
