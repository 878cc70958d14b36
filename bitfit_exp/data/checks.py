"""Checking a split's table against its task before anything is tokenized: the columns it needs, text that is
text, labels that are ids in range or names from `label_names` (resolved to ids), shards joined consistently.
Each problem is a one-line UserError naming the file and the fix.

>>> from omegaconf import OmegaConf
>>> needed_columns(OmegaConf.load("conf/task/rte.yaml"))
['sentence1', 'sentence2', 'label', 'idx']
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq

from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.data.files import FORMATS, _is_text, _not_utf8, _where, read_table


def concat_shards(shards: dict[Path, pa.Table], task, where: str) -> pa.Table:
    """One table of the files of a split (each read and checked on its own), in order. Where their label columns
    differ in type (names in one file, ids in another), every file's labels become ids first (`labels_as_ids`);
    any other column whose types cannot be joined is a one-line UserError naming `where` and the column.

    >>> task = {"num_labels": 2, "label_names": ["no", "yes"]}
    >>> ids, names = pa.table({"label": [0, 1]}), pa.table({"label": ["yes", "no"]})
    >>> concat_shards({Path("a.csv"): ids, Path("b.csv"): names}, task, "shards")["label"].to_pylist()
    [0, 1, 1, 0]
    """
    if len(shards) == 1:
        return next(iter(shards.values()))
    if len(_column_types(shards, label_field(task))) > 1:
        shards = {path: labels_as_ids(table, task) for path, table in shards.items()}
    try:
        return pa.concat_tables(list(shards.values()), promote_options="permissive")
    except pa.ArrowException:  # ArrowTypeError, ArrowInvalid: a column typed differently in two files
        columns = dict.fromkeys(name for table in shards.values() for name in table.column_names)
        column = next((c for c in columns if len(_column_types(shards, c)) > 1), "?")
        types = "; ".join(f"{t} in {p.name}" for t, p in _column_types(shards, column).items())
        raise UserError(f"{where}: column {column} holds different types in different files ({types}); give it "
                        f"one type in every file") from None


def _column_types(shards: dict[Path, pa.Table], column: str) -> dict[str, Path]:
    """{type of `column`: the first file holding that type} over the files that have the column."""
    found = {}
    for path, table in shards.items():
        if column in table.column_names:
            found.setdefault(str(table.schema.field(column).type), path)
    return found


def _glue_layout(task) -> bool:
    """GLUE tasks (glue_name set) keep the server's layout: every column required, idx included."""
    return bool(task.get("glue_name"))


def label_field(task) -> str:
    """The column holding the labels: task.label_field, default `label`."""
    return str(task.get("label_field") or "label")


def labels_by_name(task) -> bool:
    """Whether the task's label cells may be names: a classifier (num_labels > 1) with label_names, not GLUE."""
    return int(task.get("num_labels") or 0) > 1 and bool(task.get("label_names")) and not _glue_layout(task)


def text_columns(task) -> list[str]:
    """The columns read as text from a CSV or TSV file of the task whatever they look like: the text fields, and
    the label column where its cells may be names (`labels_by_name`: names such as `1` or `true` stay text)."""
    return [*task.text_fields, *([label_field(task)] if labels_by_name(task) else [])]


def needed_columns(task, test: bool = False) -> list[str]:
    """The columns a split file must have: the text fields and the label (GLUE tasks: and idx; other tasks' test
    files may leave the label out, unlabelled)."""
    if _glue_layout(task):
        return [*task.text_fields, label_field(task), "idx"]
    return [*task.text_fields, *([] if test else [label_field(task)])]


def read_split_file(path: Path, task, test: bool = False, fix: str = "fix the file") -> pa.Table:
    """All columns of one split file as the sequence kind loads them: read with `text_columns` as text, checked
    as `check_split_table` does (a one-line UserError naming `path`), labels cleaned (`clean_labels`) and resolved
    (`resolve_labels`)."""
    table = clean_labels(read_table(path, fix, strings=text_columns(task)), task, test)
    check_split_table(table, task, test, str(path), fix)
    return resolve_labels(table, task)


def check_split_file(path: Path, task, test: bool = False, fix: str = "fix the file") -> None:
    """Raise a one-line UserError naming `path` unless it is a readable file (CSV, TSV, JSON Lines or parquet, by
    extension) with rows, the task's columns, text in its text fields and labels the task can use (see
    `check_split_table`); `fix` says what to do. All checks are vectorized over the whole file; of a parquet file
    only the task's columns are read.

    >>> from omegaconf import OmegaConf
    >>> task = OmegaConf.load("conf/task/rte.yaml")
    >>> check_split_file(Path("conf/task/rte.yaml"), task)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    bitfit_exp.core.errors.UserError: conf/task/rte.yaml: is not a readable parquet file: ArrowInvalid: ... (fix the file)
    """
    if FORMATS.get(path.suffix.lower(), "parquet") != "parquet":
        read_split_file(path, task, test, fix)
        return
    if path.stat().st_size == 0:
        raise UserError(f"{path}: is empty (0 bytes) ({fix})")
    try:
        present = pq.ParquetFile(path).schema_arrow.names
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: is not a readable parquet file: {first_line(e)} ({fix})") from None
    _check_columns(present, task, test, str(path), fix)
    wanted = [c for c in [*task.text_fields, label_field(task), "idx"] if c in present]
    check_split_table(clean_labels(read_table(path, fix, wanted), task, test), task, test, str(path), fix)


def check_split_table(table: pa.Table, task, test: bool = False, where: str = "the data",
                      fix: str = "fix the file") -> None:
    """Raise a one-line UserError `<where>: <problem> (<fix>)` unless `table` (a split: a file's rows, or a hub
    split in memory) has rows, the task's columns (`needed_columns`), text in its text fields (no nulls) and labels
    the task can use: class ids 0..num_labels-1, or, with label_names outside GLUE, text cells that are each a name
    (mapped to its position) or else an id; finite numbers for regression (num_labels 1). Test splits may have -1
    or no label (null) outside GLUE."""
    _check_columns(table.column_names, task, test, where, fix)
    if table.num_rows == 0:
        raise UserError(f"{where}: has no rows ({fix})")
    for name in task.text_fields:
        problem = _text_problem(table[name])
        if problem:
            raise UserError(f"{where}: text field {name} {problem} ({fix})")
    if label_field(task) in table.column_names:
        problem = _label_problem(table[label_field(task)], task, test)
        if problem:
            raise UserError(f"{where}: {problem} ({fix})")
    if "idx" in table.column_names:
        idx = table["idx"]
        if not pa.types.is_integer(idx.type):
            raise UserError(f"{where}: idx holds {idx.type}, not integers ({fix})")
        if idx.null_count:  # the prediction file would name such a row by an empty index
            raise UserError(f"{where}: idx is empty at {_where(np.asarray(idx.is_null()))} ({fix})")
        if pa.compute.count_distinct(idx).as_py() < len(idx):
            raise UserError(f"{where}: idx repeats values; it must name each row once ({fix})")


def _check_columns(present: list[str], task, test: bool, where: str, fix: str) -> None:
    """A missing, misnamed or repeated column is a UserError naming those present."""
    needed = needed_columns(task, test)
    missing = [c for c in needed if c not in present]
    if missing:
        raise UserError(f"{where}: has columns {', '.join(present) or 'none'}; task {task.name} needs "
                        f"{', '.join(needed)}; missing: {', '.join(missing)} ({fix})")
    twice = [c for c in [*needed, label_field(task), "idx"] if list(present).count(c) > 1]
    if twice:
        raise UserError(f"{where}: has {len(twice) > 1 and 'columns' or 'column'} {', '.join(twice)} more than "
                        f"once ({fix})")


def clean_labels(table: pa.Table, task, test: bool) -> pa.Table:
    """Outside GLUE: empty label cells ('' in a text column of a CSV file) as null (no label); in a test split, a
    label column holding no label at all (all cells empty) dropped: the rows are unlabelled, as with no column.

    >>> task = {"name": "t", "text_fields": ["s"]}
    >>> clean_labels(pa.table({"s": ["a", "b"], "label": ["x", ""]}), task, test=True)["label"].to_pylist()
    ['x', None]
    >>> clean_labels(pa.table({"s": ["a"], "label": [""]}), task, test=True).column_names
    ['s']
    """
    name = label_field(task)
    if name not in table.column_names or _glue_layout(task):
        return table
    labels = table[name]
    if _is_text(labels):
        labels = pa.compute.if_else(pa.compute.equal(labels, ""), pa.scalar(None, labels.type), labels)
        table = table.set_column(table.schema.get_field_index(name), name, labels)
    if test and labels.null_count == len(labels):
        return table.drop_columns([name])
    return table


def resolve_labels(table: pa.Table, task) -> pa.Table:
    """A text label column of a task with label_names (`labels_by_name`) as the file means it: as it is when
    every label is a name (or missing), else ids (`labels_as_ids`). So a file of names loads as names, a file of
    ids as ids (int64, as inferred from a CSV file of ids), a mix as ids. Other label columns as they are.

    >>> task = {"num_labels": 2, "label_names": ["1", "2"]}
    >>> resolve_labels(pa.table({"label": ["2", "1"]}), task)["label"].to_pylist()
    ['2', '1']
    >>> resolve_labels(pa.table({"label": ["2", "0"]}), task)["label"].to_pylist()
    [1, 0]
    """
    name = label_field(task)
    if name not in table.column_names or not _is_text(table[name]) or not labels_by_name(task):
        return table
    labels = table[name]
    names = pa.array(list(task["label_names"]), pa.string())
    if pa.compute.all(pa.compute.or_kleene(pa.compute.is_in(labels, value_set=names), labels.is_null())).as_py():
        return table
    return labels_as_ids(table, task)


def labels_as_ids(table: pa.Table, task) -> pa.Table:
    """`table` with a text label column as class ids (int64): a cell that is one of task.label_names is its
    position, any other cell the id it spells (`2` -> 2), an empty one null. Other label columns as they are.

    >>> labels_as_ids(pa.table({"label": ["yes", "0", None]}), {"label_names": ["no", "yes"]})["label"].to_pylist()
    [1, 0, None]
    """
    name = label_field(task)
    if name not in table.column_names or not _is_text(table[name]):
        return table
    labels = table[name]
    positions = pa.compute.index_in(labels, value_set=pa.array(list(task["label_names"]), pa.string()))
    ids = pa.compute.coalesce(positions.cast(pa.int64()), _spelled_ids(labels))
    return table.set_column(table.schema.get_field_index(name), name, ids)


def _spelled_ids(labels: pa.ChunkedArray) -> pa.ChunkedArray:
    """The integer each text cell spells (`-1`, `2`), null where it spells none."""
    spelled = pa.compute.match_substring_regex(labels, r"^-?[0-9]{1,9}$")
    return pa.compute.if_else(spelled, labels, pa.scalar(None, labels.type)).cast(pa.int64())




def _text_problem(column: pa.ChunkedArray) -> str | None:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_string_view(column.type)):
        return f"holds {column.type}, not text"
    if column.null_count:
        return f"is null at {_where(column.is_null().to_numpy(zero_copy_only=False))}"
    bad = _not_utf8(column)
    if bad is not None:
        return f"is not UTF-8 text at {_where(bad)}"
    return None




def _label_problem(labels: pa.ChunkedArray, task, test: bool) -> str | None:
    """What is wrong with a label column, or None: classification labels must be 0..num_labels-1 (or -1 in a test
    split) or, with label_names outside GLUE, text cells each a name or an id; regression labels (num_labels 1)
    finite numbers; test splits may leave labels null (unlabelled) outside GLUE."""
    name, num_labels = label_field(task), int(task.num_labels)
    nulls_ok = test and not _glue_layout(task)
    if pa.types.is_null(labels.type):  # every cell empty
        return None if nulls_ok else f"{name} is null at {_where(np.ones(len(labels), dtype=bool))}"
    if _is_text(labels) and labels_by_name(task):
        return _label_name_problem(labels, name, list(task.label_names), test, nulls_ok)
    if not (pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type)):
        return f"{name} holds {labels.type}, not numbers"
    if labels.null_count and not nulls_ok:
        return f"{name} is null at {_where(labels.is_null().to_numpy(zero_copy_only=False))}"
    values = labels.to_numpy(zero_copy_only=False)
    if num_labels == 1:
        bad, wanted = ~np.isfinite(values), "a finite number"
    else:
        allowed = np.arange(-1 if test else 0, num_labels)
        bad, wanted = ~np.isin(values, allowed), f"0..{num_labels - 1}{' or -1 for unlabelled rows' if test else ''}"
    bad &= ~labels.is_null().to_numpy(zero_copy_only=False)
    if bad.any():
        return f"{name} must be {wanted} but is {values[np.argmax(bad)].item()} at {_where(bad)}"
    return None


def _label_name_problem(labels: pa.ChunkedArray, name: str, names: list[str], test: bool,
                        nulls_ok: bool) -> str | None:
    """Text labels must each be a name among `names` (task.label_names) or else spell an id 0..len(names)-1 (or
    -1 in a test split)."""
    known = pa.array(names, type=pa.string())
    ids = pa.array(range(-1 if test else 0, len(names)), pa.int64())
    usable = pa.compute.or_kleene(pa.compute.is_in(labels, value_set=known),
                                  pa.compute.is_in(_spelled_ids(labels), value_set=ids))
    nulls = labels.is_null().to_numpy(zero_copy_only=False)
    bad = ~usable.to_numpy(zero_copy_only=False)
    if nulls_ok:
        bad &= ~nulls
    if bad.any():
        value = labels[int(np.argmax(bad))].as_py()
        minus_one = " or -1" if test else ""
        return (f"{name} {value!r} is not one of task.label_names ({', '.join(names)}) nor an id "
                f"0..{len(names) - 1}{minus_one} at {_where(bad)}" if value is not None
                else f"{name} is null at {_where(nulls)}")
    return None
