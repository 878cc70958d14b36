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
>>> from bitfit_exp.kinds.splits import load_splits
>>> task = OmegaConf.load("conf/task/rte.yaml")
>>> data = OmegaConf.create({"dir": "../shared/data/glue", "hub_name": "nyu-mll/glue"})
>>> splits = load_splits(task, data)   # doctest: +SKIP
>>> len(splits["validation"])          # doctest: +SKIP
277
"""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)

from bitfit_exp.core.data_dir import AUTO, local_copy, no_copy_problem
from bitfit_exp.core.errors import UserError
from bitfit_exp.core.offline import is_offline
from bitfit_exp.core.paths import child
from bitfit_exp.data.carve import _carve_hint, _carve_train, carve_dev, dev_split
from bitfit_exp.data.checks import clean_labels, concat_shards
from bitfit_exp.data.files import read_table, resolve_path, split_files
from bitfit_exp.kinds import kind_of


def needed_splits(task) -> list[str]:
    return ["train", *task.eval_splits, *task.test_splits]


def local_name(task) -> str:
    """The task's folder under data.dir: its `local_name`, else its name."""
    return str(task.get("local_name") or task.name)


def stored_splits(task) -> list[str]:
    """The splits read from disk or the hub: all needed ones, but no train split for a task cut by title."""
    return [s for s in needed_splits(task) if not (s == "train" and task.get("title_split"))]


def with_data_dir(task, data):
    """`data` with data.dir=auto replaced by the local copy it finds (core.data_dir), or null (the hub; a task's
    own `files`: relative to the current directory). Offline without a copy: a UserError naming bitfit-prefetch."""
    found = None if task.get("files") else local_copy(local_name(task))
    if found is None and not task.get("files") and is_offline():
        raise UserError(no_copy_problem(task.name, local_name(task)))
    data = data.copy()
    data.dir = None if found is None else str(found)
    return data


def load_splits(task, data, carve: bool = True):
    """Return {split: datasets.Dataset} for train, the dev split(s) and the test split(s) of `task`.

    Test splits missing from a local copy are left out (no test predictions then); everything else is an error.
    `carve` False: the splits as stored, nothing carved and nothing required (what `bitfit-prefetch` saves).
    """
    if data.get("dir") == AUTO:
        data = with_data_dir(task, data)
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


def local_folder(task, root: Path) -> Path:
    """<root>/<local_name>, the folder of the task's <split>.parquet files, once its name and every split's are plain
    file or folder names (core.paths.child), so that nothing written there leaves root; a UserError otherwise."""
    folder = child(root, local_name(task), "task.local_name" if task.get("local_name") else "task.name")
    for split in needed_splits(task):
        child(folder, split, f"task {task.name}'s split")
    return folder


def save_local(task, splits, root: Path) -> list[Path]:
    """Write `splits` as <root>/<local_name>/<split>.parquet, the layout `data.dir` reads (used by bitfit-prefetch)."""
    folder = local_folder(task, root)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, ds in splits.items():
        paths.append(child(folder, f"{split}.parquet", f"task {task.name}'s split"))
        ds.to_parquet(str(paths[-1]))
    return paths
