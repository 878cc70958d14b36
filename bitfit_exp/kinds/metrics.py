"""GLUE metrics, computed with scikit-learn/scipy (no network, unlike `evaluate.load`).

>>> from bitfit_exp.kinds.metrics import compute_metrics
>>> compute_metrics(["accuracy", "f1"], predictions=[1, 0, 1, 1], labels=[1, 0, 0, 1])
{'accuracy': 0.75, 'f1': 0.8}

Values are fractions in [0, 1] (correlations in [-1, 1]); tables multiply by 100 like the paper. Predictions that
are not all finite (a diverged model) score NaN on every metric, without a warning; run records store NaN as null
(`records.write_json_atomic`).

>>> compute_metrics(["accuracy", "pearson"], predictions=[1.0, float("nan")], labels=[1, 0])
{'accuracy': nan, 'pearson': nan}
"""

import importlib
from collections.abc import Callable, Sequence

import numpy as np


# scikit-learn and scipy are imported on the first score, not with this module: the config check reads the metric
# names (every plan and run does), and importing both takes about a second.
def _sklearn(name: str):
    def metric(predictions, labels):
        return float(getattr(importlib.import_module("sklearn.metrics"), name)(labels, predictions))

    return metric


def _correlation(name: str):
    def metric(predictions, labels):
        predictions, labels = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)  # float32 overflows
        if np.std(predictions) == 0 or np.std(labels) == 0:
            return 0.0  # undefined for a constant input; 0 is what a constant predictor deserves
        return float(getattr(importlib.import_module("scipy.stats"), name)(predictions, labels)[0])

    return metric


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _sklearn("accuracy_score"),
    "f1": _sklearn("f1_score"),  # binary F1 of the positive class, as GLUE (MRPC, QQP)
    "matthews": _sklearn("matthews_corrcoef"),
    "pearson": _correlation("pearsonr"),
    "spearman": _correlation("spearmanr"),
}


def compute_metrics(names: Sequence[str], predictions, labels) -> dict[str, float]:
    """Score `predictions` (class ids, or floats for regression) against `labels` with each metric in `names`."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; valid: {', '.join(METRICS)}")
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.dtype.kind in "fc" and not np.isfinite(p).all():
        return dict.fromkeys(names, float("nan"))
    return {name: METRICS[name](p, y) for name in names}


def constant_baseline(metric: str, labels) -> tuple[str, float]:
    """What a constant predictor scores on `labels` with `metric`: the majority class for class ids, the mean for
    regression scores (any correlation of a constant is 0). The yardstick a fine-tuned model must clearly beat.

    >>> constant_baseline("accuracy", [1, 0, 1, 1])
    ('majority class', 0.75)
    >>> constant_baseline("pearson", [0.5, 3.0, 4.2])
    ('mean predictor', 0.0)
    """
    y = np.asarray(labels)
    if np.issubdtype(y.dtype, np.floating):
        return "mean predictor", METRICS[metric](np.full(len(y), y.mean()), y)
    values, counts = np.unique(y, return_counts=True)
    return "majority class", METRICS[metric](np.full(len(y), values[counts.argmax()]), y)


def baseline_note(baseline: tuple[str, float] | None) -> str:
    """A kind's `baseline` as the tail of a summary line ("" without one), in percent like the scores.

    >>> baseline_note(constant_baseline("accuracy", [1, 0, 1, 1]))
    '; majority class 75.00'
    """
    if baseline is None:
        return ""
    name, value = baseline
    return f"; {name} {100 * value:.2f}"
