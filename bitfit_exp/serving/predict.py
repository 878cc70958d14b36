"""`bitfit-predict`: the multi-task engine (bitfit_exp.serving.engine) on files: CSV, TSV, JSONL or Parquet in, the same
rows plus predictions out.

    bitfit-predict ~/bitfit-runs/minilm/sst2 ~/bitfit-runs/minilm/rte/bitfit --input in.csv --output out.parquet

Each row's task comes from `--task` (all rows) or a `task` column (mixed files; rows of different tasks share forward
passes). Its text comes from the task's own columns when the file has them (`sentence`, `sentence1`/`sentence2`,
...), else from `text` / `text_pair` (or `--text-column` / `--pair-column`). Added columns, what bitfit-serve
answers: `label` (the predicted label's name; empty for regression), `score` (its probability, or the regression
score), `probabilities` and `logits`, `truncated` (the text was cut to the run's max_length, as in training).

Parquet and JSON Lines hold `probabilities` and `logits` as real lists of floats (probabilities in the task's label
order, as GET /tasks lists the labels; null for regression). CSV and TSV cells cannot hold lists, so there they are
the server's JSON text: `probabilities` an object by label name (`{}` for regression), `logits` a list.

>>> from bitfit_exp.serving.predict import table_format
>>> table_format("data/in.jsonl"), table_format("out.PARQUET")
('jsonl', 'parquet')
"""

import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.data import files
from bitfit_exp.serving.engine import BadInput, MultiTaskEngine, TaskPatch

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


ADDED = ("label", "score", "probabilities", "logits", "truncated")  # the columns bitfit-predict adds
LISTS = ("probabilities", "logits")  # list<double> in Parquet


def table_format(path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: unknown file type {suffix or '(none)'}; use {', '.join(FORMATS)}")
    return FORMATS[suffix]


def read_table(path: Path) -> pd.DataFrame:
    """The input rows, read as training reads a task's files (bitfit_exp.data.files.read_table: CSV with RFC 4180 quoting,
    TSV tab-separated with quotes as text, every CSV/TSV column as text); a file that cannot be read, or that names
    a column twice, is one UserError line."""
    if table_format(path) == "parquet":  # an unknown extension: the line that lists the known ones
        _unique_columns(path, _parquet_columns(path))  # before reading: pyarrow reads none ("Multiple matches")
    table = files.read_table(path, fix="fix --input", strings=True)
    _unique_columns(path, table.column_names)
    return table.to_pandas()


def _parquet_columns(path: Path) -> list[str]:
    """The column names of a parquet file; none where it cannot be read (files.read_table says why)."""
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError):
        return []


def _unique_columns(path: Path, names: list[str]) -> None:
    """A UserError for an input with two columns of one name: its rows and its output (the same columns plus
    predictions; Parquet and JSON Lines hold no repeated name) would be ambiguous. (JSON Lines' reader refuses a
    repeated key itself.)

    >>> _unique_columns(Path("in.csv"), ["text", "task", "text"])
    Traceback (most recent call last):
    bitfit_exp.core.errors.UserError: in.csv: 2 columns are named 'text'; give each column its own name (fix --input)
    """
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        raise UserError(f"{path}: {names.count(repeated)} columns are named {repeated!r}; give each column its own "
                        f"name (fix --input)")


def check_output(path: Path, frame: pd.DataFrame) -> None:
    """Before any prediction: the output file can be created, and its columns will not clash with the input's."""
    clash = [c for c in ADDED if c in frame.columns]
    if clash:
        raise UserError(f"the input already has column(s) {', '.join(clash)}, which bitfit-predict adds; rename them "
                        f"first")
    if path.is_dir():
        raise UserError(f"--output {path} is a folder; give a file name")
    if table_format(path) == "tsv" and (bad := _tab_or_newline(frame)):
        raise UserError(f"--output {path}: column {bad} holds a tab or line break, which TSV (no quoting, as training "
                        f"reads it) cannot hold; write .csv, .jsonl or .parquet")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".bitfit-predict-"):
            pass
    except OSError as e:
        raise UserError(f"--output {path} cannot be written ({first_line(e)})") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"--output {path} exists and is not writable")


def _tab_or_newline(frame: pd.DataFrame) -> str | None:
    """The first text column with a value holding a tab or a line break."""
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].astype(str).str.contains(r"[\t\r\n]").any():
            return str(column)
    return None


def write_table(frame: pd.DataFrame, path: Path) -> None:
    kind = table_format(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "parquet":
            pq.write_table(_typed_lists(pa.Table.from_pandas(frame, preserve_index=False)), path)
        elif kind == "jsonl":
            frame.to_json(path, orient="records", lines=True, force_ascii=False)
        elif kind == "tsv":  # as training reads TSV: no quoting, a quote is text
            frame.to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE)
        else:
            frame.to_csv(path, index=False)
    except OSError as e:
        raise UserError(f"--output {path} cannot be written ({first_line(e)})") from None


def _typed_lists(table: pa.Table) -> pa.Table:
    """The list columns as list<double> even where no row has a list (only regression rows: all null)."""
    for name in LISTS:
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name,
                                     table.column(name).cast(pa.list_(pa.float64())))
    return table


def _value(row, column: str | None):
    """A row's cell of `column`: None where the column is absent or the cell null (a missing text); an empty text
    stays "", a text to predict, as bitfit-serve and training take it."""
    if column is None:
        return None
    value = row.get(column)
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def text_columns(patch: TaskPatch, columns, text: str | None, pair: str | None) -> tuple[str, str | None]:
    """Which columns hold a task's text (and pair): the flags, the task's own fields, or text / text_pair."""
    pair_task = len(patch.text_fields) == 2
    if text:
        return text, (pair or "text_pair") if pair_task else None
    if all(f in columns for f in patch.text_fields):
        return patch.text_fields[0], patch.text_fields[1] if pair_task else None
    if "text" in columns:
        return "text", "text_pair" if pair_task else None
    raise UserError(f"no text columns for task {patch.name}: the file has {', '.join(map(str, columns))}; expected "
                    f"{' + '.join(patch.text_fields)}, text{' + text_pair' if pair_task else ''}, or --text-column")


def items_of(frame: pd.DataFrame, engine: MultiTaskEngine, args) -> list[dict]:
    """One request item per row: {"task", "text"[, "text_pair"]}."""
    if args.task is None and args.task_column not in frame.columns:
        raise UserError(f"no --task and no {args.task_column!r} column in {args.input}; say which task(s) to run")
    tasks = [args.task] * len(frame) if args.task else frame[args.task_column].astype(str).tolist()
    unknown = sorted(set(tasks) - set(engine.ids))
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r} in {args.input}; serving: {', '.join(engine.ids)}")
    columns = {t: text_columns(engine.patches[engine.ids[t]], frame.columns, args.text_column, args.pair_column)
               for t in set(tasks)}
    items = []
    for task, (_, row) in zip(tasks, frame.iterrows(), strict=True):
        text, pair = columns[task]
        items.append({"task": task, "text": _value(row, text), "text_pair": _value(row, pair)})
    return items


def predictions(engine: MultiTaskEngine, items: list[dict], progress: bool | None, kind: str = "parquet"
                ) -> pd.DataFrame:
    """The added columns for `items`, for an output of type `kind` (lists, or JSON text in CSV/TSV)."""
    try:
        rows = engine.prepare(items, noun="row")
    except BadInput as e:
        raise UserError(str(e)) from None
    with tqdm(total=len(rows), desc="bitfit-predict", unit="row", disable=None if progress is None else not progress,
              file=sys.stderr) as bar:
        logits = engine.logits(rows, bar.update)
    results = [engine.result(r, v) for r, v in zip(rows, logits, strict=True)]
    if kind in ("csv", "tsv"):
        probabilities = [json.dumps(r.get("probabilities", {})) for r in results]
        logit_lists = [json.dumps(r["logits"]) for r in results]
    else:
        probabilities = [list(r["probabilities"].values()) if "probabilities" in r else None for r in results]
        logit_lists = [r["logits"] for r in results]
    return pd.DataFrame({
        "label": [r.get("label") for r in results],
        "score": [r["score"] if "score" in r else r["probabilities"][r["label"]] for r in results],
        "probabilities": probabilities,
        "logits": logit_lists,
        "truncated": [row.truncated for row in rows],
    })
