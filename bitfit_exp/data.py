"""GLUE loading (Hugging Face hub or a local parquet copy in the hub's layout) and batching.

>>> from omegaconf import OmegaConf
>>> from bitfit_exp.data import load_splits
>>> task = OmegaConf.load("conf/task/rte.yaml")
>>> data = OmegaConf.create({"dir": "../shared/data/glue", "hub_name": "nyu-mll/glue"})
>>> splits = load_splits(task, data)   # doctest: +SKIP
>>> len(splits["validation"])          # doctest: +SKIP
277
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitfit_exp.errors import UserError


def needed_splits(task) -> list[str]:
    return ["train", *task.eval_splits, *task.test_splits]


def load_splits(task, data):
    """Return {split: datasets.Dataset} for train, the dev split(s) and the test split(s) of `task`.

    Test splits missing from a local copy are left out (no test predictions then); everything else is an error.
    """
    if data.dir:
        return _load_local(task, Path(os.path.expanduser(str(data.dir))))
    return _load_hub(task, data.hub_name)


def _load_local(task, root: Path):
    import datasets

    if not root.is_dir():
        raise UserError(f"data.dir={root} does not exist; point it at a folder holding <task>/<split>.parquet "
                        f"(e.g. data.dir=../shared/data/glue) or fill one with `bitfit-prefetch task={task.name}`")
    folder = root / task.name
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise UserError(f"data.dir={root} has no {task.name}/ folder (it has: {', '.join(present) or 'nothing'}); "
                        f"fetch it with `bitfit-prefetch task={task.name} data.dir={root}` on a machine with internet")
    files = {s: folder / f"{s}.parquet" for s in needed_splits(task)}
    missing = [s for s in ["train", *task.eval_splits] if not files[s].is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(m + '.parquet' for m in missing)}; fetch the task with "
                        f"`bitfit-prefetch task={task.name} data.dir={root}` on a machine with internet")
    files = {s: str(f) for s, f in files.items() if f.is_file()}
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # "Generating split" bars for local files are noise in every job log
    try:
        return dict(datasets.load_dataset("parquet", data_files=files))
    finally:
        if bars:
            datasets.enable_progress_bars()


def _load_hub(task, hub_name: str):
    import datasets

    try:
        loaded = datasets.load_dataset(hub_name, task.name)
    except Exception as e:  # the hub raises many types (ConnectionError, OfflineModeIsEnabled, ...)
        raise UserError(f"cannot load {hub_name}/{task.name} from the Hugging Face hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]}); offline, pass data.dir=/path/to/glue (layout "
                        f"<task>/<split>.parquet) or prefetch it with `bitfit-prefetch task={task.name}`") from None
    return {s: loaded[s] for s in needed_splits(task) if s in loaded}


def save_local(task, splits, root: Path) -> list[Path]:
    """Write `splits` as <root>/<task>/<split>.parquet, the layout `data.dir` reads (used by bitfit-prefetch)."""
    (root / task.name).mkdir(parents=True, exist_ok=True)
    paths = []
    for split, ds in splits.items():
        paths.append(root / task.name / f"{split}.parquet")
        ds.to_parquet(str(paths[-1]))
    return paths


@dataclass
class Encoded:
    """One tokenized split: variable-length token lists, labels and GLUE `idx`."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray
    idx: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


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


def encode(dataset, task, tokenizer, max_length: int, limit: int | None = None) -> Encoded:
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    columns = dataset[:]  # plain lists (respects a select()ed view)
    out = tokenizer(*[columns[field] for field in task.text_fields], truncation=True, max_length=max_length)
    labels = np.asarray(columns["label"], dtype=np.float32 if task.num_labels == 1 else np.int64)
    return Encoded(out["input_ids"], out.get("token_type_ids"), labels, np.asarray(columns["idx"]))


def batches(data: Encoded, order, batch_size: int, pad_id: int, pad_to: int | None = None):
    """Yield padded tensor batches over `order`; pad to `pad_to` (paper: max_length) or to the batch's longest."""
    order = list(order)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = pad_to or max(len(data.input_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            n = len(data.input_ids[i])
            ids[r, :n] = torch.tensor(data.input_ids[i])
            mask[r, :n] = 1
            if data.token_type_ids is not None:
                types[r, :n] = torch.tensor(data.token_type_ids[i])
        batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.from_numpy(data.labels[rows])}
        if data.token_type_ids is not None:
            batch["token_type_ids"] = types
        yield batch
