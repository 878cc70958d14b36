"""A paper table's row reads one checkpoint in all its cells (issue #26): records of two checkpoints under one model
name (a cased and an uncased BERT-base) never meet in one row's cells or its Avg; the cells the row's checkpoint
lacks are missing, and the notes name what was left out."""

import json

import pytest
from test_tables import FULL_ROW, cell, fingerprints, write_seeds

from bitfit_exp.commands.tables import main
from bitfit_exp.results.selection import TABLES, collect, table_selection
from bitfit_exp.results.tables import build_table, compare

UNCASED, CASED = "ckpt-uncased", "ckpt-cased"


def seeds_of(root, task, checkpoint, scores, method="bitfit", lr=4e-4):
    """Records of BERT-base `method` on `task` at `lr`, one per score, that read `checkpoint` (and the task's data)."""
    write_seeds(root, "bert_base", task, method, lr, scores, prints=fingerprints("bert_base", task, checkpoint))


def spread(value, d=1.0):
    """Two seeds around `value` (mean `value`, sample std d*sqrt(2)); a pair for MNLI m/mm."""
    if isinstance(value, tuple):
        return [tuple(v - d for v in value), tuple(v + d for v in value)]
    return [value - d, value + d]


def left_out(task, n, used=UNCASED, other=CASED):
    return (f"left out of BERT-base BitFit {task}: {n} records (1 lr) with another checkpoint than the row's: "
            f"checkpoint fingerprint {other} (used: {used})")


def checkpoints(best, method="bitfit"):
    rows = best[(best["model"] == "bert_base") & (best["method"] == method)]
    return {json.loads(i)["model"] for i in rows["identity"]}


def test_a_row_and_its_avg_come_from_one_checkpoint(tmp_path):
    # uncased: all 8 tasks, 2 seeds each (16 records); cased: better QNLI and RTE with 5 seeds each (10 records),
    # which per cell would win (5 > 2) and lift the Avg to (95+92+82+58+90+89+99+84)/8 = 86.125
    for task, value in FULL_ROW.items():
        seeds_of(tmp_path, task, UNCASED, spread(value))
    seeds_of(tmp_path, "qnli", CASED, [95.0] * 5)
    seeds_of(tmp_path, "rte", CASED, [99.0] * 5)
    seeds_of(tmp_path, "rte", CASED, [70.0, 72.0], method="full", lr=2e-5)  # another row: its own checkpoint
    chosen = table_selection(collect(tmp_path)[0], TABLES["table2"])
    assert checkpoints(chosen.best) == {UNCASED} and checkpoints(chosen.best, "full") == {CASED}
    table = build_table(chosen.best, chosen.rows, expected_seeds=2)
    assert cell(table, "BitFit", "QNLI") == "90.0±1.4 (1/4 lrs)" and cell(table, "BitFit", "RTE") == "72.0±1.4 (1/4 lrs)"
    assert cell(table, "BitFit", "MNLI-mm") == "83.0±1.4 (1/4 lrs)"
    # (90 + 92 + (81 + 83) / 2 + 58 + 90 + 89 + 72 + 84) / 8 = 657 / 8, all of the uncased checkpoint
    avg = compare(chosen.best, chosen.rows).set_index(["model", "method", "column"]).loc[("bert_base", "bitfit", "avg")]
    assert avg["mean"] == pytest.approx(657 / 8) and avg["n_seeds"] == 2
    assert cell(table, "BitFit", "Avg") == "82.1"
    assert cell(table, "Full-FT", "RTE") == "71.0±1.4 (1/4 lrs)"
    assert chosen.left_out == [left_out("QNLI", 5), left_out("RTE", 5)]


def test_a_cell_of_another_checkpoint_only_is_missing(tmp_path):
    # uncased: 7 tasks x 2 seeds (14 records); cased: RTE only, 5 seeds. The row is uncased: RTE is missing, so
    # there is no Avg (before, RTE's cased cell completed the row and its Avg mixed both checkpoints).
    for task, value in FULL_ROW.items():
        if task != "rte":
            seeds_of(tmp_path, task, UNCASED, spread(value))
    seeds_of(tmp_path, "rte", CASED, [99.0] * 5)
    chosen = table_selection(collect(tmp_path)[0], TABLES["table2"])
    assert checkpoints(chosen.best) == {UNCASED} and "rte" not in set(chosen.best["task"])
    table = build_table(chosen.best, chosen.rows, expected_seeds=2)
    assert cell(table, "BitFit", "RTE") == "—" and cell(table, "BitFit", "Avg") == "—"
    assert cell(table, "BitFit", "CoLA") == "58.0±1.4 (1/4 lrs)"
    assert chosen.left_out == [left_out("RTE", 5)]


@pytest.mark.parametrize("mrpc, stsb, used", [(4, 4, CASED), (3, 4, CASED), (3, 3, UNCASED)])
def test_the_rows_checkpoint_has_the_most_done_seeds_over_the_row(tmp_path, mrpc, stsb, used):
    # uncased: QNLI, SST-2, CoLA x 2 seeds and 1 MRPC seed (7 records, 4 cells); cased: MRPC and STS-B (fewer cells):
    # 8 records take the row, 7 tie and take it too (the smaller fingerprint text, "ckpt-cased"), 6 do not.
    for task in ("qnli", "sst2", "cola"):
        seeds_of(tmp_path, task, UNCASED, spread(FULL_ROW[task]))
    seeds_of(tmp_path, "mrpc", UNCASED, [50.0])  # a cell may hold both: only the row's checkpoint is shown
    seeds_of(tmp_path, "mrpc", CASED, [91.0] * mrpc)
    seeds_of(tmp_path, "stsb", CASED, [90.0] * stsb)
    chosen = table_selection(collect(tmp_path)[0], TABLES["table2"])
    assert checkpoints(chosen.best) == {used}
    table = build_table(chosen.best, chosen.rows, expected_seeds=2)
    if used == UNCASED:
        assert set(chosen.best["task"]) == {"qnli", "sst2", "cola", "mrpc"}
        assert cell(table, "BitFit", "MRPC") == "50.0±0.0 (1/2 seeds, 1/4 lrs)" and cell(table, "BitFit", "STS-B") == "—"
        assert chosen.left_out == [left_out("MRPC", mrpc), left_out("STS-B", stsb)]
    else:
        assert set(chosen.best["task"]) == {"mrpc", "stsb"}
        assert cell(table, "BitFit", "MRPC") == "91.0±0.0 (1/4 lrs)" and cell(table, "BitFit", "QNLI") == "—"
        assert sorted(chosen.left_out) == sorted(
            [left_out(name, 2, CASED, UNCASED) for name in ("QNLI", "SST-2", "CoLA")]
            + [left_out("MRPC", 1, CASED, UNCASED).replace("1 records", "1 record")])


def test_bitfit_tables_prints_one_checkpoint_per_row(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    for task, value in FULL_ROW.items():
        seeds_of(runs, task, UNCASED, spread(value))
    seeds_of(runs, "rte", CASED, [99.0] * 5)
    assert main(["--runs-dir", str(runs), "--table", "all", "--out", str(out)]) == 0
    md = (out / "table2.md").read_text(encoding="utf-8")
    assert "| BERT-base | BitFit | ours | 0.09% | 90.0±1.4 (2/5 seeds, 1/4 lrs) |" in md
    assert "| 72.0±1.4 (2/5 seeds, 1/4 lrs) | 84.0±1.4 (2/5 seeds, 1/4 lrs) | 82.1 (partial seeds) |" in md
    assert "99.0" not in md and "of one checkpoint per row" in md
    assert f"- {left_out('RTE', 5)}" in md
    # `ours` keeps each checkpoint a row of its own, labelled by it: the uncased row is whole, the cased one RTE only
    ours = (out / "ours.md").read_text(encoding="utf-8")
    assert f"| BERT-base | BitFit [checkpoint {UNCASED}] | ours | 0.09% | 90.0±1.4" in ours
    assert f"| BERT-base | BitFit [checkpoint {CASED}] | ours | 0.09% | — |" in ours
    assert "| 99.0±0.0 (1/4 lrs) | — | — |" in ours
