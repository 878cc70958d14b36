"""Task data: loading (Hugging Face hub or a local parquet copy in the hub's layout) and batching.

Where a task's data is read from:

- `data.dir` set: `<data.dir>/<folder>/<split>.parquet`, the folder being the task's `local_name` (default: its
  `name`; GLUE tasks: data.dir=../shared/data/glue, task rte -> rte/). Each file is checked by the task kind
  (`kind.check_file`) before anything is tokenized.
- `data.dir` null: the hub. A task naming its own dataset (`hub_name`, with optional `hub_config`, `hub_data_dir`,
  `hub_revision`) loads that; otherwise `data.hub_name` (nyu-mll/glue) with the task's name as the config. Each
  split is checked in memory by the kind's `check_table` where it has one (the sequence kind).
- A task with `files: {split: path}`: those files, whatever data.dir says (see `load_files`): CSV, TSV, JSON
  Lines (one object per line) or Parquet, by extension (parsed as `read_table` says), or a folder of such files;
  a relative path is resolved against data.dir when it is set, else against the current directory.
  docs/custom-tasks.md has a complete task.
- `data.dev_fraction` set (a number in (0, 1)): the task's first eval split does not exist and is carved from train
  by a seeded draw (`carve_dev`, seed `data.dev_seed`), with a note saying so; set while that split exists, it is
  refused. Null (the default) and the split missing: an error saying to set it. Carving happens before the runner
  fingerprints the splits, so the setting's identity is that of the carved data.
- A task with `title_split: {dev_fraction, seed}` has no train split of its own: its first eval split is cut by
  article title into a training part and a dev part with no title in both (`split_by_title`), seeded; the run
  says so in one line (for a QA task whose train split is not at hand).

>>> from omegaconf import OmegaConf
>>> from bitfit_exp.data import load_splits
>>> task = OmegaConf.load("conf/task/rte.yaml")
>>> data = OmegaConf.create({"dir": "../shared/data/glue", "hub_name": "nyu-mll/glue"})
>>> splits = load_splits(task, data)   # doctest: +SKIP
>>> len(splits["validation"])          # doctest: +SKIP
277
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from bitfit_exp.errors import UserError, first_line
from bitfit_exp.kinds import kind_of


def needed_splits(task) -> list[str]:
    return ["train", *task.eval_splits, *task.test_splits]


def local_name(task) -> str:
    """The task's folder under data.dir: its `local_name`, else its name."""
    return str(task.get("local_name") or task.name)


def stored_splits(task) -> list[str]:
    """The splits read from disk or the hub: all needed ones, but no train split for a task cut by title."""
    return [s for s in needed_splits(task) if not (s == "train" and task.get("title_split"))]


def load_splits(task, data, carve: bool = True):
    """Return {split: datasets.Dataset} for train, the dev split(s) and the test split(s) of `task`.

    Test splits missing from a local copy are left out (no test predictions then); everything else is an error.
    `carve` False: the splits as stored, nothing carved and nothing required (what `bitfit-prefetch` saves).
    """
    optional = {dev_split(task)} if data.get("dev_fraction") is not None or not carve else set()
    if task.get("files"):
        splits = load_files(task, data, optional)
    elif data.dir:
        splits = _load_local(task, Path(os.path.expanduser(str(data.dir))), optional)
    else:
        splits = _load_hub(task, data.hub_name)
    if not carve:
        return splits
    splits = carve_dev(task, data, splits)
    missing = [s for s in stored_splits(task) if s not in splits and s not in task.test_splits]
    if missing:
        raise UserError(f"task {task.name} has no {', '.join(missing)} split (it has {', '.join(splits) or 'none'})"
                        f"{_carve_hint(task, missing)}")
    return _carve_train(task, splits)


def dev_split(task) -> str:
    """The split that selects the epoch (the first of eval_splits), the one `data.dev_fraction` carves."""
    return str(next(iter(task.eval_splits)))


def _carve_hint(task, missing: list[str]) -> str:
    if dev_split(task) in missing and not task.get("title_split"):
        return f"; carve {dev_split(task)} from train with data.dev_fraction=0.1 (a seeded draw, data.dev_seed)"
    return ""


def carve_dev(task, data, splits: dict) -> dict:
    """With data.dev_fraction set, the task's dev split carved from train (`split_rows`, seed data.dev_seed), with
    a note saying so; refused where the task has that split itself or cuts its train by title. Otherwise `splits`
    unchanged."""
    fraction = data.get("dev_fraction")
    if fraction is None:
        return splits
    dev, seed = dev_split(task), int(data.get("dev_seed") or 0)
    if task.get("title_split"):
        raise UserError(f"data.dev_fraction={fraction} and task.title_split both cut task {task.name}'s splits; "
                        f"use one (data.dev_fraction=null or task.title_split=null)")
    if dev in splits:
        raise UserError(f"data.dev_fraction={fraction} carves a {dev} split from train, but task {task.name} has "
                        f"its own {dev} split ({len(splits[dev])} rows); drop one (data.dev_fraction=null)")
    if "train" not in splits:
        return splits  # load_splits names the missing train split
    train, held = split_rows(splits["train"], float(fraction), seed)
    print(f"note: task {task.name} has no {dev} split: train ({len(splits['train'])} rows) split into train "
          f"({len(train)} rows) and {dev} ({len(held)} rows) by a seeded draw (data.dev_fraction {fraction}, "
          f"data.dev_seed {seed})", flush=True)
    return {**splits, "train": train, dev: held}


def split_rows(frame, dev_fraction: float, seed: int):
    """Cut one split into (train, dev): the rows at the first round(dev_fraction * n) positions (at least one, at
    most all but one) of a `seed`-drawn permutation (numpy's default_rng) go to dev, the rest to train; rows keep
    their order and no row is in both. Not stratified. A pandas DataFrame or datasets.Dataset.

    >>> import pandas as pd
    >>> train, dev = split_rows(pd.DataFrame({"x": range(10)}), 0.2, seed=0)
    >>> list(train.x), list(dev.x)
    ([0, 1, 2, 3, 5, 7, 8, 9], [4, 6])
    """
    if not 0 < dev_fraction < 1:
        raise UserError(f"data.dev_fraction={dev_fraction} must be between 0 and 1 (the dev share of train)")
    n = len(frame)
    if n < 2:
        raise UserError(f"cannot carve a dev split from a train split of {n} row(s); at least 2 needed")
    order = np.random.default_rng(seed).permutation(n)
    n_dev = min(n - 1, max(1, round(dev_fraction * n)))
    dev_rows = sorted(order[:n_dev].tolist())
    train_rows = sorted(order[n_dev:].tolist())
    return _take(frame, train_rows), _take(frame, dev_rows)


def _carve_train(task, splits: dict) -> dict:
    """With task.title_split, train and the first eval split cut from that eval split by title (see the module
    docstring); otherwise `splits` unchanged."""
    option = task.get("title_split")
    if not option:
        return splits
    source = next(iter(task.eval_splits))
    if "dev_fraction" not in option or "seed" not in option:
        raise UserError(f"task {task.name}: title_split needs dev_fraction and seed, e.g. "
                        f"task.title_split={{dev_fraction:0.5,seed:0}}")
    train, dev = split_by_title(splits[source], float(option["dev_fraction"]), int(option["seed"]))
    print(f"note: task {task.name} has no train split here: {source} ({len(splits[source])} rows) cut by title "
          f"into train ({len(train)} rows) and {source} ({len(dev)} rows), no title in both "
          f"(title_split: dev_fraction {option['dev_fraction']}, seed {option['seed']})", flush=True)
    return {**splits, "train": train, source: dev}


def split_by_title(frame, dev_fraction: float, seed: int):
    """Cut one split into (train, dev) parts with no article (`title`) in both, so no context is seen in training
    and scored in dev: a `seed`-drawn permutation of the sorted titles, the first round(dev_fraction * titles)
    (at least one, at most all but one) go to dev. Rows keep their order. A pandas DataFrame or datasets.Dataset.

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"title": ["a", "a", "b", "c", "c", "d"], "id": range(6)})
    >>> train, dev = split_by_title(frame, 0.5, seed=0)
    >>> sorted(set(train.title)), sorted(set(dev.title))
    (['b', 'd'], ['a', 'c'])
    """
    if not 0 < dev_fraction < 1:
        raise UserError(f"title_split.dev_fraction={dev_fraction} must be between 0 and 1 (the dev share of "
                        f"articles)")
    titles = list(frame["title"])
    distinct = sorted(set(titles))
    if len(distinct) < 2:
        raise UserError(f"cannot split by title: the data has {len(distinct)} distinct title(s), at least 2 "
                        f"needed")
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_dev = min(len(distinct) - 1, max(1, round(dev_fraction * len(distinct))))
    dev_titles = {distinct[i] for i in order[:n_dev]}
    dev_rows = [r for r, t in enumerate(titles) if t in dev_titles]
    train_rows = [r for r, t in enumerate(titles) if t not in dev_titles]
    return _take(frame, train_rows), _take(frame, dev_rows)


def _take(frame, rows: list[int]):
    if hasattr(frame, "iloc"):
        return frame.iloc[rows].reset_index(drop=True)
    return frame.select(rows)


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


def _load_local(task, root: Path, optional: set = frozenset()):
    import datasets

    folder_name = local_name(task)
    if not root.is_dir():
        raise UserError(f"data.dir={root} does not exist; point it at a folder holding {folder_name}/<split>.parquet "
                        f"(e.g. data.dir=../shared/data/glue) or fill one with `bitfit-prefetch task={task.name}`")
    folder = root / folder_name
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise UserError(f"data.dir={root} has no {folder_name}/ folder (it has: {', '.join(present) or 'nothing'}); "
                        f"fetch it with `bitfit-prefetch task={task.name} data.dir={root}` on a machine with internet")
    files = {s: folder / f"{s}.parquet" for s in stored_splits(task)}
    missing = [s for s in ["train", *task.eval_splits] if s in files and not files[s].is_file() and s not in optional]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(m + '.parquet' for m in missing)}; fetch the task with "
                        f"`bitfit-prefetch task={task.name} data.dir={root}` on a machine with internet"
                        f"{_carve_hint(task, missing)}")
    files = {s: f for s, f in files.items() if f.is_file()}
    fix = f"fix the file or fetch the task again with `bitfit-prefetch task={task.name} data.dir={root}`"
    check_file = kind_of(task).check_file
    for split, path in files.items():
        check_file(path, task, test=split in task.test_splits, fix=fix)
    files = {s: str(f) for s, f in files.items()}
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # "Generating split" bars for local files are noise in every job log
    try:
        return dict(datasets.load_dataset("parquet", data_files=files))
    finally:
        if bars:
            datasets.enable_progress_bars()


# ---------------------------------------------------------------------------------------------------------------
# task.files: a task's own CSV, TSV, JSON Lines or Parquet files

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


def load_files(task, data, optional: set = frozenset()) -> dict:
    """{split: datasets.Dataset} of the files named by task.files (see the module docstring), each file read and
    checked by the task's kind (the shards of a folder one by one, then joined by `concat_shards`). The keys of
    task.files are split names: train, the eval splits and the test splits."""
    import datasets
    from datasets.table import InMemoryTable

    given = dict(task.files)
    known = stored_splits(task)
    unknown = [s for s in given if s not in known]
    if unknown:
        raise UserError(f"task.files names split {unknown[0]}, which task {task.name} does not read; its splits: "
                        f"train, eval_splits ({', '.join(task.eval_splits)}), test_splits "
                        f"({', '.join(task.test_splits) or 'none'})")
    missing = [s for s in ["train", *task.eval_splits] if s in known and s not in given and s not in optional]
    if missing:
        raise UserError(f"task {task.name} has no file for split {', '.join(missing)} in task.files (it names "
                        f"{', '.join(given) or 'none'}){_carve_hint(task, missing)}")
    kind, splits = kind_of(task), {}
    for split, where in given.items():
        folder = resolve_path(where, data.get("dir"))
        fix, test = f"fix the file or task.files.{split}", split in task.test_splits
        shards = {path: _read_checked(kind, path, task, test, fix) for path in split_files(split, folder, task)}
        table = concat_shards(shards, task, f"task {task.name}: the files in {folder} (task.files.{split})")
        splits[split] = datasets.Dataset(InMemoryTable(table))
    return splits


def _read_checked(kind, path: Path, task, test: bool, fix: str) -> pa.Table:
    """One file of a split, checked: the kind's `read_file` where it has one (it reads, checks and resolves the
    labels: the sequence kind), else its `check_file`, then the file as it is."""
    if hasattr(kind, "read_file"):
        return kind.read_file(path, task, test=test, fix=fix)
    kind.check_file(path, task, test=test, fix=fix)
    return read_table(path, fix)


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
    bitfit_exp.errors.UserError: conf/task/rte.yaml: is not a readable parquet file: ArrowInvalid: ... (fix the file)
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


def _where(mask: np.ndarray) -> str:
    """Where a boolean mask of bad rows is true, in words (0-based row numbers).

    >>> _where(np.array([False, True, False, True]))
    'row 1, 2 of 4 rows in all'
    """
    return f"row {np.argmax(mask)}, {np.count_nonzero(mask)} of {len(mask)} rows in all"


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


def _is_text(column: pa.ChunkedArray) -> bool:
    return pa.types.is_string(column.type) or pa.types.is_large_string(column.type)


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


def hub_source(task, hub_name: str) -> tuple[str, dict]:
    """(dataset, load_dataset keyword arguments) of the task on the hub: the task's own `hub_name` (with
    `hub_config`, `hub_data_dir`, `hub_revision`), else `hub_name` (data.hub_name) with the task name as config.

    >>> hub_source({"name": "rte"}, "nyu-mll/glue")
    ('nyu-mll/glue', {'name': 'rte'})
    >>> hub_source({"name": "qa", "hub_name": "org/qa", "hub_config": "plain_text"}, "nyu-mll/glue")
    ('org/qa', {'name': 'plain_text'})
    """
    if not task.get("hub_name"):
        return str(hub_name), {"name": task["name"]}
    options = {"name": task.get("hub_config"), "data_dir": task.get("hub_data_dir"),
               "revision": task.get("hub_revision")}
    return str(task["hub_name"]), {key: value for key, value in options.items() if value is not None}


def _load_hub(task, hub_name: str):
    import datasets

    dataset, options = hub_source(task, hub_name)
    where = "/".join([dataset, *([options["name"]] if "name" in options else [])])
    try:
        loaded = datasets.load_dataset(dataset, **options)
    except Exception as e:  # the hub raises many types (ConnectionError, OfflineModeIsEnabled, ...)
        raise UserError(f"cannot load {where} from the Hugging Face hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]}); offline, pass data.dir=/path/to/data (layout "
                        f"{local_name(task)}/<split>.parquet) or prefetch it with `bitfit-prefetch "
                        f"task={task.name}`") from None
    splits = {s: loaded[s] for s in stored_splits(task) if s in loaded}
    check_table = getattr(kind_of(task), "check_table", None)  # the sequence kind's (a user's own dataset)
    if check_table is not None:
        fix = f"fix the dataset, or task {task.name}'s text_fields, label_field, label_names"
        for split, rows in splits.items():
            test = split in task.test_splits
            check_table(clean_labels(rows.data.table, task, test), task, test, f"{where} split {split}", fix)
    return splits


def save_local(task, splits, root: Path) -> list[Path]:
    """Write `splits` as <root>/<local_name>/<split>.parquet, the layout `data.dir` reads (used by bitfit-prefetch)."""
    (root / local_name(task)).mkdir(parents=True, exist_ok=True)
    paths = []
    for split, ds in splits.items():
        paths.append(root / local_name(task) / f"{split}.parquet")
        ds.to_parquet(str(paths[-1]))
    return paths


@dataclass
class Encoded:
    """One tokenized split, one row per model input ("feature"): variable-length token lists, the kind's labels
    (an array, or per-row lists for token tags), `idx` (GLUE's idx; the example of each feature for kinds with
    several features per example), and `extra`: what the task kind needs to decode and score (offsets, example
    ids, word positions, gold answers, ...)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray | list
    idx: np.ndarray
    extra: dict = field(default_factory=dict, repr=False)
    _padded: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    def padded(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The split as tensors, built once: ids and token types [N, longest] padded with pad_id / 0, and lengths."""
        if pad_id not in self._padded:
            lengths = torch.tensor([len(x) for x in self.input_ids], dtype=torch.long)
            width = int(lengths.max()) if len(lengths) else 0
            ids = torch.full((len(self), width), pad_id, dtype=torch.long)
            types = None if self.token_type_ids is None else torch.zeros((len(self), width), dtype=torch.long)
            for r, row in enumerate(self.input_ids):
                ids[r, :len(row)] = torch.tensor(row)
                if types is not None:
                    types[r, :len(row)] = torch.tensor(self.token_type_ids[r])
            self._padded[pad_id] = ids, types, lengths
        return self._padded[pad_id]


def subset_rows(n: int, limit: int | None = None, seed: int | None = None):
    """Row indices of a training subset of a split with `n` rows: the first `limit` rows (seed None), or the first
    `limit` of a permutation drawn with `seed`. Nested: with one seed, a smaller subset is a prefix of a larger one.

    >>> list(subset_rows(10, 3)), subset_rows(10, 3, seed=0) == subset_rows(10, 5, seed=0)[:3]
    ([0, 1, 2], True)
    """
    k = n if limit is None else min(limit, n)
    if seed is None:
        return range(k)
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:k].tolist()


def padding(data_cfg) -> dict:
    """gather()'s padding arguments from the data config: to max_length (paper), or to the batch's longest row,
    rounded up to a multiple of data.pad_multiple (fewer distinct shapes for torch.compile and tensor cores)."""
    if data_cfg.padding == "max_length":
        return {"pad_to": data_cfg.max_length}
    return {"multiple": data_cfg.get("pad_multiple"), "cap": data_cfg.max_length}


def gather(data: Encoded, rows, pad_id: int, pad_to: int | None = None, multiple: int | None = None,
           cap: int | None = None, labels=None) -> dict[str, torch.Tensor]:
    """One padded batch of `rows`: to `pad_to`, or to the longest of these rows rounded up to `multiple` (at most
    `cap`). With `labels` (a task kind's `batch_labels`), the rows' loss targets are added to the model inputs."""
    ids, types, lengths = data.padded(pad_id)
    index = torch.as_tensor(list(rows), dtype=torch.long)
    width = pad_to or int(lengths[index].max())
    if multiple and not pad_to:
        width = min(-(-width // multiple) * multiple, cap or width + multiple)
    wider = max(0, width - ids.shape[1])  # wider than the split's longest row
    batch = {"input_ids": F.pad(ids[index, :width], (0, wider), value=pad_id),
             "attention_mask": (torch.arange(width) < lengths[index, None]).long()}
    if types is not None:
        batch["token_type_ids"] = F.pad(types[index, :width], (0, wider))
    if labels is not None:
        batch.update(labels(data, index, width))
    return batch


def batches(data: Encoded, order, batch_size: int, pad_id: int, labels=None, **pad):
    """Yield padded tensor batches over `order` (padding and `labels` as in `gather`)."""
    order = list(order)
    for start in range(0, len(order), batch_size):
        yield gather(data, order[start:start + batch_size], pad_id, labels=labels, **pad)
