"""`data.dir=auto` (what `make demo` uses): a local copy where one is given or found, the hub otherwise, and one
line naming bitfit-prefetch and data.dir= when it has neither, before anything is written."""

import json
import os
import subprocess
import sys

import pytest
from conftest import GLUE, REPO, compose, quick
from test_cli import RUN, records

from bitfit_exp.core.data_dir import SEARCHED, local_copy, searched
from bitfit_exp.core.errors import UserError
from bitfit_exp.kinds.splits import load_splits, with_data_dir


@pytest.fixture
def clone(tmp_path, monkeypatch):
    """A clone's folder with nothing around it: a fresh HOME, no BITFIT_DATA_DIR, the current directory inside."""
    home, here = tmp_path / "home", tmp_path / "somewhere" / "bitfit-exp"
    home.mkdir()
    here.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("BITFIT_DATA_DIR", raising=False)
    monkeypatch.chdir(here)
    return here


def env(**extra) -> dict:
    return {k: v for k, v in {**os.environ, **extra}.items() if k != "BITFIT_DATA_DIR"}


def test_the_search_order(clone, tmp_path, monkeypatch):
    assert searched() == list(SEARCHED) and local_copy("sst2") is None
    prefetched = tmp_path / "home" / "bitfit-data" / "glue" / "sst2"
    prefetched.mkdir(parents=True)
    assert local_copy("sst2") == prefetched.parent  # where bitfit-prefetch saves by default
    (clone.parent / "shared").mkdir()
    (clone.parent / "shared" / "data").symlink_to(GLUE.parent)  # next to the clone, as in this project
    assert local_copy("sst2") == GLUE.parent.resolve() / "glue"
    assert local_copy("rte", ["../nothing"]) is None
    monkeypatch.setenv("BITFIT_DATA_DIR", str(prefetched.parent))
    assert local_copy("sst2") == prefetched.parent  # given wins over found


def test_auto_reads_the_copy_it_finds(clone, glue_dir):
    (clone.parent / "shared").mkdir()
    (clone.parent / "shared" / "data").symlink_to(GLUE.parent)
    cfg = compose("task=rte", "data.dir=auto", "data.max_eval_samples=4")
    assert with_data_dir(cfg.task, cfg.data).dir == str(GLUE.resolve())
    assert cfg.data.dir == "auto"  # the caller's config is left as it was
    assert len(load_splits(cfg.task, cfg.data)["validation"]) == 277  # what bitfit-plan and the run read


def test_offline_without_a_copy_is_one_line(clone, tiny_bert_dir):
    cfg = compose("task=rte", "data.dir=auto")
    with pytest.raises(UserError, match=r"bitfit-prefetch task=rte.*data\.dir=/path/to/glue"):
        with_data_dir(cfg.task, cfg.data)  # HF_HUB_OFFLINE=1 under the tests
    runs = clone / "runs"
    out = subprocess.run([*RUN, *quick(tiny_bert_dir, runs, "data.dir=auto")], capture_output=True, text=True,
                         env=env(HF_HUB_OFFLINE="1"), timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("error: data.dir=auto ")
    assert "bitfit-prefetch task=rte" in out.stderr and "data.dir=" in out.stderr and not runs.exists()


def test_a_run_records_the_copy_it_read(clone, tiny_bert_dir, glue_dir):
    (clone.parent / "shared").mkdir()
    (clone.parent / "shared" / "data").symlink_to(GLUE.parent)
    runs = clone / "runs"
    out = subprocess.run([*RUN, *[o for o in quick(tiny_bert_dir, runs) if not o.startswith("data.dir=")],
                          "data.dir=auto", "train.epochs=1"], capture_output=True, text=True, env=env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"data.dir=auto: {GLUE.resolve()}"
    [record] = records(runs)
    assert json.loads(record.read_text())["config"]["data"]["dir"] == str(GLUE.resolve())


def test_make_demo_finds_or_takes_the_data(tmp_path):
    def demo(*args):
        return subprocess.run(["make", "-s", "-n", "demo", *args], cwd=REPO, capture_output=True, text=True,
                              env=env(), check=True).stdout

    assert " data.dir=auto " in demo() and "HF_HUB_OFFLINE" not in demo()  # the hub is allowed when nothing is found
    assert f" data.dir={tmp_path} " in demo(f"DATA_DIR={tmp_path}")


def test_prefetch_needs_a_folder_not_auto(clone):
    code = "from bitfit_exp.commands.prefetch import prefetch; prefetch()"
    out = subprocess.run([sys.executable, "-c", code, "model=minilm", "tasks=[rte]", "data.dir=auto"],
                         capture_output=True, text=True, env=env(HF_HUB_OFFLINE="1"), timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: bitfit-prefetch saves into a folder: data.dir=")
    assert list(clone.iterdir()) == []  # no folder named auto
