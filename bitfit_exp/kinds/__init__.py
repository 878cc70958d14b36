"""Task kinds: what differs between sentence(-pair) classification, extractive QA and token tagging.

A task YAML says its kind (`kind: sequence | span | token`, `sequence` when absent); `kind_of(task)` returns the
module that implements it. The runner and both trainers reach everything kind-specific through that module and
never look at the task's name; the trainers, packing, records, resume, claims and tables are the same for all.
Beside the kinds: `metrics.py` (the GLUE metrics the sequence kind computes) and `splits.py` (loading a task's
splits from the hub, a local copy or the task's own files, each file checked by its kind).

The interface (module-level names; `task` is the task YAML, an OmegaConf DictConfig or a plain dict):

- `AUTO_CLASS`: the transformers Auto class that builds the model with its head, e.g.
  "AutoModelForSequenceClassification"; `num_outputs(task) -> int` the head's outputs (config.num_labels);
  `model_config(task) -> dict` further config values for from_pretrained (the sequence kind's problem_type).
- `check_file(path, task, test, fix)`: raise a one-line UserError naming `path` unless the local parquet file is
  usable by this kind (`test`: a test split, labels may be missing; `fix` says what to do). Called per split file
  by `data.load_splits` before anything is tokenized. Optional: `read_file(path, task, test, fix) -> pa.Table`
  (a task's own file, task.files: read, checked and its labels resolved; without it: `check_file`, then the file
  as it is) and `check_table(table, task, test, where, fix)` (a hub split in memory; without it: unchecked).
- `encode(dataset, task, tokenizer, data_cfg, role, limit=None) -> Encoded`: `dataset` a datasets.Dataset or a
  pandas DataFrame; `data_cfg` the data config (max_length, and kind keys such as doc_stride); `role` "train",
  "eval" or "test"; `limit` the first N examples (not features). One `Encoded` row is one model input
  ("feature"); `Encoded.extra` holds what decoding and scoring need (offsets, example ids, word positions, gold).
- `batch_labels(data, index, width) -> dict[str, Tensor]`: the loss targets of rows `index` (a LongTensor) of a
  batch padded to `width`, as keyword arguments of the model's forward (`labels`, or `start_positions` and
  `end_positions`). The one-by-one trainer passes them to the model, which computes its own loss.
- `setting_losses(logits, targets, k) -> Tensor[k]`: the packed trainer's loss. Rows [i*B, (i+1)*B) of `logits`
  and `targets` belong to setting i; entry i equals the model's own loss on setting i's rows alone. `logits` is
  `model_logits(outputs)`: the output's one logits tensor, or the tuple of them (QA: start and end logits).
- `decode(logits_batches, data) -> predictions`: the logits of every row of `data` in order, one entry per batch
  (each `model_logits` of that batch, padded to the batch's width), to the kind's predictions (class ids or
  scores; {example id: answer text}; per sentence, the tag id of each word). The trainers check the logits for
  non-finite values before decoding: a split with any scores NaN on every metric (a diverged model), so kinds
  decode finite logits only.
- `score(predictions, data, metrics) -> dict[str, float]`: each metric named in the task's `metrics`, which the
  config schema checks against the kind's `METRICS` (the names it computes).
- `write_test(predictions, data, task, path)`: the file the task's benchmark wants at `path` (the name is the
  value of the split in the task's `test_splits`).
- `baseline(data, metric) -> (name, score) | None`: what a trivial predictor scores on the split (the majority
  class, the most frequent tag), printed next to a setting's result; None where there is no such yardstick.

Adding a kind: one module here, registered in `KINDS`, and a task YAML with `kind: <name>`.

>>> kind_of({"name": "rte"}).AUTO_CLASS
'AutoModelForSequenceClassification'
>>> kind_of({"name": "x", "kind": "spam"})
Traceback (most recent call last):
bitfit_exp.core.errors.UserError: task x has kind 'spam'; valid kinds: sequence, span, token
"""

import importlib
from types import ModuleType

import torch

from bitfit_exp.core.errors import UserError

KINDS = {"sequence": "bitfit_exp.kinds.sequence", "span": "bitfit_exp.kinds.span", "token": "bitfit_exp.kinds.token"}
DEFAULT = "sequence"


def kind_name(task) -> str:
    """The task's kind (`sequence` when the YAML names none)."""
    return str(task.get("kind") or DEFAULT)


def kind_of(task) -> ModuleType:
    """The module implementing `task`'s kind; an unknown kind is a one-line UserError listing the valid ones."""
    name = kind_name(task)
    if name not in KINDS:
        raise UserError(f"task {task.get('name')} has kind {name!r}; valid kinds: {', '.join(KINDS)}")
    return importlib.import_module(KINDS[name])


def metrics_of(name: str) -> tuple[str, ...]:
    """The metrics a kind computes (its module's METRICS)."""
    return tuple(importlib.import_module(KINDS[name]).METRICS)


def model_logits(outputs) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The logits of a transformers model output: its `logits`, or the tuple of its *_logits fields in order
    (QA heads: start_logits, end_logits).

    >>> from transformers.modeling_outputs import QuestionAnsweringModelOutput
    >>> out = QuestionAnsweringModelOutput(start_logits=torch.zeros(1, 3), end_logits=torch.ones(1, 3))
    >>> [t.tolist() for t in model_logits(out)]
    [[[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]]]
    """
    found = tuple(value for name, value in outputs.items() if name.endswith("logits"))
    return found[0] if len(found) == 1 else found


def rows_of(logits, k: int, i: int):
    """Setting i's rows of packed `logits` (a tensor or a tuple of them, rows first, k settings side by side)."""
    if isinstance(logits, tuple):
        return tuple(rows_of(t, k, i) for t in logits)
    return logits.reshape(k, -1, *logits.shape[1:])[i]


def all_finite(logits) -> torch.Tensor:
    """A 0-dim bool tensor: every value of `logits` (a tensor or a tuple of them) is finite. No sync."""
    if isinstance(logits, tuple):
        return torch.stack([all_finite(t) for t in logits]).all()
    return torch.isfinite(logits).all()
