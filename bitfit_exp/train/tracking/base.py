"""The tracker interface: what a tracker run is about (RunInfo) and what every backend does (Tracker).

>>> info = RunInfo(Path("runs/m/rte/bitfit/lr0.001-abcd1234/seed0"), Path("runs"), "m/rte/bitfit/lr0.001-abcd1234/seed0")
>>> info.tags
{}
"""

from dataclasses import dataclass, field
from pathlib import Path

EXTRA = "bitfit-exp[tracking]"


@dataclass
class RunInfo:
    """What a tracker run is about: the seed's folder, the runs dir, a readable name, the flattened config (params)
    and the tags (setting hash, seed, method, task, model, git SHA, fingerprints)."""

    folder: Path
    runs_dir: Path
    name: str
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


class Tracker:
    """One backend. `open` starts a run, or continues the run `previous` (what an earlier `open` returned, kept in
    the seed's trackers.json) and returns what to keep (with "last_epoch" when the store knows better than
    trackers.json which epoch it logged last); `log` one epoch's scalars at a global step; `finish` the final
    scalars, tags and artifacts; `abort` marks a run stopped before its end (it is continued by the next `open`).
    Any exception means the backend failed: the session warns once and drops it."""

    name = ""
    module = ""  # what must be importable
    backfill = False  # bitfit-track can log what it missed

    @property
    def fix(self) -> str:
        """The one-line fix a failure warning names."""
        raise NotImplementedError

    def scope(self) -> str:
        """Where this tracker writes: a run that cannot be opened there stands for every later seed of the job
        (the session does not try again, nor warn again)."""
        return self.name

    def __init__(self, info: RunInfo):
        self.info = info

    def open(self, previous: dict | None, first_step: int) -> dict:
        raise NotImplementedError

    def log(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self, scalars: dict[str, float], step: int, tags: dict[str, str], artifacts: list[Path],
               ok: bool) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        pass

    def continues(self, previous: dict) -> bool:
        """Whether the run `previous` (from trackers.json) lies where this tracker now writes (MLflow: the same
        tracking URI); if not, it starts a new run and logs every epoch there."""
        return True

    def find_finished(self, record_digest: str) -> bool:
        """Whether the store already holds a finished run of this seed's record (back-fill: idempotent without
        trackers.json). Backends keyed by folder answer from trackers.json alone."""
        return False
