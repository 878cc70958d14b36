"""`bitfit-run` end to end through Hydra, in a subprocess like a user types it: records, resume, bad input."""

import json
import os
import subprocess
import sys

import pytest
from conftest import GLUE, MINILM, quick

RUN = [sys.executable, "-c", "from bitfit_exp.commands.run import run; run()"]


def bitfit_run(*overrides, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run([*RUN, *overrides], capture_output=True, text=True, env=env, timeout=600)


def records(runs_dir):
    return sorted(runs_dir.glob("**/seed*/record.json"))


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_minilm_short_run_writes_complete_records(tmp_path, glue_dir):
    out = bitfit_run(*quick(MINILM, tmp_path, "seeds=[0,1]", "method=bitfit", "model=minilm"))
    assert out.returncode == 0, out.stderr
    paths = records(tmp_path)
    assert [p.parent.name for p in paths] == ["seed0", "seed1"]
    rec = json.loads(paths[0].read_text())
    assert rec["status"] == "finished" and rec["setting"]["model"] == "minilm"
    assert rec["setting"]["dir"].startswith("minilm/rte/bitfit/lr0.0004-")
    assert len(rec["epochs"]) == 2 and set(rec["epochs"][0]["dev"]) == {"validation"}
    assert 0 <= rec["best"]["dev"]["validation"]["accuracy"] <= 1 and "accuracy" in rec["best"]["train"]
    # MiniLM: 6 layers x (4*384 + 384 + 1536 + 384 + 384) + 384 (embedding LN) + 384 (pooler) = 26112 biases.
    assert rec["params"]["trainable_encoder"] == 26112
    assert rec["params"]["trainable"] == 26112 + 384 * 2 + 2
    assert rec["config"]["optim"]["lr"] == 4e-4 and rec["env"]["torch"] and rec["env"]["device"] == "cpu"
    assert rec["timings"]["train_s"] > 0 and rec["sizes"]["train"] == 24
    tsv = (paths[0].parent / "RTE.tsv").read_text().splitlines()
    assert tsv[0] == "index\tprediction" and len(tsv) == 17
    assert {line.split("\t")[1] for line in tsv[1:]} <= {"entailment", "not_entailment"}
    assert (paths[0].parent / "patch.safetensors").is_file()
    assert "over 2 seeds; majority class 62.50" in out.stdout and "±" in out.stdout  # 10 of 16 dev rows: 0


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_resume_skips_finished_seeds_and_redoes_broken_ones(tmp_path, tiny_bert_dir, glue_dir):
    assert bitfit_run(*quick(tiny_bert_dir, tmp_path, "seeds=[0,1]")).returncode == 0
    first, second = records(tmp_path)
    kept = first.read_text()
    second.write_text('{"schema": 1, "status": "running"')  # a job killed mid-write of a non-atomic writer
    out = bitfit_run(*quick(tiny_bert_dir, tmp_path, "seeds=[0,1,2]"))
    assert out.returncode == 0, out.stderr
    assert "3 seeds, 1 already finished" in out.stdout
    assert first.read_text() == kept
    assert json.loads(second.read_text())["status"] == "finished"
    assert len(records(tmp_path)) == 3
    assert "seed 0:" not in out.stdout and "seed 2:" in out.stdout


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_overwrite_keeps_the_old_record(tmp_path, tiny_bert_dir, glue_dir):
    assert bitfit_run(*quick(tiny_bert_dir, tmp_path)).returncode == 0
    out = bitfit_run(*quick(tiny_bert_dir, tmp_path, "overwrite=true"))
    assert out.returncode == 0, out.stderr
    (path,) = records(tmp_path)
    assert len(list(path.parent.glob("record.json.replaced-*"))) == 1


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_settings_never_share_a_folder(tmp_path, tiny_bert_dir, glue_dir):
    for extra in ("optim.lr=1e-3", "optim.lr=1e-4", "train.batch_size=4"):
        assert bitfit_run(*quick(tiny_bert_dir, tmp_path, extra)).returncode == 0
    assert len({p.parent.parent for p in records(tmp_path)}) == 3


@pytest.mark.parametrize("override, message", [
    ("task=nope", "error: In 'config': Could not find 'task/nope'; valid: cola, mnli, mrpc"),
    ("method=nope", "error: In 'config': Could not find 'method/nope'; valid: beft, biases, bitfit, bm2"),
    ("model=nope", "error: In 'config': Could not find 'model/nope'; valid: albert_base, bert_base"),
    ("runs_dir=/dev/null", "error: /dev/null: runs_dir is not a folder"),
    ("data.dir=/no/such/dir", "error: data.dir=/no/such/dir does not exist"),
    ("model.name_or_path=/no/such/model", "error: model.name_or_path=/no/such/model is not a model directory"),
    ("train.select=worst", "error: train.select='worst' is not valid; choose one of best, last"),
    ("train.packed_dropout=mine", "error: train.packed_dropout='mine' is not valid; choose one of per_setting, shared"),
    ("train.compile=fast", "error: train.compile='fast' is not valid; choose one of false, true, default, reduce-overhead"),
    ("train.device=cuda", "error: train.device=cuda but CUDA is not available here"),
    ("data.dir=null", "error: cannot load nyu-mll/glue/rte from the Hugging Face hub"),
])
def test_bad_input_gives_one_clear_line(override, message, tmp_path, tiny_bert_dir):
    out = bitfit_run(*quick(tiny_bert_dir, tmp_path, override))
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr
    assert not records(tmp_path)


def test_hub_model_offline_is_one_line(tmp_path, glue_dir):
    out = bitfit_run(*quick("bert-base-cased", tmp_path))
    assert out.returncode == 2 and "error: cannot load model 'bert-base-cased'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_task_without_train_split_locally(tmp_path, tiny_bert_dir):
    out = bitfit_run(*quick(tiny_bert_dir, tmp_path, "task=qnli"))
    assert out.returncode == 2 and "lacks train.parquet" in out.stderr and "bitfit-prefetch" in out.stderr


def test_unreachable_hub_fails_fast_without_offline_vars(tmp_path, tiny_bert_dir):
    # No HF_*_OFFLINE set and no network: the probe switches to offline mode instead of retrying for ~20 s.
    env = {"HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}
    out = bitfit_run(*quick(tiny_bert_dir, tmp_path, "data.dir=null"), env=env)
    assert out.returncode == 2
    assert "hub is unreachable" in out.stderr and "error: cannot load nyu-mll/glue/rte" in out.stderr


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_data_dir_from_environment_and_bf16(tmp_path, tiny_bert_dir, glue_dir):
    overrides = [o for o in quick(tiny_bert_dir, tmp_path, "train.bf16=true") if not o.startswith("data.dir=")]
    out = bitfit_run(*overrides, env={"BITFIT_DATA_DIR": str(GLUE)})  # the default data.dir reads it
    assert out.returncode == 0, out.stderr
    (path,) = records(tmp_path)
    rec = json.loads(path.read_text())
    assert rec["config"]["data"]["dir"] == str(GLUE) and rec["config"]["train"]["bf16"] is True
