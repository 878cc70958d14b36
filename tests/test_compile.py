"""train.compile: the compiled training step gives the eager one's results (dropout off), one by one and packed.
Slow (compiling takes about a minute per trainer on CPU): `make test-slow`."""

import copy

import pytest
import torch
from conftest import compose, quick, save_tiny

from bitfit_exp.train.packed import train_packed
from bitfit_exp.train.runner import Prepared, start_seed
from bitfit_exp.train.trainer import train_seed

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, glue_dir):
    folder = save_tiny(tmp_path_factory.mktemp("tiny_nodrop"), "bert", hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    cfg = compose(*quick(folder, tmp_path_factory.mktemp("runs"), "train.epochs=2", "optim.lr=0.01"))
    return cfg, Prepared(cfg)


def one_by_one(cfg, prepared):
    model, selection, _ = start_seed(cfg, 0, CPU)
    return train_seed(model, selection, prepared.train, prepared.train_probe, prepared.dev, cfg, 0, CPU,
                      prepared.pad_id)


def packed(cfg, prepared):
    inits = []
    for seed in (0, 1):
        model, selection, _ = start_seed(cfg, seed, CPU)
        inits.append({n: p.detach().clone() for n, p in model.named_parameters() if n in selection.params})
    return train_packed(model, selection, inits, [0, 1], [0.01, 0.002], prepared.train, prepared.train_probe,
                        prepared.dev, cfg, CPU, prepared.pad_id)


@pytest.mark.parametrize("trainer", [one_by_one, packed])
def test_compiled_training_matches_eager(trainer, setup):
    cfg, prepared = setup
    cfg = copy.deepcopy(cfg)
    eager = trainer(cfg, prepared)
    cfg.train.compile = "default"
    fast = trainer(cfg, prepared)
    for a, b in zip(eager if isinstance(eager, list) else [eager], fast if isinstance(fast, list) else [fast],
                    strict=True):
        assert [r["train_loss"] for r in b.epochs] == pytest.approx([r["train_loss"] for r in a.epochs], rel=1e-4)
        assert [r["dev"] for r in b.epochs] == [r["dev"] for r in a.epochs]
        for name in a.chosen_state:
            torch.testing.assert_close(b.chosen_state[name], a.chosen_state[name], rtol=1e-3, atol=1e-4)


def test_compiled_packed_training_keeps_per_setting_dropout(tiny_bert_dir, tmp_path, glue_dir):
    # Dropout on: the per-setting masks are drawn outside the compiled graphs (graph breaks at the generator
    # calls), so compiled and eager training see the same masks.
    cfg = compose(*quick(tiny_bert_dir, tmp_path, "train.epochs=1", "data.padding=longest", "data.pad_multiple=8"))
    prepared = Prepared(cfg)
    eager = packed(cfg, prepared)
    cfg.train.compile = "default"
    for a, b in zip(eager, packed(cfg, prepared), strict=True):
        assert b.epochs[0]["train_loss"] == pytest.approx(a.epochs[0]["train_loss"], rel=1e-4)
