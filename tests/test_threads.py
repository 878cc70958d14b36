"""Threads that fit the allocation (#24): a training job sizes torch's thread pool to the CPUs it may use (affinity
mask, SLURM_CPUS_PER_TASK, its share in a local sweep, OMP_NUM_THREADS; `train.threads` overrides), OpenMP waits
passively unless the user chose a policy, the record says both, and the thread count never enters the setting."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import compose, quick
from omegaconf import OmegaConf
from safetensors.torch import load_file

from bitfit_exp.config.schema import problems
from bitfit_exp.core.threads import cpus_allowed, job_threads, wait_passively
from bitfit_exp.results.records import setting_key

RUN = [sys.executable, "-c", "from bitfit_exp.commands.run import run; run()"]
THREAD_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "SLURM_CPUS_PER_TASK")


@pytest.mark.parametrize("override, cpus, environ, n_jobs, expected", [
    (None, 64, {}, None, 64),  # a whole node
    (None, 64, {"SLURM_CPUS_PER_TASK": "8"}, None, 8),  # a SLURM job on a 64-core node: its cpus_per_task
    (None, 4, {"SLURM_CPUS_PER_TASK": "8"}, None, 4),  # an affinity mask narrower than the allocation
    (None, 16, {}, 4, 4),  # a local sweep of 4 parallel jobs: a quarter each
    (None, 2, {}, 4, 1),  # more parallel jobs than cores: one thread each, never zero
    (None, 16, {}, -1, 1),  # joblib's -1: one job per core
    (None, 16, {}, -4, 1),  # joblib's -4: 13 jobs at once
    (None, 16, {"OMP_NUM_THREADS": "1"}, None, 1),  # the user's OMP_NUM_THREADS=1 is kept
    (None, 16, {"OMP_NUM_THREADS": "4,2"}, None, 4),  # OpenMP's nested form: its outer level
    (None, 16, {"OMP_NUM_THREADS": "all", "SLURM_CPUS_PER_TASK": ""}, None, 16),  # unreadable values are no limit
    (None, 16, {"SLURM_CPUS_PER_TASK": "8", "OMP_NUM_THREADS": "16"}, 2, 8),  # the fewest of all limits
    (3, 16, {"SLURM_CPUS_PER_TASK": "1", "OMP_NUM_THREADS": "1"}, 8, 3),  # train.threads overrides every limit
])
def test_threads_fit_what_the_job_may_use(override, cpus, environ, n_jobs, expected):
    assert job_threads(override, cpus=cpus, environ=environ, n_jobs=n_jobs) == expected


def test_openmp_waits_passively_unless_the_user_chose_or_it_is_too_late(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as at the start of bitfit-run
    environ = {}
    assert wait_passively(environ) and environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    chosen = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not wait_passively(chosen) and chosen == {"OMP_WAIT_POLICY": "ACTIVE"}
    monkeypatch.setitem(sys.modules, "torch", object())  # OpenMP has started: the policy can no longer change
    late = {}
    assert not wait_passively(late) and late == {}


def test_bitfit_run_can_set_the_wait_policy_before_torch_loads():
    # OpenMP reads OMP_WAIT_POLICY once, when torch loads it: loading bitfit-run's module must leave torch unloaded
    # for the entry point's first line to be in time.
    code = "import os, bitfit_exp.commands.run as run; print(run.wait_passively(), os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.split() == ["True", "PASSIVE"], out.stderr[-2000:]


def resolved(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(*overrides), resolve=True)


def test_train_threads_is_checked_and_stays_out_of_the_setting(tmp_path, tiny_bert_dir):
    for value, shown in (("0", "0"), ("two", "'two'"), ("1.5", "1.5")):
        assert problems(compose(f"train.threads={value}")) == [
            f"train.threads={shown} is not valid; expected null or an integer >= 1"]
    prints = {"model": "m" * 8, "data": "d" * 8}
    default = setting_key(resolved(*quick(tiny_bert_dir, tmp_path)), prints)
    four = setting_key(resolved(*quick(tiny_bert_dir, tmp_path, "train.threads=4")), prints)
    assert four == default  # how many threads ran does not change a setting's folder or its hash


def bitfit_run(env: dict, *overrides: str) -> subprocess.CompletedProcess:
    """`bitfit-run OVERRIDES` in a subprocess whose environment is this one without the thread variables, plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    out = subprocess.run([*RUN, *overrides], capture_output=True, text=True, timeout=900,
                         env={**base, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def only_record(runs) -> dict:
    (path,) = runs.glob("**/seed0/record.json")
    return json.loads(path.read_text())


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_a_run_records_its_threads_and_wait_policy(tmp_path, tiny_bert_dir, glue_dir):
    bitfit_run({}, *quick(tiny_bert_dir, tmp_path / "plain", "train.epochs=1"))
    env = only_record(tmp_path / "plain")["env"]
    assert env["torch_threads"] == cpus_allowed() and env["omp_wait_policy"] == "PASSIVE"
    # In a SLURM job of cpus_per_task=1, with the user's own wait policy:
    bitfit_run({"SLURM_CPUS_PER_TASK": "1", "OMP_WAIT_POLICY": "ACTIVE"},
               *quick(tiny_bert_dir, tmp_path / "slurm", "train.epochs=1"))
    env = only_record(tmp_path / "slurm")["env"]
    assert env["torch_threads"] == 1 and env["omp_wait_policy"] == "ACTIVE"


def numbers(record: dict) -> list[dict]:
    """A record's losses and scores, epoch by epoch, without the timings."""
    return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in record["epochs"]]


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_the_same_thread_count_gives_the_same_numbers(tmp_path, tiny_bert_dir, glue_dir):
    bitfit_run({}, *quick(tiny_bert_dir, tmp_path / "set", "train.threads=2"))
    bitfit_run({"OMP_NUM_THREADS": "2"}, *quick(tiny_bert_dir, tmp_path / "env"))
    (a, b) = (only_record(tmp_path / name) for name in ("set", "env"))
    assert a["env"]["torch_threads"] == b["env"]["torch_threads"] == 2
    assert a["setting"] == b["setting"]  # one setting: train.threads is not in its hash
    assert numbers(a) == numbers(b) and a["chosen_epoch"] == b["chosen_epoch"]
    (patch_a, patch_b) = (load_file(next((tmp_path / n).glob("**/seed0/patch.safetensors"))) for n in ("set", "env"))
    assert patch_a.keys() == patch_b.keys() and all(torch.equal(patch_a[k], patch_b[k]) for k in patch_a)


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_a_local_sweep_shares_the_cores_between_its_jobs(tmp_path, tiny_bert_dir, glue_dir):
    cpus = cpus_allowed()
    # OMP_NUM_THREADS at every core (joblib would hand that on to its workers as is): the share is the job's own.
    bitfit_run({"OMP_NUM_THREADS": str(cpus)}, *quick(tiny_bert_dir, tmp_path, "train.epochs=1"),
               "optim.lr=0.01,0.02", "launcher=local", "hydra.launcher.n_jobs=2", "--multirun")
    records = [json.loads(p.read_text()) for p in tmp_path.glob("**/seed0/record.json")]
    assert len(records) == 2
    assert [r["env"]["torch_threads"] for r in records] == [max(cpus // 2, 1)] * 2
    assert {r["env"]["omp_wait_policy"] for r in records} == {"PASSIVE"}  # the workers inherit it
