"""Bad files give one line naming the file or folder and what is wrong, never a traceback: damaged GLUE parquet
splits, broken model folders, an unusable runs_dir."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import GLUE, REPO, quick
from omegaconf import OmegaConf

from bitfit_exp.core.errors import UserError
from bitfit_exp.data.checks import check_split_file
from bitfit_exp.kinds.splits import load_splits
from bitfit_exp.model.loading import RESAVE, load_model, load_tokenizer
from bitfit_exp.results.records import check_runs_dir

RUN = [sys.executable, "-c", "from bitfit_exp.commands.run import run; run()"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
ROWS = 24  # rows kept of each real split


def task_config(name: str):
    return OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml")


def small_glue(root: Path, task: str) -> Path:
    """The first ROWS rows of every local split of `task`, as <root>/<task>/<split>.parquet."""
    (root / task).mkdir(parents=True)
    for source in sorted((GLUE / task).glob("*.parquet")):
        pq.write_table(pq.read_table(source).slice(0, ROWS), root / task / source.name)
    return root


def fix(task: str, root: Path) -> str:
    return f"(fix the file or fetch the task again with `bitfit-prefetch task={task} data.dir={root}`)"


# Damages: each rewrites one parquet file in place.
def random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(3000))


def truncated(path):
    path.write_bytes(path.read_bytes()[:-200])


def empty(path):
    path.write_bytes(b"")


def no_rows(path):
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 0), path)


def set_column(name, values):
    def damage(path):
        table = pq.read_table(path)
        pq.write_table(table.set_column(table.schema.get_field_index(name), name, values(table)), path)
    return damage


def set_labels(rows, value):
    def values(table):
        labels = table["label"].to_numpy().copy()
        labels[rows] = value
        return pa.array(labels)
    return set_column("label", values)


def rename(old, new):
    def damage(path):
        table = pq.read_table(path)
        pq.write_table(table.rename_columns([new if c == old else c for c in table.column_names]), path)
    return damage


NOT_PARQUET = ("is not a readable parquet file: ArrowInvalid: Parquet magic bytes not found in footer. Either the "
               "file is corrupted or this is not a parquet file.")
# (task, split, damage, what is wrong): every case the CLI must answer with `error: <file>: <what> (<fix>)`.
SPLIT_CASES = {
    "train_random_bytes": ("rte", "train", random_bytes, NOT_PARQUET),
    "dev_truncated": ("rte", "validation", truncated, NOT_PARQUET),
    "train_empty_file": ("rte", "train", empty, "is empty (0 bytes)"),
    "dev_no_rows": ("rte", "validation", no_rows, "has no rows"),
    "train_missing_column": ("rte", "train", rename("sentence2", "hypothesis"),
                             "has columns sentence1, hypothesis, label, idx; task rte needs sentence1, sentence2, "
                             "label, idx; missing: sentence2"),
    "dev_text_is_ints": ("rte", "validation", set_column("sentence1", lambda t: pa.array(range(len(t)))),
                         "text field sentence1 holds int64, not text"),
    "train_label_out_of_range": ("rte", "train", set_labels([3, 5], 7), "label must be 0..1 but is 7 at row 3, "
                                 "2 of 24 rows in all"),
    "dev_label_minus_one": ("rte", "validation", set_labels([4], -1), "label must be 0..1 but is -1 at row 4, "
                            "1 of 24 rows in all"),
    "test_label_out_of_range": ("rte", "test", set_labels([2], 5), "label must be 0..1 or -1 for unlabelled rows "
                                "but is 5 at row 2, 1 of 24 rows in all"),
    "regression_label_nan": ("stsb", "train", set_labels([1, 6, 9], np.nan), "label must be a finite number but is "
                             "nan at row 1, 3 of 24 rows in all"),
}


def damaged_glue(root: Path, case: str) -> tuple[Path, Path, str]:
    """A small GLUE copy under `root` with the case's file damaged; returns (data.dir, that file, the full line)."""
    task, split, damage, what = SPLIT_CASES[case]
    glue = small_glue(root / "glue", task)
    path = glue / task / f"{split}.parquet"
    damage(path)
    return glue, path, f"error: {path}: {what} {fix(task, glue)}"


# One subprocess runs `bitfit-run`'s entry point once per case (a process per case would spend ~10 s each starting
# torch), keeping each run's exit code and everything it wrote to stderr, a traceback included.
DRIVER = """
import contextlib, io, json, sys, traceback
from bitfit_exp.commands.run import run
jobs, answers_file, answers = json.loads(sys.argv[1]), sys.argv[2], []
for args in jobs:
    sys.argv, stderr = ["bitfit-run", *args], io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            run()
            code = 0
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = 1
    answers.append([code, stderr.getvalue()])
with open(answers_file, "w") as f:
    json.dump(answers, f)
"""


@pytest.fixture(scope="module")
def cli_answers(tmp_path_factory, tiny_bert_dir, glue_dir) -> dict[str, tuple]:
    """Every SPLIT_CASES case through `bitfit-run`: {case: (expected stderr line, exit code, stderr, runs_dir)}."""
    cases, expected, runs, args = list(SPLIT_CASES), {}, {}, []
    for case in cases:
        root = tmp_path_factory.mktemp(case)
        glue, _, expected[case] = damaged_glue(root, case)
        runs[case] = root / "runs"
        overrides = quick(tiny_bert_dir, runs[case], f"task={SPLIT_CASES[case][0]}", f"data.dir={glue}")
        args.append([o for o in overrides if o != f"data.dir={GLUE}"])
    answers = tmp_path_factory.mktemp("answers") / "answers.json"
    out = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args), str(answers)], capture_output=True,
                         text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr
    return {case: (expected[case], code, stderr, runs[case])
            for case, (code, stderr) in zip(cases, json.loads(answers.read_text()), strict=True)}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_bad_split_file_is_one_line_through_the_cli(case, cli_answers):
    line, code, stderr, runs_dir = cli_answers[case]
    assert code == 2, stderr
    assert stderr == line + "\n"  # exactly one line, naming the file; so no traceback either
    assert not list(runs_dir.glob("**/record.json"))


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_load_splits_names_the_damaged_file(case, tmp_path, glue_dir):
    glue, path, line = damaged_glue(tmp_path, case)
    task = task_config(SPLIT_CASES[case][0])
    with pytest.raises(UserError) as e:
        load_splits(task, OmegaConf.create({"dir": str(glue), "hub_name": "unused"}))
    assert f"error: {e.value}" == line


def test_damaged_pages_behind_a_good_footer(tmp_path, glue_dir):
    path = small_glue(tmp_path, "rte") / "rte" / "train.parquet"
    data = bytearray(path.read_bytes())
    data[4:1004] = bytes(1000)  # the first column chunk's page headers, zeroed; the footer still parses
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"^\S+/rte/train\.parquet: is not a readable parquet file: OSError: ") as e:
        check_split_file(path, task_config("rte"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage, what", [
    (set_column("label", lambda t: pa.array(["yes"] * len(t))), "label holds string, not numbers"),
    (set_column("label", lambda t: pa.array([None, 1, None] + [0] * (len(t) - 3), pa.int64())),
     "label is null at row 0, 2 of 24 rows in all"),
    (set_column("label", lambda t: pa.array([0.5] + [1.0] * (len(t) - 1))), "label must be 0..1 but is 0.5 at row 0, "
                                                                            "1 of 24 rows in all"),
    (set_column("sentence2", lambda t: pa.array(["a", None] * (len(t) // 2))),
     "text field sentence2 is null at row 1, 12 of 24 rows in all"),
    (set_column("idx", lambda t: pa.array(["x"] * len(t))), "idx holds string, not integers"),
])
def test_more_bad_columns(damage, what, tmp_path, glue_dir):
    path = small_glue(tmp_path, "rte") / "rte" / "train.parquet"
    damage(path)
    with pytest.raises(UserError) as e:
        check_split_file(path, task_config("rte"), fix="fix it")
    assert str(e.value) == f"{path}: {what} (fix it)"


def test_unlabelled_test_rows_and_whole_float_labels_pass(tmp_path, glue_dir):
    path = small_glue(tmp_path, "rte") / "rte" / "test.parquet"
    assert set(pq.read_table(path)["label"].to_pylist()) == {-1}  # GLUE hides test labels
    check_split_file(path, task_config("rte"), test=True)
    with pytest.raises(UserError, match="label must be 0..1 but is -1 at row 0, 24 of 24 rows in all"):
        check_split_file(path, task_config("rte"), test=False)
    set_column("label", lambda t: pa.array([0.0, 1.0] * (len(t) // 2)))(path)
    check_split_file(path, task_config("rte"))


def test_every_local_glue_split_passes(glue_dir):
    paths = sorted(glue_dir.glob("*/*.parquet"))
    assert len(paths) >= 20
    for path in paths:
        task = task_config(path.parent.name)
        check_split_file(path, task, test=path.stem in task.test_splits)


# Model folders: each damage breaks one file of a copy of the tiny BERT checkpoint.
def write_config(change):
    def damage(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(change(config)))
    return damage


def without(key):
    return lambda config: {k: v for k, v in config.items() if k != key}


def to_pytorch_bin(folder, keep=None):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[:keep])


def remove_tokenizer(folder):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()


@pytest.fixture
def model_copy(tmp_path, tiny_bert_dir) -> Path:
    return Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))


# (damage, file the message names relative to the folder, what is wrong, what to do)
MODEL_CASES = {
    "config_not_json": (lambda f: (f / "config.json").write_text("{oops"), "config.json",
                        "is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
                        RESAVE),
    "config_a_list": (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json",
                      "holds a JSON list, not an object", RESAVE),
    "config_without_model_type": (write_config(without("model_type")), "config.json", "has no model_type", RESAVE),
    "config_unknown_model_type": (write_config(lambda c: {**c, "model_type": "bertish"}), "config.json",
                                  "model_type 'bertish' is unknown to transformers",
                                  "fix it, e.g. bert or roberta, or install a transformers that has it"),
    "no_weights": (lambda f: (f / "model.safetensors").unlink(), "",
                   "has no weights file; expected one of model.safetensors, model.safetensors.index.json, "
                   "pytorch_model.bin, pytorch_model.bin.index.json", RESAVE),
    "weights_random_bytes": (lambda f: random_bytes(f / "model.safetensors"), "model.safetensors",
                             "is not a readable weights file: SafetensorError: Error while deserializing header: "
                             "header too large", RESAVE),
    "weights_truncated": (lambda f: truncated(f / "model.safetensors"), "model.safetensors",
                          "is not a readable weights file: SafetensorError: Error while deserializing header: "
                          "incomplete metadata, file not fully covered", RESAVE),
    "tokenizer_not_json": (lambda f: (f / "tokenizer.json").write_text("{oops"), "",
                           "its tokenizer cannot be loaded: JSONDecodeError: Expecting property name enclosed in "
                           "double quotes: line 1 column 2 (char 1)", None),
    "tokenizer_json_wrong_shape": (lambda f: (f / "tokenizer.json").write_text('{"version": "1.0"}'), "",
                                   "its tokenizer cannot be loaded: KeyError: 'added_tokens'", None),
    "no_tokenizer_files": (remove_tokenizer, "", "its tokenizer has no vocabulary, only 5 special tokens; tokenizer "
                           "files such as tokenizer.json or vocab.txt are missing", None),
}
TOKENIZER_FIX = "save a working one there with tokenizer.save_pretrained() or `bitfit-prefetch`"


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_broken_model_folder_names_the_file(case, model_copy):
    damage, name, what, todo = MODEL_CASES[case]
    damage(model_copy)
    with pytest.raises(UserError) as e:
        load_tokenizer(str(model_copy))  # the runner loads the tokenizer first, before any data
    named = model_copy / name if name else model_copy
    message = str(e.value)
    assert message.startswith(f"{named}: {what}")
    assert message.endswith(f" ({todo or TOKENIZER_FIX})") and "\n" not in message


@pytest.mark.parametrize("keep", [None, 3000])
def test_damaged_pytorch_bin_weights(keep, model_copy):
    to_pytorch_bin(model_copy, keep)
    if keep is None:  # the intact .bin loads: the check does not reject a good legacy checkpoint
        assert load_model(str(model_copy), 2).num_labels == 2
        return
    with pytest.raises(UserError) as e:
        load_model(str(model_copy), 2)
    assert str(e.value).startswith(f"{model_copy / 'pytorch_model.bin'}: cannot be loaded: RuntimeError: "
                                   "PytorchStreamReader failed reading zip archive")
    assert str(e.value).endswith(f" ({RESAVE})") and "\n" not in str(e.value)


def test_broken_model_through_the_cli(tmp_path, model_copy, glue_dir):
    (model_copy / "config.json").write_text("{oops")
    out = subprocess.run([*RUN, *quick(model_copy, tmp_path / "runs")], capture_output=True, text=True, env=ENV,
                         timeout=600)
    assert out.returncode == 2
    assert out.stderr == (f"error: {model_copy / 'config.json'}: is not valid JSON: Expecting property name enclosed "
                          f"in double quotes: line 1 column 2 (char 1) ({RESAVE})\n")


# runs_dir
def test_runs_dir_is_created_and_returned(tmp_path):
    assert check_runs_dir(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    assert check_runs_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"  # an existing folder is fine
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write probe leaves nothing behind


def test_runs_dir_that_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("")
    with pytest.raises(UserError) as e:
        check_runs_dir(tmp_path / "runs")
    assert str(e.value) == f"{tmp_path / 'runs'}: runs_dir is not a folder (point runs_dir=... at a folder)"


def test_runs_dir_under_a_file_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as e:
        check_runs_dir(tmp_path / "file" / "runs")
    assert str(e.value) == (f"{tmp_path / 'file' / 'runs'}: runs_dir cannot be created or written: Not a directory "
                            f"(choose another runs_dir=... or fix its permissions)")


@pytest.fixture
def unwritable_folder(tmp_path):
    """An existing folder this process cannot create files in: a read-only one, or for root (whom chmod does not
    stop) /sys, where the kernel refuses new files."""
    if os.geteuid() != 0:
        folder = tmp_path / "runs"
        folder.mkdir(mode=0o555)
        yield folder
        folder.chmod(0o755)
    elif Path("/sys/kernel").is_dir():
        yield Path("/sys/kernel")
    else:
        pytest.skip("running as root without /sys: no folder root cannot write")


def test_runs_dir_that_cannot_be_written(unwritable_folder):
    with pytest.raises(UserError) as e:
        check_runs_dir(unwritable_folder)
    assert re.fullmatch(rf"{re.escape(str(unwritable_folder))}: runs_dir cannot be created or written: "
                        r"(Permission denied|Read-only file system) \(choose another runs_dir=\.\.\. or fix its "
                        r"permissions\)", str(e.value)), str(e.value)
