"""A task of one's own (docs/custom-tasks.md): a task YAML in the user's config folder pointing at CSV or JSON Lines
files, run with `bitfit-run --config-dir`; data.dev_fraction carving a missing dev split; one line per bad file."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import compose, sst2_rows, task_yaml
from omegaconf import OmegaConf

from bitfit_exp.data import load_splits
from bitfit_exp.errors import UserError
from bitfit_exp.schema import problems

RUN = [sys.executable, "-c", "from bitfit_exp.cli import run; run()"]
PREFETCH = [sys.executable, "-c", "from bitfit_exp.cli import prefetch; prefetch()"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
def bitfit_run(root, *overrides, command=RUN):
    args = ["--config-dir", str(root / "my-conf"), f"data.dir={root / 'data'}", f"runs_dir={root / 'runs'}",
            "data.max_length=32", "train.progress=false", "seeds=[0]", *overrides]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=ENV, timeout=600, cwd=root)


def the_record(runs_dir, task: str) -> dict:
    (path,) = runs_dir.glob(f"*/{task}/*/*/seed0/record.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("task", ["my_csv", "my_jsonl"])
def test_a_user_task_runs_and_resumes_through_config_dir(task, user_conf, tiny_bert_dir):
    extra = ["data.dev_fraction=0.25"] if task == "my_jsonl" else []
    first = bitfit_run(user_conf, f"task={task}", f"model.name_or_path={tiny_bert_dir}", "optim.lr=0.01", *extra)
    assert first.returncode == 0, first.stderr
    record = the_record(user_conf / "runs", task)
    assert record["status"] == "finished" and record["columns"] == {"validation": task}
    assert record["sizes"] == ({"train": 24, "train_examples": 24, "train_probe": 24, "validation": 12}
                               if task == "my_csv" else
                               {"train": 24, "train_examples": 24, "train_probe": 24, "validation": 8})
    carved = "note: task my_jsonl has no validation split: train (32 rows) split into train (24 rows) and " \
             "validation (8 rows) by a seeded draw (data.dev_fraction 0.25, data.dev_seed 0)"
    assert (carved in first.stdout) == (task == "my_jsonl")

    again = bitfit_run(user_conf, f"task={task}", f"model.name_or_path={tiny_bert_dir}", "optim.lr=0.01", *extra)
    assert again.returncode == 0, again.stderr
    assert "1 seeds, 1 already finished" in again.stdout  # same data fingerprint: the same setting folder
    assert the_record(user_conf / "runs", task) == record

    from bitfit_exp.tables import main as tables

    assert tables(["--runs-dir", str(user_conf / "runs"), "--table", "ours", "--out", str(user_conf / "t")]) == 0
    header = (user_conf / "t" / "ours.md").read_text().splitlines()[2]
    assert header.endswith(f"| QQP | {task} | Avg |")


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_a_user_task_packs_and_plots_like_glue(user_conf, tiny_bert_dir):
    from bitfit_exp.plots import main as plot

    out = bitfit_run(user_conf, "task=my_csv", f"model.name_or_path={tiny_bert_dir}", "optim.lr=0.01",
                     "seeds=[0,1]", "train.packed=true")
    assert out.returncode == 0, out.stderr
    assert "packed x2:" in out.stdout and "over 2 seeds" in out.stdout
    assert plot(["all", "--runs-dir", str(user_conf / "runs"), "--out", str(user_conf / "figures")]) == 0
    assert list((user_conf / "figures").glob("bias_change_*my_csv*.png"))
    assert list((user_conf / "figures" / "curves").glob("curves_*my_csv*.png"))


def test_the_early_check_composes_with_the_users_folder(user_conf, tiny_bert_dir):
    bad = bitfit_run(user_conf, "task=my_csv", "task.label_names=[negative]")
    assert bad.returncode == 2
    assert bad.stderr == "error: task.label_names=['negative'] is not valid: 1 names for task.num_labels=2\n"
    assert not (user_conf / "runs").exists()  # refused before Hydra wrote its output folder
    missing = bitfit_run(user_conf, "task=nope")
    assert missing.returncode == 2 and missing.stderr.startswith("error: In 'config': Could not find 'task/nope'; ")
    assert "my_csv, my_jsonl" in missing.stderr

    from bitfit_exp.plan import valid_jobs

    ((_, cfg),) = valid_jobs(["task=my_jsonl", f"hydra.searchpath=[file://{user_conf / 'my-conf'}]"], sweep=False)
    assert cfg.task.label_field == "sentiment" and cfg.data.dev_fraction is None


def test_prefetch_saves_a_user_task_as_read(user_conf, tiny_bert_dir):
    out = user_conf / "prefetched"
    args = ["--config-dir", str(user_conf / "my-conf"), "task=my_csv", f"data.dir={out}",
            f"data.from_dir={user_conf / 'data'}", f"models_dir={user_conf / 'models'}",
            f"model.name_or_path={tiny_bert_dir}"]
    done = subprocess.run([*PREFETCH, *args], capture_output=True, text=True, env=ENV, timeout=600, cwd=user_conf)
    assert done.returncode == 0, done.stderr
    assert f"my_csv: train (24), validation (12) -> {out / 'my_csv'}" in done.stdout
    saved = pq.read_table(out / "my_csv" / "train.parquet").to_pandas()
    assert saved.equals(sst2_rows(0, 24))  # the rows and columns as read, label names included


def splits_of(task: dict, data_dir, **data):
    return load_splits(OmegaConf.create(task), OmegaConf.create({"dir": str(data_dir), "hub_name": "unused", **data}))


def test_dev_fraction_carves_a_seeded_disjoint_dev_split_and_says_so(user_conf, capsys):
    task = task_yaml("my_jsonl", {"train": "train.jsonl"})
    first = splits_of(task, user_conf / "data", dev_fraction=0.25, dev_seed=0)
    assert "train (32 rows) split into train (24 rows) and validation (8 rows)" in capsys.readouterr().out
    again = splits_of(task, user_conf / "data", dev_fraction=0.25, dev_seed=0)
    other = splits_of(task, user_conf / "data", dev_fraction=0.25, dev_seed=1)
    whole = sst2_rows(100, 32)["sentence"].tolist()
    train, dev = list(first["train"]["sentence"]), list(first["validation"]["sentence"])
    assert sorted(train + dev) == sorted(whole) and not set(train) & set(dev)
    assert dev == list(again["validation"]["sentence"]) and dev != list(other["validation"]["sentence"])
    assert train == [s for s in whole if s not in dev]  # rows keep their order

    with pytest.raises(UserError, match=r"^task my_jsonl has no file for split validation in task.files \(it names "
                                        r"train\); carve validation from train with data.dev_fraction=0.1"):
        splits_of(task, user_conf / "data", dev_fraction=None)
    has_dev = task_yaml("my_csv", {"train": "train.csv", "validation": "dev.csv"})
    with pytest.raises(UserError, match=r"^data.dev_fraction=0.25 carves a validation split from train, but task "
                                        r"my_csv has its own validation split \(12 rows\); drop one"):
        splits_of(has_dev, user_conf / "data", dev_fraction=0.25)


def write(path, text: str):
    path.write_text(text)
    return path.name


BAD_FILES = {  # file name, content, the one line (after the path)
    "missing_column": ("t.csv", "text,sentiment\na,negative\n",
                       "has columns text, sentiment; task my_task needs sentence, sentiment; missing: sentence"),
    "unknown_label": ("t.csv", "sentence,sentiment\na,negative\nb,neutral\nc,positive\nd,neutral\n",
                      "sentiment 'neutral' is not one of task.label_names (negative, positive) at row 1, 2 of 4 "
                      "rows in all"),
    "label_id_out_of_range": ("t.jsonl", '{"sentence": "a", "sentiment": 0}\n{"sentence": "b", "sentiment": 2}\n',
                              "sentiment must be 0..1 but is 2 at row 1, 1 of 2 rows in all"),
    "empty_split": ("t.csv", "sentence,sentiment\n", "has no rows"),
    "text_not_text": ("t.jsonl", '{"sentence": 3, "sentiment": "negative"}\n', "text field sentence holds int64, "
                      "not text"),
    "not_json_lines": ("t.jsonl", '[{"sentence": "a"}]\n', "is not a readable JSON Lines file: "),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_task_file_is_one_line(case, tmp_path):
    name, content, message = BAD_FILES[case]
    write(tmp_path / name, content)
    task = task_yaml("my_task", {"train": name}, eval_splits={"validation": "my_task"})
    with pytest.raises(UserError) as caught:
        splits_of(task, tmp_path, dev_fraction=0.5)
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"{tmp_path / name}: {message}")
    assert line.endswith("(fix the file or task.files.train)")


def test_bad_paths_in_task_files(tmp_path):
    def error(files: dict) -> str:
        with pytest.raises(UserError) as caught:
            splits_of(task_yaml("my_task", files), tmp_path, dev_fraction=0.5)
        return str(caught.value)

    write(tmp_path / "t.xlsx", "x")
    assert error({"train": "nope.csv"}) == f"task my_task: task.files.train={tmp_path / 'nope.csv'} does not exist"
    assert error({"train": "t.xlsx"}).startswith(f"task my_task: task.files.train={tmp_path / 't.xlsx'} has an "
                                                 f"unknown format; name it by its format: .csv, .tsv, .jsonl")
    assert error({"train": "t.xlsx", "dev": "t.xlsx"}) == (
        "task.files names split dev, which task my_task does not read; its splits: train, eval_splits "
        "(validation), test_splits (none)")


def test_a_bad_file_through_bitfit_run_is_one_line_and_exit_2(user_conf):
    (user_conf / "data" / "train.csv").write_text("sentence,sentiment\nfine,positive\ndull,awful\n")
    out = bitfit_run(user_conf, "task=my_csv", "model=minilm")
    assert out.returncode == 2
    assert out.stderr == (f"error: {user_conf / 'data' / 'train.csv'}: sentiment 'awful' is not one of "
                          f"task.label_names (negative, positive) at row 1, 1 of 2 rows in all (fix the file or "
                          f"task.files.train)\n")


NO_TEST = ["~task.test_splits", "+task.test_splits={}"]


def test_the_schema_knows_the_custom_task_keys():
    assert problems(compose("task=sst2", "+task.files={train:a.csv,validation:b.jsonl}", "+task.label_field=y",
                            "data.dev_fraction=0.2", "data.dev_seed=3")) == []
    assert problems(compose("task=stsb", "~task.label_names", *NO_TEST, "~task.test_labels")) == []
    assert problems(compose("task=sst2", "+task.files={}", "+task.label_field=''", "data.dev_fraction=1.5",
                            "data.dev_seed=-1", "task.num_labels=3", *NO_TEST,
                            "~task.test_labels")) == [
        "task.files={} is not valid; expected a non-empty mapping of names to non-empty strings",
        "task.label_field='' is not valid; expected a non-empty string",
        "data.dev_fraction=1.5 is not valid; expected null or a finite number in (0, 1)",
        "data.dev_seed=-1 is not valid; expected an integer >= 0",
        "task.label_names=['negative', 'positive'] is not valid: 2 names for task.num_labels=3"]
    assert problems(compose("task=sst2", "~task.test_labels")) == [
        "task.test_labels is missing; a sequence task needs it"]


def test_a_user_task_from_a_dataset_repository(user_conf, tiny_bert_dir):
    # `hub_name` goes to datasets.load_dataset as it is: a hub id for users, here a local folder in the layout of a
    # hub dataset repository (split names from the file names), which is the same code path without the network.
    repo = user_conf / "reviews-dataset"
    repo.mkdir()
    sst2_rows(0, 24).to_csv(repo / "train.csv", index=False)
    sst2_rows(24, 12).to_csv(repo / "validation.csv", index=False)
    task = {k: v for k, v in task_yaml("my_hub", {}).items() if k != "files"}
    (user_conf / "my-conf" / "task" / "my_hub.yaml").write_text(yaml.safe_dump({**task, "hub_name": str(repo)}))
    out = bitfit_run(user_conf, "task=my_hub", "data.dir=null", f"model.name_or_path={tiny_bert_dir}", "optim.lr=0.01")
    assert out.returncode == 0, out.stderr
    record = the_record(user_conf / "runs", "my_hub")
    assert record["status"] == "finished" and record["sizes"]["train"] == 24 and record["sizes"]["validation"] == 12


def test_a_task_file_that_is_not_yaml_is_one_line(user_conf):
    (user_conf / "my-conf" / "task" / "broken.yaml").write_text("name: broken\nfiles: [train.csv\n")
    out = bitfit_run(user_conf, "task=broken")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (f"error: {user_conf / 'my-conf' / 'task' / 'broken.yaml'}, line 3: not valid YAML "
                          f"(expected ',' or ']', but got '<stream end>')\n")


def test_config_dir_with_a_tilde_reaches_hydra_expanded(user_conf):
    # `--config-dir=~/my-conf`: no shell expands this `~`, and Hydra does not either.
    args = [*RUN, "--config-dir=~/my-conf", "task=my_csv", f"data.dir={user_conf / 'data'}", "--cfg", "job"]
    out = subprocess.run(args, capture_output=True, text=True, env={**ENV, "HOME": str(user_conf)}, timeout=300,
                         cwd=user_conf / "data")
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["task"]["label_field"] == "sentiment"
