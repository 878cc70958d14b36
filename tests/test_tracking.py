"""Live tracking (train.report_to) and back-fill (bitfit-track): what TensorBoard event files and a real SQLite MLflow
store hold, read back with their own readers, equals the run records: every epoch's scalars at its global step, the
best and chosen epochs, params and tags, once each, also for packed runs and for a seed stopped and resumed; a
tracker that fails changes nothing about training."""

import json
import math
import shutil
import sys

import pytest
from conftest import compose, quick
from safetensors.torch import load_file

from bitfit_exp.config.schema import problems
from bitfit_exp.results.records import setting_key
from bitfit_exp.train.runner import run_job
from bitfit_exp.train.trainer import Stopped

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from bitfit_exp.commands.track import main as bitfit_track  # noqa: E402


@pytest.fixture(autouse=True)
def default_mlflow(monkeypatch):
    """The default store (a SQLite file in the runs dir), whatever the environment running the tests says; no
    tracker left marked broken by an earlier test of this process."""
    from bitfit_exp.train.tracking import session

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(session, "BROKEN", set())


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An empty MLflow SQLite store, its tables made once: MLflow's schema migrations take seconds per new file."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def runs(tmp_path, empty_store):
    """A runs dir whose default MLflow store (runs/mlflow.db) is a copy of `empty_store`."""
    (tmp_path / "runs").mkdir()
    shutil.copy(empty_store, tmp_path / "runs" / "mlflow.db")
    return tmp_path / "runs"


def train(tiny_bert_dir, runs, *extra):
    (records,) = run_job(compose(*quick(tiny_bert_dir, runs, *extra)))
    return {r["seed"]: r for r in records}


def seed_folder(runs, record):
    return runs / record["setting"]["dir"] / f"seed{record['seed']}"


def expected(record) -> dict[str, list[tuple[int, float]]]:
    """Each scalar's (step, value) series, written out from the record's own fields."""
    cfg = record["config"]
    per_epoch = math.ceil(record["sizes"]["train"] / cfg["train"]["batch_size"])
    out = {}

    def add(tag, step, value):
        out.setdefault(tag, []).append((step, value))

    for row in record["epochs"]:
        step = row["epoch"] * per_epoch
        add("train/loss", step, row["train_loss"])
        add("train/epoch", step, row["epoch"])
        add("train/lr", step, cfg["optim"]["lr"])  # constant: no warmup in these runs
        add("time/train_s", step, row["train_s"])
        add("time/eval_s", step, row["eval_s"])
        for metric, value in row["train"].items():
            add(f"train/probe/{metric}", step, value)
        for split, scores in row["dev"].items():
            for metric, value in scores.items():
                add(f"dev/{split}/{metric}", step, value)
    last = record["epochs"][-1]["epoch"] * per_epoch
    add("best/epoch", last, record["best"]["epoch"])
    for split, scores in record["best"]["dev"].items():
        for metric, value in scores.items():
            add(f"best/dev/{split}/{metric}", last, value)
    main = record["main"]
    add("chosen/epoch", last, record["chosen_epoch"])
    chosen = next(r for r in record["epochs"] if r["epoch"] == record["chosen_epoch"])
    add(f"chosen/{main['split']}/{main['metric']}", last, chosen["dev"][main["split"]][main["metric"]])
    return out


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_tensorboard_matches(runs, record, times=True):
    found, want = tensorboard_scalars(seed_folder(runs, record)), expected(record)
    assert found.keys() == want.keys()
    for tag, series in want.items():  # event files hold float32
        if tag.startswith("time/") and not times:
            assert [s for s, _ in found[tag]] == [s for s, _ in series], tag
            continue
        assert [s for s, _ in found[tag]] == [s for s, _ in series], tag
        assert [v for _, v in found[tag]] == pytest.approx([v for _, v in series], rel=1e-6), tag


def mlflow_runs(runs, record=None):
    client = MlflowClient(f"sqlite:///{runs}/mlflow.db")
    experiment = client.get_experiment_by_name("bitfit-exp")
    where = "" if record is None else (f"tags.`bitfit.setting` = '{record['setting']['hash']}' and "
                                       f"tags.`bitfit.seed` = '{record['seed']}'")
    return client, client.search_runs([experiment.experiment_id], where)


def assert_mlflow_matches(runs, record, times=True):
    client, found = mlflow_runs(runs, record)
    assert len(found) == 1  # one run per setting and seed
    run = found[0]
    assert run.info.status == "FINISHED"
    for tag, series in expected(record).items():  # doubles: exact
        if tag.startswith("time/") and not times:
            continue
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag))
        assert history == [(s, float(v)) for s, v in series], tag
    tags, params = run.data.tags, run.data.params
    assert tags["bitfit.setting"] == record["setting"]["hash"] and tags["bitfit.seed"] == str(record["seed"])
    assert tags["bitfit.record"] == record["digest"] and tags["bitfit.method"] == record["setting"]["method"]
    assert tags["bitfit.git_sha"] == str(record["env"]["git_sha"])
    assert tags["bitfit.model_fingerprint"] == record["fingerprints"]["model"]
    assert params["optim.lr"] == str(record["config"]["optim"]["lr"])
    assert params["train.epochs"] == str(record["config"]["train"]["epochs"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"record.json", "patch.safetensors"}
    return run


def test_one_by_one_run_is_logged_to_tensorboard_and_mlflow_as_its_records(tmp_path, tiny_bert_dir, glue_dir):
    runs = tmp_path / "runs"
    records = train(tiny_bert_dir, runs, "seeds=[0,1]", "train.report_to=[tensorboard,mlflow]")
    for record in records.values():
        assert_tensorboard_matches(runs, record)
        assert_mlflow_matches(runs, record)
    assert len(mlflow_runs(runs)[1]) == 2
    assert len(list((runs / "mlartifacts").glob("*/artifacts/record.json"))) == 2  # beside the store, not ./mlruns


def test_packed_run_logs_every_member_as_its_own_run(runs, tiny_bert_dir, glue_dir):
    records = train(tiny_bert_dir, runs, "seeds=[0,1]", "train.packed=true", "train.report_to=[tensorboard,mlflow]")
    assert all(r["packed"]["settings"] == 2 for r in records.values())
    for record in records.values():
        assert_tensorboard_matches(runs, record)
        assert_mlflow_matches(runs, record)
    assert len({r.info.run_id for r in mlflow_runs(runs)[1]}) == 2


@pytest.mark.parametrize("packed", [False, True])
def test_a_stopped_and_resumed_seed_continues_its_runs_without_duplicate_epochs(packed, runs, tiny_bert_dir,
                                                                                  glue_dir):
    args = ["train.epochs=3", "train.report_to=[tensorboard,mlflow]",
                                     f"train.packed={str(packed).lower()}"]
    with pytest.raises(Stopped):
        train(tiny_bert_dir, runs, *args, "train.stop_after_epochs=1")
    (state,) = runs.glob("**/seed0/trackers.json")
    first = json.loads(state.read_text())
    assert first["tensorboard"]["last_epoch"] == first["mlflow"]["last_epoch"] == 1
    client, (cut,) = mlflow_runs(runs)
    assert cut.info.status == "KILLED" and len(client.get_metric_history(cut.info.run_id, "train/loss")) == 1
    assert [tag for tag in tensorboard_scalars(state.parent) if tag.startswith("train/")]  # epoch 1 is on disk

    record = train(tiny_bert_dir, runs, *args)[0]
    assert record["resumed_after_epoch"] == 1 and len(record["epochs"]) == 3
    assert json.loads(state.read_text())["mlflow"]["run"] == first["mlflow"]["run"]  # the same run, continued
    assert assert_mlflow_matches(runs, record).info.run_id == first["mlflow"]["run"]
    assert_tensorboard_matches(runs, record)  # every step once: nothing logged twice


class Killed(BaseException):
    """A kill: nothing after it runs, no tracker is closed."""


def test_a_seed_killed_between_logging_an_epoch_and_noting_it_resumes_without_duplicates(runs, tiny_bert_dir,
                                                                                      glue_dir, monkeypatch):
    from bitfit_exp.train.tracking.session import SeedTracking

    save = SeedTracking._save

    def save_or_die(self):
        if self.state["mlflow"]["last_epoch"] == 2:  # epoch 2 is in both stores, not yet in trackers.json
            raise Killed
        save(self)

    args = ["train.epochs=3", "train.report_to=[tensorboard,mlflow]"]
    with monkeypatch.context() as m:
        m.setattr(SeedTracking, "_save", save_or_die)
        m.setattr(SeedTracking, "abort", lambda self: None)
        with pytest.raises(Killed):
            train(tiny_bert_dir, runs, *args)
    (state,) = runs.glob("**/seed0/trackers.json")
    assert json.loads(state.read_text())["mlflow"]["last_epoch"] == 1
    assert max(step for step, _ in tensorboard_scalars(state.parent)["train/epoch"]) > \
        min(step for step, _ in tensorboard_scalars(state.parent)["train/epoch"])  # epoch 2 was logged
    record = train(tiny_bert_dir, runs, *args)[0]
    assert record["resumed_after_epoch"] == 1  # epoch 2 trained again, from the epoch-1 checkpoint
    # Epoch 2 once in MLflow (its store said it had it), with the killed run's times: the retrained epoch's
    # numbers are the same (exact resume), its wall-clock times are not, and a logged point cannot be replaced.
    assert_mlflow_matches(runs, record, times=False)
    assert_tensorboard_matches(runs, record)  # and once in TensorBoard (purged from the killed run's events)


def test_overwrite_starts_a_new_run_and_tensorboard_shows_only_the_new_one(runs, tiny_bert_dir, glue_dir):
    args = ["train.epochs=1", "train.report_to=[tensorboard,mlflow]"]
    old = train(tiny_bert_dir, runs, *args)[0]
    new = train(tiny_bert_dir, runs, *args, "overwrite=true")[0]
    assert new["digest"] != old["digest"] and new["setting"]["hash"] == old["setting"]["hash"]
    assert_tensorboard_matches(runs, new)
    client, found = mlflow_runs(runs, new)
    assert sorted(r.data.tags["bitfit.record"] for r in found) == sorted([old["digest"], new["digest"]])


def test_failing_trackers_warn_once_and_change_nothing(tmp_path, tiny_bert_dir, glue_dir, monkeypatch, capsys):
    plain = train(tiny_bert_dir, tmp_path / "plain", "seeds=[0,1]")
    runs = tmp_path / "tracked"
    key = setting_key(plain[0]["config"], plain[0]["fingerprints"])
    (runs / key["dir"] / "seed0").mkdir(parents=True)
    (runs / key["dir"] / "seed0" / "tb").write_text("a file where the event folder goes")  # unwritable tb dir
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    capsys.readouterr()
    tracked = train(tiny_bert_dir, runs, "seeds=[0,1]", "train.report_to=[tensorboard,mlflow]")
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    (mlflow,) = [w for w in warnings if w.startswith("warning: mlflow tracking failed")]  # once for the job
    assert "cannot reach http://127.0.0.1:9" in mlflow and "for this job" in mlflow
    assert "Fix: set MLFLOW_TRACKING_URI (now http://127.0.0.1:9)" in mlflow
    assert "`bitfit-track RUNS_DIR --to mlflow` logs the records afterwards" in mlflow
    (tb,) = [w for w in warnings if w.startswith("warning: tensorboard tracking failed")]  # seed 0 only
    assert f"Fix: make {runs / key['dir'] / 'seed0' / 'tb'} a writable folder" in tb
    assert len(warnings) == 2
    assert "Traceback" not in err
    assert (runs / key["dir"] / "seed1" / "tb").is_dir()  # seed 1's TensorBoard still works
    for seed in (0, 1):  # bit-identical training: every number of every epoch, and the patch
        a, b = plain[seed], tracked[seed]
        drop_times = [{k: v for k, v in row.items() if not k.endswith("_s")} for row in a["epochs"]]
        assert drop_times == [{k: v for k, v in row.items() if not k.endswith("_s")} for row in b["epochs"]]
        assert a["setting"]["hash"] == b["setting"]["hash"] and a["chosen_epoch"] == b["chosen_epoch"]
        pa = load_file(seed_folder(tmp_path / "plain", a) / "patch.safetensors")
        pb = load_file(seed_folder(runs, b) / "patch.safetensors")
        assert pa.keys() == pb.keys() and all((pa[k] == pb[k]).all() for k in pa)
        assert (seed_folder(runs, b) / "record.json").is_file()


def test_a_tracker_whose_import_fails_at_run_time_is_dropped_with_one_warning(tmp_path, tiny_bert_dir, glue_dir,
                                                                              monkeypatch, capsys):
    import mlflow  # noqa: F401 - installed, so the config check passes; its client then fails to import

    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    capsys.readouterr()
    records = train(tiny_bert_dir, tmp_path / "runs", "train.report_to=[mlflow,tensorboard]")
    err = capsys.readouterr().err
    assert err.count("warning: mlflow tracking failed") == 1 and "ModuleNotFoundError: import of mlflow.tracking" in err
    assert "Fix: pip install 'bitfit-exp[tracking]' (its import failed)" in err
    assert_tensorboard_matches(tmp_path / "runs", records[0])
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_report_to_is_checked_before_anything_runs_and_stays_out_of_the_setting_hash(monkeypatch, tmp_path):
    from bitfit_exp.config.compose import check_command_line
    from bitfit_exp.core.errors import UserError

    base = ["task=rte", "runs_dir=/nonexistent"]
    assert problems(compose(*base, "train.report_to=[tensorboard,mlflow,wandb]")) == []
    (line,) = problems(compose(*base, "train.report_to=[tensorbord]"))
    assert "tensorbord" in line and "tensorboard, mlflow, wandb" in line
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    assert problems(compose(*base, "train.report_to=[mlflow]")) == [
        "train.report_to: mlflow is not installed (pip install 'bitfit-exp[tracking]')"]
    with pytest.raises(UserError) as error:  # bitfit-run's check: before Hydra creates anything
        check_command_line(["task=rte", f"runs_dir={tmp_path / 'runs'}", "train.report_to=[tensorboard,mlflow]"])
    assert str(error.value) == "train.report_to: mlflow is not installed (pip install 'bitfit-exp[tracking]')"
    assert not (tmp_path / "runs").exists()
    from omegaconf import OmegaConf

    def key(*extra):
        return setting_key(OmegaConf.to_container(compose(*base, *extra), resolve=True), None)["hash"]

    assert key() == key("train.report_to=[tensorboard,mlflow]")


def test_backfill_logs_each_record_once_and_skips_corrupt_ones(runs, tiny_bert_dir, glue_dir, capsys):
    records = train(tiny_bert_dir, runs, "seeds=[0,1]")
    assert not list(runs.glob("**/trackers.json")) and not list(runs.glob("**/tb"))  # report_to=[]: nothing
    bad = seed_folder(runs, records[0]).parent / "seed7"
    bad.mkdir()
    (bad / "record.json").write_text('{"status": "finished", "seed": 7')  # cut short
    for to in ("mlflow", "tensorboard"):
        assert bitfit_track([str(runs), "--to", to]) == 0
        out, err = capsys.readouterr()
        assert f"{to}: 2 runs logged, 0 already there, 1 records skipped" in out
        assert "seed7/record.json" in err and "Traceback" not in err
        assert bitfit_track([str(runs), "--to", to]) == 0  # again: nothing new
        assert f"{to}: 0 runs logged, 2 already there" in capsys.readouterr()[0]
    events = sorted(runs.glob("**/tb/events.*"))
    for record in records.values():
        assert_mlflow_matches(runs, record)
        assert_tensorboard_matches(runs, record)
    assert len(mlflow_runs(runs)[1]) == 2
    (state,) = [p for p in runs.glob("**/seed0/trackers.json")]
    state.unlink()  # even without the seed's note, the store itself says the run is there
    assert bitfit_track([str(runs), "--to", "mlflow"]) == 0
    assert "mlflow: 0 runs logged, 2 already there" in capsys.readouterr()[0]
    assert len(mlflow_runs(runs)[1]) == 2 and sorted(runs.glob("**/tb/events.*")) == events


def test_backfill_after_a_live_run_adds_nothing_and_bad_input_is_one_line(tmp_path, runs, tiny_bert_dir, glue_dir,
                                                                          capsys, monkeypatch):
    train(tiny_bert_dir, runs, "train.report_to=[mlflow]")
    capsys.readouterr()
    assert bitfit_track([str(runs), "--to", "mlflow"]) == 0
    assert "mlflow: 0 runs logged, 1 already there" in capsys.readouterr()[0]
    assert len(mlflow_runs(runs)[1]) == 1
    with pytest.raises(SystemExit) as exit_:
        bitfit_track([str(tmp_path / "missing"), "--to", "mlflow"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'missing'}: not a folder (give the runs dir that bitfit-run wrote)"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as exit_:
        bitfit_track([str(runs), "--to", "mlflow"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: mlflow: ConnectionError: cannot reach http://127.0.0.1:9 (Connection refused); set "
        "MLFLOW_TRACKING_URI (now http://127.0.0.1:9) to a reachable server or a writable sqlite:/// file"]


def test_wandb_offline_run_is_written_in_the_seed_folder(tmp_path, tiny_bert_dir, glue_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    record = train(tiny_bert_dir, tmp_path / "runs", "train.report_to=[wandb]")[0]
    folder = seed_folder(tmp_path / "runs", record)
    run_id = json.loads((folder / "trackers.json").read_text())["wandb"]["run"]
    (written,) = folder.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    # W&B 0.31 ships no reader for its offline files; its history rows hold each value as JSON text.
    blob = written.read_bytes()
    for row in record["epochs"]:
        assert json.dumps(row["train_loss"]).encode() in blob
    assert b"dev/validation/accuracy" in blob and record["setting"]["hash"].encode() in blob


@pytest.mark.slow  # two bitfit-run processes, one killed with SIGKILL
def test_a_seed_killed_by_sigkill_after_epoch_1_resumes_its_runs(runs, tiny_bert_dir, glue_dir):
    import os
    import signal
    import subprocess
    import time

    args = quick(tiny_bert_dir, runs, "train.epochs=40", "train.report_to=[tensorboard,mlflow]")
    command = [sys.executable, "-c", "from bitfit_exp.commands.run import run; run()", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        state = next(runs.glob("**/seed0/trackers.json"), None)
        if state is not None and json.loads(state.read_text()).get("mlflow", {}).get("last_epoch", 0) >= 1:
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not list(runs.glob("**/record.json"))  # killed mid-training
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "warning" not in again.stderr
    (record,) = [json.loads(p.read_text()) for p in runs.glob("**/seed0/record.json")]
    # An epoch the killed job logged but did not checkpoint is trained again, to the same numbers (exact resume);
    # the trackers keep its first times.
    assert_mlflow_matches(runs, record, times=False)
    assert_tensorboard_matches(runs, record, times=False)
