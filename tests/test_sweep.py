"""Sweeps end to end: experiment configs expand to the right jobs; a mini sweep through the local (joblib)
launcher, then `bitfit-tables` over its records; `bitfit-prefetch` fills an offline data/model folder."""

import csv
import json
import os
import shlex
import statistics
import subprocess
import sys

import pytest
from conftest import GLUE, MINILM

from bitfit_exp.config.compose import expand
from bitfit_exp.config.plan import plan

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def cli(entry: str, *args: str):
    code = f"import sys; from bitfit_exp.commands.{entry} import main; sys.exit(main())" if entry != "run" else \
        "from bitfit_exp.commands.run import run; run()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, timeout=900)


@pytest.mark.parametrize("experiment, jobs", [("table1", 64), ("table2", 128), ("table2_roberta", 16),
                                              ("table3", 256), ("minilm_glue", 16), ("smoke", 8),
                                              ("[table3,packed]", 64), ("[minilm_glue,packed]", 8)])
def test_experiments_expand_to_the_table_jobs(experiment, jobs):
    expanded = expand([f"+experiment={experiment}"])
    assert len(expanded) == jobs
    assert len({tuple(sorted(j)) for j in expanded}) == jobs


def test_experiment_learning_rates(tmp_path):
    keys = [j["key"] for j in plan(["+experiment=table3", f"runs_dir={tmp_path}", "task=rte"])]
    lrs = {m: sorted(k["lr"] for k in keys if k["method"] == m) for m in {k["method"] for k in keys}}
    assert lrs["full"] == [1e-5, 2e-5, 3e-5, 5e-5]
    assert lrs["bitfit"] == lrs["rand_rowcol"] == [1e-4, 4e-4, 7e-4, 1e-3]
    roberta = {k["method"]: k["lr"] for k in (j["key"] for j in plan(["+experiment=table2_roberta", "task=rte"]))}
    assert roberta == {"full": 1e-5, "bitfit": 1e-4}
    assert {k["model"] for k in keys} == {"bert_base"}


def test_packed_sweep_jobs_cover_each_methods_lr_grid(tmp_path):
    jobs = {j["key"]["method"]: j for j in plan(["+experiment=[table3,packed]", f"runs_dir={tmp_path}", "task=rte"])}
    assert len(jobs) == 8
    assert [k["lr"] for k in jobs["bitfit"]["keys"]] == [1e-4, 4e-4, 7e-4, 1e-3]
    assert [k["lr"] for k in jobs["full"]["keys"]] == [1e-5, 2e-5, 3e-5, 5e-5]
    assert {m for m, j in jobs.items() if j["packed"]} == {"bitfit", "bm2_bq", "bm2", "bq", "frozen"}
    assert all(j["seeds"] == 20 and j["done"] == 0 for j in jobs.values())
    # A packed job works through its train set once per epoch for all 20 settings; a one-by-one job 20 times.
    assert jobs["full"]["samples"] == 20 * jobs["bitfit"]["samples"] == 20 * 2490 * 20  # RTE: 20 epochs


def test_packing_the_lr_grid_of_a_fixed_lr_sweep_is_refused(tmp_path):
    out = cli("plan", "+experiment=[table2_roberta,packed]", f"runs_dir={tmp_path}")
    assert out.returncode == 2 and "error: this sweep fixes the learning rate" in out.stderr
    assert "Traceback" not in out.stderr
    unknown = cli("plan", "+experiment=table9")
    assert unknown.returncode == 2 and "Could not find 'experiment/table9'; valid: datasize," in unknown.stderr
    jobs = plan(["+experiment=table2_roberta", "train.packed=true", f"runs_dir={tmp_path}"])
    assert len(jobs) == 16 and all(len(j["keys"]) == 1 for j in jobs)


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_mini_sweep_local_launcher_then_tables(tmp_path, tiny_bert_dir, glue_dir):
    runs, out = tmp_path / "runs", tmp_path / "tables"
    args = ["+experiment=smoke", f"data.dir={GLUE}", f"runs_dir={runs}", f"model.name_or_path={tiny_bert_dir}",
            "launcher=local", "data.max_train_samples=24", "data.max_eval_samples=16", "--multirun"]
    done = cli("run", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in runs.glob("**/seed*/record.json")]
    assert len(records) == 2 * 2 * 2 * 2  # tasks x methods x lrs x seeds
    assert all(r["env"]["device"] == "cpu" for r in records)

    # The plan sees every seed finished; re-submitting the sweep trains nothing.
    jobs = plan([a for a in args if a != "--multirun"])
    assert len(jobs) == 8 and all(j["done"] == j["seeds"] == 2 for j in jobs)
    again = cli("run", *args)
    assert again.returncode == 0 and again.stdout.count("2 already finished") == 8 and "seed 0:" not in again.stdout

    # Lose one setting's records: `bitfit-plan --todo` prints a command that launches that job alone.
    (lost,) = {p.parent.parent for p in runs.glob("*/rte/bitfit/lr0.001-*/seed*/record.json")}
    for record in lost.glob("seed*/record.json"):
        record.unlink()
    todo = cli("plan", *[a for a in args if a != "--multirun"], "--todo")
    (command,) = [line for line in todo.stdout.splitlines() if line.startswith("bitfit-run ")]
    assert "task=rte" in command and "method=bitfit" in command and command.endswith("lr_index=3 --multirun")
    redo = cli("run", *shlex.split(command)[1:])
    assert redo.returncode == 0 and redo.stdout.count("already finished") == 1 and "over 2 seeds" in redo.stdout
    assert len(list(runs.glob("**/seed*/record.json"))) == 16

    tables = cli("tables", "--runs-dir", str(runs), "--out", str(out), "--table", "all", "--expected-seeds", "2")
    assert tables.returncode == 0, tables.stderr
    cells = {(r["method"], r["column"]): r for r in csv.DictReader((out / "ours.csv").read_text().splitlines())}
    # Hand check of one cell: best lr by mean over seeds, then mean±std (ddof=1) x100.
    for method, task in (("bitfit", "rte"), ("full", "mrpc")):
        by_lr = {}
        for r in records:
            if r["setting"]["method"] == method and r["setting"]["task"] == task:
                by_lr.setdefault(r["setting"]["lr"], []).append(100 * r["best"]["dev"]["validation"][r["main"]["metric"]])
        lr, scores = max(by_lr.items(), key=lambda kv: (statistics.fmean(kv[1]), -kv[0]))
        cell = cells[(method, task)]
        assert float(cell["lr"]) == lr
        assert float(cell["mean"]) == pytest.approx(statistics.fmean(scores), abs=1e-3)
        assert float(cell["std"]) == pytest.approx(statistics.stdev(scores), abs=1e-3)
        assert f"{statistics.fmean(scores):.1f}±{statistics.stdev(scores):.1f}" in tables.stdout
    assert (out / "ours.md").is_file() and (out / "ours.tex").is_file()


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_prefetch_then_offline_run(tmp_path, glue_dir):
    data, models = tmp_path / "glue", tmp_path / "models"
    code = "from bitfit_exp.commands.prefetch import prefetch; prefetch()"
    out = subprocess.run([sys.executable, "-c", code, "model=minilm", "tasks=[rte,stsb]", f"data.dir={data}",
                          f"data.from_dir={GLUE}", f"models_dir={models}"], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (data / "rte").iterdir()) == ["test.parquet", "train.parquet", "validation.parquet"]
    assert (models / "minilm" / "config.json").is_file()
    assert f"model.name_or_path={models / 'minilm'}" in out.stdout
    run = cli("run", f"model.name_or_path={models / 'minilm'}", f"data.dir={data}", "task=stsb", "seeds=[0]",
              f"runs_dir={tmp_path / 'runs'}", "train.epochs=1", "data.max_train_samples=16",
              "data.max_eval_samples=16", "data.train_eval_samples=16", "data.max_length=32")
    assert run.returncode == 0, run.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("**/record.json")]
    assert set(record["best"]["dev"]["validation"]) == {"spearman", "pearson"}
    # Same encoder weights as the packaged model: the bias count is MiniLM's.
    assert record["params"]["trainable_encoder"] == 26112 and record["config"]["method"]["name"] == "bitfit"
    tsv = (tmp_path / "runs").glob("**/STS-B.tsv")
    rows = next(tsv).read_text().splitlines()
    assert rows[0] == "index\tprediction" and all(0 <= float(r.split("\t")[1]) <= 5 for r in rows[1:])


def test_prefetch_offline_without_source_is_one_line(tmp_path):
    code = "from bitfit_exp.commands.prefetch import prefetch; prefetch()"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = subprocess.run([sys.executable, "-c", code, "model=minilm", "tasks=[rte]", f"data.dir={tmp_path}"],
                         capture_output=True, text=True, env=ENV, cwd=cwd)
    assert out.returncode == 2 and "error: cannot load nyu-mll/glue/rte" in out.stderr
    assert list(cwd.iterdir()) == []  # Hydra's job log (once cli.log, committed by accident) stays out of the cwd
    assert MINILM  # the packaged model needs no hub; only the data source failed
