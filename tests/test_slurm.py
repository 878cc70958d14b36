"""The SLURM path on a real one-node cluster (scripts/slurm-local.sh): sweeps through hydra-submitit-launcher,
scancel and resubmission, preemption with requeue and exact resume, two submissions of one sweep at once; and the
cluster's `down` leaves none of its processes running (the process table is read before `up` and after `down`)."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import GLUE, REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("slurmctld") is None or shutil.which("sbatch") is None,
                       reason="SLURM not installed (apt-get install slurmctld slurmd slurm-client munge)"),
]
RUN = [sys.executable, "-c", "from bitfit_exp.commands.run import run; run()"]


def cluster_processes(state) -> dict[int, str]:
    """pid -> command line of each running process that names the cluster folder `state` in its command line or
    environment: what `slurm-local.sh up` started (munged, slurmctld, slurmd, all given SLURM_LOCAL_DIR), the job
    steps (slurmstepd) and the jobs' processes (SLURM_CONF)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            cmdline, environ = (proc / "cmdline").read_bytes(), (proc / "environ").read_bytes()
        except OSError:  # not a process, or one that just ended
            continue
        if str(state).encode() in cmdline + environ:
            found[int(proc.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(state)}
    before = set(cluster_processes(state))
    # A process of the user's that `down` must leave alone: a shell with this cluster's SLURM_CONF exported.
    bystander = subprocess.Popen(["sleep", "3600"], env={**env, "SLURM_CONF": str(state / "slurm.conf")},
                                 start_new_session=True)
    up = subprocess.run(["bash", str(REPO / "scripts" / "slurm-local.sh"), "up"], capture_output=True, text=True,
                        env=env, timeout=120)
    if up.returncode != 0:
        bystander.kill()
        bystander.wait()
        pytest.skip(f"could not start the local SLURM cluster: {up.stderr.strip()[-300:]}")
    assert set(cluster_processes(state)) - before - {bystander.pid}  # the daemons, seen by cluster_processes
    env.update(SLURM_CONF=str(state / "slurm.conf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    yield env
    subprocess.run(["bash", str(REPO / "scripts" / "slurm-local.sh"), "down"], env=env, timeout=60)
    left = {pid: cmd for pid, cmd in cluster_processes(state).items() if pid not in before | {bystander.pid}}
    alive = bystander.poll() is None
    bystander.kill()
    bystander.wait()
    assert not left, f"slurm-local.sh down left processes running: {left}"
    assert alive, "slurm-local.sh down stopped a process it did not start"


def overrides(model_dir, runs_dir, *extra):
    return [f"model.name_or_path={model_dir}", f"data.dir={GLUE}", f"runs_dir={runs_dir}", "train.progress=false",
            "data.max_eval_samples=16", "data.train_eval_samples=16", "data.max_length=32", *extra]


SLURM = ["launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=20"]


def squeue(env) -> list[tuple[str, str, str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], capture_output=True, text=True, env=env).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


def wait_for(predicate, timeout=300, every=0.3):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


def job_logs(sweep_dir):
    return "".join(p.read_text(errors="replace") for p in sweep_dir.glob("**/.submitit/**/*.out"))


def records(runs_dir):
    return {p: json.loads(p.read_text()) for p in runs_dir.glob("**/seed*/record.json")}


def test_sweep_on_slurm_equals_the_local_sweep(cluster, tiny_bert_dir, tmp_path):
    sweep = ["+experiment=smoke", "lr_index=0", "data.max_train_samples=24"]
    on_slurm = subprocess.run([*RUN, *overrides(tiny_bert_dir, tmp_path / "slurm", *sweep, *SLURM),
                               f"hydra.sweep.dir={tmp_path / 'sweep'}", "--multirun"], capture_output=True,
                              text=True, env=cluster, timeout=900)
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    local = subprocess.run([*RUN, *overrides(tiny_bert_dir, tmp_path / "local", *sweep), "--multirun"],
                           capture_output=True,
                           text=True, env=cluster, timeout=900)
    assert local.returncode == 0, local.stderr[-3000:]
    found = records(tmp_path / "slurm")
    assert len(found) == 2 * 2 * 2 and all(r["env"]["slurm_job_id"] for r in found.values())
    tables = []
    for name in ("slurm", "local"):
        out = tmp_path / f"tables-{name}"
        subprocess.run([sys.executable, "-m", "bitfit_exp.commands.tables", "--runs-dir", str(tmp_path / name), "--out",
                        str(out), "--expected-seeds", "2"], check=True, capture_output=True, env=cluster)
        tables.append(list(csv.DictReader((out / "ours.csv").read_text().splitlines())))
    assert tables[0] == tables[1] and len(tables[0]) >= 4


def test_scancel_then_resubmit_skips_finished_seeds(cluster, tiny_bert_dir, tmp_path):
    # All of RTE at 128 tokens: several seconds per seed even for the tiny model, so the kill lands mid-seed.
    args = overrides(tiny_bert_dir, tmp_path / "runs", "task=rte", "seeds=[0,1,2]", "train.epochs=6",
                     "data.max_length=128", *SLURM)
    first = subprocess.Popen([*RUN, *args, f"hydra.sweep.dir={tmp_path / 'a'}", "--multirun"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=cluster)
    # Kill the job in the middle of seed 1 (seed 0 finished, seed 1 has an epoch checkpoint): no cleanup runs.
    assert wait_for(lambda: list((tmp_path / "runs").glob("**/seed1/checkpoint.pt")), timeout=600)
    for job, _, _ in squeue(cluster):
        subprocess.run(["scancel", "--signal=KILL", "--full", job], env=cluster, check=True)
        subprocess.run(["scancel", job], env=cluster)
    assert wait_for(lambda: not squeue(cluster), timeout=120)
    first.kill()  # without accounting (sacct) submitit cannot tell a cancelled job from a slow one: stop waiting
    first.communicate(timeout=60)
    before = records(tmp_path / "runs")  # every record on disk parses: none half-written
    assert [r["seed"] for r in before.values()] == [0] and before[next(iter(before))]["status"] == "finished"
    assert list((tmp_path / "runs").glob("**/seed1/claim.json"))  # left behind by the killed job

    again = subprocess.run([*RUN, *args, f"hydra.sweep.dir={tmp_path / 'b'}", "--multirun"], capture_output=True,
                           text=True, env=cluster, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    after = records(tmp_path / "runs")
    assert sorted(r["seed"] for r in after.values()) == [0, 1, 2]
    assert all(after[p] == r for p, r in before.items())  # the finished seed was skipped, not redone
    logs = job_logs(tmp_path / "b")
    assert "3 seeds, 1 already finished" in logs and "seed 1: resumed from the checkpoint after epoch" in logs
    assert not list((tmp_path / "runs").glob("**/claim.json"))


@pytest.mark.parametrize("mode", [["seeds=[0]"], ["seeds=[0,1]", "train.packed=true"]], ids=["one_by_one", "packed"])
def test_preemption_requeues_and_resumes_exactly(mode, cluster, tiny_bert_dir, tmp_path):
    # Packed: both seeds' checkpoints resume in the requeued job, each exactly as the uninterrupted packed run.
    args = overrides(tiny_bert_dir, tmp_path / "slurm", "task=rte", *mode, "train.epochs=6",
                     "data.max_train_samples=200", "optim.lr=0.01")
    job = subprocess.Popen([*RUN, *args, *SLURM, f"hydra.sweep.dir={tmp_path / 'sweep'}", "--multirun"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster)
    assert wait_for(lambda: list((tmp_path / "slurm").glob("**/seed0/checkpoint.pt")), timeout=600)
    ((job_id, _, _),) = squeue(cluster)
    # What SLURM sends before a time limit or on preemption (submitit asks for USR2 via --signal).
    subprocess.run(["scancel", "--signal=USR2", job_id], env=cluster, check=True)
    # A requeued job waits ~2 minutes (BeginTime); let it start now.
    assert wait_for(lambda: any(s == "PENDING" for _, s, _ in squeue(cluster)), timeout=120)
    # slurmd refuses a credential made in the same second its job's old one was revoked ("Killing non-startable
    # batch job: Job credential revoked", and the job is gone): start the requeued job in a later second.
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=cluster, check=True)
    _, err = job.communicate(timeout=900)
    assert job.returncode == 0, err[-3000:]
    resumed = sorted(records(tmp_path / "slurm").values(), key=lambda r: r["seed"])
    assert all(r["resumed_after_epoch"] >= 1 for r in resumed) and "preempted" in job_logs(tmp_path / "sweep")

    whole = subprocess.run([*RUN, *args, f"runs_dir={tmp_path / 'local'}"], capture_output=True, text=True,
                           env=cluster, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    reference = sorted(records(tmp_path / "local").values(), key=lambda r: r["seed"])
    assert len(resumed) == len(reference) == (2 if "train.packed=true" in mode else 1)
    # Resumed as the same pack: every epoch's losses and metrics, exactly. Should the kill have split the pack's
    # checkpoints across two epochs (only within the rename loop), each setting resumes alone: float tolerance.
    same_pack = all(r.get("packed", {"settings": 1})["settings"] == len(resumed) for r in resumed)
    for a, b in zip(resumed, reference, strict=True):
        if same_pack:
            assert [{k: v for k, v in e.items() if not k.endswith("_s")} for e in a["epochs"]] == \
                [{k: v for k, v in e.items() if not k.endswith("_s")} for e in b["epochs"]]
        else:
            assert [e["train_loss"] for e in a["epochs"]] == pytest.approx([e["train_loss"] for e in b["epochs"]],
                                                                           rel=1e-5)


def test_two_submissions_of_one_sweep_train_each_seed_once(cluster, tiny_bert_dir, tmp_path):
    args = overrides(tiny_bert_dir, tmp_path / "runs", "task=rte", "seeds=[0,1,2,3]", "train.epochs=2",
                     "data.max_train_samples=100", *SLURM)
    subs = [subprocess.Popen([*RUN, *args, f"hydra.sweep.dir={tmp_path / name}", "--multirun"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=cluster) for name in ("a", "b")]
    outs = [s.communicate(timeout=900) for s in subs]
    assert all(s.returncode == 0 for s in subs), [e[-2000:] for _, e in outs]
    logs = job_logs(tmp_path / "a") + job_logs(tmp_path / "b")
    trained = sorted(line.split(":")[0] for line in logs.splitlines() if line.startswith("seed ") and " at epoch " in line)
    assert trained == ["seed 0", "seed 1", "seed 2", "seed 3"]
    found = records(tmp_path / "runs")
    assert sorted(r["seed"] for r in found.values()) == [0, 1, 2, 3]
    assert not list((tmp_path / "runs").glob("**/claim.json")) and not list((tmp_path / "runs").glob("**/.*.tmp"))


def test_a_users_own_task_sweeps_on_slurm(cluster, user_conf, tiny_bert_dir, tmp_path):
    # The task YAML lives only in the user's --config-dir and names its CSV files relative to data.dir; the jobs run
    # on the node from another working directory. They must train the user's task, and equal a local sweep.
    args = ["--config-dir", str(user_conf / "my-conf"), "task=my_csv", f"data.dir={user_conf / 'data'}",
            f"model.name_or_path={tiny_bert_dir}", "data.max_length=32", "train.progress=false", "seeds=[0,1]",
            "optim.lr=0.01,0.001"]
    on_slurm = subprocess.run([*RUN, *args, f"runs_dir={tmp_path / 'slurm'}", *SLURM,
                               f"hydra.sweep.dir={tmp_path / 'sweep'}", "--multirun"], capture_output=True, text=True,
                              env=cluster, timeout=900, cwd=tmp_path)
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]
    local = subprocess.run([*RUN, *args, f"runs_dir={tmp_path / 'local'}", "--multirun"], capture_output=True,
                           text=True, env=cluster, timeout=900, cwd=tmp_path)
    assert local.returncode == 0, local.stderr[-3000:]

    def by_setting(name):
        found = records(tmp_path / name)
        return {str(p.relative_to(tmp_path / name)): r for p, r in found.items()}

    slurm, here = by_setting("slurm"), by_setting("local")
    assert sorted(slurm) == sorted(here) and len(slurm) == 2 * 2  # same setting folders: same data fingerprint
    assert all("/my_csv/" in path for path in slurm)
    for path, record in slurm.items():
        assert record["env"]["slurm_job_id"] and not here[path]["env"].get("slurm_job_id")
        assert record["columns"] == {"validation": "my_csv"} and record["sizes"]["train"] == 24
        assert [{k: v for k, v in e.items() if not k.endswith("_s")} for e in record["epochs"]] == \
            [{k: v for k, v in e.items() if not k.endswith("_s")} for e in here[path]["epochs"]]
    out = tmp_path / "tables"
    subprocess.run([sys.executable, "-m", "bitfit_exp.commands.tables", "--runs-dir", str(tmp_path / "slurm"), "--table",
                    "ours", "--out", str(out), "--expected-seeds", "2"], check=True, capture_output=True, env=cluster)
    assert "| my_csv |" in (out / "ours.md").read_text()
