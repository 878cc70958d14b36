"""Loading a checkpoint never runs code (issue #26): checkpoints hold plain data only and are read with
torch.load(weights_only=True); a file whose pickle would run code is set aside unread and its seed starts over; resume
stays exact for both trainers."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
from conftest import compose, quick
from test_resume import bitfit_run, strip_times

from bitfit_exp.train.checkpoints import read_checkpoint, rng_states, save_checkpoint, set_rng_states
from bitfit_exp.train.packed import train_packed
from bitfit_exp.train.runner import Prepared, start_seed
from bitfit_exp.train.trainer import Stopped, train_seed

CPU = torch.device("cpu")
SEEDS, LRS = [0, 1], [0.05, 0.01]


class RunsCode:
    """Unpickling this runs code: it writes `marker` (a planted checkpoint could do anything else instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def plant(path, marker, mode="single"):
    """A checkpoint.pt at `path` that looks like a trainer's but runs code when unpickled; checked to really do so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mode": mode, "epoch": 1, "trained": {}, "epochs": [], "rng": RunsCode(marker)}, path)
    probe = path.with_name("probe.pt")
    shutil.copy(path, probe)
    torch.load(probe, weights_only=False)  # what reading it with unpickling would do
    assert marker.read_text() == "ran"
    marker.unlink()
    probe.unlink()


def only_weights_only(monkeypatch):
    """Make any torch.load that may unpickle code fail the test."""
    load = torch.load

    def guarded(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded)


@pytest.mark.parametrize("packed", [False, True])
def test_a_planted_checkpoint_never_runs_and_its_seed_trains_from_scratch(packed, tmp_path, tiny_bert_dir,
                                                                           glue_dir):
    args = ["train.epochs=2", *(["train.packed=true", "seeds=[0,1]"] if packed else [])]
    whole = bitfit_run(*quick(tiny_bert_dir, tmp_path / "whole", *args))
    assert whole.returncode == 0, whole.stderr
    folder = next((tmp_path / "whole").glob("**/seed0")).relative_to(tmp_path / "whole")
    planted = tmp_path / "planted" / folder / "checkpoint.pt"
    marker = tmp_path / "marker"
    plant(planted, marker, "packed" if packed else "single")

    run = bitfit_run(*quick(tiny_bert_dir, tmp_path / "planted", *args))
    assert run.returncode == 0, run.stderr
    assert not marker.exists()
    (line,) = [x for x in run.stdout.splitlines() if "would run code" in x]
    assert line.startswith(f"warning: checkpoint {planted} would run code to load (builtins.exec)")
    assert "set aside as checkpoint.pt.bad-" in line and "starting this seed over" in line
    assert len(list(planted.parent.glob("checkpoint.pt.bad-*"))) == 1 and not planted.exists()
    a = json.loads((tmp_path / "whole" / folder / "record.json").read_text())
    b = json.loads((tmp_path / "planted" / folder / "record.json").read_text())
    assert b["resumed_after_epoch"] is None and strip_times(a) == strip_times(b)


def test_a_checkpoint_with_numpy_arrays_from_an_older_version_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    old = {"mode": "single", "epoch": 1, "trained": {}, "optimizer": {}, "schedule": {}, "epochs": [], "best": None,
           "best_state": None, "train_s": 0.0, "eval_s": 0.0,
           "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                   "order": torch.Generator().get_state()}}
    torch.save(old, path)  # how the trainer stored numpy's state before
    assert read_checkpoint(path, "single") is None
    (line,) = capsys.readouterr().out.splitlines()
    assert "would run code to load (numpy." in line and "an older bitfit-exp" in line and "set aside as" in line
    assert not path.exists() and len(list(tmp_path.glob("checkpoint.pt.bad-*"))) == 1


def test_rng_states_round_trip_exactly_through_a_weights_only_checkpoint(tmp_path):
    order = torch.Generator().manual_seed(3)
    np.random.standard_normal()  # numpy caches the second gaussian: has_gauss=1 must come back too
    states = rng_states(order)
    expected = (random.random(), np.random.standard_normal(), np.random.rand(3), torch.rand(3),
                torch.randperm(10, generator=order))
    save_checkpoint(tmp_path / "checkpoint.pt", rng=states)
    loaded = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["rng"]
    random.seed(9), np.random.seed(9), torch.manual_seed(9), order.manual_seed(9)
    set_rng_states(loaded, order)
    again = (random.random(), np.random.standard_normal(), np.random.rand(3), torch.rand(3),
             torch.randperm(10, generator=order))
    assert again[:2] == expected[:2] and (again[2] == expected[2]).all()
    assert torch.equal(again[3], expected[3]) and torch.equal(again[4], expected[4])


def test_numpy_numbers_in_a_checkpoint_are_stored_as_plain_numbers(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, epochs=[{"dev": {"accuracy": np.float64(0.5)}, "words": np.int64(3)}],
                    best=(np.int64(1), np.float32(0.25)))
    state = torch.load(path, weights_only=True)
    assert state == {"epochs": [{"dev": {"accuracy": 0.5}, "words": 3}], "best": (1, 0.25)}
    assert type(state["epochs"][0]["dev"]["accuracy"]) is float and type(state["best"][0]) is int
    with pytest.raises(TypeError, match=r"\['rng'\] holds a ndarray"):
        save_checkpoint(path, rng=np.zeros(2))
    assert torch.load(path, weights_only=True)["best"] == (1, 0.25)  # the previous checkpoint stays


def single_run(cfg, prepared, checkpoint=None):
    model, selection, _ = start_seed(cfg, 0, CPU)
    return train_seed(model, selection, prepared.train, prepared.train_probe, prepared.dev, cfg, 0, CPU,
                      prepared.pad_id, checkpoint)


def packed_run(cfg, prepared, checkpoints=None, resume=None):
    inits = []
    for seed in SEEDS:
        model, selection, _ = start_seed(cfg, seed, CPU)
        inits.append({n: p.detach().clone() for n, p in model.named_parameters() if n in selection.params})
    return train_packed(model, selection, inits, SEEDS, LRS, prepared.train, prepared.train_probe, prepared.dev, cfg,
                        CPU, prepared.pad_id, checkpoints, resume=resume)


def assert_bitwise_equal(a, b):
    assert strip_times({"epochs": a.epochs}) == strip_times({"epochs": b.epochs}) and a.best_epoch == b.best_epoch
    assert a.chosen_state.keys() == b.chosen_state.keys()
    assert all(torch.equal(a.chosen_state[n], b.chosen_state[n]) for n in a.chosen_state)


@pytest.mark.parametrize("trainer", ["single", "packed"])
def test_resume_reads_weights_only_and_equals_the_uninterrupted_run(trainer, tmp_path, tiny_bert_dir, glue_dir,
                                                                    monkeypatch):
    # Dropout on (the tiny model's 0.1): resuming must restore every random stream, not only the weights.
    cfg = compose(*quick(tiny_bert_dir, tmp_path, "train.epochs=3", "train.select=last", "optim.lr=0.01"))
    prepared = Prepared(cfg)
    paths = [tmp_path / f"seed{s}" / "checkpoint.pt" for s in (SEEDS if trainer == "packed" else [0])]
    for path in paths:
        path.parent.mkdir()
    whole = single_run(cfg, prepared) if trainer == "single" else packed_run(cfg, prepared)

    cfg.train.stop_after_epochs = 1
    with pytest.raises(Stopped):
        single_run(cfg, prepared, paths[0]) if trainer == "single" else packed_run(cfg, prepared, paths)
    for path in paths:
        assert torch.load(path, weights_only=True)["epoch"] == 1
    cfg.train.stop_after_epochs = None
    torch.manual_seed(7), np.random.seed(7), random.seed(7)  # the next job's streams are elsewhere
    only_weights_only(monkeypatch)
    if trainer == "single":
        resumed = [single_run(cfg, prepared, paths[0])]
        whole = [whole]
    else:
        resumed = packed_run(cfg, prepared, paths, [read_checkpoint(path, "packed") for path in paths])
    for a, b in zip(whole, resumed, strict=True):
        assert b.resumed_after == 1
        assert_bitwise_equal(a, b)


def test_a_checkpoint_whose_mode_is_not_a_name_is_set_aside_in_one_line(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save({"mode": ["packed"], "epoch": 1}, path)  # loads as plain data, but the mode cannot be looked up
    assert read_checkpoint(path, "single") is None
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"warning: checkpoint {path} is not a single checkpoint of this run: it lacks trained")
    assert not path.exists() and len(list(tmp_path.glob("checkpoint.pt.bad-*"))) == 1


def test_a_hub_checkpoint_that_asks_to_run_its_own_code_is_one_line_and_runs_nothing(tmp_path, monkeypatch):
    """A hub name (here from a local hub cache, offline) whose config maps to the checkpoint's own Python files."""
    from bitfit_exp.core.errors import UserError
    from bitfit_exp.model.loading import load_model, load_tokenizer

    marker = tmp_path / "ran"
    snapshot = tmp_path / "hub" / "models--someone--custom" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    (snapshot / "config.json").write_text(json.dumps({"model_type": "my_custom", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoTokenizer": ["tokenization_x.XTokenizer", None],
        "AutoModelForSequenceClassification": "modeling_x.XModel"}}))
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"auto_map": {
        "AutoTokenizer": ["tokenization_x.XTokenizer", None]}}))
    for module in ("configuration_x", "tokenization_x", "modeling_x"):
        (snapshot / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    for load in (lambda: load_model("someone/custom", num_labels=2), lambda: load_tokenizer("someone/custom")):
        with pytest.raises(UserError, match=r"^someone/custom: its config asks to run the checkpoint's own Python code"):
            load()
    assert not marker.exists()
