"""Nothing outside its folder (issue #26): a config value that becomes part of a path (a model's, task's or method's
name, a task's local_name, its split names and test prediction files) is a plain file or folder name, refused in one
line before anything is written; and every file a run writes for a seed is proven to lie in its folder, so neither
a future key nor a symbolic link left in a seed folder makes a run write elsewhere."""

import os
import re
import subprocess
from pathlib import Path

import datasets
import pytest
import yaml
from conftest import REPO, compose, quick, task_yaml
from omegaconf import OmegaConf
from test_cli import bitfit_run as run_cli
from test_custom_tasks import ENV, PREFETCH, bitfit_run

from bitfit_exp.commands.plan import main as plan
from bitfit_exp.config.compose import check_command_line
from bitfit_exp.config.schema import problems
from bitfit_exp.core.errors import UserError
from bitfit_exp.core.paths import child, inside, is_name, name_problem
from bitfit_exp.kinds.splits import save_local
from bitfit_exp.model.fingerprint import of_config
from bitfit_exp.results.records import seed_dir, setting_dir, setting_key

PLAIN = "expected a plain file or folder name (not empty, not . or .., no /, \\, drive or control characters)"


def tree(root: Path) -> set[str]:
    """Every file, folder and link under `root`, relative to it (links not followed)."""
    found = set()
    for folder, dirs, files in os.walk(root):
        found |= {os.path.relpath(os.path.join(folder, name), root) for name in dirs + files}
    return found


def one_line_refusal(out, expected_start: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith(f"error: {expected_start}") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr


# --- the helpers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["RTE.tsv", "MNLI-mm.tsv", "squad_predictions.json", "pos_test.conll", "bert_base",
                                  "lr0.001-0a1b2c3d", "seed0", "ud_ewt", "my task", "...x", "modèle", "ab:c"])
def test_plain_names_pass(name):
    assert name_problem(name) is None and is_name(name)
    assert child(Path("runs"), name) == Path("runs") / name


@pytest.mark.parametrize(("name", "problem"), [
    ("", "is empty"), (".", "is '.'"), ("..", "is '..'"), ("../x", "contains '/'"), ("a/b", "contains '/'"),
    ("/etc", "contains '/'"), ("..\\x", "contains a backslash"), ("a\x00b", "contains a control character"),
    ("a\nb", "contains a control character"), ("a\x7fb", "contains a control character"), ("C:x", "names a drive"),
    (None, "is a NoneType, not a name"), (3, "is a int, not a name"),
])
def test_names_that_would_leave_their_folder_are_refused(name, problem):
    assert name_problem(name) == problem and not is_name(name)
    with pytest.raises(UserError) as info:
        child(Path("runs"), name, "task.name")
    assert str(info.value) == f"task.name={name!r} is not valid: it {problem}; {PLAIN}"


def test_inside_resolves_dots_and_links(tmp_path):
    folder, outside = tmp_path / "seed0", tmp_path / "outside.txt"
    folder.mkdir()
    outside.write_text("keep")
    assert inside(folder / "RTE.tsv", folder) == folder / "RTE.tsv"
    (folder / "sub").mkdir()
    assert inside(folder / "sub" / ".." / "x", folder) == folder / "sub" / ".." / "x"  # resolves into the folder
    for escaping in (folder / ".." / "x.tsv", folder / "..", folder, Path("/etc/passwd")):
        with pytest.raises(UserError, match="outside"):
            inside(escaping, folder)
    link = folder / "RTE.tsv"
    link.symlink_to(outside)  # a link left in a shared runs folder
    with pytest.raises(UserError, match="^" + re.escape(f"{link} resolves to {outside}, outside {folder}; nothing")):
        inside(link, folder)
    (folder / "dangling.tsv").symlink_to(tmp_path / "new.txt")  # open(..., "w") would create it
    with pytest.raises(UserError, match="outside"):
        inside(folder / "dangling.tsv", folder)
    # A folder reached through a link (runs_dir on another disk) is its own resolved folder: files in it pass.
    (tmp_path / "link").symlink_to(folder)
    assert inside(tmp_path / "link" / "record.json", tmp_path / "link") == tmp_path / "link" / "record.json"


def test_atomic_writes_never_go_through_a_link_at_their_temporary_name(tmp_path):
    from bitfit_exp.core.atomic import write_atomic

    folder, victim = tmp_path / "seed0", tmp_path / "bashrc"
    folder.mkdir()
    victim.write_text("precious\n")
    (folder / ".patch.safetensors.tmp").symlink_to(victim)  # the name write_atomic stages a patch under
    write_atomic(folder / "patch.safetensors", lambda f: f.write(b"patch"))
    assert victim.read_text() == "precious\n"
    assert (folder / "patch.safetensors").read_bytes() == b"patch" and not (folder / "patch.safetensors").is_symlink()
    assert sorted(p.name for p in folder.iterdir()) == ["patch.safetensors"]


def test_setting_and_seed_folders_name_the_bad_key():
    key = setting_key({"model": {"name": "minilm", "name_or_path": "x"}, "task": {"name": "rte"},
                       "method": {"name": "bitfit"}, "optim": {"lr": 1e-3}}, {"model": "m0", "data": "d0"})
    assert setting_dir("runs", key) == Path("runs") / key["dir"]
    assert seed_dir("runs", key, 3) == Path("runs") / key["dir"] / "seed3"
    for field, what in (("model", "model.name"), ("task", "task.name"), ("method", "method.name")):
        bad = {**key, field: "../../x", "dir": key["dir"].replace(key[field], "../../x", 1)}
        with pytest.raises(UserError, match=rf"^{what}='../../x' is not valid: it contains '/'; "):
            seed_dir("runs", bad, 0)


# --- the schema: one line per bad name, for every key that becomes part of a path ----------------------------------


@pytest.mark.parametrize(("override", "line"), [
    ("model.name=../../x", "model.name='../../x' is not valid: it contains '/'"),
    ("model.name=..", "model.name='..' is not valid: it is '..'"),
    ("task.name=a\\\\b", "task.name='a\\\\b' is not valid: it contains a backslash"),
    ("task.test_splits={test:../../x.tsv}",
     "task.test_splits={test: '../../x.tsv'} is not valid: '../../x.tsv' contains '/'"),
    ("+task.local_name=../glue", "task.local_name='../glue' is not valid: it contains '/'"),
    ("~task.eval_splits +task.eval_splits={../validation:rte}",
     "task.eval_splits={../validation: 'rte'} is not valid: '../validation' contains '/'"),
])
def test_the_schema_refuses_names_that_become_paths(override, line):
    assert problems(compose(*override.split())) == [f"{line}; {PLAIN} (it becomes part of a path)"]


def test_a_method_registered_under_a_bad_name_is_still_refused(monkeypatch):
    from bitfit_exp.model.methods import METHODS

    monkeypatch.setitem(METHODS, "../x", METHODS["bitfit"])  # a registered name is a folder name too
    cfg = compose()
    cfg.method.name = "../x"
    assert problems(cfg) == [f"method.name='../x' is not valid: it contains '/'; {PLAIN} (it becomes part of a path)"]


@pytest.mark.parametrize("group", ["model", "task", "method"])
def test_every_shipped_config_passes(group):
    paths = sorted((REPO / "conf" / group).glob("*.yaml"))
    assert len(paths) >= 9
    for path in paths:
        cfg = compose(f"{group}={path.stem}")
        assert problems(cfg) == [], path.name
        names = [cfg.model.name, cfg.task.name, cfg.method.name, *cfg.task.eval_splits, *cfg.task.test_splits,
                 *cfg.task.test_splits.values(), *([cfg.task.local_name] if "local_name" in cfg.task else [])]
        assert all(is_name(n) for n in names), (path.name, names)


def test_a_sweep_and_the_plan_refuse_a_bad_name_before_anything(tmp_path, capsys):
    runs = tmp_path / "runs"
    with pytest.raises(UserError, match=r"^model.name='\.\./\.\./x' is not valid: it contains '/'"):
        check_command_line(["-m", "model.name=minilm,../../x", f"runs_dir={runs}"])
    assert plan(["-m", "model.name=minilm,../../x", f"runs_dir={runs}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.name='../../x' is not valid: it contains '/'") and err.count("\n") == 1
    assert not runs.exists()


# --- end to end: one line, exit 2, nothing written -----------------------------------------------------------------


def test_bitfit_run_refuses_a_model_name_that_leaves_runs_dir(tmp_path, tiny_bert_dir, glue_dir):
    work = tmp_path / "work"
    work.mkdir()
    out = run_cli(*quick(tiny_bert_dir, work / "a" / "runs", "model.name=../../x"))
    one_line_refusal(out, "model.name='../../x' is not valid: it contains '/'")
    assert tree(work) == set()  # neither work/x (where it went) nor runs_dir itself


@pytest.mark.parametrize(("change", "line"), [
    ({"name": "../x"}, "task.name='../x' is not valid: it contains '/'"),
    ({"test_splits": {"test": "../../x.tsv"}, "test_labels": "names"},
     "task.test_splits={test: '../../x.tsv'} is not valid: '../../x.tsv' contains '/'"),
])
def test_a_user_task_yaml_cannot_write_outside(change, line, user_conf, tiny_bert_dir):
    files = {"train": "train.csv", "validation": "dev.csv", "test": "dev.csv"}
    task = {**task_yaml("evil", files), **change}
    (user_conf / "my-conf" / "task" / "evil.yaml").write_text(yaml.safe_dump(task))
    before = tree(user_conf)
    out = bitfit_run(user_conf, "task=evil", f"model.name_or_path={tiny_bert_dir}", "optim.lr=0.01")
    one_line_refusal(out, line)
    assert tree(user_conf) == before and not (user_conf / "runs").exists()


def test_prefetch_refuses_names_that_leave_its_folders(user_conf, tiny_bert_dir):
    (user_conf / "my-conf" / "task" / "evil.yaml").write_text(
        yaml.safe_dump(task_yaml("evil", {"train": "train.csv"}, local_name="../../escaped")))
    common = ["--config-dir", str(user_conf / "my-conf"), f"data.dir={user_conf / 'out' / 'data'}",
              f"data.from_dir={user_conf / 'data'}", f"models_dir={user_conf / 'out' / 'models'}",
              f"model.name_or_path={tiny_bert_dir}"]
    before = tree(user_conf)
    for extra, line in ((["task=evil"], "task.local_name='../../escaped' is not valid: it contains '/'"),
                        (["task=my_csv", "model.name=../../escaped"], "model.name='../../escaped' is not valid")):
        out = subprocess.run([*PREFETCH, *common, *extra], capture_output=True, text=True, env=ENV, timeout=600,
                             cwd=user_conf)
        one_line_refusal(out, line)
        assert tree(user_conf) == before


def test_save_local_checks_every_name_before_writing(tmp_path):
    rows = datasets.Dataset.from_dict({"sentence": ["a"], "label": [0]})
    task = OmegaConf.create(task_yaml("../x", {"train": "train.csv"}))
    with pytest.raises(UserError, match=r"^task.name='\.\./x' is not valid: it contains '/'"):
        save_local(task, {"train": rows}, tmp_path / "data")
    task = OmegaConf.create({**task_yaml("ok", {"train": "train.csv"}), "eval_splits": {"../../dev": "ok"}})
    with pytest.raises(UserError, match=r"^task ok's split='\.\./\.\./dev' is not valid"):
        save_local(task, {"train": rows, "../../dev": rows}, tmp_path / "data")
    assert tree(tmp_path) == set()


# --- defence in depth: the runner itself, with the schema bypassed -------------------------------------------------


def bypassed(tiny_bert_dir, runs, **task):
    """A run config that never went through the schema (a future key, or a caller of run_job), with `task` keys."""
    cfg = compose(*quick(tiny_bert_dir, runs, "optim.lr=0.01"))
    for k, v in task.items():
        OmegaConf.update(cfg, k, v, force_add=True)
    return cfg


def test_the_runner_refuses_a_setting_folder_outside_runs_dir(tmp_path, tiny_bert_dir, glue_dir):
    from bitfit_exp.train.runner import run_job

    runs = tmp_path / "a" / "runs"
    with pytest.raises(UserError, match=r"^model.name='\.\./\.\./x' is not valid: it contains '/'"):
        run_job(bypassed(tiny_bert_dir, runs, **{"model.name": "../../x"}))
    assert tree(tmp_path) == {"a", "a/runs"}  # runs_dir (checked writable first), and nothing in or beside it


def test_the_runner_writes_test_predictions_only_inside_the_seed_folder(tmp_path, tiny_bert_dir, glue_dir):
    from bitfit_exp.train.runner import run_job

    runs = tmp_path / "a" / "b" / "c" / "runs"
    cfg = bypassed(tiny_bert_dir, runs, **{"task.test_splits": {"test": "../../../../../../x.tsv"}})
    with pytest.raises(UserError, match=r"x\.tsv resolves to .*, outside .*seed0; nothing was written there"):
        run_job(cfg)
    assert not list(tmp_path.glob("**/x.tsv"))


def test_a_link_left_in_a_seed_folder_is_not_written_through(tmp_path, tiny_bert_dir, glue_dir):
    from bitfit_exp.train.runner import run_job

    cfg = bypassed(tiny_bert_dir, tmp_path / "runs")
    folder = seed_dir(cfg.runs_dir, setting_key(OmegaConf.to_container(cfg, resolve=True), of_config(cfg)), 0)
    folder.mkdir(parents=True)
    victim = tmp_path / "bashrc"
    victim.write_text("precious\n")
    link = folder / "RTE.tsv"
    link.symlink_to(victim)
    with pytest.raises(UserError, match="^" + re.escape(f"{link} resolves to {victim}, outside {folder}")):
        run_job(cfg)
    assert victim.read_text() == "precious\n"
    assert not (folder / "record.json").exists()  # no record claims predictions it could not write
