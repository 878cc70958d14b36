"""bitfit_exp.tables on synthetic run records: best lr, mean±std, Avg, partial/missing cells, paper comparison, files."""

import csv
import hashlib
import math
import shutil

import pytest

from bitfit_exp.records import write_json_atomic
from bitfit_exp.reference import load_reference
from bitfit_exp.tables import (
    TABLES,
    build_table,
    collect,
    compare,
    main,
    paper_avg,
    select_best_lr,
    write_tables,
)

METRIC = {"cola": "matthews", "mrpc": "f1", "stsb": "spearman", "qqp": "f1"}
PCT = {"full": 100.0, "bitfit": 0.0872, "frozen": 0.0}
# A complete BERT-base BitFit row (x100), MNLI as two columns; its Avg is hand-computed in test_avg_*.
FULL_ROW = {"qnli": 90.0, "sst2": 92.0, "mnli": (81.0, 83.0), "cola": 58.0, "mrpc": 90.0, "stsb": 89.0,
            "rte": 72.0, "qqp": 84.0}


def columns(task):
    if task == "mnli":
        return {"validation_matched": "mnli_m", "validation_mismatched": "mnli_mm"}
    return {"validation": task}


def make_record(model, task, method, lr, seed, score, select="best", finished_at="2025-01-01T00:00:00+00:00",
                status="finished"):
    """A realistic record: epoch 1 scores `score` (x100; a pair for MNLI m/mm) and is the best; the last epoch
    (2) scores 5 points less. The train metric is 10 points above the dev one."""
    scores = score if isinstance(score, tuple) else (score,)
    metric = METRIC.get(task, "accuracy")
    digest = hashlib.sha1(f"{model}{task}{method}{lr}".encode()).hexdigest()[:8]
    cols = columns(task)

    def epoch(n, shift):
        return {"epoch": n, "train_loss": 0.5, "train_s": 1.0, "eval_s": 0.1,
                "dev": {s: {metric: (v + shift) / 100} for s, v in zip(cols, scores, strict=True)},
                "train": {metric: (scores[0] + shift + 10) / 100}}

    epochs = [epoch(1, 0.0), epoch(2, -5.0)]
    return {
        "schema": 1, "status": status, "seed": seed,
        "setting": {"model": model, "task": task, "method": method, "lr": lr, "hash": digest,
                    "dir": f"{model}/{task}/{method}/lr{lr:g}-{digest}"},
        "main": {"split": next(iter(cols)), "metric": metric, "select": select},
        "columns": cols,
        "params": {"trainable": 1000, "trainable_encoder": 900, "head": 100, "encoder_total": 10**6,
                   "pct_encoder": PCT.get(method, 0.09)},
        "epochs": epochs, "best": epochs[0], "last": epochs[-1], "chosen_epoch": 1 if select == "best" else 2,
        "config": {"task": {"name": task, "metric": metric}, "optim": {"lr": lr}},
        "env": {"device": "cpu"},
        "timings": {"total_s": 2.0, "finished_at": finished_at},
    }


def write(root, record, under=""):
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
    assert cell(table, "BitFit", "RTE") == "72.0±2.0"
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
    assert cell(table, "BitFit", "MNLI-m") == "83.0±1.4" and cell(table, "BitFit", "MNLI-mm") == "71.0±1.4"


def test_avg_counts_mnli_once(tmp_path):
    write_full_row(tmp_path)
    best = select_best_lr(collect(tmp_path)[0])
    # (90 + 92 + (81 + 83) / 2 + 58 + 90 + 89 + 72 + 84) / 8 = 657 / 8 = 82.125
    assert 657 / 8 == 82.125
    assert paper_avg(dict(zip(best["column"], best["mean"], strict=True))) == pytest.approx(82.125)
    table = build_table(best, [("bert_base", "bitfit")])
    assert cell(table, "BitFit", "Avg") == "82.1"
    assert cell(table, "BitFit", "MNLI-m") == "81.0±0.0" and cell(table, "BitFit", "QQP") == "84.0±0.0"


def test_missing_task_gives_dash_and_no_avg(tmp_path):
    write_full_row(tmp_path, skip=("stsb",))
    best = select_best_lr(collect(tmp_path)[0])
    table = build_table(best, [("bert_base", "bitfit"), ("bert_base", "full")])
    assert cell(table, "BitFit", "STS-B") == "—" and cell(table, "BitFit", "Avg") == "—"
    assert cell(table, "BitFit", "RTE") == "72.0±0.0"
    assert table.loc[table["Method"] == "Full-FT"].iloc[0, 2:].tolist() == ["—"] * 11


def test_partial_seeds_are_flagged(tmp_path):
    write_full_row(tmp_path, skip=("rte",))
    write_seeds(tmp_path, "bert_base", "rte", "bitfit", 4e-4, [72.0, 73.0, 74.0])
    table = build_table(select_best_lr(collect(tmp_path)[0]), [("bert_base", "bitfit")], expected_seeds=5)
    assert cell(table, "BitFit", "RTE") == "73.0±1.0 (3/5 seeds)"
    assert cell(table, "BitFit", "QNLI") == "90.0±0.0"
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
    base = tmp_path / make_record("bert_base", "rte", "bitfit", 4e-4, 0, 0)["setting"]["dir"]
    (base / "seed2").mkdir()
    (base / "seed2" / "record.json").write_text('{"schema": 1, "status": "fini')
    write(tmp_path, make_record("bert_base", "rte", "bitfit", 4e-4, 3, 90.0, status="running"))
    bad = make_record("bert_base", "rte", "bitfit", 4e-4, 4, 90.0)
    del bad["best"]
    write(tmp_path, bad)
    write_json_atomic(base / "seed0" / "record.json.replaced-20250101-000000",
                      make_record("bert_base", "rte", "bitfit", 4e-4, 0, 10.0))
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
    assert "| BERT-base | Full-FT | ours | 100% | — |" in md and "74.0±1.0 (3/5 seeds)" in md
    assert "| 82.1 (partial seeds) |" in md and "a note" in md and "+3.5 ✗" in md  # Full-FT RTE: 74.0±1.0 vs 70.5±0.6
    tex = (out / "t3.tex").read_text(encoding="utf-8")
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\begin{tabular}{lllrrrrrrrrrrr}" in tex
    assert r"74.0$\pm$1.0 (3/5 seeds)" in tex and r"0.09\%" in tex and r"+3.5 $\times$" in tex
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
    assert "| MiniLM-L6 | BitFit | ours | 0.09% | — | — | — | — | — | — | — | 61.0±1.4 (2/5 seeds) |" in ours
    assert "| BERT-base | BitFit | ours | 0.09% | 90.0±0.0 |" in ours and "| 82.1 |" in ours
    assert main(["--runs-dir", str(runs), "--table", "1", "--out", str(out / "one"), "--epoch", "last"]) == 0
    assert "| BERT-large | BitFit | ours | — | — |" in (out / "one" / "table1.md").read_text(encoding="utf-8")
    last = (out / "one" / "table1.csv").read_text()
    assert "bert_large,bitfit,rte,,,,,73.2,3.7,,," in last
    assert main(["--runs-dir", str(tmp_path / "empty")]) == 1


def test_compare_runs_two_ways_by_hand(tmp_path, capsys):
    from bitfit_exp.compare import compare_runs, main

    a, b = tmp_path / "one_by_one", tmp_path / "packed"
    write_seeds(a, "minilm", "mrpc", "bitfit", 1e-3, [80.0, 82.0, 84.0])
    write_seeds(b, "minilm", "mrpc", "bitfit", 1e-3, [83.0, 85.0, 87.0])   # +3: outside std 2
    write_seeds(a, "minilm", "rte", "bitfit", 1e-3, [60.0, 64.0])
    write_seeds(b, "minilm", "rte", "bitfit", 1e-3, [61.0, 65.0])          # +1: within std 2.83
    write_seeds(a, "minilm", "cola", "bitfit", 1e-3, [50.0, 51.0])         # only under A: not compared
    cells, warnings = compare_runs(a, b)
    assert not warnings and sorted(cells["task"]) == ["mrpc", "rte"]
    mrpc = cells[cells.task == "mrpc"].iloc[0]
    assert (mrpc.mean_a, mrpc.std_a, mrpc.mean_b, mrpc.delta) == (82.0, 2.0, 85.0, 3.0)
    assert not mrpc.within_noise and mrpc.welch_p == pytest.approx(0.1401, abs=1e-3)  # t = 3/sqrt(8/3), df 4
    rte = cells[cells.task == "rte"].iloc[0]
    assert rte.std_a == pytest.approx(math.sqrt(8)) and rte.delta == 1.0 and rte.within_noise
    assert main([str(a), str(b), "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "| 82.00±2.00 (n=3) | 85.00±2.00 (n=3) | +3.00 ✗ |" in out and "1/2 settings within seed noise" in out
    assert main([str(a), str(tmp_path / "empty")]) == 2
