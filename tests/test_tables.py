"""bitfit_exp.results.tables on synthetic run records: best lr within one protocol, mean±std, diverged seeds, Avg,
partial/missing cells, what is left out, paper comparison, files."""

import csv
import functools
import json
import math
import shutil

import pytest
from conftest import compose
from omegaconf import OmegaConf

from bitfit_exp.commands.tables import main
from bitfit_exp.results.records import seal, write_json_atomic
from bitfit_exp.results.reference import load_reference
from bitfit_exp.results.selection import TABLES, collect, ours_selection, select_best_lr, table_selection
from bitfit_exp.results.tables import build_table, compare, paper_avg, write_tables

PCT = {"full": 100.0, "bitfit": 0.0872, "frozen": 0.0}
# A complete BERT-base BitFit row (x100), MNLI as two columns; its Avg is hand-computed in test_avg_*.
FULL_ROW = {"qnli": 90.0, "sst2": 92.0, "mnli": (81.0, 83.0), "cola": 58.0, "mrpc": 90.0, "stsb": 89.0,
            "rte": 72.0, "qqp": 84.0}


@functools.cache
def _composed(overrides: tuple[str, ...]) -> str:
    return json.dumps(OmegaConf.to_container(compose(*overrides), resolve=True))


def run_config(model, task, method, lr=None, *overrides: str, changes=None) -> dict:
    """The resolved config `bitfit-run model=... task=... method=... *overrides` records, with `changes`
    ({"train.batch_size": 16}) applied and optim.lr set to `lr` (None: as composed)."""
    config = json.loads(_composed((f"model={model}", f"task={task}", f"method={method}", *overrides)))
    if lr is not None:
        config["optim"]["lr"] = lr
    for key, value in (changes or {}).items():
        group, name = key.split(".")
        config[group][name] = value
    return config


def fingerprints(model, task, checkpoint=None, data=None) -> dict:
    return {"model": checkpoint or f"ckpt-{model}",
            "data": {"digest": data or f"data-{task}", "splits": {"train": {"rows": 100, "sha": "0" * 16}}}}


def make_record(model, task, method, lr, seed, score, select="best", finished_at="2025-01-01T00:00:00+00:00",
                status="finished", changes=None, best_at_last=False, config=None, prints=None):
    """A realistic, unsealed record (`write` seals it) of the config bitfit-run would compose, trained for the task's
    epochs: the best epoch (the first, or the last with `best_at_last`) scores `score` (x100; a pair for MNLI m/mm),
    the others 5 points less; the train metric is 10 points above dev. status="diverged": epoch 1 scores `score`
    (None: no finite epoch), epoch 2 is non-finite (null) and training stopped there."""
    config = config or run_config(model, task, method, lr, changes={**(changes or {}), "train.select": select})
    n_epochs, metric, cols = config["train"]["epochs"], config["task"]["metric"], config["task"]["eval_splits"]
    scores = score if isinstance(score, tuple) else (score,)

    def epoch(n, shift):
        return {"epoch": n, "train_loss": 0.5, "train_s": 1.0, "eval_s": 0.1,
                "dev": {s: {metric: None if score is None else (v + shift) / 100}
                        for s, v in zip(cols, scores, strict=True)},
                "train": {metric: None if score is None else (scores[0] + shift + 10) / 100}}

    best = n_epochs if best_at_last else 1
    if status == "diverged":
        nan = {"epoch": 2, "train_loss": None, "train_s": 1.0, "eval_s": 0.1, "dev": {s: {metric: None} for s in cols},
               "train": {metric: None}}
        epochs = [epoch(1, 0.0), nan] if score is not None else [nan]
        chosen = 1 if score is not None else None
        best_row, extra = epochs[0] if chosen else None, {"diverged": {"epoch": 2, "reason": "non-finite loss"}}
    else:
        epochs = [epoch(n, 0.0 if n == best else -5.0) for n in range(1, n_epochs + 1)]
        chosen, best_row, extra = best if select == "best" else n_epochs, epochs[best - 1], {}
    return {
        "status": status, "seed": seed,
        "main": {"split": next(iter(cols)), "metric": metric, "select": select},
        "columns": cols,
        "params": {"trainable": 1000, "trainable_encoder": 900, "head": 100, "encoder_total": 10**6,
                   "pct_encoder": PCT.get(method, 0.09)},
        "epochs": epochs, "best": best_row, "last": epochs[-1], "chosen_epoch": chosen, "resumed_after_epoch": None,
        **extra,
        "sizes": {"train": 100, "train_probe": 100, **dict.fromkeys(cols, 50)},
        "timings": {"total_s": 2.0, "started_at": finished_at, "finished_at": finished_at},
        "env": {"device": "cpu"}, "config": config, "fingerprints": prints or fingerprints(model, task),
        "artifacts": {},
    }


def write(root, record, under=""):
    record = seal(record)
    path = root / under / record["setting"]["dir"] / f"seed{record['seed']}" / "record.json"
    write_json_atomic(path, record)
    return path


def write_seeds(root, model, task, method, lr, scores, **kw):
    return [write(root, make_record(model, task, method, lr, seed, s, **kw)) for seed, s in enumerate(scores)]


def write_full_row(root, model="bert_base", method="bitfit", lr=4e-4, skip=(), n_seeds=5):
    for task, value in FULL_ROW.items():
        if task not in skip:
            write_seeds(root, model, task, method, lr, [value] * n_seeds)


def cell(table, method, column, source="ours"):
    rows = table[table["Method"] == method].index
    row = rows[0] + ["ours", "paper", "Δ"].index(source) if "Source" in table else rows[0]
    return table.at[row, column]


def test_mean_std_of_one_cell_and_rows(tmp_path):
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, [70.0, 72.0, 74.0])
    df, warnings = collect(tmp_path)
    assert warnings == [] and len(df) == 3
    assert df["score"].tolist() == pytest.approx([70.0, 72.0, 74.0])
    assert df["train_score"].tolist() == pytest.approx([80.0, 82.0, 84.0])
    assert set(df["column"]) == {"rte"} and df["pct_encoder"].iloc[0] == pytest.approx(0.0872)
    best = select_best_lr(df)
    (row,) = best.itertuples()
    assert (row.mean, row.std, row.n_seeds, row.lr) == (pytest.approx(72.0), pytest.approx(2.0), 3, 4e-4)
    table = build_table(best, [("bert_base", "bitfit")], expected_seeds=3)
    assert (row.n_lrs, row.expected_lrs, row.n_diverged, row.seeds) == (1, 4, 0, "0-2")
    assert cell(table, "BitFit", "RTE") == "72.0±2.0 (1/4 lrs)"  # one lr of the method's grid of 4
    assert cell(table, "BitFit", "%Param") == "0.09%" and cell(table, "BitFit", "QNLI") == "—"


def test_last_epoch_override_and_single_seed_std(tmp_path):
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, [70.0])
    df, _ = collect(tmp_path, epoch="last")
    assert df["score"].tolist() == pytest.approx([65.0]) and df["train_score"].tolist() == pytest.approx([75.0])
    best = select_best_lr(df)
    assert best["std"].tolist() == [0.0] and best["n_seeds"].tolist() == [1]
    write_seeds(tmp_path / "last", "bert_base", "rte", "bitfit", 4e-4, [70.0], select="last")
    df, _ = collect(tmp_path / "last")  # the record's own main.select
    assert df["score"].tolist() == pytest.approx([65.0])


def test_best_lr_is_the_best_mean_not_the_best_seed(tmp_path):
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 1e-4, [80.0, 60.0, 60.0])  # best seed, mean 66.7
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 1e-3, [70.0, 71.0, 72.0])  # mean 71.0
    write_seeds(tmp_path, "bert_base", "cola", "bitfit", 1e-4, [50.0, 52.0])  # tie -> smaller lr
    write_seeds(tmp_path, "bert_base", "cola", "bitfit", 7e-4, [52.0, 50.0])
    best = select_best_lr(collect(tmp_path)[0]).set_index("column")
    assert best.at["rte", "lr"] == 1e-3 and best.at["rte", "mean"] == pytest.approx(71.0)
    assert best.at["rte", "n_lrs"] == 2
    assert best.at["cola", "lr"] == 1e-4


def test_mnli_has_both_columns_selected_on_matched(tmp_path):
    write_seeds(tmp_path, "bert_base", "mnli", "bitfit", 1e-4, [(80.0, 90.0), (80.0, 90.0)])
    write_seeds(tmp_path, "bert_base", "mnli", "bitfit", 4e-4, [(82.0, 70.0), (84.0, 72.0)])  # better matched
    df, _ = collect(tmp_path)
    assert sorted(set(df["column"])) == ["mnli_m", "mnli_mm"]
    best = select_best_lr(df).set_index("column")
    assert best.at["mnli_m", "lr"] == best.at["mnli_mm", "lr"] == 4e-4
    assert best.at["mnli_m", "mean"] == pytest.approx(83.0) and best.at["mnli_mm", "mean"] == pytest.approx(71.0)
    table = build_table(select_best_lr(df), [("bert_base", "bitfit")], expected_seeds=2)
    assert cell(table, "BitFit", "MNLI-m") == "83.0±1.4 (2/4 lrs)"
    assert cell(table, "BitFit", "MNLI-mm") == "71.0±1.4 (2/4 lrs)"


def test_avg_counts_mnli_once(tmp_path):
    write_full_row(tmp_path)
    best = select_best_lr(collect(tmp_path)[0])
    # (90 + 92 + (81 + 83) / 2 + 58 + 90 + 89 + 72 + 84) / 8 = 657 / 8 = 82.125
    assert 657 / 8 == 82.125
    assert paper_avg(dict(zip(best["column"], best["mean"], strict=True))) == pytest.approx(82.125)
    table = build_table(best, [("bert_base", "bitfit")])
    assert cell(table, "BitFit", "Avg") == "82.1"
    assert cell(table, "BitFit", "MNLI-m") == "81.0±0.0 (1/4 lrs)" and cell(table, "BitFit", "QQP") == "84.0±0.0 (1/4 lrs)"


def test_missing_task_gives_dash_and_no_avg(tmp_path):
    write_full_row(tmp_path, skip=("stsb",))
    best = select_best_lr(collect(tmp_path)[0])
    table = build_table(best, [("bert_base", "bitfit"), ("bert_base", "full")])
    assert cell(table, "BitFit", "STS-B") == "—" and cell(table, "BitFit", "Avg") == "—"
    assert cell(table, "BitFit", "RTE") == "72.0±0.0 (1/4 lrs)"
    assert table.loc[table["Method"] == "Full-FT"].iloc[0, 2:].tolist() == ["—"] * 11


def test_partial_seeds_are_flagged(tmp_path):
    write_full_row(tmp_path, skip=("rte",))
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, [72.0, 73.0, 74.0])
    table = build_table(select_best_lr(collect(tmp_path)[0]), [("bert_base", "bitfit")], expected_seeds=5)
    assert cell(table, "BitFit", "RTE") == "73.0±1.0 (3/5 seeds, 1/4 lrs)"
    assert cell(table, "BitFit", "QNLI") == "90.0±0.0 (1/4 lrs)"
    assert cell(table, "BitFit", "Avg").endswith("(partial seeds)")


def test_duplicate_record_counted_once_with_warning(tmp_path):
    runs = tmp_path / "runs"
    write_seeds(runs, "bert_base", "rte", "bitfit", 4e-4, [70.0, 72.0, 74.0])
    shutil.copytree(runs / "bert_base", runs / "backup" / "bert_base")  # the same seed folders, copied
    newer = make_record("bert_base", "rte", "bitfit", 4e-4, 0, 76.0, finished_at="2025-02-01T00:00:00+00:00")
    newer_path = write(runs, newer, under="zz-rerun")
    df, warnings = collect(runs)
    assert len(df) == 3 and sorted(df["seed"]) == [0, 1, 2]
    assert df.loc[df["seed"] == 0, "score"].item() == pytest.approx(76.0)  # newest finished_at wins
    assert df.loc[df["seed"] == 0, "path"].item() == str(newer_path)
    assert len(warnings) == 4 and all("duplicate" in w for w in warnings)
    assert any(str(runs / "backup" / "bert_base") in w for w in warnings)


def test_corrupt_unfinished_and_replaced_records(tmp_path):
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, [70.0, 72.0])
    base = tmp_path / seal(make_record("bert_base", "rte", "bitfit", 4e-4, 0, 0))["setting"]["dir"]
    (base / "seed2").mkdir()
    (base / "seed2" / "record.json").write_text('{"schema": 1, "status": "fini')
    write(tmp_path, make_record("bert_base", "rte", "bitfit", 4e-4, 3, 90.0, status="running"))
    bad = make_record("bert_base", "rte", "bitfit", 4e-4, 4, 90.0)
    del bad["best"]
    write(tmp_path, bad)
    write_json_atomic(base / "seed0" / "record.json.replaced-20250101-000000",
                      seal(make_record("bert_base", "rte", "bitfit", 4e-4, 0, 10.0)))
    df, warnings = collect(tmp_path)
    assert sorted(df["score"]) == pytest.approx([70.0, 72.0])
    assert len(warnings) == 3
    assert any(str(base / "seed2" / "record.json") in w and "unreadable" in w for w in warnings)
    assert any(str(base / "seed3" / "record.json") in w and "not finished" in w for w in warnings)
    assert any(str(base / "seed4" / "record.json") in w and "malformed" in w for w in warnings)
    assert not any("replaced" in w for w in warnings)


@pytest.mark.parametrize("scores, delta, marker", [([71.5, 72.5, 73.0], "+0.0", "✓"),  # mean 72.33 ±0.76
                                                   ([75.0, 75.5, 76.0], "+3.2", "✗")])  # mean 75.5 ±0.5
def test_comparison_with_paper_table3(tmp_path, scores, delta, marker):
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, scores)
    best, ref = select_best_lr(collect(tmp_path)[0]), load_reference()
    rows = TABLES["table3"].rows
    cells = compare(best, rows, ref, table=3).set_index(["method", "column"])
    rte = cells.loc[("bitfit", "rte")]
    assert (rte["paper_mean"], rte["paper_std"]) == (72.3, 0.9)
    assert rte["delta"] == pytest.approx(sum(scores) / 3 - 72.3)
    assert bool(rte["within"]) is (marker == "✓")
    assert cells.loc[("bitfit", "qnli")].isna()["within"]  # ours missing -> no verdict
    table = build_table(best, rows, ref, table=3, expected_seeds=3)
    assert cell(table, "BitFit", "RTE", "paper") == "72.3±0.9"
    assert cell(table, "BitFit", "RTE", "Δ") == f"{delta} {marker}"
    assert cell(table, "BitFit", "QNLI", "Δ") == "—" and cell(table, "BitFit", "Avg", "paper") == "82.4"
    assert cell(table, "BitFit", "%Param", "paper") == "0.09%" and cell(table, "Full-FT", "%Param", "paper") == "100%"


def test_paper_std_missing_uses_ours(tmp_path):
    reference = load_reference()
    reference.loc[(reference["table"] == 3) & (reference["method"] == "bitfit") & (reference["task"] == "rte"),
                  "std"] = math.nan
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, [72.5, 73.5])  # 73.0 ±0.71, Δ = +0.7
    best = select_best_lr(collect(tmp_path)[0])
    within = compare(best, [("bert_base", "bitfit")], reference, 3).set_index("column").at["rte", "within"]
    assert bool(within) is True
    write_seeds(tmp_path / "b", "bert_base", "rte", "bitfit", 4e-4, [73.0, 73.2])  # 73.1 ±0.14, Δ = +0.8
    best = select_best_lr(collect(tmp_path / "b")[0])
    within = compare(best, [("bert_base", "bitfit")], reference, 3).set_index("column").at["rte", "within"]
    assert bool(within) is False


def test_within_noise_boundary_is_inclusive(tmp_path):
    write_seeds(tmp_path, "bert_base", "qnli", "bitfit", 4e-4, [90.0, 90.0])  # 90.0±0.0 vs 90.2±0.2: |Δ| = std
    cells = compare(select_best_lr(collect(tmp_path)[0]), [("bert_base", "bitfit")], load_reference(), 3)
    assert bool(cells.set_index("column").at["qnli", "within"]) is True


def test_writers(tmp_path):
    write_full_row(tmp_path / "runs", n_seeds=2)
    write_seeds(tmp_path / "runs", "bert_base", "rte", "full", 2e-5, [73.0, 74.0, 75.0])
    best, ref = select_best_lr(collect(tmp_path / "runs")[0]), load_reference()
    rows = [("bert_base", "full"), ("bert_base", "bitfit")]
    table, cells = build_table(best, rows, ref, 3), compare(best, rows, ref, 3)
    md = write_tables("t3", table, cells, tmp_path / "out", title="Table 3", notes=["a note"])
    out = tmp_path / "out"
    assert (out / "t3.md").read_text(encoding="utf-8") == md
    assert "| Model | Method | Source | %Param | QNLI | SST-2 | MNLI-m | MNLI-mm |" in md
    assert "| BERT-base | Full-FT | ours | 100% | — |" in md and "74.0±1.0 (3/5 seeds, 1/4 lrs)" in md
    assert "| 82.1 (partial seeds) |" in md and "a note" in md and "+3.5 ✗" in md  # Full-FT RTE: 74.0±1.0 vs 70.5±0.6
    tex = (out / "t3.tex").read_text(encoding="utf-8")
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\begin{tabular}{lllrrrrrrrrrrr}" in tex
    assert r"74.0$\pm$1.0 (3/5 seeds, 1/4 lrs)" in tex and r"0.09\%" in tex and r"+3.5 $\times$" in tex
    assert r"\checkmark" in tex and "±" not in tex and "—" not in tex and "Δ" not in tex
    with open(out / "t3.csv", newline="") as f:
        data = list(csv.DictReader(f))
    assert list(data[0])[:11] == ["model", "method", "column", "mean", "std", "n_seeds", "lr", "paper_mean",
                                  "paper_std", "delta", "within"]
    rte = next(r for r in data if r["method"] == "full" and r["column"] == "rte")
    assert (float(rte["mean"]), float(rte["std"]), rte["n_seeds"], float(rte["lr"])) == (74.0, 1.0, "3", 2e-5)
    assert (float(rte["paper_mean"]), float(rte["delta"]), rte["within"]) == (70.5, 3.5, "False")
    qnli = next(r for r in data if r["method"] == "full" and r["column"] == "qnli")
    assert qnli["mean"] == "" and qnli["within"] == "" and float(qnli["paper_mean"]) == 90.7
    avg = next(r for r in data if r["method"] == "bitfit" and r["column"] == "avg")
    assert float(avg["mean"]) == 82.125 and float(avg["paper_mean"]) == 82.4


def test_main_end_to_end(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "tables"
    write_full_row(runs)
    write_seeds(runs, "minilm", "rte", "bitfit", 1e-3, [60.0, 62.0])
    (runs / "broken" / "seed0").mkdir(parents=True)
    (runs / "broken" / "seed0" / "record.json").write_text("not json")
    assert main(["--runs-dir", str(runs), "--table", "all", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{e}" for n in ("table2", "table3", "ours")
                                                           for e in ("md", "tex", "csv"))
    assert captured.err.count("\n") == 1 and "broken/seed0/record.json" in captured.err
    assert "### Table 3" in captured.out and f"wrote {out / 'ours'}.md" in captured.out
    ours = (out / "ours.md").read_text(encoding="utf-8")
    assert "| MiniLM-L6 | BitFit | ours | 0.09% | — | — | — | — | — | — | — | 61.0±1.4 (2/5 seeds, 1/4 lrs) |" in ours
    assert "| BERT-base | BitFit | ours | 0.09% | 90.0±0.0 (1/4 lrs) |" in ours and "| 82.1 |" in ours
    assert main(["--runs-dir", str(runs), "--table", "1", "--out", str(out / "one"), "--epoch", "last"]) == 0
    assert "| BERT-large | BitFit | ours | — | — |" in (out / "one" / "table1.md").read_text(encoding="utf-8")
    last = (out / "one" / "table1.csv").read_text()
    assert "bert_large,bitfit,rte,,,,,73.2,3.7,,," in last
    assert main(["--runs-dir", str(tmp_path / "empty")]) == 1


# -----------------------------------------------------------------------------
# protocols: settings that differ in more than the lr never compete


def paper_protocol_rte(root, lrs_means=((1e-4, 70.0), (4e-4, 71.0), (7e-4, 73.0), (1e-3, 72.0))):
    """Four lrs x 5 seeds of BERT-base BitFit on RTE at the paper's protocol; the best mean is 73.0 at 7e-4."""
    for lr, mean in lrs_means:
        write_seeds(root, "bert_base", "rte", "bitfit", lr, [mean + d for d in (-1.0, 0.0, 1.0, 0.5, -0.5)])


def test_a_lucky_seed_of_another_protocol_is_left_out_and_named(tmp_path, capsys):
    paper_protocol_rte(tmp_path)
    odd = write(tmp_path, make_record("bert_base", "rte", "bitfit", 1e-3, 0, 80.0, changes={"train.batch_size": 16}))
    df = collect(tmp_path)[0]
    best = select_best_lr(df)
    assert len(best) == 2 and sorted(best["n_records"]) == [1, 20]  # two protocols, each picked on its own
    chosen = table_selection(df, TABLES["table3"])
    (row,) = chosen.best.itertuples()
    assert (row.lr, row.mean, row.n_lrs, row.n_seeds, row.expected_lrs) == (7e-4, pytest.approx(73.0), 4, 5, 4)
    assert chosen.left_out == ["left out of BERT-base BitFit RTE: 1 record (1 lr) with another config: "
                               "train.batch_size=16 (table3: 8)"]
    table = build_table(chosen.best, chosen.rows, load_reference(), 3)
    assert cell(table, "BitFit", "RTE") == "73.0±0.8"  # 4 of 4 lrs, 5 of 5 seeds: unmarked
    assert main(["--runs-dir", str(tmp_path), "--table", "3", "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "table3.md").read_text(encoding="utf-8")
    assert "- left out of BERT-base BitFit RTE: 1 record (1 lr) with another config: train.batch_size=16" in md
    assert "- BERT-base BitFit: RTE 0.0007 (4/4 lrs; seeds 0-4)" in md and "| 73.0±0.8 |" in md
    assert str(odd.parent.parent.name) not in md  # the odd setting is named by what differs, not by its folder
    with open(tmp_path / "out" / "table3.csv", newline="") as f:
        rte = next(r for r in csv.DictReader(f) if r["method"] == "bitfit" and r["column"] == "rte")
    assert (rte["lr"], rte["n_lrs"], rte["expected_lrs"], rte["seeds"], rte["n_diverged"]) == \
        ("0.0007", "4", "4", "0-4", "0")


def test_diverged_seeds_are_counted_not_averaged(tmp_path):
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, [70.0, 72.0, 74.0, 76.0])
    # seed 4 scored 99 at epoch 1, then diverged: its score must not enter the mean
    write(tmp_path, make_record("bert_base", "rte", "bitfit", 4e-4, 4, 99.0, status="diverged"))
    df, warnings = collect(tmp_path)
    assert warnings == [] and df["diverged"].tolist() == [False] * 4 + [True]
    assert math.isnan(df["score"].iloc[4]) and df["status"].iloc[4] == "diverged"
    (row,) = select_best_lr(df).itertuples()
    # mean of 70, 72, 74, 76 = 73; sample std = sqrt((9 + 1 + 1 + 9) / 3) = 2.582
    assert (row.mean, row.std) == (pytest.approx(73.0), pytest.approx(math.sqrt(20 / 3)))
    assert (row.n_seeds, row.n_diverged, row.seeds) == (5, 1, "0-4")
    table = build_table(select_best_lr(df), [("bert_base", "bitfit")])
    assert cell(table, "BitFit", "RTE") == "73.0±2.6 (1/5 diverged, 1/4 lrs)"
    cells = compare(select_best_lr(df), [("bert_base", "bitfit")]).set_index("column")
    assert cells.at["rte", "n_diverged"] == 1 and cells.at["rte", "n_seeds"] == 5


def test_all_seeds_diverged(tmp_path):
    for seed in range(5):
        write(tmp_path, make_record("bert_base", "rte", "bitfit", 4e-4, seed, None, status="diverged"))
    best = select_best_lr(collect(tmp_path)[0])
    assert best["n_diverged"].tolist() == [5] and math.isnan(best["mean"].iloc[0])
    table = build_table(best, [("bert_base", "bitfit")])
    assert cell(table, "BitFit", "RTE") == "diverged (5/5) (1/4 lrs)"


def test_an_lr_with_a_diverged_seed_ranks_after_clean_lrs(tmp_path):
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 1e-4, [80.0, 80.0])  # the best mean, but seed 2 diverged
    write(tmp_path, make_record("bert_base", "rte", "bitfit", 1e-4, 2, 80.0, status="diverged"))
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, [70.0, 71.0, 72.0])
    write_seeds(tmp_path, "bert_base", "cola", "bitfit", 1e-4, [50.0, 51.0])  # all lrs with a diverged seed:
    write(tmp_path, make_record("bert_base", "cola", "bitfit", 1e-4, 2, None, status="diverged"))
    write_seeds(tmp_path, "bert_base", "cola", "bitfit", 4e-4, [55.0])  # the best mean among them wins
    write(tmp_path, make_record("bert_base", "cola", "bitfit", 4e-4, 1, 60.0, status="diverged"))
    best = select_best_lr(collect(tmp_path)[0]).set_index("column")
    assert best.at["rte", "lr"] == 4e-4 and best.at["rte", "mean"] == pytest.approx(71.0)
    assert best.at["rte", "n_diverged"] == 0 and best.at["rte", "n_lrs"] == 2
    assert best.at["cola", "lr"] == 4e-4 and best.at["cola", "n_diverged"] == 1


def test_best_epoch_at_the_last_is_noted(tmp_path):
    def seeds(task, at_last, scores, **kw):
        for seed, score in enumerate(scores):
            write(tmp_path, make_record("bert_base", task, "bitfit", 4e-4, seed, score, best_at_last=seed < at_last, **kw))

    seeds("rte", 3, [70.0] * 5)  # best epoch = last (20 of 20) for 3 of 5 seeds: noted
    seeds("mrpc", 2, [80.0] * 5)  # 2 of 5: not
    seeds("cola", 1, [50.0], changes={"train.epochs": 1})  # one epoch: the last is the only one
    seeds("qnli", 0, [90.0], select="last")  # chosen as the last by design
    df, _ = collect(tmp_path)
    assert df.groupby("task")["at_last"].sum().to_dict() == {"cola": 0, "mrpc": 2, "qnli": 0, "rte": 3}
    assert main(["--runs-dir", str(tmp_path), "--table", "3", "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "table3.md").read_text(encoding="utf-8")
    assert "\nBest epoch = last epoch for most seeds of: BERT-base BitFit RTE (3/5 seeds); the dev curve may still " \
           "be rising (more train.epochs?).\n" in md
    assert main(["--runs-dir", str(tmp_path), "--table", "3", "--out", str(tmp_path / "o2"), "--epoch", "last"]) == 0
    assert "Best epoch = last" not in (tmp_path / "o2" / "table3.md").read_text(encoding="utf-8")


def test_ours_has_one_labelled_row_per_protocol(tmp_path):
    odd = {"train.batch_size": 16, "data.max_train_samples": 2000}
    write_seeds(tmp_path, "minilm", "rte", "bitfit", 1e-3, [60.0, 62.0])
    write_seeds(tmp_path, "minilm", "mrpc", "bitfit", 1e-3, [80.0, 82.0])
    write_seeds(tmp_path, "minilm", "rte", "bitfit", 1e-3, [65.0], changes=odd)
    write_seeds(tmp_path, "minilm", "mrpc", "bitfit", 1e-3, [85.0], changes=odd)
    write_seeds(tmp_path, "minilm", "rte", "full", 1e-5, [63.0], changes=odd)  # one protocol only: no label
    chosen = ours_selection(select_best_lr(collect(tmp_path)[0]))
    assert chosen.rows == [("minilm", "full", ""),
                           ("minilm", "bitfit", "train.batch_size=8, data.max_train_samples=null"),
                           ("minilm", "bitfit", "train.batch_size=16, data.max_train_samples=2000")]
    assert chosen.left_out == []
    copy = fingerprints("minilm", "rte", data="data-rte-copy")  # the same config on another copy of the data
    write(tmp_path, make_record("minilm", "rte", "full", 1e-5, 0, 99.0, changes=odd, prints=copy))
    write(tmp_path, make_record("minilm", "rte", "full", 2e-5, 0, 64.0, changes=odd))
    again = ours_selection(select_best_lr(collect(tmp_path)[0]))
    assert again.rows == chosen.rows and again.left_out == [
        "left out of MiniLM-L6 Full-FT RTE: 1 record (1 lr) with another data set: data fingerprint data-rte-copy "
        "(used: data-rte)"]
    full = again.best[again.best["method"] == "full"]
    assert full["mean"].tolist() == [pytest.approx(64.0)] and full["lr"].tolist() == [2e-5]  # 2 lrs of 2 records
    table = build_table(chosen.best, chosen.rows, expected_seeds=2)
    by_method = dict(zip(table["Method"], zip(table["RTE"], table["MRPC"], strict=True), strict=True))
    assert by_method == {"Full-FT": ("63.0±0.0 (1/2 seeds, 1/4 lrs)", "—"),
                         "BitFit [train.batch_size=8, data.max_train_samples=null]": ("61.0±1.4 (1/4 lrs)",
                                                                                      "81.0±1.4 (1/4 lrs)"),
                         "BitFit [train.batch_size=16, data.max_train_samples=2000]":
                             ("65.0±0.0 (1/2 seeds, 1/4 lrs)", "85.0±0.0 (1/2 seeds, 1/4 lrs)")}
    assert main(["--runs-dir", str(tmp_path), "--table", "ours", "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "ours.csv", newline="") as f:
        variants = {(r["method"], r["variant"]) for r in csv.DictReader(f)}
    assert variants == {("full", ""), ("bitfit", "train.batch_size=8, data.max_train_samples=null"),
                        ("bitfit", "train.batch_size=16, data.max_train_samples=2000")}


def test_table_protocols_come_from_the_composed_experiments(tmp_path):
    # Records written with the config `bitfit-run +experiment=table3 ... lr_index=i` resolves, i over the grid
    for i in range(4):
        config = run_config("bert_base", "rte", "bitfit", None, "+experiment=table3", f"lr_index={i}")
        for seed in range(5):
            write(tmp_path, make_record("bert_base", "rte", "bitfit", None, seed, 70.0 + i, config=config))
    # ... the table's config on another copy of the data (2 seeds, higher scores): fewer done seeds, left out
    other = fingerprints("bert_base", "rte", data="data-rte-copy")
    for seed in range(2):
        write(tmp_path, make_record("bert_base", "rte", "bitfit", 1e-4, seed, 90.0, prints=other))
    # ... and RoBERTa at table2_roberta's fixed lr (1e-4 for BitFit), next to better runs of the same protocol at
    # the default lr (4e-4), which that sweep does not train
    roberta = run_config("roberta_base", "rte", "bitfit", None, "+experiment=table2_roberta")
    assert roberta["optim"]["lr"] == 1e-4 and roberta["fixed_lr"] is True
    for seed in range(5):
        write(tmp_path, make_record("roberta_base", "rte", "bitfit", None, seed, 65.0, config=roberta))
    write_seeds(tmp_path, "roberta_base", "rte", "bitfit", None, [70.0] * 3)
    df = collect(tmp_path)[0]
    table3 = table_selection(df, TABLES["table3"])
    (row,) = table3.best.itertuples()
    assert (row.lr, row.mean, row.n_lrs, row.n_seeds, row.expected_lrs) == (1e-3, pytest.approx(73.0), 4, 5, 4)
    data_copy = ("left out of BERT-base BitFit RTE: 2 records (1 lr) with another checkpoint or data: "
                 "data fingerprint data-rte-copy (used: data-rte)")
    assert table3.left_out == [data_copy]
    table2 = table_selection(df, TABLES["table2"])
    picked = table2.best.set_index("model")
    assert picked.at["bert_base", "lr"] == 1e-3
    assert (picked.at["roberta_base", "lr"], picked.at["roberta_base", "mean"]) == (1e-4, pytest.approx(65.0))
    assert (picked.at["roberta_base", "n_lrs"], picked.at["roberta_base", "expected_lrs"]) == (1, 1)
    assert table2.left_out == [data_copy, "left out of RoBERTa-base BitFit RTE: 3 records (1 lr) at lrs outside the "
                                          "sweep of +experiment=table2_roberta: 0.0004 (sweep: 0.0001)"]
    table = build_table(table2.best, table2.rows, load_reference(), 2)
    assert table.loc[table["Model"] == "RoBERTa-base"].iloc[1]["RTE"] == "65.0±0.0"  # 1 of 1 lr: unmarked


# -----------------------------------------------------------------------------
# the token-level table: POS on EWT next to the paper's PTB numbers


def pos_seeds(root, model, method, lr, scores, overrides=("+experiment=pos",), changes=None):
    """Records of POS runs (dev = EWT validation, test = EWT test; `scores`: one (dev, test) pair per seed)."""
    config = run_config(model, "pos", method, lr, *overrides, changes={**(changes or {}), "train.select": "best"})
    return [write(root, make_record(model, "pos", method, lr, seed, pair, config=config))
            for seed, pair in enumerate(scores)]


def test_token_table_next_to_the_papers_ptb_numbers(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "tables"
    pos_seeds(runs, "bert_base", "full", 5e-5, [(96.0, 95.0), (97.0, 96.0)])
    pos_seeds(runs, "bert_base", "bitfit", 1e-3, [(94.0, 93.0), (94.0, 93.0)])
    pos_seeds(runs, "bert_base", "bitfit", 1e-4, [(95.0, 90.0), (96.0, 91.0)])  # the best mean dev: chosen
    # Not the table's protocol: a smaller training set (its own row), and another model's CPU run.
    pos_seeds(runs, "bert_base", "full", 5e-5, [(80.0, 79.0)], changes={"data.max_train_samples": 1000})
    pos_seeds(runs, "minilm", "bitfit", 1e-3, [(88.0, 87.0), (90.0, 89.0)], overrides=())
    write_seeds(runs, "minilm", "rte", "bitfit", 1e-3, [60.0, 62.0])  # GLUE: not in the POS table
    assert main(["--runs-dir", str(runs), "--table", "all", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{e}" for n in ("pos", "ours")
                                                           for e in ("md", "tex", "csv"))
    md = (out / "pos.md").read_text(encoding="utf-8")
    assert "| Model | Method | %Param | EWT dev | EWT test | paper: PTB |" in md
    assert "| BERT-base | Full-FT | 100% | 96.5±0.7 (2/5 seeds, 1/4 lrs) | 95.5±0.7 (2/5 seeds, 1/4 lrs) | 97.2 |" in md
    assert "| BERT-base | BitFit | 0.09% | 95.5±0.7 (2/5 seeds, 2/4 lrs) | 90.5±0.7 (2/5 seeds, 2/4 lrs) | 97.2 |" in md
    assert "| BERT-large | BitFit | — | — | — | 97.4 |" in md and "| RoBERTa-base | BitFit | — | — | — | 97.1 |" in md
    assert "| BERT-base | Full-FT [data.max_train_samples=1000 (pos: null)] | 100% | 80.0±0.0 (1/5 seeds, 1/4 lrs) | 79.0±0.0 (1/5 seeds, 1/4 " \
           "lrs) | 97.2 |" in md
    assert "| MiniLM-L6 | BitFit | 0.09% | 89.0±1.4 (2/5 seeds, 1/4 lrs) | 88.0±1.4 (2/5 seeds, 1/4 lrs) | — |" in md
    assert "NOT the Penn Treebank" in md and "RTE" not in md
    cells = {(r["model"], r["method"], r["variant"], r["column"]): r for r in csv.DictReader(open(out / "pos.csv"))}
    chosen = cells[("bert_base", "bitfit", "", "pos_test")]
    assert (chosen["lr"], chosen["mean"], chosen["paper_mean"], chosen["delta"]) == ("0.0001", "90.5", "97.2", "")
    ours = (out / "ours.md").read_text(encoding="utf-8")
    assert "MiniLM-L6 | BitFit | ours" in ours and "BERT-base" not in ours  # POS records are not GLUE rows


def test_equal_means_tie_to_the_smaller_lr_despite_float_noise(tmp_path):
    # 997 correct answers of 5 x 277 at both lrs: equal means, whose float sums differ in the last bits.
    n, a, b = 277, [218, 180, 208, 197, 194], [201, 199, 199, 199, 199]
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 1e-4, [100 * k / n for k in a])
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, [100 * k / n for k in b])
    df, _ = collect(tmp_path)
    means = df.groupby("lr")["score"].mean()
    assert means[4e-4] != means[1e-4] and means[4e-4] == pytest.approx(means[1e-4], abs=1e-9)  # the noise
    (row,) = select_best_lr(df).itertuples()
    assert row.lr == 1e-4 and row.std == pytest.approx(5.204, abs=1e-3)


def test_rows_whose_labels_coincide_are_one_row(tmp_path):
    # train.epochs=20 everywhere: RTE's default already, MNLI's and SST-2's an override. One row, not two.
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, [70.0, 72.0, 74.0])
    write_seeds(tmp_path, "bert_base", "mnli", "bitfit", 4e-4, [(80.0, 81.0)] * 3, changes={"train.epochs": 20})
    write_seeds(tmp_path, "bert_base", "sst2", "bitfit", 4e-4, [90.0] * 3, changes={"train.epochs": 20})
    chosen = ours_selection(select_best_lr(collect(tmp_path)[0]))
    assert chosen.rows == [("bert_base", "bitfit", "train.epochs=20")]
    assert sorted(set(chosen.best["task"])) == ["mnli", "rte", "sst2"]
    assert main(["--runs-dir", str(tmp_path), "--table", "ours", "--out", str(tmp_path / "t")]) == 0


def test_the_pos_table_names_records_at_lrs_outside_its_sweep(tmp_path):
    from bitfit_exp.results.selection import with_other_protocols

    write_seeds(tmp_path, "bert_base", "pos", "bitfit", 4e-4, [(90.0, 89.0), (91.0, 90.0), (92.0, 91.0)])
    write_seeds(tmp_path, "bert_base", "pos", "bitfit", 2e-3, [(97.0, 96.0)] * 3)  # not an lr of +experiment=pos
    chosen = with_other_protocols(collect(tmp_path)[0], TABLES["pos"])
    assert set(chosen.best["lr"]) == {4e-4}
    assert chosen.left_out == ["left out of BERT-base BitFit POS: 3 records (1 lr) at lrs outside the sweep of "
                               "+experiment=pos: 0.002 (sweep: 0.0001, 0.0004, 0.0007, 0.001)"]
