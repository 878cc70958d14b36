"""Back-fill: turn existing run records into tracker runs (`bitfit-track RUNS_DIR --to mlflow|tensorboard`).

Idempotent: a run is keyed by its setting hash and seed (and the record it shows), so a second call adds nothing. A
seed whose live run was cut short continues that run; corrupt records are reported and skipped, as the tables do.

>>> import tempfile
>>> backfill(tempfile.mkdtemp(), "tensorboard")
Backfill(logged=0, already=0, failed=0, warnings=[])
"""

from dataclasses import dataclass, field
from pathlib import Path

from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.results.records import scan
from bitfit_exp.train.tracking import TRACKERS, not_installed
from bitfit_exp.train.tracking.base import EXTRA
from bitfit_exp.train.tracking.session import STATE, SeedTracking, read_state, run_info


@dataclass
class Backfill:
    logged: int = 0  # records turned into runs now
    already: int = 0  # records the tracker already held
    failed: int = 0
    warnings: list[str] = field(default_factory=list)  # records skipped (corrupt, unfinished)


def backfill(runs_dir, to: str) -> Backfill:
    """Log every done record under `runs_dir` to tracker `to` that it does not hold yet."""
    if to not in TRACKERS:
        raise UserError(f"--to {to}: not a tracker; choose one of {', '.join(TRACKERS)}")
    if missing := not_installed([to]):
        raise UserError(missing[0])
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (give the runs dir that bitfit-run wrote)")
    found, warnings = scan(root)
    out = Backfill(warnings=warnings)
    for path, record in found:
        folder = path.parent
        config = {**record["config"], "runs_dir": str(root)}  # the runs dir as found now (it may have moved)
        info = run_info(config, record["seed"], folder, record["fingerprints"], record["env"].get("git_sha"))
        tracker = TRACKERS[to](info)
        entry = read_state(folder / STATE).get(to)
        if entry and not tracker.continues(entry):  # logged to another store: this one may not have it
            entry = None
        if entry and entry.get("record") == record["digest"]:
            out.already += 1
            continue
        try:
            if not (entry and not entry.get("record")) and tracker.find_finished(record["digest"]):
                out.already += 1
                continue
        except Exception as e:  # noqa: BLE001 - the store cannot be read: one line, as any tracker failure here
            fix = f"pip install '{EXTRA}' (its import failed)" if isinstance(e, ImportError) else tracker.fix
            raise UserError(f"{to}: {first_line(e)}; {fix}") from None
        SeedTracking([to], info, config, record["sizes"]["train"], strict=True).finish(record)
        out.logged += 1
    return out
