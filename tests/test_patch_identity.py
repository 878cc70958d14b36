"""A patch is what its record says (task, method, seed, setting, digest): one placed in another run's folder is
refused by bitfit-export, bitfit-serve and bitfit-predict in one line; a rerun retrains a done seed whose patch is
missing, damaged or not its own (the old record kept as record.json.replaced-<time>), and a record.json that is not
a file does not stop it (issue #26, classes 4 and 5)."""

import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import compose, quick
from safetensors.torch import load_file, save_file
from test_serve import fake_run

from bitfit_exp.core.errors import UserError
from bitfit_exp.results.artifacts import PATCH_DIGEST, file_sha256, patch_metadata
from bitfit_exp.results.records import RECORD, done, read_record
from bitfit_exp.serving.engine import find_patches

ARGS = ("train.epochs=1", "data.max_length=24", "train.predict_test=false", "optim.lr=0.05")


def setting_of(root: Path, lr: float = 0.05) -> Path:
    (folder,) = root.glob(f"*/rte/bitfit/lr{lr:g}-*")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir, glue_dir) -> Path:
    """A runs dir: rte seeds 0 and 1 at lr 0.05 and seed 0 at lr 0.01 (real runs, records with patch digests), and
    sst2 seeds 0 and 1 written as before patch digests (fake_run: the metadata task, method, seed and checkpoint)."""
    from bitfit_exp.train.runner import run_job

    root = tmp_path_factory.mktemp("patch-identity")
    run_job(compose(*quick(tiny_bert_dir, root, *ARGS, "seeds=[0,1]")))
    run_job(compose(*quick(tiny_bert_dir, root, *ARGS, "optim.lr=0.01")))
    for seed in (0, 1):
        fake_run(root, tiny_bert_dir, "sst2", "bitfit", seed)
    return root


def copy_runs(runs: Path, tmp_path: Path) -> Path:
    out = tmp_path / "runs"
    shutil.copytree(runs, out)
    return out


def refused_everywhere(folder: Path, reason: str, tmp_path: Path, capsys, monkeypatch) -> None:
    """find_patches (the engine), bitfit-serve, bitfit-predict and bitfit-export each refuse `folder` in one line
    naming its patch and `reason`, and export leaves no folder behind."""
    import bitfit_exp.serving.limits as limits
    from bitfit_exp.commands.export import main as export_main
    from bitfit_exp.commands.predict import main as predict_main
    from bitfit_exp.commands.serve import main as serve_main

    def never(*args, **kwargs):
        raise AssertionError("served a patch that is not its run's")

    monkeypatch.setattr(limits, "serve", never)
    line = f"{folder / 'patch.safetensors'}: not the patch its record "
    with pytest.raises(UserError, match=re.escape(line) + ".*" + re.escape(reason)):
        find_patches([str(folder)])
    pd.DataFrame({"sentence1": ["A man plays."], "sentence2": ["A man sings."]}).to_csv(tmp_path / "in.csv",
                                                                                        index=False)
    capsys.readouterr()
    assert serve_main([str(folder), "--port", "1"]) == 2
    assert predict_main([str(folder), "--task", "rte", "--input", str(tmp_path / "in.csv"),
                         "--output", str(tmp_path / "out.csv")]) == 2
    assert export_main([str(folder), str(tmp_path / "exported")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith(f"error: {line}") and reason in e for e in errors), errors
    assert "rerunning its bitfit-run command trains the seed again" in errors[0]
    assert not (tmp_path / "exported").exists() and not (tmp_path / "out.csv").exists()


def test_a_patch_of_another_task_is_refused_by_export_serve_and_predict(runs, tmp_path, capsys, monkeypatch):
    root = copy_runs(runs, tmp_path)
    folder = setting_of(root) / "seed0"
    (sst2,) = root.glob("*/sst2/bitfit/*/seed0")
    shutil.copy(sst2 / "patch.safetensors", folder / "patch.safetensors")  # SST-2's head in an RTE run
    refused_everywhere(folder, "it is task sst2's patch", tmp_path, capsys, monkeypatch)


def test_a_patch_of_another_seed_or_setting_is_refused(runs, tmp_path, capsys, monkeypatch):
    root = copy_runs(runs, tmp_path)
    folder = setting_of(root) / "seed0"
    shutil.copy(setting_of(root) / "seed1" / "patch.safetensors", folder / "patch.safetensors")
    refused_everywhere(folder, "it is seed 1's patch", tmp_path, capsys, monkeypatch)

    other_lr = setting_of(root, 0.01) / "seed0" / "patch.safetensors"
    shutil.copy(other_lr, folder / "patch.safetensors")  # same task, method and seed: another setting
    refused_everywhere(folder, f"it is setting {setting_of(root, 0.01).name.rsplit('-', 1)[1]}'s patch", tmp_path,
                       capsys, monkeypatch)


def test_a_patch_whose_content_changed_is_refused_by_its_digest(runs, tmp_path, capsys, monkeypatch):
    root = copy_runs(runs, tmp_path)
    folder = setting_of(root) / "seed0"
    patch = folder / "patch.safetensors"
    assert read_record(folder / RECORD)["artifacts"][PATCH_DIGEST] == file_sha256(patch)
    tensors = load_file(patch)
    head = next(k for k in tensors if k.startswith("trained.classifier"))
    tensors[head] = tensors[head] + 1  # the metadata stays the run's own: only the digest can tell
    save_file(tensors, patch, metadata=patch_metadata(patch))
    refused_everywhere(folder, "sha256 differs from the record's patch_sha256", tmp_path, capsys, monkeypatch)


def test_records_without_a_patch_digest_are_checked_by_their_patch_metadata(runs, tmp_path, capsys, monkeypatch):
    root = copy_runs(runs, tmp_path)
    seed0, seed1 = sorted(root.glob("*/sst2/bitfit/*/seed*"))
    assert PATCH_DIGEST not in read_record(seed0 / RECORD)["artifacts"]  # written as before patch digests
    [patch] = find_patches([str(seed0)])
    assert patch.task == "sst2" and done(seed0 / RECORD)
    assert "its record predates patch digests; checked only the task, method, seed and checkpoint" in \
        capsys.readouterr().out
    shutil.copy(seed1 / "patch.safetensors", seed0 / "patch.safetensors")
    assert not done(seed0 / RECORD)
    with pytest.raises(UserError, match=re.escape(f"{seed0 / 'patch.safetensors'}: not the patch its record (sst2, "
                                                  f"seed 0) describes: it is seed 1's patch")):
        find_patches([str(seed0)])


def retrained(out: str) -> list[str]:
    return sorted(line.split(":")[0] for line in out.splitlines() if line.startswith("seed ") and " at epoch " in line)


def test_a_rerun_retrains_a_seed_whose_patch_is_missing_damaged_or_not_its_own(runs, tmp_path, tiny_bert_dir,
                                                                              capsys):
    from bitfit_exp.config.plan import plan
    from bitfit_exp.train.runner import run_job

    root = copy_runs(runs, tmp_path)
    setting = setting_of(root)
    args = quick(tiny_bert_dir, root, *ARGS, "seeds=[0,1,2]")
    run_job(compose(*quick(tiny_bert_dir, root, *ARGS, "seeds=[2]")))
    old = {seed: (setting / f"seed{seed}" / RECORD).read_text() for seed in (0, 1, 2)}
    (setting / "seed0" / "patch.safetensors").unlink()
    shutil.copy(setting / "seed1" / "patch.safetensors", setting / "seed2" / "patch.safetensors")
    patch1 = setting / "seed1" / "patch.safetensors"
    patch1.write_bytes(patch1.read_bytes()[:-100])  # truncated
    [job] = plan(args)
    assert job["done"] == 0 and job["seeds"] == 3
    with pytest.raises(UserError, match="patch.safetensors: missing, though its record names it; rerunning its"):
        find_patches([str(setting / "seed0")])
    capsys.readouterr()

    run_job(compose(*args))
    out = capsys.readouterr().out
    assert "3 seeds, 0 already finished" in out and retrained(out) == ["seed 0", "seed 1", "seed 2"]
    for seed, problem in ((0, "is missing"), (1, "is unreadable (SafetensorError: "), (2, "is not its own")):
        folder = setting / f"seed{seed}"
        line = next(x for x in out.splitlines() if x.startswith(f"seed {seed}: its record says finished"))
        assert f"its patch {folder / 'patch.safetensors'} {problem}" in line and line.endswith("training it again")
        (kept,) = folder.glob(f"{RECORD}.replaced-*")
        assert kept.read_text() == old[seed] and f"seed {seed}: previous record kept as {kept.name}" in out
        assert done(folder / RECORD) and read_record(folder / RECORD)["artifacts"][PATCH_DIGEST] == \
            file_sha256(folder / "patch.safetensors")
    assert plan(args)[0]["done"] == 3
    run_job(compose(*args))  # repaired: nothing left to do
    out = capsys.readouterr().out
    assert "3 seeds, 3 already finished" in out and retrained(out) == []


def test_a_record_json_that_is_not_a_file_does_not_stop_a_rerun(runs, tmp_path, tiny_bert_dir, capsys):
    from bitfit_exp.config.plan import plan
    from bitfit_exp.train.runner import run_job

    root = copy_runs(runs, tmp_path)
    setting = setting_of(root)
    args = quick(tiny_bert_dir, root, *ARGS, "seeds=[0,1]")
    for seed in (0, 1):
        (setting / f"seed{seed}" / RECORD).unlink()
    (setting / "seed0" / RECORD).mkdir()
    (setting / "seed0" / RECORD / "stray").write_text("x")
    os.symlink("gone.json", setting / "seed1" / RECORD)  # dangling (a link out of the folder is refused: paths.inside)
    assert plan(args)[0]["done"] == 0
    capsys.readouterr()

    run_job(compose(*args))
    out = capsys.readouterr().out
    assert retrained(out) == ["seed 0", "seed 1"]
    assert f"seed 0: {setting / 'seed0' / RECORD} is a folder, not a run record" in out
    assert f"seed 1: {setting / 'seed1' / RECORD} is a link to gone.json, which does not exist" in out
    for seed in (0, 1):
        folder = setting / f"seed{seed}"
        assert done(folder / RECORD) and len(list(folder.glob(f"{RECORD}.replaced-*"))) == 1
    (aside,) = (setting / "seed0").glob(f"{RECORD}.replaced-*")
    assert (aside / "stray").read_text() == "x"  # set aside whole, not deleted
    assert plan(args)[0]["done"] == 2
