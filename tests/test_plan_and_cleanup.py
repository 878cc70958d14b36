"""A plan in seconds that never reads "no work" where it cannot tell, and writes that survive a power cut:
`bitfit-plan` says GPU-hours are unknown, and why, without records of a job's model and mode; checking a sweep's
configs resolves each interpolation once per pass, not at every access, and a large sweep is checked by forked
processes with the same result (configs and errors) as in turn; an atomic write fsyncs its folder after the rename
(and each folder it creates). The SLURM cluster's cleanup is checked by tests/test_slurm.py's fixture."""

import errno
import os
import stat

import pytest
from conftest import compose
from omegaconf import OmegaConf

from bitfit_exp.commands import plan as plan_command
from bitfit_exp.config import compose as compose_module
from bitfit_exp.config.compose import valid_jobs
from bitfit_exp.config.schema import normalize, problems
from bitfit_exp.core import atomic
from bitfit_exp.results.records import seal, seed_dir, write_json_atomic

SMOKE = ["+experiment=smoke"]  # MiniLM, rte and mrpc x full and bitfit x 2 lrs: 8 jobs of 2 seeds


def write_record(runs_dir, *overrides: str, samples_per_s=0.1, train_s=100.0, eval_s=10.0):
    """A finished record with timings for seed 0 of the one job of `overrides` (not one of the smoke sweep's)."""
    ((_, cfg),) = valid_jobs([*SMOKE, f"runs_dir={runs_dir}", *overrides])
    row = {"epoch": 1, "dev": {"validation": {"accuracy": 0.5}}}
    record = seal({"status": "finished", "seed": 0, "config": OmegaConf.to_container(cfg, resolve=True),
                   "epochs": [row], "best": row, "last": row,
                   "main": {"split": "validation", "metric": "accuracy", "select": "best"},
                   "fingerprints": {"model": "m", "data": {"digest": "d", "splits": {}}},
                   "timings": {"train_samples_per_s": samples_per_s, "train_s": train_s, "eval_s": eval_s}})
    write_json_atomic(seed_dir(runs_dir, record["setting"], 0) / "record.json", record)


def plan_lines(capsys, *args: str) -> list[str]:
    """What `bitfit-plan ARGS` prints: a header, a row per job, the summary line."""
    assert plan_command.main([*args]) == 0
    return capsys.readouterr().out.splitlines()


# --- the estimate -------------------------------------------------------------------------------------------------


def test_a_plan_says_unknown_and_why_until_records_of_the_model_and_mode_give_the_estimate(tmp_path, capsys):
    lines = plan_lines(capsys, *SMOKE, f"runs_dir={tmp_path}")
    rows, last = lines[1:-1], lines[-1]
    assert len(rows) == 8 and all(row.split()[-1] == "unknown" for row in rows)
    assert last == (f"8 jobs: 0 complete, 8 to run; GPU-hours unknown: no records of minilm (not packed) in {tmp_path} "
                    "yet to measure throughput from")
    assert "0.0" not in last and "?" not in "".join(lines)

    write_record(tmp_path, "task=rte", "method=full", "lr_index=1")  # not a setting of the sweep
    lines = plan_lines(capsys, *SMOKE, f"runs_dir={tmp_path}")
    # Each job: 64 training rows x 2 epochs x 2 seeds at 0.1 rows/s, plus evaluation at 10 s per 100 s of training.
    hours = 64 * 2 * 2 / 0.1 * 1.1 / 3600
    assert [row.split()[-1] for row in lines[1:-1]] == [f"{hours:.2f}"] * 8
    assert lines[-1] == f"8 jobs: 0 complete, 8 to run; estimated {8 * hours:.1f} GPU-hours"


def test_jobs_of_a_mode_without_records_are_unknown_beside_the_estimate_of_the_others(tmp_path, capsys):
    write_record(tmp_path, "task=rte", "method=full", "lr_index=1")  # one at a time; bitfit below is packed
    lines = plan_lines(capsys, *SMOKE, f"runs_dir={tmp_path}", "train.packed=true")
    rows = {(row.split()[2], row.split()[3], row.split()[4]): row for row in lines[1:-1]}
    hours = 64 * 2 * 2 / 0.1 * 1.1 / 3600
    assert [row.split()[-1] for (_, method, _), row in rows.items() if method == "full"] == [f"{hours:.2f}"] * 4
    assert all(row.endswith("unknown  packed") for (_, method, _), row in rows.items() if method == "bitfit")
    assert lines[-1] == (f"8 jobs: 0 complete, 8 to run; GPU-hours: {4 * hours:.1f} for 4 jobs, unknown for 4: no "
                         f"records of minilm (packed) in {tmp_path} yet to measure throughput from")


# --- checking a sweep's configs -----------------------------------------------------------------------------------


def test_checking_and_normalizing_a_config_resolves_each_interpolation_once_per_pass(tmp_path):
    calls = []
    OmegaConf.register_new_resolver("h3_counted", lambda: calls.append(1) or 3e-4, replace=True)
    cfg = compose(f"runs_dir={tmp_path}", "optim.lr=${h3_counted:}")
    assert problems(cfg) == []
    normalize(cfg)  # train.claim_timeout_s: 900 is respelled 900.0, before the interpolations are read
    # The walk key by key resolved optim.lr at each `in` and each read, in the check and in both normalize passes.
    assert len(calls) == 2 and cfg.optim.lr == 3e-4 and OmegaConf.is_interpolation(cfg.optim, "lr")
    assert cfg.train.claim_timeout_s == 900.0 and isinstance(cfg.train.claim_timeout_s, float)


def pid_and_config(job: list[str], cfg) -> tuple[int, str]:
    """valid_jobs' `then` for the test below: where the job was checked, and its config as checked."""
    return os.getpid(), OmegaConf.to_yaml(cfg)


def outcome(*args, **kwargs):
    """What valid_jobs returns, or the type and message of what it raises."""
    try:
        return valid_jobs(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - compared, whatever it is
        return type(e).__name__, str(e)


def test_a_large_sweep_is_checked_by_forked_processes_as_in_turn(tmp_path, monkeypatch):
    monkeypatch.setattr(compose_module, "cpus_allowed", lambda: 2)
    sweep = ["+experiment=table3", f"runs_dir={tmp_path}", "task=rte,cola"]  # 64 jobs: 2 processes of 32
    bad = [[*sweep, "lr_index=0,1,2,3,4"], [*sweep[:2], "task=rte,nope"]]  # a bad value; a config Hydra lacks
    forked = [outcome(sweep, then=pid_and_config), *(outcome(b) for b in bad)]
    monkeypatch.setattr(compose_module, "JOBS_PER_PROCESS", 10**9)
    in_turn = [outcome(sweep, then=pid_and_config), *(outcome(b) for b in bad)]
    assert len({pid for _, (pid, _) in forked[0]} - {os.getpid()}) == 2
    assert {pid for _, (pid, _) in in_turn[0]} == {os.getpid()}
    assert [(job, cfg) for job, (_, cfg) in forked[0]] == [(job, cfg) for job, (_, cfg) in in_turn[0]]
    assert forked[1:] == in_turn[1:] and forked[1][0] == "ConfigError" and "task/nope" in forked[2][1]


# --- atomic writes ------------------------------------------------------------------------------------------------


def record_syncs(monkeypatch) -> list:
    """Make os.fsync and os.replace log what they are called with: ("file"/"folder", inode) and ("replace", path)."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("folder" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    return events


def test_an_atomic_write_fsyncs_its_folder_after_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "seed0" / "record.json"
    path.parent.mkdir()
    events = record_syncs(monkeypatch)
    atomic.write_atomic(path, lambda f: f.write(b"{}"))
    assert [kind for kind, _ in events] == ["file", "replace", "folder"]
    assert events[1] == ("replace", str(path)) and events[2][1] == path.parent.stat().st_ino


def test_folders_an_atomic_write_creates_are_fsynced_into_their_parents(tmp_path, monkeypatch):
    paths = [tmp_path / "lr0.001-abc" / f"seed{i}" / "checkpoint.pt" for i in range(2)]
    events = record_syncs(monkeypatch)
    atomic.commit([(atomic.stage(p, lambda f: f.write(b"x")), p) for p in paths])
    folders = [ino for kind, ino in events if kind == "folder"]
    # The setting's and each seed's folder into their parents when created; each seed's folder after its rename.
    created = [tmp_path, tmp_path / "lr0.001-abc", tmp_path / "lr0.001-abc"]
    assert folders == [p.stat().st_ino for p in created] + [p.parent.stat().st_ino for p in paths]
    assert [kind for kind, _ in events][-4:] == ["replace", "replace", "folder", "folder"]


@pytest.mark.parametrize("failure", ["open", "fsync"])
def test_a_folder_that_cannot_be_fsynced_still_gets_the_file(tmp_path, monkeypatch, failure):
    real_open, real_fsync, refused = os.open, os.fsync, []

    def open_(path, flags, *args, **kwargs):
        if os.path.isdir(path):  # Windows and some file systems: a folder cannot be opened
            refused.append(path)
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):  # others open it but cannot fsync it
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(atomic.os, *(("open", open_) if failure == "open" else ("fsync", fsync)))
    path = tmp_path / "new" / "record.json"
    atomic.write_atomic(path, lambda f: f.write(b"done"))
    assert len(refused) == 2  # tried: tmp_path when "new" was made in it, "new" after the rename
    assert path.read_bytes() == b"done" and [p.name for p in path.parent.iterdir()] == ["record.json"]
