"""Hostile command lines and input files (issue #26, classes 3 and 7): a user's config file that a built-in one
would silently replace, `bitfit-tables`/`bitfit-plot --out` naming a file, `bitfit-plan --help`, seeds numpy cannot
take, and `bitfit-predict` input with a repeated column name or an empty text. Each is one line and exit 2 with
nothing written, or (the empty text) a prediction as bitfit-serve makes it."""

import subprocess

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import quick, task_yaml
from test_custom_tasks import ENV, PREFETCH
from test_schema import bitfit_run
from test_serve import fake_run
from test_tables import write_seeds

from bitfit_exp.commands import plan as plan_command
from bitfit_exp.commands.plot import main as plot
from bitfit_exp.commands.predict import main as predict
from bitfit_exp.commands.tables import main as tables
from bitfit_exp.config.compose import valid_jobs
from bitfit_exp.core.config_dir import conf_dir
from bitfit_exp.core.errors import UserError
from bitfit_exp.serving.engine import MultiTaskEngine, find_patches

# ------------------------------------------------------------------ a user's config file with a built-in's name


@pytest.fixture
def shadowing_conf(user_conf):
    """The user's config folder of conftest.user_conf, plus a task/rte.yaml of its own (CSV files, not GLUE's)."""
    rte = task_yaml("rte", {"train": "train.csv", "validation": "dev.csv"})
    (user_conf / "my-conf" / "task" / "rte.yaml").write_text(yaml.safe_dump(rte))
    return user_conf / "my-conf"


@pytest.mark.parametrize("spelling", ["--config-dir DIR", "-cd DIR", "--config-dir=DIR", "-cd=DIR",
                                      "hydra.searchpath=[file://DIR]"])
def test_a_user_config_that_a_builtin_hides_is_one_line(spelling, shadowing_conf, monkeypatch, capsys):
    # Hydra puts conf/ before the user's folder: task=rte would read the package's rte.yaml, not this one.
    runs = shadowing_conf.parent / "runs"
    args = spelling.replace("DIR", str(shadowing_conf)).split(" ")
    code, out, err = bitfit_run(monkeypatch, capsys, *args, "task=rte", f"data.dir={shadowing_conf.parent / 'data'}",
                                f"runs_dir={runs}", "model=minilm", "seeds=[0]")
    assert (code, out) == (2, "")
    assert err == (f"error: {shadowing_conf / 'task' / 'rte.yaml'} is never read: the built-in task/rte.yaml comes "
                   f"first on Hydra's search path; rename yours, e.g. to task/my_rte.yaml, and select task=my_rte\n")
    assert not runs.exists()


def test_prefetch_refuses_a_user_task_that_a_builtin_hides(shadowing_conf, tiny_bert_dir):
    # bitfit-prefetch tasks=all once took the user's rte.yaml (later folders won), unlike the run that follows.
    out = shadowing_conf.parent / "prefetched"
    done = subprocess.run([*PREFETCH, "--config-dir", str(shadowing_conf), "tasks=all", f"data.dir={out}",
                           f"data.from_dir={shadowing_conf.parent / 'data'}", f"models_dir={out / 'models'}",
                           f"model.name_or_path={tiny_bert_dir}"], capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"error: {shadowing_conf / 'task' / 'rte.yaml'} is never read: the built-in task/rte.yaml "
                           f"comes first on Hydra's search path; rename yours, e.g. to task/my_rte.yaml, and select "
                           f"task=my_rte\n")
    assert not out.exists()


def test_every_group_is_checked_and_plan_refuses_it_too(shadowing_conf, capsys):
    """Not only task/: a model, an experiment, Hydra's own groups; bitfit-plan (--config-dir or hydra.searchpath)
    refuses as bitfit-run does. The task that is selected (my_csv) does not matter: the hidden file never runs."""
    (shadowing_conf / "task" / "rte.yaml").unlink()
    for name in ("experiment/table3", "model/minilm", "hydra/job_logging/default"):
        (shadowing_conf / f"{name}.yaml").parent.mkdir(parents=True, exist_ok=True)
        (shadowing_conf / f"{name}.yaml").write_text("{}\n")
    search = f"hydra.searchpath=[file://{shadowing_conf}]"
    with pytest.raises(UserError) as refused:
        valid_jobs(["task=my_csv", search])
    assert str(refused.value) == (
        f"{shadowing_conf}/experiment/table3.yaml, {shadowing_conf}/hydra/job_logging/default.yaml, "
        f"{shadowing_conf}/model/minilm.yaml are never read: built-in configs of the same names come first on "
        f"Hydra's search path; rename yours, e.g. experiment/table3.yaml to experiment/my_table3.yaml, and select "
        f"+experiment=my_table3")
    for args in (["--config-dir", str(shadowing_conf)], [search]):
        assert plan_command.main([*args, "task=my_csv"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {shadowing_conf}/experiment/table3.yaml, ") and err.count("\n") == 1

    for name in ("experiment/table3", "hydra/job_logging/default"):
        (shadowing_conf / f"{name}.yaml").unlink()
    with pytest.raises(UserError, match=r"model/minilm.yaml is never read: .* and select model=my_minilm$"):
        valid_jobs(["task=my_csv", f"hydra.searchpath=[{shadowing_conf / 'model'}/..]"])  # a plain path too
    (shadowing_conf / "model" / "minilm.yaml").unlink()
    ((_, cfg),) = valid_jobs(["task=my_csv", search, "seeds=[0]"])
    assert cfg.task.name == "my_csv"
    ((_, cfg),) = valid_jobs(["task=rte", f"hydra.searchpath=[file://{conf_dir()}]", "seeds=[0]"])  # conf/ itself
    assert cfg.task.name == "rte"


def test_bitfit_plan_takes_a_config_dir_and_has_a_usage_text(user_conf, capsys):
    with pytest.raises(SystemExit) as stopped:
        plan_command.main(["--help"])
    out = capsys.readouterr()
    assert stopped.value.code == 0 and out.err == ""
    assert out.out.startswith("usage: bitfit-plan ") and "--config-dir DIR" in out.out and "--todo" in out.out
    assert plan_command.main(["--config-dir", str(user_conf / "my-conf"), "task=my_csv", "seeds=[0]",
                              f"runs_dir={user_conf / 'runs'}", "--todo"]) == 0
    out = capsys.readouterr().out
    assert "my_csv" in out and "1 jobs: 0 complete, 1 to run" in out
    assert not (user_conf / "runs").exists()


# ---------------------------------------------------------------------------------------- seeds numpy cannot take


@pytest.mark.parametrize("seeds", ["[4294967296]", "[0,-1]"])
def test_a_seed_outside_0_to_2_32_is_one_line_and_writes_nothing(seeds, tiny_bert_dir, tmp_path, monkeypatch,
                                                                  capsys):
    # numpy.random.seed, which the trainer calls per seed, takes 0..2**32-1: 2**32 used to leave an empty seed
    # folder behind a traceback.
    runs = tmp_path / "runs"
    code, out, err = bitfit_run(monkeypatch, capsys, *quick(tiny_bert_dir, runs, f"seeds={seeds}"))
    shown = seeds.replace(",", ", ")
    assert (code, out) == (2, "")
    assert err == f"error: seeds={shown} is not valid; expected a non-empty list of integers in [0, 4294967295]\n"
    assert not runs.exists()


# ----------------------------------------------------------------------------------- --out naming an existing file


def test_tables_and_plot_out_naming_a_file_is_one_line(tmp_path, capsys):
    runs, taken = tmp_path / "runs", tmp_path / "tables.md"
    for method in ("full", "bitfit"):
        write_seeds(runs, "bert_base", "rte", method, 1e-4, [70.0, 72.0])
    taken.write_text("mine\n")
    for out in (taken, taken / "sub"):
        where = "" if out == taken else f": {taken}"
        expected = f"error: --out {out}{where} is a file, not a folder; give a folder (it is created if missing)\n"
        assert tables(["--runs-dir", str(runs), "--table", "ours", "--out", str(out)]) == 2
        assert capsys.readouterr().err == expected
        assert plot(["gap", "--runs-dir", str(runs), "--out", str(out)]) == 2
        assert capsys.readouterr().err == expected
    assert taken.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tables.md"]
    assert tables(["--runs-dir", str(runs), "--table", "ours", "--out", str(tmp_path / "t")]) == 0


# --------------------------------------------------------------------------------------------- bitfit-predict input


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory, tiny_bert_dir, glue_dir):
    """A seed folder of SST-2 (one text) and one of MRPC (a pair), written as the runner leaves them."""
    root = tmp_path_factory.mktemp("hostile-runs")
    return {"sst2": fake_run(root, tiny_bert_dir, "sst2", "bitfit", 0),
            "mrpc": fake_run(root, tiny_bert_dir, "mrpc", "bitfit", 1)}


def repeated(path, kind: str):
    """An input file whose header names `sentence` twice."""
    if kind == "parquet":
        pq.write_table(pa.table([pa.array(["a gem"]), pa.array(["dull"])], names=["sentence", "sentence"]), path)
    else:
        sep = "\t" if kind == "tsv" else ","
        path.write_text(f"sentence{sep}sentence\na gem{sep}dull\n")


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet"])
def test_predict_refuses_a_repeated_column_name_in_one_line(kind, sst2_run, tmp_path, capsys):
    source, output = tmp_path / f"in.{kind}", tmp_path / "out.csv"
    repeated(source, kind)
    assert predict([str(sst2_run["sst2"]), "--task", "sst2", "--input", str(source), "--output", str(output)]) == 2
    assert capsys.readouterr().err == (f"error: {source}: 2 columns are named 'sentence'; give each column its own "
                                       f"name (fix --input)\n")
    assert not output.exists()


def test_predict_takes_an_empty_text_as_serve_does(sst2_run, tmp_path):
    """An empty text (an empty CSV cell; "" in JSON Lines) is a text, as in bitfit-serve and in training: that row
    gets the prediction the engine makes for "", and the other rows theirs; only a null is a missing text."""
    engine = MultiTaskEngine(find_patches(list(map(str, sst2_run.values()))))
    items = [{"task": "sst2", "text": "a gem of a film"}, {"task": "sst2", "text": ""},
             {"task": "mrpc", "text": "He said yes.", "text_pair": ""}, {"task": "mrpc", "text": "", "text_pair": ""}]
    served = engine.predict(items)
    frame = pd.DataFrame([{"task": i["task"], "text": i["text"], "text_pair": i.get("text_pair", "")} for i in items])
    for kind in ("csv", "jsonl"):
        source, output = tmp_path / f"in.{kind}", tmp_path / f"out-{kind}.jsonl"
        frame.to_csv(source, index=False) if kind == "csv" else frame.to_json(source, orient="records", lines=True)
        assert predict([*map(str, sst2_run.values()), "--input", str(source), "--output", str(output),
                        "--no-progress"]) == 0
        rows = pd.read_json(output, lines=True)
        assert rows["text"].fillna("").tolist() == ["a gem of a film", "", "He said yes.", ""]
        for row, expected in zip(rows.to_dict("records"), served, strict=True):
            assert row["label"] == expected["label"]
            # JSON Lines holds the server's probabilities as a list, in label order (docs/serving-api.md)
            assert row["probabilities"] == pytest.approx(list(expected["probabilities"].values()), abs=1e-5)
