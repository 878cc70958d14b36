"""One box, many GPUs (train.gpu_lease): each job of a local sweep leases a GPU of its own and sees only it, waits
(saying so) when none is free, and gives it back when it ends or dies; n_jobs defaults to the number of GPUs; the
record names the GPU. All without a GPU: CUDA_VISIBLE_DEVICES lists the ids, as on a box with GPUs 3, 5 and 7."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import quick

from bitfit_exp.core.gpus import CUDA_VAR, LEASE_VAR, POOL_VAR
from bitfit_exp.results.environment import environment
from bitfit_exp.train import gpu_lease
from bitfit_exp.train.gpu_lease import DIR_VAR, GpuLease, gpu_for_job

IDS = ["3", "5", "7"]
RUN = [sys.executable, "-c", "from bitfit_exp.commands.run import run; run()"]

# A job of a real joblib sweep (bitfit-run's config, launcher=local) that runs bitfit-run's lease around a sleep and
# records what it saw: its pid, the GPU it leased, CUDA_VISIBLE_DEVICES inside the lease, and when it held it.
STUB = '''
import json, os, sys, time
from pathlib import Path
import hydra
from bitfit_exp.core.config_dir import conf_dir
from bitfit_exp.train.gpu_lease import gpu_for_job

@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def job(cfg):
    out, name = Path(cfg.runs_dir), f"{cfg.lr_index}-{cfg.seeds[0]}"
    with gpu_for_job(cfg.train.device) as gpu:
        start, seen = time.time(), os.environ.get("CUDA_VISIBLE_DEVICES")
        (out / f"start-{name}.json").write_text(json.dumps({"pid": os.getpid(), "gpu": gpu}))
        time.sleep(float(os.environ["STUB_SLEEP"]))
        end = time.time()
    (out / f"job-{name}.json").write_text(json.dumps({"pid": os.getpid(), "gpu": gpu, "seen": seen, "start": start,
                                                      "end": end}))

job()
'''


@pytest.fixture
def box(tmp_path, monkeypatch):
    """This process as a job of a local sweep on a box whose visible GPUs are 3, 5 and 7, leases under tmp_path."""
    monkeypatch.setenv(CUDA_VAR, ",".join(IDS))
    monkeypatch.setenv(POOL_VAR, "")  # registered, so that the pool gpu_pool() remembers is dropped afterwards
    monkeypatch.delenv(POOL_VAR)
    monkeypatch.delenv(LEASE_VAR, raising=False)
    monkeypatch.setenv(DIR_VAR, str(tmp_path / "leases"))
    monkeypatch.setattr(gpu_lease, "local_sweep_jobs", lambda: 3)
    monkeypatch.setattr(gpu_lease, "_bound", None)
    return tmp_path / "leases"


def env_for(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (POOL_VAR, LEASE_VAR)}
    return {**env, CUDA_VAR: ",".join(IDS), DIR_VAR: str(tmp_path / "leases"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def wait_for(condition, timeout_s: float = 120.0, what: str = ""):
    deadline = time.time() + timeout_s
    while not (value := condition()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def holder_process(folder: Path, ids: list[str], release: bool = False) -> tuple[subprocess.Popen, str]:
    """Another process that leases one of `ids` (and gives it back at once with `release`), then lives on."""
    code = ("import sys, time; from bitfit_exp.train.gpu_lease import GpuLease; "
            f"lease = GpuLease({str(folder)!r}, {ids!r}); gpu = lease.try_acquire(); "
            f"{'lease.release(); ' if release else ''}print(gpu, flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# --- the lease ---------------------------------------------------------------------------------------------------


def test_each_gpu_is_leased_to_one_job_at_a_time(tmp_path):
    leases = [GpuLease(tmp_path, IDS) for _ in range(4)]
    assert [lease.try_acquire() for lease in leases] == ["3", "5", "7", None]
    assert {gpu: h["pid"] for gpu, h in leases[3].holders().items()} == dict.fromkeys(IDS, os.getpid())
    leases[1].release()
    assert leases[3].try_acquire() == "5" and leases[1].gpu is None
    assert GpuLease(tmp_path, IDS).try_acquire() is None
    for lease in leases:
        lease.release()
    assert all(GpuLease(tmp_path, [gpu]).try_acquire() == gpu for gpu in IDS)


def test_a_killed_holder_frees_its_gpu_at_once(tmp_path):
    proc, gpu = holder_process(tmp_path, ["3"])
    try:
        assert gpu == "3"
        mine = GpuLease(tmp_path, ["3"])
        assert mine.try_acquire() is None and mine.holders()["3"]["pid"] == proc.pid
    finally:
        stop(proc)
    assert mine.try_acquire() == "3"  # no timeout, no heartbeat: the kernel dropped the killed process's lock
    mine.release()


def test_a_released_gpu_is_kept_for_its_workers_next_job_while_it_lives(tmp_path, monkeypatch):
    proc, gpu = holder_process(tmp_path, ["3"], release=True)
    try:
        assert gpu == "3"
        assert GpuLease(tmp_path, ["3"]).try_acquire() is None  # free, but its worker's next job will need it
        other = GpuLease(tmp_path, ["3", "5"])
        assert other.try_acquire() == "5"
        other.release()
        monkeypatch.setattr(gpu_lease, "KEEP_S", 0.0)  # kept for a while only: then any job takes it
        late = GpuLease(tmp_path, ["3"])
        assert late.try_acquire() == "3"
        late.release()
    finally:
        stop(proc)


def test_a_job_with_no_free_gpu_waits_saying_so(tmp_path):
    held = GpuLease(tmp_path, ["3"])
    assert held.try_acquire() == "3"
    said, got = [], []
    waiter = threading.Thread(target=lambda: got.append(GpuLease(tmp_path, ["3"]).acquire(said.append, poll_s=0.02)))
    waiter.start()
    wait_for(lambda: said, 30, "the waiting line")
    time.sleep(0.2)
    assert waiter.is_alive() and not got  # waits rather than doubling up
    assert said == [f"gpu: no free GPU (GPU 3: leased by pid {os.getpid()}); waiting"]
    held.release()
    waiter.join(30)
    assert got == ["3"] and len(said) == 1


# --- a job's GPU ---------------------------------------------------------------------------------------------------


def test_a_job_sees_only_its_gpu_and_the_record_names_it(box):
    said = []
    with gpu_for_job("auto", said.append) as gpu:
        assert gpu == "3" and os.environ[CUDA_VAR] == "3" and os.environ[LEASE_VAR] == "3"
        env = environment(torch.device("cpu"))
        assert env["gpu_lease"] == "3" and env["cuda_visible_devices"] == "3"
        assert GpuLease(box, ["3"]).try_acquire() is None
    assert said == ["gpu: leased GPU 3 (CUDA_VISIBLE_DEVICES=3)"]
    assert os.environ[CUDA_VAR] == "3,5,7" and LEASE_VAR not in os.environ
    assert environment(torch.device("cpu"))["gpu_lease"] is None

    with pytest.raises(RuntimeError), gpu_for_job("cuda", said.append):
        raise RuntimeError("the job failed")
    assert os.environ[CUDA_VAR] == "3,5,7"  # given back and restored when the job fails too
    assert GpuLease(box, IDS).try_acquire() == "3"  # kept for this process's next job: this process


def test_a_worker_leases_the_gpu_its_cuda_is_bound_to_again(box):
    with gpu_for_job("auto", print) as first:
        pass
    other = GpuLease(box, [first])
    assert other.try_acquire() == first  # another job holds it now; 5 and 7 are free
    said, got = [], []

    def job():
        with gpu_for_job("auto", said.append) as gpu:
            got.append((gpu, os.environ[CUDA_VAR]))

    worker = threading.Thread(target=job)
    worker.start()
    wait_for(lambda: said, 30, "the waiting line")
    time.sleep(0.6)
    assert worker.is_alive() and not got
    assert said[0].endswith(f"waiting for GPU {first}, the one this worker's CUDA is bound to")
    other.release()
    worker.join(30)
    assert got == [(first, first)]


@pytest.mark.parametrize("device, visible, in_sweep", [
    ("auto", "", True),  # a machine without GPUs (or all hidden)
    ("auto", None, True),  # CUDA_VISIBLE_DEVICES unset, torch counts no GPU
    ("cpu", "3,5,7", True), ("cuda:1", "3,5,7", True),  # the device is the user's choice
    ("auto", "3,5,7", False),  # a single run, or another launcher
])
def test_without_gpus_or_outside_a_local_sweep_nothing_changes(box, monkeypatch, device, visible, in_sweep):
    if visible is None:
        monkeypatch.delenv(CUDA_VAR)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    else:
        monkeypatch.setenv(CUDA_VAR, visible)
    if not in_sweep:
        monkeypatch.setattr(gpu_lease, "local_sweep_jobs", lambda: None)
    before = dict(os.environ)
    said = []
    with gpu_for_job(device, said.append) as gpu:
        assert gpu is None and os.environ.get(CUDA_VAR) == visible and LEASE_VAR not in os.environ
    assert said == [] and not box.exists()
    assert {k: v for k, v in os.environ.items() if k != POOL_VAR} == {k: v for k, v in before.items() if k != POOL_VAR}


def test_n_jobs_defaults_to_the_number_of_visible_gpus(monkeypatch):
    from hydra import compose, initialize_config_dir

    from bitfit_exp.core.config_dir import conf_dir

    def n_jobs(visible: str, *overrides: str) -> int:
        monkeypatch.setenv(CUDA_VAR, visible)
        monkeypatch.setenv(POOL_VAR, "")
        monkeypatch.delenv(POOL_VAR)
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            cfg = compose("config", overrides=["launcher=local", *overrides], return_hydra_config=True)
        return cfg.hydra.launcher.n_jobs

    assert n_jobs("0,1,2,3,4,5,6,7") == 8 and n_jobs("3,5,7") == 3
    assert n_jobs("") == 2  # no GPU: the default of before
    assert n_jobs("3,5,7", "hydra.launcher.n_jobs=1") == 1


# --- real sweeps -------------------------------------------------------------------------------------------------


def stub_sweep(tmp_path: Path, name: str, sleep_s: float, *overrides: str) -> tuple[subprocess.Popen, Path, Path]:
    """A local sweep of the stub job (launcher=local, n_jobs by default) under tmp_path/name, started."""
    script, runs, log = tmp_path / "stub.py", tmp_path / name, tmp_path / f"{name}.log"
    script.write_text(STUB)
    runs.mkdir()
    args = ["launcher=local", f"runs_dir={runs}", f"hydra.sweep.dir={tmp_path / name}-sweep", *overrides, "--multirun"]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env_for(tmp_path, STUB_SLEEP=str(sleep_s)))
    return proc, runs, log


def test_a_local_sweep_spreads_its_jobs_over_the_gpus(tmp_path):
    # A job of another sweep holds GPU 3 when this sweep of 6 jobs starts, and is killed mid-run.
    other, other_runs, _ = stub_sweep(tmp_path, "other", 300, "lr_index=9", "seeds=[0]")
    started = [other]
    try:
        holder = json.loads(wait_for(lambda: next(other_runs.glob("start-*.json"), None), what="the other job")
                            .read_text())
        assert holder["gpu"] == "3"
        sweep, runs, log = stub_sweep(tmp_path, "sweep", 1.0, "lr_index=0,1,2", "seeds=[0],[1]")
        started.append(sweep)
        wait_for(lambda: "gpu: no free GPU" in log.read_text(), what="a job waiting for a GPU")
        wait_for(lambda: len(list(runs.glob("job-*.json"))) >= 2, what="jobs on GPUs 5 and 7")
        killed_at = time.time()
        os.kill(holder["pid"], signal.SIGKILL)  # the job's own process (a joblib worker): its lease dies with it
        assert other.wait(timeout=120) != 0
        assert sweep.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        for proc in started:
            if proc.poll() is None:
                stop(proc)
    out = log.read_text()
    assert "Joblib.Parallel(n_jobs=3," in out  # one job per visible GPU
    assert f"gpu: no free GPU (GPU 3: leased by pid {holder['pid']};" in out
    jobs = [json.loads(p.read_text()) for p in runs.glob("job-*.json")]
    assert len(jobs) == 6
    assert {j["gpu"] for j in jobs} == set(IDS)  # every GPU used, the killed job's too
    assert all(j["seen"] == j["gpu"] for j in jobs)  # each job sees only its GPU
    for gpu in IDS:  # at most one job per GPU at a time
        spans = sorted((j["start"], j["end"]) for j in jobs if j["gpu"] == gpu)
        assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)), (gpu, spans)
    assert all(j["start"] >= killed_at for j in jobs if j["gpu"] == "3")  # GPU 3 once its holder died, not before
    by_worker = {}
    for j in jobs:
        by_worker.setdefault(j["pid"], set()).add(j["gpu"])
    assert all(len(gpus) == 1 for gpus in by_worker.values())  # a worker's CUDA stays on its first GPU


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_bitfit_run_records_the_gpu_each_job_ran_on(tmp_path, tiny_bert_dir, glue_dir):
    args = [*quick(tiny_bert_dir, tmp_path / "runs"), "optim.lr=1e-4,4e-4,1e-3", "launcher=local",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", "--multirun"]
    done = subprocess.run([*RUN, *args], capture_output=True, text=True, env=env_for(tmp_path), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=3," in done.stdout + done.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("**/record.json")]
    assert len(records) == 3
    assert all(r["env"]["gpu_lease"] in IDS and r["env"]["cuda_visible_devices"] == r["env"]["gpu_lease"]
               for r in records)
    assert done.stdout.count("gpu: leased GPU ") == 3
