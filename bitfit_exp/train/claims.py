"""Claims: at most one job trains a seed at a time. A job claims a seed folder before training it (claim.json,
created all or nothing), refreshes the claim's heartbeat while it trains, and removes it when done; a claim whose
job is gone (same host: its process; SLURM: its job), was this SLURM job before a requeue, or whose heartbeat is
older than train.claim_timeout_s is stale and taken over by exactly one job.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> mine, other = Claim(folder, timeout_s=900), Claim(folder, timeout_s=900)
>>> mine.acquire() is None, other.acquire()["pid"] == os.getpid()  # held: the second job is told who holds it
(True, True)
>>> mine.release(); sorted(p.name for p in folder.iterdir())
[]
"""

import contextlib
import json
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

CLAIM = "claim.json"
TAKEOVER_LOCK_STALE_S = 60.0  # a takeover lasts milliseconds; a lock this old was left by a job killed inside one
TAKEOVER_WAIT_S = 5.0  # how long to wait for another job's takeover before reporting it as the holder


class Claim:
    """An exclusive claim on one seed folder, so two jobs of the same sweep never train the same seed at once.

    The claim file appears complete or not at all (written aside, then hard-linked into place, which fails when it
    exists); the holder refreshes its mtime (`beat`) while training. An existing claim is taken over when it is
    stale: its job is this SLURM job (a requeue), its process is gone (same host), SLURM says its job is no longer
    queued or running, or its heartbeat is older than `timeout_s`.

    Takeover is exclusive: only the job that creates `claim.json.lock` (the same all-or-nothing link) may replace a
    stale claim, and it does so only if the claim is still the very file it judged stale (same inode, mtime and
    content), by an atomic rename over it; the claim path never goes missing in between, so a job arriving meanwhile
    sees either the stale claim (and waits for the lock) or the new one. Jobs that find the lock wait for it.
    """

    def __init__(self, folder: Path, timeout_s: float):
        self.path, self.timeout_s, self.last = Path(folder) / CLAIM, timeout_s, 0.0
        self.lock = self.path.with_name(f"{CLAIM}.lock")
        self.token = uuid.uuid4().hex  # tells this claim from another job's (or thread's) with the same pid

    def _owner(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "since": time.time(), "token": self.token}

    def acquire(self) -> dict | None:
        """Take the claim; returns None on success, else the live holder's details."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.time() + TAKEOVER_WAIT_S
        while True:
            if self._publish(self.path):
                self.last = time.time()
                return None
            seen = _snapshot(self.path)
            if seen is not None:  # else released just now: create it again
                if seen.holder is not None and not self._stale(seen.holder):
                    return seen.holder
                outcome = self._take_over(seen)
                if outcome is _TAKEN:
                    self.last = time.time()
                    return None
                if time.time() > deadline:  # another job's takeover outlasted the wait: it is the holder
                    lock = _snapshot(self.lock)
                    return (lock and lock.holder) or seen.holder or {"host": "?", "pid": "?"}
                time.sleep(0.01)

    def _take_over(self, seen: "_Snapshot"):
        """Replace the stale claim `seen` under the takeover lock: _TAKEN, or _RETRY when the lock is busy or the
        claim changed since it was judged."""
        if not self._publish(self.lock):
            lock = _snapshot(self.lock)
            if lock is not None and self._lock_stale(lock):
                _remove_if_unchanged(self.lock, lock)
            return _RETRY
        try:
            if _snapshot(self.path) != seen:  # beaten, released or taken since we judged it: judge again
                return _RETRY
            tmp = self._write_aside(self.path)
            os.replace(tmp, self.path)
            return _TAKEN
        finally:
            if (mine := _snapshot(self.lock)) is not None and mine.holder and mine.holder.get("token") == self.token:
                self.lock.unlink(missing_ok=True)

    def _lock_stale(self, lock: "_Snapshot") -> bool:
        holder = lock.holder or {}
        if holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid")):
            return True
        return time.time() - lock.mtime > TAKEOVER_LOCK_STALE_S

    def _write_aside(self, target: Path) -> Path:
        tmp = target.with_name(f".{target.name}.{self.token}.tmp")
        tmp.write_text(json.dumps(self._owner()))
        return tmp

    def _publish(self, target: Path) -> bool:
        """Create `target` holding our owner details, complete from the start; False when it already exists."""
        tmp = self._write_aside(target)
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write (briefly empty)
            return self._create_exclusive(target)
        finally:
            tmp.unlink(missing_ok=True)

    def _create_exclusive(self, target: Path) -> bool:
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._owner(), f)
        return True

    def _stale(self, holder: dict) -> bool:
        job = holder.get("slurm_job_id")
        if job and job == os.environ.get("SLURM_JOB_ID"):
            return True
        if holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid")):
            return True
        if job and _slurm_job_gone(job):
            return True
        return time.time() - holder["mtime"] > self.timeout_s

    def _mine(self) -> bool:
        seen = _snapshot(self.path)
        return seen is not None and seen.holder is not None and seen.holder.get("token") == self.token

    def beat(self, every_s: float = 30.0) -> None:
        """Refresh the claim's mtime (at most every `every_s` seconds), unless another job has taken it over."""
        if time.time() - self.last > every_s:
            if self._mine():
                self.path.touch()
            self.last = time.time()

    def release(self) -> None:
        """Remove the claim if it is still ours (a job that took it over keeps its own)."""
        if self._mine():
            self.path.unlink(missing_ok=True)


_TAKEN, _RETRY = object(), object()


@dataclass(frozen=True)
class _Snapshot:
    """What one read of a claim (or lock) file saw: its identity and its parsed content (None if unparseable)."""

    identity: tuple
    mtime: float
    holder: dict | None


def _snapshot(path: Path) -> _Snapshot | None:
    """The file at `path` now, or None when there is none."""
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        holder = {**json.loads(raw), "mtime": info.st_mtime}
    except (ValueError, TypeError):  # not JSON, or JSON but not an object
        holder = None
    return _Snapshot((info.st_dev, info.st_ino, info.st_mtime_ns, raw), info.st_mtime, holder)


def _remove_if_unchanged(path: Path, seen: _Snapshot) -> None:
    """Remove `path` if it is still the file `seen`: moved aside to a unique name first (one job wins the rename),
    checked, and put back (if nothing took its place) when it turned out to be another file."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.gone")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _snapshot(aside) != seen:
        with contextlib.suppress(OSError):
            os.link(aside, path)
    aside.unlink(missing_ok=True)


def pid_alive(pid) -> bool:
    """Whether process `pid` of this host still runs (signal 0: nothing is sent)."""
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
