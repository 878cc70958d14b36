"""GLUE metrics on small inputs whose values are worked out by hand below."""

import math

import numpy as np
import pytest

from bitfit_exp.kinds.metrics import METRICS, compute_metrics

#            idx: 0  1  2  3  4
PRED = [1, 0, 1, 1, 0]
GOLD = [1, 0, 0, 1, 1]
# TP = idx 0, 3 -> 2;  TN = idx 1 -> 1;  FP = idx 2 -> 1;  FN = idx 4 -> 1


def one(name, predictions, labels):
    value = compute_metrics([name], predictions, labels)[name]
    assert type(value) is float
    return value


def test_accuracy():
    assert one("accuracy", PRED, GOLD) == pytest.approx(3 / 5)  # idx 0, 1, 3 correct
    assert one("accuracy", GOLD, GOLD) == 1.0
    assert one("accuracy", [1 - y for y in GOLD], GOLD) == 0.0
    assert one("accuracy", [0, 1, 2, 2], [0, 1, 2, 1]) == pytest.approx(3 / 4)  # multi-class (MNLI)


def test_f1_is_binary_positive_class():
    # P = 2/(2+1), R = 2/(2+1) -> F1 = 2/3
    assert one("f1", PRED, GOLD) == pytest.approx(2 / 3)
    # pred [1,1,0,0,0] gold [1,0,0,0,1]: class 1: TP=1 FP=1 FN=1 -> F1 = 2*1/(2*1+1+1) = 0.5
    # (class 0 would give 2*2/(2*2+1+1) = 2/3, macro average 7/12: neither is what GLUE reports)
    assert one("f1", [1, 1, 0, 0, 0], [1, 0, 0, 0, 1]) == pytest.approx(0.5)
    assert one("f1", GOLD, GOLD) == 1.0
    assert one("f1", [1 - y for y in GOLD], GOLD) == 0.0  # TP = 0


def test_matthews():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert one("matthews", PRED, GOLD) == pytest.approx(1 / 6)
    assert one("matthews", GOLD, GOLD) == pytest.approx(1.0)
    assert one("matthews", [1 - y for y in GOLD], GOLD) == pytest.approx(-1.0)
    assert one("matthews", [1] * 5, GOLD) == 0.0  # constant predictor (CoLA's degenerate case)


def test_pearson():
    # x = 1..4 (mean 2.5, dx = -1.5 -.5 .5 1.5, sum dx^2 = 5); y = 2 4 5 9 (mean 5, dy = -3 -1 0 4, sum dy^2 = 26)
    # sum dx*dy = 4.5 + .5 + 0 + 6 = 11 -> r = 11 / sqrt(5 * 26)
    assert one("pearson", [1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert one("pearson", [0.5, 1.5, 2.5], [1.0, 3.0, 5.0]) == pytest.approx(1.0)
    assert one("pearson", [3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)


def test_spearman():
    # ranks 1 2 3 4 vs 1 3 2 4: d = 0 1 1 0, rho = 1 - 6*sum d^2 / (n(n^2-1)) = 1 - 12/60 = 0.8
    assert one("spearman", [1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # monotone but not linear: spearman 1, pearson below 1
    assert one("spearman", [1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert one("pearson", [1, 2, 3, 4], [1, 4, 9, 100]) < 0.9
    assert one("spearman", [4, 3, 2, 1], [1, 4, 9, 100]) == pytest.approx(-1.0)


@pytest.mark.parametrize("name", ["pearson", "spearman"])
def test_correlation_of_constant_input_is_zero(name):
    assert one(name, [2.5, 2.5, 2.5, 2.5], [1.0, 2.0, 3.0, 4.0]) == 0.0
    assert one(name, [1.0, 2.0, 3.0, 4.0], [3.0, 3.0, 3.0, 3.0]) == 0.0


def test_compute_metrics_several_and_numpy_inputs():
    result = compute_metrics(["accuracy", "f1", "matthews"], np.array(PRED), np.array(GOLD))
    assert list(result) == ["accuracy", "f1", "matthews"]
    assert result == pytest.approx({"accuracy": 0.6, "f1": 2 / 3, "matthews": 1 / 6})
    assert compute_metrics([], PRED, GOLD) == {}


def test_unknown_metric_names_valid_choices():
    with pytest.raises(ValueError, match="bleu") as info:
        compute_metrics(["accuracy", "bleu"], PRED, GOLD)
    for name in ["accuracy", "f1", "matthews", "pearson", "spearman"]:
        assert name in str(info.value)
    assert set(METRICS) == {"accuracy", "f1", "matthews", "pearson", "spearman"}


def test_constant_baseline_per_metric():
    from bitfit_exp.kinds.metrics import baseline_note, constant_baseline

    labels = [0, 1, 1, 2, 1]  # majority class 1
    assert constant_baseline("accuracy", labels) == ("majority class", 0.6)
    assert constant_baseline("matthews", labels) == ("majority class", 0.0)
    assert constant_baseline("f1", [1, 1, 0, 1]) == ("majority class", 6 / 7)  # all 1: precision 3/4, recall 1
    assert constant_baseline("f1", [0, 0, 1]) == ("majority class", 0.0)
    assert constant_baseline("spearman", np.array([0.0, 2.5, 5.0])) == ("mean predictor", 0.0)
    assert baseline_note(constant_baseline("accuracy", np.array([0, 0, 1]))) == "; majority class 66.67"
    assert baseline_note(None) == ""
