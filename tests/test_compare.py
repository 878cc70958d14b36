"""bitfit_exp.results.compare: the same settings trained two ways, matched by protocol and lr."""

import math

import pandas as pd
import pytest
from test_tables import make_record, write, write_seeds

from bitfit_exp.commands.compare import main
from bitfit_exp.results.compare import compare_runs


def test_compare_runs_two_ways_by_hand(tmp_path, capsys):
    a, b = tmp_path / "one_by_one", tmp_path / "packed"
    write_seeds(a, "minilm", "mrpc", "bitfit", 1e-3, [80.0, 82.0, 84.0])
    write_seeds(b, "minilm", "mrpc", "bitfit", 1e-3, [83.0, 85.0, 87.0])   # +3: outside std 2
    write_seeds(a, "minilm", "rte", "bitfit", 1e-3, [60.0, 64.0])
    write_seeds(b, "minilm", "rte", "bitfit", 1e-3, [61.0, 65.0])          # +1: within std 2.83
    write_seeds(a, "minilm", "cola", "bitfit", 1e-3, [50.0, 51.0])         # only under A: not compared
    cells, warnings = compare_runs(a, b)
    assert warnings == ["1 setting(s) only under A (no record of the same protocol and lr under the other): "
                        "minilm/cola/bitfit lr 0.001"]
    assert sorted(cells["task"]) == ["mrpc", "rte"]
    mrpc = cells[cells.task == "mrpc"].iloc[0]
    assert (mrpc.mean_a, mrpc.std_a, mrpc.mean_b, mrpc.delta) == (82.0, 2.0, 85.0, 3.0)
    assert not mrpc.within_noise and mrpc.welch_p == pytest.approx(0.1401, abs=1e-3)  # t = 3/sqrt(8/3), df 4
    rte = cells[cells.task == "rte"].iloc[0]
    assert rte.std_a == pytest.approx(math.sqrt(8)) and rte.delta == 1.0 and rte.within_noise
    assert main([str(a), str(b), "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "| 82.00±2.00 (n=3) | 85.00±2.00 (n=3) | +3.00 ✗ |" in out and "1/2 settings within seed noise" in out
    assert main([str(a), str(tmp_path / "empty")]) == 2


PACKED = {"train.packed": True, "train.pack_lrs": True, "train.packed_dropout": "shared", "train.compile": "default"}


def test_packed_and_one_by_one_match_other_protocols_do_not(tmp_path):
    a, b = tmp_path / "one_by_one", tmp_path / "packed"
    write_seeds(a, "minilm", "rte", "bitfit", 1e-3, [60.0, 62.0])
    packed = write_seeds(b, "minilm", "rte", "bitfit", 1e-3, [61.0, 63.0], changes=PACKED)
    write_seeds(b, "minilm", "rte", "bitfit", 1e-3, [90.0, 90.0], changes={"train.batch_size": 16})
    # how a run was trained is not a result key: the packed records lie in the one-by-one setting's folder
    assert {p.parent.parent.name for p in packed} == {p.parent.name for p in a.glob("minilm/rte/bitfit/*/seed0")}
    cells, warnings = compare_runs(a, b)
    (row,) = cells.itertuples()
    assert (row.mean_a, row.mean_b, row.n_a, row.n_b, row.delta) == (61.0, 62.0, 2, 2, 1.0)
    assert len(warnings) == 1 and warnings[0].startswith("1 setting(s) only under B") and "minilm/rte/bitfit lr " \
        "0.001" in warnings[0]


def test_diverged_seeds_are_counted_not_averaged(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_seeds(a, "minilm", "rte", "bitfit", 1e-3, [60.0, 62.0, 64.0])
    write_seeds(b, "minilm", "rte", "bitfit", 1e-3, [61.0, 63.0])
    write(b, make_record("minilm", "rte", "bitfit", 1e-3, 2, 99.0, status="diverged"))  # 99 before it diverged
    write_seeds(a, "minilm", "mrpc", "bitfit", 1e-3, [80.0, 82.0])
    for seed in range(2):
        write(b, make_record("minilm", "mrpc", "bitfit", 1e-3, seed, None, status="diverged"))
    cells, _ = compare_runs(a, b)
    rte = cells[cells.task == "rte"].iloc[0]
    assert (rte.mean_b, rte.n_b, rte.diverged_b, rte.delta) == (62.0, 2, 1, 0.0)
    mrpc = cells[cells.task == "mrpc"].iloc[0]
    assert (mrpc.n_b, mrpc.diverged_b) == (0, 2) and math.isnan(mrpc.mean_b) and mrpc.within_noise is pd.NA
    assert main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| 62.00±2.00 (n=3) | 62.00±1.41 (n=2, 1 diverged) | +0.00 ✓ |" in out
    assert "| 81.00±1.41 (n=2) | diverged (2/2) | — |" in out
    assert "1/1 settings within seed noise (|Δ| <= max std); 1 with no finished seed on one side" in out


def test_a_finished_seed_with_no_score_is_not_called_diverged(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    write_seeds(a, "bert_base", "stsb", "bitfit", 4e-4, [88.0, 89.0, 90.0])
    write_seeds(b, "bert_base", "stsb", "bitfit", 4e-4, [88.0, 89.0])
    write(b, make_record("bert_base", "stsb", "bitfit", 4e-4, 2, None))  # finished; its metric is undefined (null)
    (row,) = compare_runs(a, b)[0].itertuples()
    assert (row.n_b, row.diverged_b, row.no_score_b) == (2, 0, 1)
    assert main([str(a), str(b)]) == 0
    assert "| 89.00±1.00 (n=3) | 88.50±0.71 (n=2, 1 no score) |" in capsys.readouterr().out
