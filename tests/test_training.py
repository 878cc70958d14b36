"""Training behaviour on tiny models: frozen weights stay bit-identical, masks do not leak, patches reproduce."""

import numpy as np
import pytest
import torch
from conftest import compose, quick

from bitfit_exp.model.loading import load_model
from bitfit_exp.model.methods import select
from bitfit_exp.model.patch import apply_patch
from bitfit_exp.train.runner import Prepared, run_seed
from bitfit_exp.train.trainer import predict, train_seed


def trained_model(model_dir, tmp_path, method, *extra):
    cfg = compose(*quick(model_dir, tmp_path, f"method={method}", "optim.lr=0.05", *extra))
    prepared = Prepared(cfg)
    torch.manual_seed(0)
    model = load_model(cfg.model.name_or_path, cfg.task.num_labels)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    selection = select(method, model, torch.Generator().manual_seed(0))
    train_seed(model, selection, prepared.train, prepared.train_probe, prepared.dev, cfg, 0, torch.device("cpu"),
               prepared.pad_id)
    return model, before, selection


@pytest.mark.parametrize("method", ["bitfit", "bm2_bq", "frozen"])
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_untrained_weights_are_bit_identical(kind, method, tiny_bert_dir, tiny_roberta_dir, tmp_path):
    model_dir = tiny_bert_dir if kind == "bert" else tiny_roberta_dir
    model, before, selection = trained_model(model_dir, tmp_path, method, "optim.weight_decay=0.1")
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved, "nothing trained"
    assert moved <= set(selection.params)
    frozen = [n for n in before if n not in selection.params]
    assert frozen and all(torch.equal(dict(model.named_parameters())[n], before[n]) for n in frozen)


@pytest.mark.parametrize("method", ["rand_uniform", "rand_rowcol"])
def test_masked_methods_move_only_selected_entries(method, tiny_bert_dir, tmp_path):
    # Weight decay and clipping on: AdamW's decoupled decay would shrink every entry of a masked tensor.
    model, before, selection = trained_model(tiny_bert_dir, tmp_path, method, "optim.weight_decay=0.1",
                                             "train.grad_clip=0.01")
    named = dict(model.named_parameters())
    for name, mask in selection.masks.items():
        changed = named[name] != before[name]
        assert not (changed & ~mask).any(), f"{name}: unselected entries moved"
    total_changed = sum(int((named[n] != before[n]).sum()) for n in selection.masks)
    assert total_changed > 0.5 * sum(int(m.sum()) for m in selection.masks.values())
    untouched = [n for n in named if n not in selection.params]
    assert all(torch.equal(named[n], before[n]) for n in untouched)


@pytest.mark.parametrize("method", ["bitfit", "rand_uniform"])
def test_patch_reproduces_dev_predictions(method, tiny_bert_dir, tmp_path):
    cfg = compose(*quick(tiny_bert_dir, tmp_path, f"method={method}", "optim.lr=0.05", "train.save_patch=true"))
    prepared = Prepared(cfg)
    folder = tmp_path / "seed0"
    folder.mkdir()
    record = run_seed(cfg, 0, prepared, folder, torch.device("cpu"))
    assert record["artifacts"]["patch"] == "patch.safetensors"

    fresh = load_model(cfg.model.name_or_path, cfg.task.num_labels)
    apply_patch(fresh, folder / "patch.safetensors")
    got = predict(fresh, prepared.dev["validation"], cfg, torch.device("cpu"), prepared.pad_id)
    # The record's chosen epoch was scored on exactly these predictions.
    from bitfit_exp.kinds.metrics import compute_metrics
    scores = compute_metrics(cfg.task.metrics, got, prepared.dev["validation"].labels)
    assert scores == record["best"]["dev"]["validation"]
    # Test predictions written by the run (from the trained model) equal those of base model + patch, row by row.
    written = (folder / "RTE.tsv").read_text().splitlines()[1:]
    mine = predict(fresh, prepared.test["test"], cfg, torch.device("cpu"), prepared.pad_id)
    assert [line.split("\t")[1] for line in written] == [cfg.task.label_names[int(p)] for p in mine]

    # And the patch differs from a fresh model: applying it changes predictions' logits.
    base = load_model(cfg.model.name_or_path, cfg.task.num_labels)
    batch = {"input_ids": torch.tensor([prepared.dev["validation"].input_ids[0]])}
    assert not torch.equal(base(**batch).logits, fresh(**batch).logits)


def test_same_seed_same_record(tiny_bert_dir, tmp_path):
    cfg = compose(*quick(tiny_bert_dir, tmp_path, "method=bitfit", "optim.lr=0.01"))
    prepared = Prepared(cfg)
    runs = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        runs.append(run_seed(cfg, 0, prepared, tmp_path / str(i), torch.device("cpu"))["epochs"])
    strip = [[{k: v for k, v in row.items() if not k.endswith("_s")} for row in run] for run in runs]
    assert strip[0] == strip[1]
    (tmp_path / "other").mkdir()
    other = run_seed(cfg, 1, prepared, tmp_path / "other", torch.device("cpu"))["epochs"]
    assert other[0]["train_loss"] != runs[0][0]["train_loss"]


def test_dynamic_padding_gives_same_predictions(tiny_bert_dir, tmp_path):
    fixed = compose(*quick(tiny_bert_dir, tmp_path))
    dynamic = compose(*quick(tiny_bert_dir, tmp_path, "data.padding=longest"))
    prepared = Prepared(fixed)
    torch.manual_seed(0)
    model = load_model(fixed.model.name_or_path, fixed.task.num_labels)
    data = prepared.dev["validation"]
    device = torch.device("cpu")
    assert np.array_equal(predict(model, data, fixed, device, prepared.pad_id),
                          predict(model, data, dynamic, device, prepared.pad_id))


def test_gather_pads_and_masks_each_row():
    import numpy as np

    from bitfit_exp.data.batches import Encoded, batches, gather
    from bitfit_exp.kinds import sequence

    data = Encoded([[101, 7, 102], [101, 102], [101, 5, 6, 7, 102]], [[0, 0, 0], [0, 0], [0, 0, 1, 1, 1]],
                   np.array([1, 0, 1]), np.array([10, 11, 12]))
    b = gather(data, [1, 0], pad_id=9, labels=sequence.batch_labels)  # dynamic: the longest of these rows
    assert b["input_ids"].tolist() == [[101, 102, 9], [101, 7, 102]]
    assert b["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]] and b["labels"].tolist() == [0, 1]
    assert "labels" not in gather(data, [1, 0], pad_id=9)  # model inputs only: what predict feeds
    b = gather(data, [2, 1], pad_id=9, pad_to=7)  # beyond the split's longest row
    assert b["input_ids"].tolist() == [[101, 5, 6, 7, 102, 9, 9], [101, 102, 9, 9, 9, 9, 9]]
    assert b["token_type_ids"].tolist() == [[0, 0, 1, 1, 1, 0, 0], [0] * 7]
    assert b["attention_mask"].sum(1).tolist() == [5, 2]
    assert [x["input_ids"].shape for x in batches(data, [0, 1, 2], 2, 9)] == [(2, 3), (1, 5)]
    assert gather(data, [1], pad_id=9, multiple=4, cap=128)["input_ids"].tolist() == [[101, 102, 9, 9]]
    assert gather(data, [2], pad_id=9, multiple=4, cap=6)["input_ids"].shape == (1, 6)  # 8, capped
