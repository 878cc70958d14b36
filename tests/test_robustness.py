"""Runs are never stuck and never doubled: exactly one job takes over a stale claim, unusable checkpoints and
leftover temporary files do not block a rerun, a full disk is one line and leaves no partial file, and a diverged
setting is a result (recorded where and why) that does not disturb the settings packed with it."""

import errno
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import compose, quick, save_tiny
from omegaconf import OmegaConf

from bitfit_exp.core.errors import UserError
from bitfit_exp.kinds.metrics import compute_metrics
from bitfit_exp.model.fingerprint import of_config
from bitfit_exp.results.records import seed_dir, setting_key, write_json_atomic
from bitfit_exp.train.claims import Claim

HOST = os.uname().nodename


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def write_claim(folder, pid, name="claim.json", **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps({"host": HOST, "pid": pid, "slurm_job_id": None, "since": 0, **extra}))


# --- claims ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


def test_exactly_one_of_many_threads_takes_over_a_stale_claim(tmp_path, no_slurm):
    # Before the takeover lock, 8 threads racing for one dead job's claim gave two or more holders in about half
    # of these trials.
    dead, threads = dead_pid(), 8
    for trial in range(300):
        folder = tmp_path / f"trial{trial}"
        write_claim(folder, dead)
        claims, results = [Claim(folder, 900) for _ in range(threads)], [None] * threads
        start = threading.Barrier(threads)

        def take(i, claims=claims, results=results, start=start):
            start.wait()
            results[i] = claims[i].acquire()

        workers = [threading.Thread(target=take, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        winners = [c for c, r in zip(claims, results, strict=True) if r is None]
        assert len(winners) == 1, f"trial {trial}: {len(winners)} holders"
        assert json.loads((folder / "claim.json").read_text())["token"] == winners[0].token
        assert all(r["token"] == winners[0].token for r in results if r is not None)  # losers name the winner
        assert sorted(p.name for p in folder.iterdir()) == ["claim.json"]  # no lock or temporary file left


def _race(folders, start, done, out):
    wins = []
    for folder in folders:
        start.wait()
        wins.append(Claim(folder, 900).acquire() is None)
        done.wait()  # winners stay alive (their claim live) until every process has tried
    out.put((os.getpid(), wins))


def test_exactly_one_of_several_processes_takes_over_a_stale_claim(tmp_path, no_slurm):
    dead, procs, trials = dead_pid(), 4, 60
    folders = [tmp_path / f"trial{t}" for t in range(trials)]
    for folder in folders:
        write_claim(folder, dead)
    ctx = multiprocessing.get_context("fork")
    start, done, out = ctx.Barrier(procs), ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_race, args=(folders, start, done, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    wins = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
    assert [sum(w[1][t] for w in wins) for t in range(trials)] == [1] * trials
    for folder, t in zip(folders, range(trials), strict=True):
        winner = next(pid for pid, w in wins if w[t])
        assert json.loads((folder / "claim.json").read_text())["pid"] == winner


def test_live_claims_are_kept_and_only_their_owner_beats_or_releases_them(tmp_path, no_slurm):
    first, second = Claim(tmp_path, 900), Claim(tmp_path, 900)
    assert first.acquire() is None
    holder = second.acquire()
    assert holder["pid"] == os.getpid() and holder["token"] == first.token  # alive, same host: live
    second.release()
    assert (tmp_path / "claim.json").exists()

    os.utime(tmp_path / "claim.json", (0, 0))
    first.beat(every_s=0)
    assert time.time() - (tmp_path / "claim.json").stat().st_mtime < 60  # heartbeat refreshed

    os.utime(tmp_path / "claim.json", (0, 0))  # heartbeat 1970: older than any timeout
    assert second.acquire() is None
    os.utime(tmp_path / "claim.json", (1000, 1000))
    first.beat(every_s=0)
    first.release()  # taken over: the first job neither refreshes nor removes the second's claim
    assert json.loads((tmp_path / "claim.json").read_text())["token"] == second.token
    assert (tmp_path / "claim.json").stat().st_mtime == 1000
    second.release()
    assert not (tmp_path / "claim.json").exists()


def test_garbage_claims_and_dead_takeover_locks_do_not_block(tmp_path, no_slurm, monkeypatch):
    (tmp_path / "claim.json").write_text("{not json")
    write_claim(tmp_path, dead_pid(), name="claim.json.lock")  # left by a job killed inside a takeover
    claim = Claim(tmp_path, 900)
    assert claim.acquire() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["claim.json"]
    claim.release()

    # A live job's takeover in progress is waited for; if it never ends, that job is reported as the holder.
    monkeypatch.setattr("bitfit_exp.train.claims.TAKEOVER_WAIT_S", 0.3)
    write_claim(tmp_path, dead_pid())
    write_claim(tmp_path, os.getpid(), name="claim.json.lock", token="other")
    t0 = time.time()
    holder = Claim(tmp_path, 900).acquire()
    assert holder["token"] == "other" and 0.3 <= time.time() - t0 < 5
    (tmp_path / "claim.json.lock").unlink()
    assert Claim(tmp_path, 900).acquire() is None


# --- checkpoints and leftovers ----------------------------------------------------------------------------------


def not_ours(path, mode="single"):
    """Files that load but are not a `mode` trainer's checkpoint, or do not load."""
    return {
        "tensor": lambda: torch.save(torch.zeros(3), path),
        "missing keys": lambda: torch.save({"mode": mode, "epoch": 1}, path),
        "garbage dict": lambda: torch.save({"epoch": "two", "trained": [1], "mode": mode}, path),
        "wrong types": lambda: torch.save({"mode": mode, "epoch": 1, "trained": {"x": 1.0}, "optimizer": {},
                                           "schedule": {}, "rng": {}, "epochs": [], "best": None,
                                           "best_state": None, "train_s": 0.0, "eval_s": 0.0, "adam": {},
                                           "order": torch.zeros(1), "dropout": None}, path),
        "cut short": lambda: path.write_bytes(b"PK\x03\x04 cut"),
        "empty": lambda: path.write_bytes(b""),
    }


@pytest.mark.parametrize("kind", list(not_ours(None)))
@pytest.mark.parametrize("mode", ["single", "packed"])
def test_a_checkpoint_that_is_not_ours_is_set_aside_in_one_line(kind, mode, tmp_path, capsys):
    from bitfit_exp.train.checkpoints import read_checkpoint

    path = tmp_path / "checkpoint.pt"
    not_ours(path, mode)[kind]()
    assert read_checkpoint(path, mode) is None
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and lines[0].endswith("starting this seed over")
    (aside,) = tmp_path.glob("checkpoint.pt.bad-*")
    assert not path.exists() and (aside.read_bytes() or kind == "empty")
    assert read_checkpoint(path, mode) is None and capsys.readouterr().out == ""


@pytest.fixture(scope="module")
def no_dropout_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_nodrop"), "bert", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)


def one_seed(cfg, checkpoint=None, heartbeat=lambda: None, seed=0):
    from bitfit_exp.train.runner import Prepared, start_seed
    from bitfit_exp.train.trainer import train_seed

    prepared = Prepared(cfg)
    model, selection, _ = start_seed(cfg, seed, torch.device("cpu"))
    result = train_seed(model, selection, prepared.train, prepared.train_probe, prepared.dev, cfg, seed,
                        torch.device("cpu"), prepared.pad_id, checkpoint, heartbeat)
    return result, model


def test_a_checkpoint_of_another_model_starts_the_seed_over(tmp_path, tiny_bert_dir, glue_dir, capsys):
    from bitfit_exp.train.checkpoints import save_checkpoint

    cfg = compose(*quick(tiny_bert_dir, tmp_path, "optim.lr=0.01"))
    fresh, _ = one_seed(cfg)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, mode="single", epoch=1, trained={"bert.pooler.dense.bias": torch.zeros(7)},
                    optimizer={}, schedule={}, rng=dict.fromkeys(["python", "numpy", "torch", "order"]),
                    epochs=[{"epoch": 1}], best=(1, 0.5), best_state=None, train_s=1.0, eval_s=1.0)
    capsys.readouterr()
    again, _ = one_seed(cfg, checkpoint=path)
    assert "does not fit this model" in capsys.readouterr().out and list(tmp_path.glob("checkpoint.pt.bad-*"))
    assert again.resumed_after is None
    assert [r["train_loss"] for r in again.epochs] == [r["train_loss"] for r in fresh.epochs]


@pytest.mark.parametrize("packed", [False, True])
def test_bad_checkpoints_leftover_temporaries_and_dead_claims_do_not_block_a_rerun(packed, tmp_path, tiny_bert_dir,
                                                                                   glue_dir, no_slurm):
    from bitfit_exp.train.runner import run_job

    cfg = compose(*quick(tiny_bert_dir, tmp_path, f"train.packed={str(packed).lower()}", "train.save_patch=true"))
    fingerprints = of_config(cfg)  # the setting's folder depends on the checkpoint and data it reads
    folder = seed_dir(tmp_path, setting_key(OmegaConf.to_container(cfg, resolve=True), fingerprints), 0)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    leftovers = [".record.json.999999.tmp", ".checkpoint.pt.tmp", ".patch.safetensors.tmp"]
    for name in leftovers:  # a crash or a full disk while writing
        (folder / name).write_bytes(b"half")
    write_claim(folder, dead_pid())
    write_claim(folder, dead_pid(), name="claim.json.lock")

    (records_,) = run_job(cfg)
    assert [r["status"] for r in records_] == ["finished"] and records_[0]["resumed_after_epoch"] is None
    assert json.loads((folder / "record.json").read_text())["epochs"] == records_[0]["epochs"]
    names = sorted(p.name for p in folder.iterdir())
    # The checkpoint and patch temporaries were overwritten and renamed by this run's own writes; another
    # process's record temporary is left alone (nothing reads it).
    assert [n for n in names if not n.startswith("checkpoint.pt.bad-")] == [
        ".record.json.999999.tmp", "RTE.tsv", "patch.safetensors", "record.json"]
    assert len(names) == 5


# --- full disk ----------------------------------------------------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def assert_one_line_no_temp(info, path):
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "no space left on device" in message
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_writing_a_record_is_one_line_and_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "seed0" / "record.json"
    write_json_atomic(path, {"status": "old"})
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UserError) as info:
        write_json_atomic(path, {"status": "new"})
    assert_one_line_no_temp(info, path)
    assert json.loads(path.read_text()) == {"status": "old"}


def test_a_full_disk_while_writing_checkpoints_leaves_none_half_written(tmp_path, monkeypatch):
    from bitfit_exp.train.checkpoints import save_checkpoints

    paths = [tmp_path / f"seed{i}" / "checkpoint.pt" for i in range(3)]
    save_checkpoints({p: {"epoch": 1} for p in paths})
    real_save, calls = torch.save, []

    def fills_up(obj, f, *args, **kwargs):  # the third setting's checkpoint hits the full disk
        calls.append(1)
        if len(calls) == 3:
            f.write(b"partial")
            no_space()
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_up)
    with pytest.raises(UserError) as info:
        save_checkpoints({p: {"epoch": 2} for p in paths})
    assert_one_line_no_temp(info, paths[2])
    for p in paths:  # all still at epoch 1: the pack resumes together
        assert torch.load(p, weights_only=False) == {"epoch": 1}
        assert sorted(q.name for q in p.parent.iterdir()) == ["checkpoint.pt"]


def test_a_full_disk_while_writing_a_patch_is_one_line(tmp_path, tiny_bert_dir, monkeypatch):
    import bitfit_exp.core.atomic as atomic
    from bitfit_exp.model.loading import load_model
    from bitfit_exp.model.methods import select
    from bitfit_exp.model.patch import save_patch, trained_state

    model = load_model(str(tiny_bert_dir), 2)
    selection = select("bitfit", model, torch.Generator().manual_seed(0))
    path = tmp_path / "seed0" / "patch.safetensors"
    monkeypatch.setattr(atomic.os, "fsync", no_space)
    with pytest.raises(UserError) as info:
        save_patch(path, model, selection, trained_state(model, selection), {}, {"seed": 0})
    assert_one_line_no_temp(info, path)
    assert not path.exists()


def test_any_write_error_names_the_os_message(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(UserError, match=r"^cannot write .*record.json: Input/output error; nothing was replaced"):
        write_json_atomic(tmp_path / "record.json", {})
    assert list(tmp_path.iterdir()) == []


# --- divergence -------------------------------------------------------------------------------------------------


def test_non_finite_predictions_score_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nan = compute_metrics(["pearson", "spearman"], [1.0, np.nan, 2.0], [1.0, 2.0, 3.0])
        inf = compute_metrics(["accuracy", "f1", "matthews"], np.array([1.0, np.inf, 0.0]), [1, 0, 0])
        constant = compute_metrics(["pearson", "spearman"], [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert all(np.isnan(v) for v in [*nan.values(), *inf.values()]) and len(nan) == 2 and len(inf) == 3
    assert constant == {"pearson": 0.0, "spearman": 0.0}


def test_records_store_nan_as_null(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"dev": {"spearman": float("nan")}, "x": [np.float32("inf"), 1.5, 2]})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"dev": {"spearman": None}, "x": [None, 1.5, 2]}


def test_a_huge_learning_rate_diverges_into_a_result_not_a_crash(tmp_path, no_dropout_dir, glue_dir):
    cfg = compose(*quick(no_dropout_dir, tmp_path, "task=stsb", "optim.lr=1e30", "train.grad_clip=null"))
    result, _ = one_seed(cfg, checkpoint=tmp_path / "checkpoint.pt")
    assert result.diverged == {"epoch": 1, "reason": "non-finite training loss"}
    assert result.epochs == [] and result.best_epoch is None and result.chosen_epoch is None
    assert result.chosen_state is None and not (tmp_path / "checkpoint.pt").exists()


def corrupt_after(step: int, model):
    """A heartbeat that turns the classifier's bias into NaN at its `step`-th call (calls: one per training step,
    one per epoch end)."""
    calls = []

    def heartbeat():
        calls.append(1)
        if len(calls) == step:
            with torch.no_grad():
                model.classifier.bias.fill_(float("nan"))

    return heartbeat


@pytest.mark.parametrize("select", ["best", "last"])
@pytest.mark.parametrize("call, reason", [(5, "non-finite training loss"),  # first step of epoch 2
                                          (7, "non-finite predictions on validation")])  # after its last step
def test_divergence_keeps_the_finite_epochs_before_it(select, call, reason, tmp_path, no_dropout_dir, glue_dir):
    from bitfit_exp.train.runner import Prepared, start_seed
    from bitfit_exp.train.trainer import train_seed

    cfg = compose(*quick(no_dropout_dir, tmp_path, "train.epochs=3", f"train.select={select}", "optim.lr=0.01"))
    one, _ = one_seed(compose(*quick(no_dropout_dir, tmp_path, "train.epochs=1", "optim.lr=0.01")))
    prepared = Prepared(cfg)  # 24 examples, batch 8: 3 steps an epoch
    model, selection, _ = start_seed(cfg, 0, torch.device("cpu"))
    result = train_seed(model, selection, prepared.train, prepared.train_probe, prepared.dev, cfg, 0,
                        torch.device("cpu"), prepared.pad_id, tmp_path / "checkpoint.pt", corrupt_after(call, model))
    assert result.diverged == {"epoch": 2, "reason": reason}
    assert [r["epoch"] for r in result.epochs] == [1] and result.best_epoch == result.chosen_epoch == 1
    assert result.epochs[0]["dev"] == one.epochs[0]["dev"]
    named = dict(model.named_parameters())
    for name, value in one.chosen_state.items():  # the state after epoch 1, and the model holds it again
        assert torch.equal(result.chosen_state[name], value) and torch.equal(named[name], value)


@pytest.mark.parametrize("clip", ["null", "0.05"])
def test_a_diverging_setting_does_not_disturb_its_pack(clip, tmp_path, no_dropout_dir, glue_dir):
    from bitfit_exp.train.packed import train_packed
    from bitfit_exp.train.runner import Prepared, start_seed

    cfg = compose(*quick(no_dropout_dir, tmp_path, "task=stsb", f"train.grad_clip={clip}", "train.epochs=2",
                         "train.select=last"))
    prepared = Prepared(cfg)

    def pack(seeds, lrs):
        inits = []
        for seed in seeds:
            model, selection, _ = start_seed(cfg, seed, torch.device("cpu"))
            inits.append({n: p.detach().clone() for n, p in model.named_parameters() if n in selection.params})
        return train_packed(model, selection, inits, seeds, lrs, prepared.train, prepared.train_probe,
                            prepared.dev, cfg, torch.device("cpu"), prepared.pad_id)

    with_it, without = pack([0, 1, 2], [0.05, 1e30, 0.01]), pack([0, 2], [0.05, 0.01])
    assert with_it[1].diverged == {"epoch": 1, "reason": "non-finite training loss"}
    assert with_it[1].epochs == [] and with_it[1].chosen_state is None and with_it[1].chosen_epoch is None
    for a, b in zip(without, [with_it[0], with_it[2]], strict=True):
        assert b.diverged is None and [r["epoch"] for r in b.epochs] == [1, 2]
        assert [r["train_loss"] for r in b.epochs] == pytest.approx([r["train_loss"] for r in a.epochs], rel=1e-5)
        for ra, rb in zip(a.epochs, b.epochs, strict=True):
            assert rb["dev"]["validation"] == pytest.approx(ra["dev"]["validation"], rel=1e-4)
        for name in a.chosen_state:
            assert torch.isfinite(b.chosen_state[name]).all()
            torch.testing.assert_close(b.chosen_state[name], a.chosen_state[name], rtol=1e-4, atol=1e-5)


def test_a_diverged_setting_stays_diverged_when_its_pack_resumes(tmp_path, no_dropout_dir, glue_dir):
    from bitfit_exp.train.checkpoints import read_checkpoint
    from bitfit_exp.train.packed import train_packed
    from bitfit_exp.train.runner import Prepared, start_seed
    from bitfit_exp.train.trainer import Stopped

    cfg = compose(*quick(no_dropout_dir, tmp_path, "task=stsb", "train.grad_clip=null", "train.epochs=2"))
    prepared = Prepared(cfg)
    seeds, lrs = [0, 1], [0.05, 1e30]
    paths = [tmp_path / f"seed{s}" / "checkpoint.pt" for s in seeds]

    def pack(resume=None):
        inits = []
        for seed in seeds:
            model, selection, _ = start_seed(cfg, seed, torch.device("cpu"))
            inits.append({n: p.detach().clone() for n, p in model.named_parameters() if n in selection.params})
        return train_packed(model, selection, inits, seeds, lrs, prepared.train, prepared.train_probe,
                            prepared.dev, cfg, torch.device("cpu"), prepared.pad_id, paths, resume=resume)

    whole = pack()
    cfg.train.stop_after_epochs = 1
    with pytest.raises(Stopped):
        pack()
    states = [read_checkpoint(p, "packed") for p in paths]
    assert states[1]["diverged"] == {"epoch": 1, "reason": "non-finite training loss"}
    assert all(torch.isfinite(v).all() for v in states[1]["trained"].values())  # parked, no NaN carried
    cfg.train.stop_after_epochs = None
    resumed = pack(states)
    assert resumed[1].diverged == whole[1].diverged == states[1]["diverged"] and resumed[1].epochs == []
    assert resumed[0].resumed_after == 1 and resumed[0].diverged is None
    assert [r["train_loss"] for r in resumed[0].epochs] == pytest.approx([r["train_loss"] for r in whole[0].epochs],
                                                                           rel=1e-6)
