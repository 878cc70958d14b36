"""Carving splits that a task does not have: a seeded dev split from train (`data.dev_fraction`), or a train/dev
cut of an eval split by article title (`title_split`, no title in both).

>>> import pandas as pd
>>> train, dev = split_rows(pd.DataFrame({"x": range(10)}), 0.2, seed=0)
>>> len(train), len(dev)
(8, 2)
"""

import numpy as np
import pyarrow.compute  # noqa: F401 (pa.compute)

from bitfit_exp.core.errors import UserError


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
