"""bitfit-plot on synthetic patches and sealed records with hand-known numbers: bias change (BERT and RoBERTa
naming), learning curves, generalization gap, data-size curve; PNG/PDF/CSV written and the plotted values equal the
CSV. Only what finished records name counts: unclaimed, missing and unreadable patches, hand-edited, corrupt and
misplaced records, and diverged seeds are reported and counted. Nested training subsets on the local RTE copy."""

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose, quick, tiny_config
from matplotlib.image import imread
from omegaconf import OmegaConf

from bitfit_exp.commands import plot as plot_command
from bitfit_exp.data.batches import subset_rows
from bitfit_exp.model.methods import BIAS_COMPONENTS, bias_component, select
from bitfit_exp.model.patch import save_patch, trained_state
from bitfit_exp.results import analysis
from bitfit_exp.results import figures as plots
from bitfit_exp.results.records import seal, setting_key, write_json_atomic
from bitfit_exp.train.runner import Prepared, run_seed

LABELS = ["b_q", "b_k", "b_v", "b_m1", "b_LN1", "b_m2", "b_m3", "b_LN2"]


@pytest.fixture(autouse=True)
def fast_figures(monkeypatch):
    """Low-resolution PNGs and Type 3 PDF fonts: the same figures, several times faster to write."""
    monkeypatch.setitem(plots.STYLE, "savefig.dpi", 60)
    monkeypatch.setitem(plots.STYLE, "pdf.fonttype", 3)


# -----------------------------------------------------------------------------
# bias change (Figure 1)


def delta(key: str, layer: int, scale: float) -> float:
    """The known mean |change| of component `key` in `layer` (0-based): zero for b_k, as in the paper."""
    return 0.0 if key == "k" else scale * (1 + list(BIAS_COMPONENTS).index(key)) * (layer + 1) / 100


def write_patch(folder, kind: str, scale: float, seed: int = 0):
    """A bitfit patch of a tiny random model whose per-layer biases moved by ±delta (alternating signs per entry,
    so the mean absolute change is exactly delta)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(kind, num_labels=2))
    selection = select("bitfit", model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()
               if n in selection.params and n.endswith(".bias")}
    with torch.no_grad():
        for name, p in model.named_parameters():
            hit = bias_component(name)
            if hit is not None:
                signs = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(p.numel())])
                p.add_(signs * delta(hit[1], hit[0], scale))
            elif name in initial:  # embedding LayerNorm / pooler biases: trained, but not in Figure 1
                p.add_(5.0)
    path = folder / f"seed{seed}" / "patch.safetensors"
    save_patch(path, model, selection, trained_state(model, selection), initial,
               {"model": f"tiny_{kind}", "task": "rte", "method": "bitfit", "epoch": 1, "seed": seed})
    return path, [n for n in initial if bias_component(n)]


def expected_table(scale: float, n_layers: int = 2) -> pd.DataFrame:
    rows = {label: [delta(k, layer, scale) for layer in range(n_layers)]
            for label, k in zip(LABELS, BIAS_COMPONENTS, strict=True)}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[str(i + 1) for i in range(n_layers)])
    table["Avg"] = table.mean(axis=1)
    return table


def read_csv_table(path) -> pd.DataFrame:
    return pd.read_csv(path, index_col="component")


def check_png(path):
    image = imread(path)
    assert image.size > 0 and image.shape[0] > 100 and image.shape[1] > 100
    assert path.with_suffix(".pdf").stat().st_size > 0


@pytest.mark.parametrize("kind, prefix", [("bert", "bert.encoder.layer."), ("roberta", "roberta.encoder.layer.")])
def test_bias_change_matches_known_perturbations(kind, prefix, tmp_path):
    for seed in (0, 1):
        setting = write(tmp_path / "runs", make_record("bitfit", 1e-3, seed, 60, patch=True))
    _, names = write_patch(setting, kind, scale=1.0, seed=0)
    write_patch(setting, kind, scale=3.0, seed=1)
    assert names and all(n.startswith(prefix) for n in names)

    out = tmp_path / "figs"
    assert plot_command.main(["bias-change", str(setting), "--out", str(out)]) == 0
    [png] = out.glob("bias_change_*.png")
    check_png(png)
    table = read_csv_table(png.with_suffix(".csv"))
    expected = expected_table(scale=2.0)  # mean over seeds of scale 1 and 3
    assert list(table.index) == LABELS and list(table.columns) == ["1", "2", "Avg", "n_seeds", "of_seeds", "left_out",
                                                                 "layers"]
    assert table["layers"].eq("one column per layer").all()
    assert table["n_seeds"].eq(2).all() and table["of_seeds"].eq(2).all() and table["left_out"].isna().all()
    table = table[["1", "2", "Avg"]]
    np.testing.assert_allclose(table.to_numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-7)
    assert table.loc["b_k"].eq(0).all()
    assert table.loc["b_LN2", "2"] == pytest.approx(8 * 2 / 100 * 2.0, rel=1e-5)

    # The plotted heatmap holds exactly the CSV numbers, rows b_q (top) ... b_LN2.
    summary, info = analysis.bias_change_summary(setting)
    assert info["n_seeds"] == 2 and info["method"] == "bitfit" and info["note"] == "2 seeds"
    fig, ax, image = plots.plot_bias_change(summary, "t")
    np.testing.assert_allclose(np.asarray(image.get_array()), table.to_numpy(), rtol=1e-5, atol=1e-7)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "Avg"]
    assert len(ax.get_yticklabels()) == 8 and "q" in ax.get_yticklabels()[0].get_text()
    assert "LN2" in ax.get_yticklabels()[-1].get_text()

    # A seed folder on its own: that seed's numbers.
    one, _ = analysis.bias_change_summary(setting / "seed1")
    np.testing.assert_allclose(one.to_numpy(), expected_table(scale=3.0).to_numpy(), rtol=1e-5, atol=1e-7)


def test_bias_change_without_patch_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "seed0").mkdir()
    assert plot_command.main(["bias-change", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no patch.safetensors" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# synthetic run records


FINGERPRINTS = {"model": "9f2c4e01a7b3d5e6", "data": {
    "digest": "1c0ffee15bad5eed", "splits": {"train": {"rows": 2490, "sha": "aa11"}, "validation": {"rows": 277,
                                                                                           "sha": "bb22"}}}}


def make_record(method, lr, seed, dev, train=None, *, task="rte", model="minilm", n_train=800, subset=None,
                epochs=None, max_train=None, diverge_at=None, patch=False):
    """A sealed record, as the runner writes it, whose selected (best) epoch scores `dev` / `train` (x100);
    `epochs` = [(dev, train, loss)] overrides the per-epoch history (the best dev epoch is then the selected one).
    `diverge_at`: the seed diverged in that epoch (its metrics and those after it non-finite: null in the record).
    `patch`: the record names seed<k>/patch.safetensors (write it with write_patch)."""
    data = {"max_train_samples": n_train if max_train is None else max_train, "train_subset_seed": subset,
            "max_length": 128, "dir": "/data/glue", "train_eval_samples": 200}
    config = {"model": {"name": model, "name_or_path": f"hub/{model}"}, "task": {"name": task, "metric": "accuracy"},
              "method": {"name": method}, "optim": {"lr": lr, "weight_decay": 0.0},
              "train": {"epochs": 3, "batch_size": 8, "select": "best"}, "data": data}
    history = epochs or [(dev - 5, None if train is None else train - 5, 0.7), (dev, train, 0.5)]
    nan = float("nan")
    if diverge_at is not None:
        history = [h if i + 1 < diverge_at else (nan, None if h[1] is None else nan, nan)
                   for i, h in enumerate(history)]
    rows = [{"epoch": i + 1, "train_loss": loss, "dev": {"validation": {"accuracy": d / 100}},
             "train": {} if t is None else {"accuracy": t / 100}, "train_s": 1.0, "eval_s": 0.1}
            for i, (d, t, loss) in enumerate(history)]
    finite = [r for r in rows if not math.isnan(r["dev"]["validation"]["accuracy"])]
    best = max(finite, key=lambda r: r["dev"]["validation"]["accuracy"]) if finite else None
    record = {
        "status": "finished" if diverge_at is None else "diverged", "seed": seed,
        "main": {"split": "validation", "metric": "accuracy", "select": "best"},
        "columns": {"validation": task}, "params": {"pct_encoder": 100.0 if method == "full" else 0.1},
        "epochs": rows, "best": best, "last": rows[-1], "chosen_epoch": best and best["epoch"],
        "sizes": {"train": n_train, "train_probe": min(n_train, 200), "validation": 277},
        "config": config, "fingerprints": FINGERPRINTS, "env": {"device": "cpu"},
        "timings": {"finished_at": "2025-01-01T00:00:00+00:00"},
        "artifacts": {"patch": "patch.safetensors"} if patch else {},
    }
    if diverge_at is not None:
        record["diverged"] = {"epoch": diverge_at, "reason": "non-finite training loss"}
    return seal(record)


def write(root, record):
    """Write a sealed record where it belongs under `root`; returns its setting folder."""
    folder = root / record["setting"]["dir"]
    write_json_atomic(folder / f"seed{record['seed']}" / "record.json", record)
    return folder


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


def bitfit_seeds(runs, scales, patch=True):
    """Finished BitFit records of seeds 0..n-1 naming their patch, each patch moved by scales[seed]."""
    for seed, scale in enumerate(scales):
        setting = write(runs, make_record("bitfit", 1e-3, seed, 60, 70, patch=patch))
        write_patch(setting, "bert", scale=scale, seed=seed)
    return setting


def bias_csv(out) -> pd.DataFrame:
    [png] = out.glob("bias_change_*.png")
    return read_csv_table(png.with_suffix(".csv"))


def test_albert_figure_says_its_one_column_is_the_shared_layer(tmp_path, monkeypatch):
    from transformers import AlbertConfig, AutoModelForSequenceClassification

    setting = write(tmp_path / "runs", make_record("bitfit", 1e-3, 0, 60, patch=True))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AlbertConfig(
        vocab_size=64, embedding_size=8, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32, num_labels=2))
    selection = select("bitfit", model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if n in selection.params}
    with torch.no_grad():
        for name in initial:
            dict(model.named_parameters())[name].add_(0.25)
    save_patch(setting / "seed0" / "patch.safetensors", model, selection, trained_state(model, selection), initial,
               {"seed": 0})
    titles = []
    draw = plots.plot_bias_change
    monkeypatch.setattr(plots, "plot_bias_change", lambda table, title: (titles.append(title), draw(table, title))[1])
    out = tmp_path / "figs"
    assert plot_command.main(["bias-change", str(setting), "--out", str(out)]) == 0
    note = "ALBERT: all layers share one layer's biases (one column per layer group)"
    assert titles[-1].endswith("\n" + note)  # three layers, one column: the figure says why
    table = bias_csv(out)
    assert list(table.columns[:2]) == ["1", "Avg"] and table["layers"].eq(note).all()
    np.testing.assert_allclose(table["1"].to_numpy(), 0.25, rtol=1e-6)  # every role moved by exactly 0.25


def test_patch_without_record_is_ignored_with_a_warning(tmp_path, capsys):
    """A kill between the patch and the record: the patch is left out, by name, and not averaged."""
    setting = bitfit_seeds(tmp_path / "runs", [1.0, 3.0])
    orphan, _ = write_patch(setting, "bert", scale=100.0, seed=2)  # seed 2 was killed before its record
    out = tmp_path / "figs"
    assert plot_command.main(["bias-change", str(setting), "--out", str(out)]) == 0
    assert warning_lines(capsys.readouterr().err) == [
        f"warning: {orphan}: no finished run record beside it (killed before the record was written, or the record "
        f"is corrupt); ignored"]
    table = bias_csv(out)
    np.testing.assert_allclose(table[["1", "2", "Avg"]].to_numpy(), expected_table(scale=2.0).to_numpy(),
                               rtol=1e-5, atol=1e-7)
    assert table["n_seeds"].eq(2).all() and table["of_seeds"].eq(2).all()


def test_missing_or_unreadable_patch_is_reported_and_counted(tmp_path, capsys, monkeypatch):
    setting = bitfit_seeds(tmp_path / "runs", [1.0, 2.0, 3.0])
    (setting / "seed1" / "patch.safetensors").unlink()
    titles = []
    draw = plots.plot_bias_change
    monkeypatch.setattr(plots, "plot_bias_change", lambda table, title: (titles.append(title), draw(table, title))[1])

    out = tmp_path / "figs"
    assert plot_command.main(["bias-change", str(setting), "--out", str(out)]) == 0
    missing = setting / "seed1" / "patch.safetensors"
    assert warning_lines(capsys.readouterr().err) == [
        f"warning: {missing}: patch named by {setting / 'seed1' / 'record.json'} is missing; seed 1 left out"]
    assert titles[-1].endswith("\n2 of 3 seeds: seed 1's patch is missing")
    table = bias_csv(out)
    np.testing.assert_allclose(table[["1", "2", "Avg"]].to_numpy(), expected_table(scale=2.0).to_numpy(),
                               rtol=1e-5, atol=1e-7)  # seeds 0 and 2: scales 1 and 3
    assert table["n_seeds"].eq(2).all() and table["of_seeds"].eq(3).all()
    assert table["left_out"].eq("seed 1's patch is missing").all()

    (setting / "seed2" / "patch.safetensors").write_bytes(b"truncated")
    table, info = analysis.bias_change_summary(setting)
    assert info["note"] == "1 of 3 seeds: seed 1's patch is missing; seed 2's patch is unreadable"
    assert info["patches"] == [str(setting / "seed0" / "patch.safetensors")]
    assert info["warnings"][1].startswith(f"{setting / 'seed2' / 'patch.safetensors'}: unreadable patch (")
    np.testing.assert_allclose(table.to_numpy(), expected_table(scale=1.0).to_numpy(), rtol=1e-5, atol=1e-7)

    (setting / "seed0" / "patch.safetensors").unlink()
    assert plot_command.main(["bias-change", str(setting), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"error: {setting}: no readable patch (seed 0's patch is missing; seed 1's patch "
                                    f"is missing; seed 2's patch is unreadable)")
    assert len(warning_lines(err)) == 3


def test_patch_of_another_seed_is_not_averaged(tmp_path):
    setting = bitfit_seeds(tmp_path / "runs", [1.0, 3.0])
    (setting / "seed0" / "patch.safetensors").write_bytes((setting / "seed1" / "patch.safetensors").read_bytes())
    table, info = analysis.bias_change_summary(setting)
    assert info["note"] == "1 of 2 seeds: seed 0's patch is not its own"
    assert info["warnings"] == [f"{setting / 'seed0' / 'patch.safetensors'}: it is seed 1's patch; seed 0 left out"]
    np.testing.assert_allclose(table.to_numpy(), expected_table(scale=3.0).to_numpy(), rtol=1e-5, atol=1e-7)


# -----------------------------------------------------------------------------
# learning curves


def test_curves_mean_and_band_equal_the_records(tmp_path):
    histories = {0: [(50, 60, 0.70), (60, 80, 0.50), (58, 90, 0.30)],
                 1: [(54, 64, 0.66), (62, 84, 0.46), (60, 96, 0.20)]}
    for seed, history in histories.items():
        setting = write(tmp_path / "runs", make_record("full", 5e-5, seed, 0, epochs=history))
    per_seed, summary, info = analysis.curves(setting)
    assert info["chosen_epochs"] == {0: 2, 1: 2}
    dev = summary[summary["series"] == "dev"].set_index("epoch")
    assert list(dev["mean"]) == pytest.approx([52, 61, 59])
    assert list(dev["std"]) == pytest.approx([math.sqrt(8), math.sqrt(2), math.sqrt(2)])
    train = summary[summary["series"] == "train"].set_index("epoch")
    assert list(train["mean"]) == pytest.approx([62, 82, 93])
    loss = summary[summary["series"] == "train loss"].set_index("epoch")
    assert list(loss["mean"]) == pytest.approx([0.68, 0.48, 0.25])

    out = tmp_path / "figs"
    assert plot_command.main(["curves", str(setting), "--out", str(out)]) == 0
    [png] = out.glob("curves_minilm_rte_full_lr5e-05_*.png")
    check_png(png)
    written = pd.read_csv(png.with_suffix(".csv"))
    means = written[written["seed"] == "mean"]
    fig, axes = plots.plot_curves(per_seed, summary, "t", "accuracy")
    for ax in axes:
        for line in ax.get_lines():
            if line.get_gid():  # the bold mean lines
                series = line.get_gid().removesuffix(" mean")
                want = means[means["series"] == series].sort_values("epoch")
                assert list(line.get_xdata()) == list(want["epoch"])
                assert list(line.get_ydata()) == pytest.approx(list(want["value"]))
    assert {line.get_gid() for ax in axes for line in ax.get_lines()} >= {"dev mean", "train mean", "train loss mean"}
    assert axes[0].get_xlabel() == "Epoch" and "accuracy" in axes[0].get_ylabel()


# -----------------------------------------------------------------------------
# generalization gap


def test_gap_table_hand_computed(tmp_path):
    runs = tmp_path / "runs"
    # Full-FT: lr 2e-5 has the better dev mean (71 vs 61) and is the one reported; gaps 29 and 28.
    for seed, (dev, train) in enumerate([(60, 90), (62, 94)]):
        write(runs, make_record("full", 1e-5, seed, dev, train))
    for seed, (dev, train) in enumerate([(70, 99), (72, 100)]):
        write(runs, make_record("full", 2e-5, seed, dev, train))
    # BitFit: one lr; gaps 5 and 4.
    for seed, (dev, train) in enumerate([(65, 70), (67, 71)]):
        write(runs, make_record("bitfit", 1e-3, seed, dev, train))
    table, warnings = analysis.gap_table(runs)
    assert not warnings
    rows = table.set_index("method")
    assert rows.loc["full", "lr"] == 2e-5 and rows.loc["full", "n_lrs"] == 2
    assert rows.loc["full", ["train_mean", "dev_mean", "gap_mean"]].tolist() == pytest.approx([99.5, 71, 28.5])
    assert rows.loc["full", "gap_std"] == pytest.approx(math.sqrt(0.5))
    assert rows.loc["bitfit", ["train_mean", "dev_mean", "gap_mean"]].tolist() == pytest.approx([70.5, 66, 4.5])
    assert rows.loc["bitfit", "gap_std"] == pytest.approx(math.sqrt(0.5))
    assert set(table["n_seeds"]) == {2} and set(table["n_train"]) == {800}

    out = tmp_path / "figs"
    assert plot_command.main(["gap", "--runs-dir", str(runs), "--out", str(out)]) == 0
    check_png(out / "generalization_gap.png")
    written = pd.read_csv(out / "generalization_gap.csv").set_index("method")
    assert written.loc["full", "gap_mean"] == pytest.approx(28.5)
    assert written.loc["bitfit", "gap_mean"] == pytest.approx(4.5)
    markdown = (out / "generalization_gap.md").read_text()
    assert "| MiniLM-L6 | RTE | 800 (first rows) | Full-FT | 2e-05 | 2 | 99.5±0.7 | 71.0±1.4 | 28.5±0.7 |" in markdown
    fig, ax, bars = plots.plot_gap(table)
    assert [b.get_height() for b in bars["full"]] == pytest.approx([28.5])
    assert [b.get_height() for b in bars["bitfit"]] == pytest.approx([4.5])
    assert "train − dev" in ax.get_ylabel()


def test_gap_skips_records_without_a_train_metric(tmp_path):
    write(tmp_path, make_record("bitfit", 1e-3, 0, 60, None))
    table, _ = analysis.gap_table(tmp_path)
    assert table.empty


def test_hand_edited_record_is_ignored_by_name_and_the_others_draw(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, (dev, train) in enumerate([(60, 90), (62, 94), (64, 98)]):
        setting = write(runs, make_record("full", 2e-5, seed, dev, train))
    edited = setting / "seed2" / "record.json"
    record = json.loads(edited.read_text())
    record["best"]["dev"]["validation"]["accuracy"] = 0.99  # a better score typed in by hand
    edited.write_text(json.dumps(record))

    per_seed, summary, info = analysis.curves(setting)
    assert info["warnings"] == [f"{edited}: content does not match its digest (edited by hand?); ignored"]
    assert sorted(per_seed["seed"].unique()) == [0, 1] and info["of_seeds"] == 2
    table, warnings = analysis.gap_table(runs)
    assert warnings == info["warnings"]
    assert table.loc[0, ["n_seeds", "dev_mean", "gap_mean"]].tolist() == pytest.approx([2, 61, 31])

    out = tmp_path / "figs"
    assert plot_command.main(["gap", "--runs-dir", str(runs), "--out", str(out)]) == 0
    assert warning_lines(capsys.readouterr().err) == [f"warning: {info['warnings'][0]}"]
    assert pd.read_csv(out / "generalization_gap.csv").loc[0, "dev_mean"] == pytest.approx(61)


def diverged_runs(runs):
    """Full-FT on subsets of 100 and 300 rows (seeds 0, 1 finished); at 300 seed 2 diverged in epoch 2 (epoch 1 is
    finite and chosen); BitFit lr 1e-2 on 100 rows: both seeds diverged in epoch 1 (every metric null)."""
    for seed, dev in enumerate((50, 54)):
        write(runs, make_record("full", 5e-5, seed, dev, dev + 30, n_train=100, subset=0))
    histories = {0: [(55, 70, 0.7), (57, 80, 0.5)], 1: [(57, 74, 0.6), (59, 90, 0.4)], 2: [(80, 80, 0.7), (0, 0, 0)]}
    for seed, history in histories.items():
        setting = write(runs, make_record("full", 5e-5, seed, 0, n_train=300, subset=0, epochs=history,
                                          diverge_at=2 if seed == 2 else None))
    for seed in (0, 1):
        write(runs, make_record("bitfit", 1e-2, seed, 50, 50, n_train=100, subset=0, diverge_at=1))
    return setting


def test_diverged_seeds_are_counted_not_averaged(tmp_path, capsys):
    runs = tmp_path / "runs"
    setting = diverged_runs(runs)

    per_seed, summary, info = analysis.curves(setting)
    assert info["diverged"] == {2: 2} and info["n_seeds"] == 2 and info["of_seeds"] == 3
    assert info["note"] == "2 of 3 seeds: seed 2 diverged in epoch 2"
    dev = summary[summary["series"] == "dev"].set_index("epoch")
    assert list(dev["mean"]) == pytest.approx([56, 58]) and list(dev["n"]) == [2, 2]  # seed 2's 80 is not in it
    late = per_seed[(per_seed["seed"] == 2) & (per_seed["epoch"] == 2)]
    assert late["value"].isna().all() and set(late["status"]) == {"diverged"}

    gaps, _ = analysis.gap_table(runs)
    full300 = gaps[(gaps["method"] == "full") & (gaps["n_train"] == 300)].iloc[0]
    assert [full300.n_seeds, full300.n_diverged] == [2, 1]
    assert [full300.train_mean, full300.dev_mean, full300.gap_mean] == pytest.approx([85, 58, 27])
    bitfit = gaps[gaps["method"] == "bitfit"].iloc[0]
    assert [bitfit.n_seeds, bitfit.n_diverged] == [0, 2] and math.isnan(bitfit.gap_mean)

    sizes, _ = analysis.datasize_table(runs, "rte")
    full = sizes[sizes["method"] == "full"].set_index("n_train")
    assert list(full["mean"]) == pytest.approx([52, 58]) and list(full["n"]) == [2, 2]
    assert list(full["n_diverged"]) == [0, 1] and full.loc[300, "seeds"] == "0 1"
    bitfit = sizes[sizes["method"] == "bitfit"].iloc[0]
    assert [bitfit.n, bitfit.n_diverged, bitfit.seeds] == [0, 2, ""] and math.isnan(bitfit["mean"])

    out = tmp_path / "figs"
    for command in (["curves", str(setting)], ["gap", "--runs-dir", str(runs)],
                    ["datasize", "--runs-dir", str(runs), "--task", "rte"]):
        assert plot_command.main([*command, "--out", str(out)]) == 0
    assert warning_lines(capsys.readouterr().err) == []
    curve = pd.read_csv(out / f"curves_minilm_rte_full_lr5e-05_{setting.name.rsplit('-', 1)[1]}.csv")
    means = curve[(curve["seed"] == "mean") & (curve["series"] == "dev")]
    assert list(means["value"]) == pytest.approx([56, 58]) and set(means["n"]) == {2}
    assert len(curve[curve["status"] == "diverged"]) > 0
    markdown = (out / "generalization_gap.md").read_text()
    assert "| 300 (subset seed 0) | Full-FT | 5e-05 | 2 (+1 diverged) | 85.0±7.1 | 58.0±1.4 | 27.0±5.7 |" in markdown
    assert "| BitFit | 0.01 | 0 (+2 diverged) | — | — | — |" in markdown
    written = pd.read_csv(out / "datasize_minilm_rte.csv")
    assert written["n_diverged"].tolist() == [2, 0, 1]  # bitfit 100; full 100, 300
    fig, ax, bars = plots.plot_gap(gaps)
    assert "3 diverged seeds, not in the means" in ax.get_title()
    assert [t.get_text() for t in ax.texts] == ["30.0", "27.0", "diverged"]
    assert bars["bitfit"].get_label() == "BitFit (2 diverged)"
    fig, ax, lines = plots.plot_datasize(sizes, "t", "accuracy")
    assert set(lines) == {"Full-FT (lr 5e-05), 1 diverged", "BitFit (lr 0.01), 2 diverged"}
    assert ax.get_title() == "t\n3 diverged runs, not in the means"


# -----------------------------------------------------------------------------
# data size (Figure 2)


def test_datasize_curve_hand_computed(tmp_path):
    runs = tmp_path / "runs"
    scores = {("full", 100): (50, 54), ("full", 300): (56, 58), ("full", 800): (62, 66),
              ("bitfit", 100): (55, 55), ("bitfit", 300): (58, 60), ("bitfit", 800): (60, 62)}
    lrs = {"full": 5e-5, "bitfit": 1e-3}
    for (method, n), pair in scores.items():
        for seed, dev in enumerate(pair):
            write(runs, make_record(method, lrs[method], seed, dev, dev + 10, n_train=n, subset=0))
    # Not part of the curve: first-rows runs (no subset seed) and another task.
    write(runs, make_record("full", 5e-5, 0, 99, 99, n_train=800))
    write(runs, make_record("full", 5e-5, 0, 99, 99, n_train=800, subset=0, task="mrpc"))

    table, _ = analysis.datasize_table(runs, "rte")
    assert len(table) == 6 and table.groupby("method")["family"].nunique().eq(1).all()
    full = table[table["method"] == "full"].set_index("n_train")
    assert list(full["mean"]) == pytest.approx([52, 57, 64])
    assert list(full["std"]) == pytest.approx([math.sqrt(8), math.sqrt(2), math.sqrt(8)])
    bitfit = table[table["method"] == "bitfit"].set_index("n_train")
    assert list(bitfit["mean"]) == pytest.approx([55, 59, 61]) and bitfit.loc[100, "std"] == 0

    out = tmp_path / "figs"
    assert plot_command.main(["datasize", "--runs-dir", str(runs), "--task", "rte", "--out", str(out)]) == 0
    check_png(out / "datasize_minilm_rte.png")
    written = pd.read_csv(out / "datasize_minilm_rte.csv")
    fig, ax, lines = plots.plot_datasize(table, "t", "accuracy")
    assert set(lines) == {"Full-FT (lr 5e-05)", "BitFit (lr 0.001)"}
    for label, line in lines.items():
        method = "full" if label.startswith("Full") else "bitfit"
        want = written[written["method"] == method].sort_values("n_train")
        assert list(line.get_xdata()) == list(want["n_train"])
        assert list(line.get_ydata()) == pytest.approx(list(want["mean"]))
    assert ax.get_xscale() == "log" and "Training examples" in ax.get_xlabel()


def squad_record(method, lr, seed, em, f1, n_questions):
    """A sealed BERT-base SQuAD record on a seeded subset of `n_questions` training questions (more windows), whose
    selected (best, last) epoch scores exact match `em` and F1 `f1` (x100) on validation; epoch 1 five points less."""
    record = make_record(method, lr, seed, f1, model="bert_base", task="squad", n_train=n_questions, subset=0)
    record["config"]["task"] = {"name": "squad", "kind": "span", "metric": "f1", "metrics": ["exact_match", "f1"]}
    record["main"]["metric"] = "f1"
    for row, shift in zip(record["epochs"], (-5, 0), strict=True):
        row["dev"] = {"validation": {"exact_match": (em + shift) / 100, "f1": (f1 + shift) / 100}}
        row["train"] = {"exact_match": 0.9, "f1": 0.95}
    record["best"] = record["last"] = record["epochs"][-1]
    record["sizes"].update(train=n_questions + 13, train_examples=n_questions)  # long contexts: several windows
    return seal(record)


# (method, training questions) -> exact match and F1 of seeds 0 and 1
SQUAD = {("full", 100): ((10, 14), (20, 26)), ("full", 1000): ((40, 44), (52, 54)),
         ("full", 5000): ((70, 72), (80, 82)), ("bitfit", 100): ((20, 20), (30, 34)),
         ("bitfit", 1000): ((45, 47), (56, 60)), ("bitfit", 5000): ((64, 66), (75, 77))}


def squad_runs(root):
    lrs = {"full": 5e-5, "bitfit": 1e-3}
    for (method, n), (ems, f1s) in SQUAD.items():
        for seed, (em, f1) in enumerate(zip(ems, f1s, strict=True)):
            write(root, squad_record(method, lrs[method], seed, em, f1, n))
    return root


@pytest.mark.parametrize("metric, which", [("exact_match", 0), ("f1", 1)])
def test_squad_datasize_figure_per_metric_hand_computed(tmp_path, metric, which):
    """Figure 2 (exact match) and Figure 6 (F1): BitFit and Full-FT on one log-x figure, mean ± std over seeds, x the
    training questions (not their windows)."""
    runs, out = squad_runs(tmp_path / "runs"), tmp_path / "figs"
    assert plot_command.main(["datasize", "--runs-dir", str(runs), "--task", "squad", "--out", str(out)]) == 0
    stem = out / f"datasize_bert_base_squad_{metric}"
    check_png(stem.with_suffix(".png"))
    written = pd.read_csv(stem.with_suffix(".csv"))
    table, _ = analysis.datasize_table(runs, "squad", metric=metric)
    fig, ax, lines = plots.plot_datasize(table, "t", metric)
    assert set(lines) == {"Full-FT (lr 5e-05)", "BitFit (lr 0.001)"} and len(ax.collections) == 2  # two ± bands
    for label, line in lines.items():
        method = "full" if label.startswith("Full") else "bitfit"
        pairs = [SQUAD[(method, n)][which] for n in (100, 1000, 5000)]
        means = [sum(p) / 2 for p in pairs]
        stds = [abs(p[0] - p[1]) / math.sqrt(2) for p in pairs]
        assert list(line.get_xdata()) == [100, 1000, 5000]
        assert list(line.get_ydata()) == pytest.approx(means)
        mine = written[written["method"] == method].sort_values("n_train")
        assert list(mine["mean"]) == pytest.approx(means) and list(mine["std"]) == pytest.approx(stds, rel=1e-5)
        exact = table[table["method"] == method].sort_values("n_train")
        assert list(exact["std"]) == pytest.approx(stds)  # the CSV keeps 6 significant digits
        assert set(mine["metric"]) == {metric} and set(mine["n"]) == {2}
        band = ax.collections[list(lines).index(label)].get_paths()[0].vertices
        assert band[:, 1].min() == pytest.approx(min(m - s for m, s in zip(means, stds, strict=True)))
        assert band[:, 1].max() == pytest.approx(max(m + s for m, s in zip(means, stds, strict=True)))
    assert ax.get_xscale() == "log" and ax.get_ylabel() == f"dev {plots.metric_name(metric)} (×100)"


def test_squad_datasize_metric_choice_and_all(tmp_path, capsys):
    runs, out = squad_runs(tmp_path / "runs"), tmp_path / "figs"
    assert plot_command.main(["datasize", "--runs-dir", str(runs), "--task", "squad", "--metric", "exact_match",
                       "--out", str(out / "one")]) == 0
    assert sorted(p.name for p in (out / "one").iterdir()) == [f"datasize_bert_base_squad_exact_match.{e}"
                                                                for e in ("csv", "pdf", "png")]
    assert plot_command.main(["datasize", "--runs-dir", str(runs), "--task", "squad", "--metric", "accuracy"]) == 2
    assert capsys.readouterr().err == "error: no data-size run of squad scores 'accuracy'; they score: " \
                                      "exact_match, f1\n"
    assert plot_command.main(["all", "--runs-dir", str(runs), "--out", str(out / "all")]) == 0
    for metric in ("exact_match", "f1"):
        for ext in ("png", "pdf", "csv"):
            assert (out / "all" / f"datasize_bert_base_squad_{metric}.{ext}").stat().st_size > 0
    assert not (out / "all" / "datasize_bert_base_squad.csv").exists()


def test_all_draws_every_figure_and_reports_every_bad_input(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        full = write(runs, make_record("full", 5e-5, seed, 60 + seed, 80 + seed))
        for n in (100, 300):
            setting = write(runs, make_record("bitfit", 1e-3, seed, 50 + n / 100, 70, n_train=n, subset=0,
                                              patch=(seed, n) == (0, 300)))
    write_patch(setting, "bert", scale=1.0, seed=0)
    # Bad inputs, each to be reported by path while everything else is drawn:
    corrupt = full / "seed2" / "record.json"
    corrupt.parent.mkdir()
    corrupt.write_text('{"schema": 2, "status": "fini')  # a half-written record (not written atomically)
    misplaced = full / "seed3" / "record.json"
    misplaced.parent.mkdir()
    misplaced.write_text((full / "seed0" / "record.json").read_text())  # copied into another seed's folder
    orphan, _ = write_patch(full, "bert", scale=1.0, seed=4)  # killed between its patch and its record
    broken = write(runs, make_record("full", 1e-4, 0, 50, 70, patch=True)) / "seed0"  # names a patch never written

    out = tmp_path / "figs"
    assert plot_command.main(["all", "--runs-dir", str(runs), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    lines = warning_lines(err)
    assert len(lines) == len(err.splitlines()) == 5
    for path in (corrupt, misplaced, orphan, broken / "patch.safetensors"):
        assert sum(line.startswith(f"warning: {path}: ") for line in lines) == 1, path
    assert f"warning: {broken.parent}: bias-change figure not drawn (NothingToDraw: {broken.parent}: no readable " \
           f"patch (seed 0's patch is missing))" in lines
    for name in ("generalization_gap", "datasize_minilm_rte"):
        for ext in ("png", "pdf", "csv"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    assert len(list((out / "curves").glob("*.png"))) == 4 == len(list((out / "curves").glob("*.csv")))
    assert len(list(out.glob("bias_change_*.png"))) == 1
    curve = pd.read_csv(out / "curves" / f"curves_minilm_rte_full_lr5e-05_{full.name.rsplit('-', 1)[1]}.csv")
    assert sorted(set(curve["seed"])) == ["0", "1", "mean"]  # not the corrupt and the misplaced record
    with open(out / "generalization_gap.csv") as f:
        rows = list(csv.DictReader(f))
    # full on 800 first rows (lr 5e-5 of 2 lrs, 2 seeds), bitfit on subsets of 100 and 300
    assert [(r["method"], r["n_train"], r["lr"], r["n_seeds"], r["n_lrs"]) for r in rows] == [
        ("bitfit", "100", "0.001", "2", "1"), ("bitfit", "300", "0.001", "2", "1"), ("full", "800", "5e-05", "2", "2")]

    # Nothing drawable: every input is reported, exit 1; no inputs at all: exit 2.
    only_bad = tmp_path / "bad" / corrupt.relative_to(runs)
    only_bad.parent.mkdir(parents=True)
    only_bad.write_text("{")
    bad_root = tmp_path / "bad"
    assert plot_command.main(["all", "--runs-dir", str(bad_root), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"warning: {only_bad}: unreadable run record")
    assert err[1] == f"error: nothing drawn from {bad_root}: 1 bad input(s), listed above"
    assert plot_command.main(["all", "--runs-dir", str(tmp_path / "empty"), "--out", str(out)]) == 2


# -----------------------------------------------------------------------------
# nested training subsets


def test_subset_rows_are_nested_and_null_keeps_the_first_rows():
    assert subset_rows(2490, 100) == range(100)
    assert subset_rows(50, None) == range(50)
    small, large = subset_rows(2490, 100, seed=7), subset_rows(2490, 500, seed=7)
    assert small == large[:100] and len(set(large)) == 500
    assert small != subset_rows(2490, 100, seed=8)
    assert sorted(subset_rows(30, None, seed=1)) == list(range(30))


def test_prepared_train_subsets_are_nested_across_sizes(tiny_bert_dir, glue_dir, tmp_path):
    def prepared(*extra):
        cfg = compose(*quick(tiny_bert_dir, tmp_path, *extra))
        return cfg, Prepared(cfg)

    _, first = prepared("data.max_train_samples=100")
    assert first.train.idx.tolist() == list(range(100))  # null: the first rows, as before
    cfg, p100 = prepared("data.max_train_samples=100", "data.train_subset_seed=3", "data.train_eval_samples=40")
    _, p500 = prepared("data.max_train_samples=500", "data.train_subset_seed=3")
    small, large = p100.train.idx.tolist(), p500.train.idx.tolist()
    assert len(small) == 100 and len(large) == 500
    assert set(small) <= set(large) and small == large[:100]
    assert small != list(range(100)) and small != sorted(small)  # a permutation's rows, in its order
    assert set(p100.train_probe.idx.tolist()) <= set(small) and len(p100.train_probe) == 40

    # The seed is in the record's config and in the setting hash; null leaves earlier hashes as they were.
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["data"]["train_subset_seed"] == 3
    plain = OmegaConf.to_container(compose(*quick(tiny_bert_dir, tmp_path, "data.max_train_samples=100")),
                                   resolve=True)
    without_key = {**plain, "data": {k: v for k, v in plain["data"].items() if k != "train_subset_seed"}}
    prints = {"model": "m0", "data": "d0"}
    assert setting_key(plain, prints)["hash"] == setting_key(without_key, prints)["hash"] \
        != setting_key(resolved, prints)["hash"]
    record = run_seed(cfg, 0, p100, tmp_path / "seed0", torch.device("cpu"))
    assert record["config"]["data"]["train_subset_seed"] == 3 and record["sizes"]["train"] == 100


def test_datasize_experiment_expands_to_sizes_and_methods():
    from bitfit_exp.config.plan import plan

    jobs = plan(["+experiment=datasize"])
    assert len(jobs) == 10
    keys = {(j["key"]["method"], j["key"]["lr"]) for j in jobs}
    assert keys == {("full", 5e-5), ("bitfit", 1e-3)}
    cfg = compose("+experiment=datasize", "method=bitfit", "data.max_train_samples=100")
    assert cfg.data.train_subset_seed == 0 and cfg.model.name == "minilm" and cfg.task.name == "rte"


def test_squad_datasize_experiment_is_the_papers_figure_2():
    from bitfit_exp.config.plan import plan

    jobs = plan(["+experiment=squad_datasize"])
    assert len(jobs) == 16  # 2 methods x 8 sizes
    assert {(j["key"]["model"], j["key"]["task"]) for j in jobs} == {("bert_base", "squad")}
    assert {(j["key"]["method"], j["key"]["lr"]) for j in jobs} == {("full", 5e-5), ("bitfit", 1e-3)}
    cfg = compose("+experiment=squad_datasize", "method=bitfit", "data.max_train_samples=1000")
    assert cfg.data.train_subset_seed == 0 and list(cfg.seeds) == [0, 1, 2, 3, 4]
    assert list(cfg.task.metrics) == ["exact_match", "f1"] and cfg.task.title_split is None  # hub train split
