"""Reading a task's own files: CSV (RFC 4180), TSV (tab-separated, no quoting), JSON Lines or Parquet by extension,
a folder of shards, paths relative to data.dir; text fields read as text, never type-inferred.

>>> FORMATS[".tsv"], FORMATS[".jsonl"]
('TSV', 'JSON Lines')
"""

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq

from bitfit_exp.core.errors import UserError, first_line


def columns_of(dataset, limit: int | None = None) -> dict[str, list]:
    """Plain lists of the columns of the first `limit` rows of a datasets.Dataset (a select()ed view included) or
    a pandas DataFrame.

    >>> import pandas as pd
    >>> columns_of(pd.DataFrame({"a": [1, 2, 3]}), 2)
    {'a': [1, 2]}
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if hasattr(dataset, "iloc"):
        return {c: dataset[c].iloc[:n].tolist() for c in dataset.columns}
    if limit is not None:
        dataset = dataset.select(range(n))
    return dataset[:]


FORMATS = {".csv": "CSV", ".tsv": "TSV", ".jsonl": "JSON Lines", ".json": "JSON Lines", ".parquet": "parquet"}


def resolve_path(path: str, data_dir) -> Path:
    """A task file's path: `~` expanded; a relative one under data.dir when that is set, else under the current
    directory.

    >>> str(resolve_path("sst2/train.csv", "/data")), str(resolve_path("/abs/train.csv", "/data"))
    ('/data/sst2/train.csv', '/abs/train.csv')
    """
    resolved = Path(os.path.expanduser(str(path)))
    if resolved.is_absolute() or not data_dir:
        return resolved
    return Path(os.path.expanduser(str(data_dir))) / resolved


def split_files(split: str, path: Path, task) -> list[Path]:
    """The file(s) of one split in task.files: the file, or every file of a known format in the folder (sorted,
    one format); a missing path or an unknown format is a UserError."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        kinds = {FORMATS[p.suffix.lower()] for p in found}
        if not found or len(kinds) > 1:
            what = "no" if not found else f"several formats of ({', '.join(sorted(kinds))})"
            raise UserError(f"task {task.name}: the folder {path} (task.files.{split}) holds {what} data files; "
                            f"give it files of one format: {', '.join(FORMATS)}")
        return found
    if not path.is_file():
        raise UserError(f"task {task.name}: task.files.{split}={path} does not exist")
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"task {task.name}: task.files.{split}={path} has an unknown format; name it by its format: "
                        f"{', '.join(FORMATS)}")
    return [path]


def read_table(path: Path, fix: str = "fix the file", columns: list[str] | None = None,
               strings: list[str] | bool = ()) -> pa.Table:
    """The rows of a CSV, TSV, JSON Lines or Parquet file (by extension) as an Arrow table: CSV is RFC 4180 (a
    field in double quotes may hold commas, newlines and "" for a quote); TSV is tab-separated with no quoting at
    all (a " is text, GLUE's convention; a field cannot hold a tab or a newline); both have a header line. Column
    types are inferred, except CSV and TSV columns named in `strings` (True: every column), read as text whatever
    they look like (`007` stays '007', an empty cell ''); dictionary (categorical) columns are decoded to their
    values; `columns` picks the columns of a parquet file. A missing or empty file, one that cannot be parsed, or
    CSV, TSV or JSON Lines text that is not UTF-8 is a one-line UserError naming the file, ending in `(fix)`.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "t.tsv"
    >>> _ = path.write_text('sentence\\tlabel\\n"Hi," she said\\t1\\n')
    >>> read_table(path, strings=["sentence"]).to_pylist()
    [{'sentence': '"Hi," she said', 'label': 1}]
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower(), "parquet")
    if not path.is_file():
        raise UserError(f"{path}: does not exist ({fix})")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: is empty (0 bytes) ({fix})")
    try:
        table = _parse(path, kind, columns, strings)
    except (pa.ArrowException, OSError) as e:  # bad footer: ArrowInvalid; damaged pages: OSError
        raise UserError(f"{path}: is not a readable {kind} file: {first_line(e)} ({fix})") from None
    if kind != "parquet":  # the text readers do not check UTF-8 (CSV's is turned off to name the row)
        for name, column in zip(table.column_names, table.columns, strict=True):
            bad = _not_utf8(column)
            if bad is not None:
                raise UserError(f"{path}: column {name} is not UTF-8 text at {_where(bad)}; save the file as UTF-8 "
                                f"({fix})")
    return decode_dictionaries(table)


def _parse(path: Path, kind: str, columns: list[str] | None, strings: list[str] | bool) -> pa.Table:
    if kind == "parquet":
        return pq.read_table(path, columns=columns)
    if kind == "JSON Lines":
        import pyarrow.json as pj

        return pj.read_json(path)
    import pyarrow.csv as pc

    parse = pc.ParseOptions(delimiter="\t", quote_char=False) if kind == "TSV" else pc.ParseOptions(delimiter=",")
    if strings is True:  # every column: the names come from the header
        strings = pc.open_csv(path, parse_options=parse, convert_options=pc.ConvertOptions(check_utf8=False)
                              ).schema.names
    convert = pc.ConvertOptions(column_types={name: pa.string() for name in strings or ()}, check_utf8=False)
    return pc.read_csv(path, parse_options=parse, convert_options=convert)


def _not_utf8(column: pa.ChunkedArray) -> np.ndarray | None:
    """A mask of the rows of a text column that are not valid UTF-8, or None when all are (or it is not text)."""
    if not _is_text(column):
        return None
    try:
        column.validate(full=True)
        return None
    except pa.ArrowInvalid:
        pass

    def bad(value: bytes | None) -> bool:
        try:
            value is None or value.decode("utf-8")
            return False
        except UnicodeDecodeError:
            return True

    return np.array([bad(v) for v in column.cast(pa.large_binary()).to_pylist()])


def decode_dictionaries(table: pa.Table) -> pa.Table:
    """`table` with its dictionary-encoded columns (a pandas Categorical in parquet) as plain columns of their
    values.

    >>> decode_dictionaries(pa.table({"label": pa.array(["a", "b", "a"]).dictionary_encode()})).schema
    label: string
    """
    for index, column in enumerate(table.schema):
        if pa.types.is_dictionary(column.type):
            table = table.set_column(index, column.name, table.column(index).cast(column.type.value_type))
    return table


def _where(mask: np.ndarray) -> str:
    """Where a boolean mask of bad rows is true, in words (0-based row numbers).

    >>> _where(np.array([False, True, False, True]))
    'row 1, 2 of 4 rows in all'
    """
    return f"row {np.argmax(mask)}, {np.count_nonzero(mask)} of {len(mask)} rows in all"


def _is_text(column: pa.ChunkedArray) -> bool:
    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
