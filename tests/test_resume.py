"""Preemption safety: epoch checkpoints resume to the exact uninterrupted result; seed claims keep two jobs of the
same sweep from training one seed twice."""

import json
import os
import subprocess
import sys

import pytest
from conftest import quick
from safetensors.torch import load_file

RUN = [sys.executable, "-c", "from bitfit_exp.commands.run import run; run()"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def bitfit_run(*overrides):
    return subprocess.run([*RUN, *overrides], capture_output=True, text=True, env=ENV, timeout=600)


def strip_times(record):
    return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in record["epochs"]]


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
@pytest.mark.parametrize("method", ["bitfit", "rand_uniform", "full"])
def test_stopped_run_resumes_to_the_uninterrupted_result(method, tmp_path, tiny_bert_dir, glue_dir):
    args = [f"method={method}", "train.epochs=3", "optim.lr=0.01" if method != "full" else "optim.lr=1e-3",
            "train.save_patch=true"]
    whole = bitfit_run(*quick(tiny_bert_dir, tmp_path / "whole", *args))
    assert whole.returncode == 0, whole.stderr
    stopped = bitfit_run(*quick(tiny_bert_dir, tmp_path / "cut", *args, "train.stop_after_epochs=1"))
    assert stopped.returncode == 3 and "stopped after epoch 1" in stopped.stderr
    (ckpt,) = (tmp_path / "cut").glob("**/seed0/checkpoint.pt")
    assert not list((tmp_path / "cut").glob("**/record.json"))
    resumed = bitfit_run(*quick(tiny_bert_dir, tmp_path / "cut", *args))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from the checkpoint after epoch 1" in resumed.stdout
    assert not ckpt.exists()

    (a,) = [json.loads(p.read_text()) for p in (tmp_path / "whole").glob("**/record.json")]
    (b,) = [json.loads(p.read_text()) for p in (tmp_path / "cut").glob("**/record.json")]
    assert strip_times(a) == strip_times(b)  # exact: losses and metrics of every epoch
    assert a["best"]["epoch"] == b["best"]["epoch"] and b["resumed_after_epoch"] == 1
    pa, pb = (load_file(next((tmp_path / d).glob("**/patch.safetensors"))) for d in ("whole", "cut"))
    assert pa.keys() == pb.keys() and all((pa[k] == pb[k]).all() for k in pa)


def test_live_claim_is_respected_and_stale_claim_taken_over(tmp_path, tiny_bert_dir, glue_dir):
    first = bitfit_run(*quick(tiny_bert_dir, tmp_path, "train.epochs=1"))
    assert first.returncode == 0
    (record,) = tmp_path.glob("**/seed0/record.json")
    seed1 = record.parent.parent / "seed1"
    seed1.mkdir()
    holder = {"host": os.uname().nodename, "pid": os.getpid(), "slurm_job_id": None, "since": 0}
    (seed1 / "claim.json").write_text(json.dumps(holder))  # this test process: alive, same host
    busy = bitfit_run(*quick(tiny_bert_dir, tmp_path, "train.epochs=1", "seeds=[0,1]"))
    assert busy.returncode == 0, busy.stderr
    assert "seed 1: being trained by another job" in busy.stdout and not (seed1 / "record.json").exists()
    assert "over 1 seeds" in busy.stdout

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (seed1 / "claim.json").write_text(json.dumps({**holder, "pid": int(dead.stdout)}))
    taken = bitfit_run(*quick(tiny_bert_dir, tmp_path, "train.epochs=1", "seeds=[0,1]"))
    assert taken.returncode == 0 and (seed1 / "record.json").exists() and not (seed1 / "claim.json").exists()


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_two_jobs_of_one_setting_at_once_train_each_seed_once(tmp_path, tiny_bert_dir, glue_dir):
    args = quick(tiny_bert_dir, tmp_path, "train.epochs=2", "seeds=[0,1,2,3]")
    jobs = [subprocess.Popen([*RUN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
            for _ in range(2)]
    outs = [j.communicate(timeout=600) for j in jobs]
    assert all(j.returncode == 0 for j in jobs), [o[1][-500:] for o in outs]
    trained = [line.split(":")[0] for out, _ in outs for line in out.splitlines()
               if line.startswith("seed ") and " at epoch " in line]
    assert sorted(trained) == ["seed 0", "seed 1", "seed 2", "seed 3"]
    records = [json.loads(p.read_text()) for p in tmp_path.glob("**/seed*/record.json")]
    assert sorted(r["seed"] for r in records) == [0, 1, 2, 3] and all(r["status"] == "finished" for r in records)
    assert not list(tmp_path.glob("**/claim.json")) and not list(tmp_path.glob("**/.*.tmp"))
