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

from bitfit_exp.config.schema import problems
from bitfit_exp.core.errors import UserError
from bitfit_exp.kinds.splits import load_splits

RUN = [sys.executable, "-c", "from bitfit_exp.commands.run import run; run()"]
PREFETCH = [sys.executable, "-c", "from bitfit_exp.commands.prefetch import prefetch; prefetch()"]
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

    from bitfit_exp.commands.tables import main as tables

    assert tables(["--runs-dir", str(user_conf / "runs"), "--table", "ours", "--out", str(user_conf / "t")]) == 0
    header = (user_conf / "t" / "ours.md").read_text().splitlines()[2]
    assert header.endswith(f"| QQP | {task} | Avg |")


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_a_user_task_packs_and_plots_like_glue(user_conf, tiny_bert_dir):
    from bitfit_exp.commands.plot import main as plot

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

    from bitfit_exp.config.compose import valid_jobs

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
                      "sentiment 'neutral' is not one of task.label_names (negative, positive) nor an id 0..1 at "
                      "row 1, 2 of 4 rows in all"),
    "label_id_text_out_of_range": ("t.csv", "sentence,sentiment\na,negative\nb,2\n",
                                   "sentiment '2' is not one of task.label_names (negative, positive) nor an id 0..1 "
                                   "at row 1, 1 of 2 rows in all"),
    "blank_train_label": ("t.csv", "sentence,sentiment\na,negative\nb,\n", "sentiment is null at row 1, 1 of 2 "
                          "rows in all"),
    "label_id_out_of_range": ("t.jsonl", '{"sentence": "a", "sentiment": 0}\n{"sentence": "b", "sentiment": 2}\n',
                              "sentiment must be 0..1 but is 2 at row 1, 1 of 2 rows in all"),
    "empty_split": ("t.csv", "sentence,sentiment\n", "has no rows"),
    "text_not_text": ("t.jsonl", '{"sentence": 3, "sentiment": "negative"}\n', "text field sentence holds int64, "
                      "not text"),
    "not_json_lines": ("t.jsonl", '[{"sentence": "a"}]\n', "is not a readable JSON Lines file: "),
    "column_twice": ("t.csv", "sentence,sentence,sentiment\na,b,negative\n", "has column sentence more than once"),
    "idx_empty": ("t.csv", "sentence,sentiment,idx\na,negative,0\nb,positive,\n",
                  "idx is empty at row 1, 1 of 2 rows in all"),
    "idx_twice": ("t.csv", "sentence,sentiment,idx\na,negative,3\nb,positive,3\n",
                  "idx repeats values; it must name each row once"),
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
                          f"task.label_names (negative, positive) nor an id 0..1 at row 1, 1 of 2 rows in all (fix "
                          f"the file or task.files.train)\n")


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


# Reading a user's files: what each format means (docs/custom-tasks.md, "File formats").
def texts_and_labels(splits: dict, split: str = "train") -> tuple[list, list]:
    rows = splits[split]
    return list(rows["sentence"]), list(rows["sentiment"]) if "sentiment" in rows.column_names else None


def test_a_tsv_file_has_no_quoting_and_a_csv_file_has_rfc4180_quoting(tmp_path):
    # GLUE's TSV files are plain: a sentence may start with a quote that is not closed on the line.
    write(tmp_path / "t.tsv", 'sentence\tsentiment\n"Hello," she said\tpositive\n"unclosed\tnegative\n'
                              'a ""b""\tpositive\n')
    write(tmp_path / "t.csv", 'sentence,sentiment\n"a, fine\nfilm",positive\n"say ""hi""",negative\n')
    assert texts_and_labels(splits_of(task_yaml("t", {"train": "t.tsv", "validation": "t.tsv"}), tmp_path)) == (
        ['"Hello," she said', '"unclosed', 'a ""b""'], ["positive", "negative", "positive"])
    assert texts_and_labels(splits_of(task_yaml("t", {"train": "t.csv", "validation": "t.csv"}), tmp_path)) == (
        ["a, fine\nfilm", 'say "hi"'], ["positive", "negative"])


def test_test_files_may_leave_labels_empty(tmp_path):
    write(tmp_path / "train.csv", "sentence,sentiment\na,positive\nb,negative\n")
    write(tmp_path / "none.csv", "sentence,sentiment\nx,\ny,\n")  # an empty label column: typed null
    write(tmp_path / "some.csv", "sentence,sentiment\nx,positive\ny,\n")
    write(tmp_path / "ids.csv", "sentence,label\nx,\ny,\n")
    tests = {"test_splits": {"test": "t.tsv"}, "test_labels": "names"}
    for test, labels in [("none.csv", None), ("some.csv", ["positive", None])]:
        splits = splits_of(task_yaml("t", {"train": "train.csv", "validation": "train.csv", "test": test},
                                     **tests), tmp_path)
        assert texts_and_labels(splits, "test") == (["x", "y"], labels)
    no_names = task_yaml("t", {"train": "train.csv", "validation": "train.csv", "test": "ids.csv"}, **tests,
                         label_field="label")
    no_names.pop("label_names")
    (tmp_path / "train.csv").write_text("sentence,label\na,1\nb,0\n")
    assert splits_of(no_names, tmp_path)["test"].column_names == ["sentence"]
    with pytest.raises(UserError, match=r"ids\.csv: label is null at row 0, 2 of 2 rows in all"):
        splits_of({**no_names, "files": {"train": "ids.csv", "validation": "train.csv"}}, tmp_path)


@pytest.mark.parametrize("names, cells, loaded", [
    (["1", "2"], ["1", "2", "2"], ["1", "2", "2"]),              # names that look like numbers stay names
    (["false", "true"], ["true", "false", "true"], ["true", "false", "true"]),
    (["negative", "positive"], ["0", "1", "1"], [0, 1, 1]),      # ids with label_names: ids, as before
    (["negative", "positive"], ["0", "positive", "1"], [0, 1, 1]),  # a mix: ids
])
def test_csv_labels_are_names_first_then_ids(names, cells, loaded, tmp_path):
    write(tmp_path / "t.csv", "sentence,sentiment\n" + "".join(f"{i}{i},{c}\n" for i, c in enumerate(cells)))
    splits = splits_of(task_yaml("t", {"train": "t.csv", "validation": "t.csv"}, label_names=names), tmp_path)
    assert texts_and_labels(splits) == (["00", "11", "22"], loaded)  # digits in a text field are text
    from bitfit_exp.kinds.sequence import label_values

    positions = [names.index(c) if c in names else int(c) for c in cells]
    assert label_values(loaded, {"num_labels": 2, "label_names": names}).tolist() == positions


def test_categorical_parquet_columns_are_read_as_their_values(tmp_path):
    import pandas as pd

    pd.DataFrame({"sentence": pd.Categorical(["a", "b"]),
                  "sentiment": pd.Categorical(["positive", "negative"])}).to_parquet(tmp_path / "t.parquet")
    splits = splits_of(task_yaml("t", {"train": "t.parquet", "validation": "t.parquet"}), tmp_path)
    assert texts_and_labels(splits) == (["a", "b"], ["positive", "negative"])


def test_shards_with_ids_in_one_file_and_names_in_another(tmp_path):
    (tmp_path / "shards").mkdir()
    write(tmp_path / "shards" / "a.csv", "sentence,sentiment,note\na,0,1\nb,1,2\n")
    write(tmp_path / "shards" / "b.csv", "sentence,sentiment,note\nc,positive,3\nd,negative,4\n")
    splits = splits_of(task_yaml("t", {"train": "shards", "validation": "shards"}), tmp_path)
    assert texts_and_labels(splits) == (["a", "b", "c", "d"], [0, 1, 1, 0])
    write(tmp_path / "shards" / "b.csv", "sentence,sentiment,note\nc,positive,x\n")
    with pytest.raises(UserError) as caught:
        splits_of(task_yaml("t", {"train": "shards", "validation": "shards"}), tmp_path)
    assert str(caught.value) == (f"task t: the files in {tmp_path / 'shards'} (task.files.train): column note holds "
                                 f"different types in different files (int64 in a.csv; string in b.csv); give it "
                                 f"one type in every file")


@pytest.mark.parametrize("name", ["t.jsonl", "t.csv"])
def test_text_that_is_not_utf8_is_one_line(name, tmp_path):
    lines = ['{"sentence": "caf\xe9", "sentiment": "positive"}', '{"sentence": "b", "sentiment": "negative"}'] \
        if name.endswith("jsonl") else ["sentence,sentiment", "b,negative", "caf\xe9,positive"]
    (tmp_path / name).write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    with pytest.raises(UserError) as caught:
        splits_of(task_yaml("t", {"train": name}), tmp_path, dev_fraction=0.5)
    row = 0 if name.endswith("jsonl") else 1
    assert str(caught.value) == (f"{tmp_path / name}: column sentence is not UTF-8 text at row {row}, 1 of 2 rows "
                                 f"in all; save the file as UTF-8 (fix the file or task.files.train)")


def test_a_hub_dataset_is_checked_like_files(tmp_path):
    repo = tmp_path / "reviews-dataset"
    repo.mkdir()
    write(repo / "train.csv", "text,sentiment\na,positive\nb,negative\n")
    write(repo / "validation.csv", "text,sentiment\nc,positive\nd,awful\n")
    task = {k: v for k, v in task_yaml("my_hub", {}).items() if k != "files"}

    def error(**change) -> str:
        with pytest.raises(UserError) as caught:
            load_splits(OmegaConf.create({**task, "hub_name": str(repo), **change}),
                        OmegaConf.create({"dir": None, "hub_name": "nyu-mll/glue"}))
        return str(caught.value)

    fix = "(fix the dataset, or task my_hub's text_fields, label_field, label_names)"
    assert error() == (f"{repo} split train: has columns text, sentiment; task my_hub needs sentence, sentiment; "
                       f"missing: sentence {fix}")
    assert error(text_fields=["text"], label_field="label") == (
        f"{repo} split train: has columns text, sentiment; task my_hub needs text, label; missing: label {fix}")
    assert error(text_fields=["text"]) == (
        f"{repo} split validation: sentiment 'awful' is not one of task.label_names (negative, positive) nor an "
        f"id 0..1 at row 1, 1 of 2 rows in all {fix}")
