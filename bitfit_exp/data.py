"""Task data: loading (Hugging Face hub or a local parquet copy in the hub's layout) and batching.

Where a task's data is read from:

- `data.dir` set: `<data.dir>/<folder>/<split>.parquet`, the folder being the task's `local_name` (default: its
  `name`; GLUE tasks: data.dir=../shared/data/glue, task rte -> rte/). Each file is checked by the task kind
  (`kind.check_file`) before anything is tokenized.
- `data.dir` null: the hub. A task naming its own dataset (`hub_name`, with optional `hub_config`, `hub_data_dir`,
  `hub_revision`) loads that; otherwise `data.hub_name` (nyu-mll/glue) with the task's name as the config.
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


def load_splits(task, data):
    """Return {split: datasets.Dataset} for train, the dev split(s) and the test split(s) of `task`.

    Test splits missing from a local copy are left out (no test predictions then); everything else is an error.
    """
    if data.dir:
        splits = _load_local(task, Path(os.path.expanduser(str(data.dir))))
    else:
        splits = _load_hub(task, data.hub_name)
    return _carve_train(task, splits)


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


def _load_local(task, root: Path):
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
    missing = [s for s in ["train", *task.eval_splits] if s in files and not files[s].is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(m + '.parquet' for m in missing)}; fetch the task with "
                        f"`bitfit-prefetch task={task.name} data.dir={root}` on a machine with internet")
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


def needed_columns(task) -> list[str]:
    return [*task.text_fields, "label", "idx"]


def check_split_file(path: Path, task, test: bool = False, fix: str = "fix the file") -> None:
    """Raise a one-line UserError naming `path` unless it is a readable parquet file with rows, the task's columns,
    text in its text fields and labels the task can use (-1, unlabelled, is allowed in `test` splits); `fix` says
    what to do. All checks are vectorized over the whole file.

    >>> from omegaconf import OmegaConf
    >>> task = OmegaConf.load("conf/task/rte.yaml")
    >>> check_split_file(Path("conf/task/rte.yaml"), task)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    bitfit_exp.errors.UserError: conf/task/rte.yaml: is not a readable parquet file: ArrowInvalid: ... (fix the file)
    """
    table = _read_columns(path, task, fix)
    if table.num_rows == 0:
        raise UserError(f"{path}: has no rows ({fix})")
    for name in task.text_fields:
        problem = _text_problem(table[name])
        if problem:
            raise UserError(f"{path}: text field {name} {problem} ({fix})")
    problem = _label_problem(table["label"], task.num_labels, test)
    if problem:
        raise UserError(f"{path}: {problem} ({fix})")
    if not pa.types.is_integer(table["idx"].type):
        raise UserError(f"{path}: idx holds {table['idx'].type}, not integers ({fix})")


def _read_columns(path: Path, task, fix: str) -> pa.Table:
    """The task's columns of the parquet file at `path` (a missing or misnamed column is a UserError)."""
    if path.stat().st_size == 0:
        raise UserError(f"{path}: is empty (0 bytes) ({fix})")
    try:
        parquet = pq.ParquetFile(path)
        present = parquet.schema_arrow.names
        missing = [c for c in needed_columns(task) if c not in present]
        if missing:
            raise UserError(f"{path}: has columns {', '.join(present) or 'none'}; task {task.name} needs "
                            f"{', '.join(needed_columns(task))}; missing: {', '.join(missing)} ({fix})")
        return parquet.read(columns=needed_columns(task))
    except (pa.ArrowException, OSError) as e:  # bad footer: ArrowInvalid; damaged pages: OSError
        raise UserError(f"{path}: is not a readable parquet file: {first_line(e)} ({fix})") from None


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
    return None


def _label_problem(labels: pa.ChunkedArray, num_labels: int, test: bool) -> str | None:
    """What is wrong with a label column, or None: classification labels must be 0..num_labels-1 (or -1 in a test
    split), regression labels (num_labels 1) finite numbers."""
    if not (pa.types.is_integer(labels.type) or pa.types.is_floating(labels.type)):
        return f"label holds {labels.type}, not numbers"
    if labels.null_count:
        return f"label is null at {_where(labels.is_null().to_numpy(zero_copy_only=False))}"
    values = labels.to_numpy()
    if num_labels == 1:
        bad, wanted = ~np.isfinite(values), "a finite number"
    else:
        allowed = np.arange(-1 if test else 0, num_labels)
        bad, wanted = ~np.isin(values, allowed), f"0..{num_labels - 1}{' or -1 for unlabelled rows' if test else ''}"
    if bad.any():
        return f"label must be {wanted} but is {values[np.argmax(bad)].item()} at {_where(bad)}"
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
    return {s: loaded[s] for s in stored_splits(task) if s in loaded}


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
