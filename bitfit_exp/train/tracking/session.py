"""The trackers of one seed (`train.report_to`): started or continued when the seed starts, fed each epoch's record
row as it is made, finished with the record once it is written. Which run each tracker holds and the last epoch it
logged live in the seed's `trackers.json`, so a resumed seed continues its runs and logs only the epochs after
that one.

A tracker that fails (not installed, unreachable, full disk) is dropped with one warning line naming it and the
fix; training goes on unchanged (tracker calls keep every random generator's state as they found it) and the record
is written as always.

>>> import tempfile
>>> session = SeedTracking([], RunInfo(Path(tempfile.mkdtemp()), Path("."), "x"), {}, 0)
>>> session.epoch({"epoch": 1}); session.finish({"epochs": []}); session.active
{}
"""

import json
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.results.environment import git_state
from bitfit_exp.results.records import RECORD, sealed_setting, write_json_atomic
from bitfit_exp.train.tracking import TRACKERS
from bitfit_exp.train.tracking.base import EXTRA, RunInfo, Tracker
from bitfit_exp.train.tracking.scalars import epoch_scalars, epoch_step, final_scalars, flat_params, tags

STATE = "trackers.json"

# (tracker, scope) pairs that could not be opened in this process: later seeds of the job skip them, unwarned.
BROKEN: set[tuple[str, str]] = set()


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextmanager
def rng_kept() -> Iterator[None]:
    """Every global random generator (Python, numpy, torch, CUDA) as it was before: a tracker that draws an id from
    one does not change what the seed trains."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class SeedTracking:
    """The trackers `names` of the seed `info` describes; `cfg` is the resolved config (a dict) and `n_train` the
    number of encoded training rows (the record's sizes.train): together they give each epoch's step and lr.
    `strict`: a failure raises a UserError instead of warning (bitfit-track)."""

    def __init__(self, names, info: RunInfo, cfg: dict, n_train: int, strict: bool = False):
        self.info, self.cfg, self.n_train, self.strict = info, cfg, n_train, strict
        self.path = info.folder / STATE
        self.active: dict[str, Tracker] = {}
        self.state = read_state(self.path) if names else {}
        for name in names:
            tracker = TRACKERS[name](info)
            if not strict and (name, tracker.scope()) in BROKEN:
                continue
            previous = self.state.get(name)
            # A finished run (training the seed again is a new run) or one in another store is not continued.
            if previous and (previous.get("record") or not tracker.continues(previous)):
                previous = None
            last = previous.get("last_epoch", 0) if previous else 0
            with self._guard(tracker, opening=True):
                kept = tracker.open(previous, epoch_step(cfg, n_train, last) + 1)
                self.state[name] = {**kept, "last_epoch": max(last, kept.get("last_epoch", 0)), "record": None}
                self.active[name] = tracker
        self._save()

    @contextmanager
    def _guard(self, tracker: Tracker, opening: bool = False) -> Iterator[None]:
        try:
            with rng_kept():
                yield
        except Exception as e:  # noqa: BLE001 - whatever a tracker raises, training goes on
            self.active.pop(tracker.name, None)
            fix = f"pip install '{EXTRA}' (its import failed)" if isinstance(e, ImportError) else tracker.fix
            if self.strict:
                raise UserError(f"{tracker.name}: {first_line(e)}; {fix}") from None
            if opening:
                BROKEN.add((tracker.name, tracker.scope()))
            later = f"; `bitfit-track RUNS_DIR --to {tracker.name}` logs the records afterwards" \
                if tracker.backfill else ""
            warn(f"{tracker.name} tracking failed ({first_line(e)}) at {self.info.name}; training goes on without "
                 f"it{' for this job' if opening else ''} and records are written as always. Fix: {fix}{later}")

    def _save(self) -> None:
        if not self.active:
            return
        try:
            write_json_atomic(self.path, self.state)
        except (OSError, UserError) as e:  # the next run starts new tracker runs; training is unaffected
            warn(f"cannot save {self.path} ({first_line(e)}); a resumed seed will start new tracker runs")

    def _log(self, name: str, tracker: Tracker, row: dict) -> None:
        tracker.log(epoch_scalars(row, self.cfg, self.n_train), epoch_step(self.cfg, self.n_train, row["epoch"]))
        self.state[name]["last_epoch"] = row["epoch"]

    def epoch(self, row: dict) -> None:
        """Log one epoch's record row to every tracker that has not logged it yet."""
        for name, tracker in list(self.active.items()):
            if row["epoch"] > self.state[name]["last_epoch"]:
                with self._guard(tracker):
                    self._log(name, tracker, row)
        self._save()

    def finish(self, record: dict) -> None:
        """After the record is written: any epoch not logged yet (one before a resume from a run without this
        tracker), the best and chosen epochs, the status and record digest as tags, the record and patch as
        artifacts (MLflow); the run is closed."""
        epochs = record["epochs"]
        step = epoch_step(self.cfg, self.n_train, epochs[-1]["epoch"]) if epochs else 0
        names = [RECORD, *([record["artifacts"]["patch"]] if record.get("artifacts", {}).get("patch") else [])]
        artifacts = [self.info.folder / name for name in names if (self.info.folder / name).is_file()]
        for name, tracker in list(self.active.items()):
            with self._guard(tracker):
                for row in epochs:
                    if row["epoch"] > self.state[name]["last_epoch"]:
                        self._log(name, tracker, row)
                tracker.finish(final_scalars(record), step,
                               {"bitfit.record": record["digest"], "bitfit.status": record["status"]}, artifacts,
                               record["status"] == "finished")
                self.state[name]["record"] = record["digest"]
        self._save()

    def abort(self) -> None:
        """The seed stopped before its record (train.stop_after_epochs, an error, a kill): its runs are marked so
        and continued by the next run of the seed."""
        for tracker in list(self.active.values()):
            with self._guard(tracker):
                tracker.abort()


def read_state(path: Path) -> dict:
    """The seed's trackers.json; {} when absent or unreadable (the trackers then start new runs)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def run_info(config: dict, seed: int, folder: Path, fingerprints: dict, git_sha: str | None) -> RunInfo:
    setting = sealed_setting(config, fingerprints)
    return RunInfo(folder, Path(config["runs_dir"]).expanduser(), f"{setting['dir']}/seed{seed}",
                   flat_params(config), tags(setting, seed, fingerprints, git_sha))


@cache
def _git_sha() -> str | None:
    return git_state()["git_sha"]  # once per job: a packed job starts k seeds at once


def start_tracking(cfg, seed: int, folder: Path, fingerprints: dict, n_train: int) -> SeedTracking:
    """The trackers of cfg.train.report_to for one seed of a live run (none: a session that does nothing)."""
    names = list(cfg.train.get("report_to") or [])
    config = OmegaConf.to_container(cfg, resolve=True)
    if not names:
        return SeedTracking([], RunInfo(folder, Path("."), ""), config, n_train)
    return SeedTracking(names, run_info(config, seed, folder, fingerprints, _git_sha()), config, n_train)
