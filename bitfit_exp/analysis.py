"""The numbers behind the figures (`bitfit-plot`), as DataFrames: bias change per component and layer (the paper's
Figure 1), learning curves, the generalization gap, and dev score against training-set size (Figure 2).

    table, info = bias_change_summary("~/bitfit-runs/minilm/rte/bitfit/lr0.001-<hash>")  # rows b_q..b_LN2
    per_seed, summary, info = curves("~/bitfit-runs/minilm/rte/bitfit/lr0.001-<hash>")
    gaps, warnings = gap_table("~/bitfit-runs")                 # train - dev at the selected epoch, per method
    sizes, warnings = datasize_table("~/bitfit-runs", "rte")    # runs with data.train_subset_seed set

Scores are x100, like the tables. Standard deviations are sample std over seeds (ddof=1; 0 for one seed).

>>> change = pd.DataFrame({1: [0.5, 0.0], 2: [1.5, 0.0]}, index=["q", "k"])
>>> float(with_average(change).loc["b_q", "Avg"])
1.0
"""

import hashlib
import json
import math
import re
from pathlib import Path

import pandas as pd
from safetensors import safe_open

from bitfit_exp.methods import BIAS_COMPONENTS, PAPER_LABELS, bias_component
from bitfit_exp.patch import bias_changes
from bitfit_exp.records import RECORD, CorruptRecord, read_record, result_config
from bitfit_exp.tables import collect

PATCH = "patch.safetensors"
COMPONENTS = list(BIAS_COMPONENTS)  # q k v m1 ln1 m2 m3 ln2: the paper's row order, top to bottom
_SEED = re.compile(r"seed(\d+)$")


def _seed_order(path: Path) -> tuple:
    hit = _SEED.search(path.parent.name)
    return (int(hit.group(1)) if hit else math.inf, str(path))


def _files(run_dir, name: str) -> list[Path]:
    """<run_dir>/<name> (a seed folder) or <run_dir>/seed*/<name> (a setting folder), in seed order."""
    run_dir = Path(run_dir).expanduser()
    if (run_dir / name).is_file():
        return [run_dir / name]
    return sorted(run_dir.glob(f"seed*/{name}"), key=_seed_order)


def std(values) -> float:
    values = [v for v in values if not (v is None or math.isnan(v))]
    return float(pd.Series(values).std()) if len(values) > 1 else 0.0


# -----------------------------------------------------------------------------
# run description (for titles and file names)


def describe(run_dir) -> dict:
    """model, task, method, lr, hash, seeds and the train size of a setting or seed folder, from its records (else
    from the patch metadata)."""
    records = []
    for path in _files(run_dir, RECORD):
        try:
            records.append(read_record(path))
        except CorruptRecord:
            continue
    if records:
        r = records[0]
        setting = r["setting"]
        return {"model": setting["model"], "task": setting["task"], "method": setting["method"],
                "lr": float(setting["lr"]), "hash": setting["hash"], "seeds": [x["seed"] for x in records],
                "n_train": (r.get("sizes") or {}).get("train"), "metric": r["main"]["metric"],
                "seed_folder": (Path(run_dir) / RECORD).is_file()}
    patches = _files(run_dir, PATCH)
    if not patches:
        raise FileNotFoundError(f"{run_dir}: neither seed*/{RECORD} nor seed*/{PATCH}")
    with safe_open(str(patches[0]), "pt") as f:
        meta = f.metadata() or {}
    seeds = []
    for p in patches:
        with safe_open(str(p), "pt") as f:
            seeds.append((f.metadata() or {}).get("seed"))
    return {"model": meta.get("model", "?"), "task": meta.get("task", "?"), "method": meta.get("method", "?"),
            "lr": math.nan, "hash": "", "seeds": seeds, "n_train": None, "metric": None,
            "seed_folder": (Path(run_dir) / PATCH).is_file()}


# -----------------------------------------------------------------------------
# Figure 1: change in bias components


def bias_change(path) -> pd.DataFrame:
    """Mean absolute change 1/dim(b) * ||b0 - bF||_1 of every per-layer bias in one patch.

    Rows: COMPONENTS (q ... ln2), columns: layer numbers 1..L; NaN where the patch holds no such bias (methods that
    train a subset of the biases). Works for any model whose layers are `<prefix>.encoder.layer.N.` (BERT, RoBERTa).
    """
    cells = {}
    for name, (initial, final) in bias_changes(Path(path)).items():
        hit = bias_component(name)
        if hit is not None:
            cells[(hit[1], hit[0] + 1)] = float((initial.double() - final.double()).abs().mean())
    if not cells:
        raise ValueError(f"{path}: no per-layer encoder biases with initial values (not a bias patch?)")
    layers = range(1, max(layer for _, layer in cells) + 1)
    table = pd.DataFrame(math.nan, index=COMPONENTS, columns=list(layers))
    for (key, layer), value in cells.items():
        table.loc[key, layer] = value
    return table


def with_average(table: pd.DataFrame) -> pd.DataFrame:
    """Paper labels as the index (b_q ...), columns "1".."L" plus "Avg" (mean over the layers present)."""
    out = table.copy()
    out["Avg"] = table.mean(axis=1, skipna=True)
    out.columns = [str(c) for c in out.columns]
    out.index = pd.Index([PAPER_LABELS[k] for k in table.index], name="component")
    return out


def bias_change_summary(run_dir) -> tuple[pd.DataFrame, dict]:
    """The Figure 1 matrix of a setting folder (averaged over its seed*/patch.safetensors) or of one seed folder.

    Returns (table, info): table as `with_average` (rows b_q..b_LN2, columns 1..L, Avg); info as `describe` plus
    n_seeds and the patch paths.
    """
    paths = _files(run_dir, PATCH)
    if not paths:
        raise FileNotFoundError(f"{run_dir}: no {PATCH} here or in seed*/ (Full-FT saves one only with "
                                f"train.save_patch=true)")
    per_seed = [bias_change(p) for p in paths]
    shapes = {t.shape for t in per_seed}
    if len(shapes) > 1:
        raise ValueError(f"{run_dir}: patches of different models (shapes {sorted(shapes)})")
    mean = sum(per_seed) / len(per_seed)  # NaN stays NaN: a component is either trained in every seed or in none
    info = {**describe(run_dir), "n_seeds": len(paths), "patches": [str(p) for p in paths]}
    return with_average(mean), info


# -----------------------------------------------------------------------------
# learning curves


def curve_rows(record: dict) -> list[dict]:
    """One row per (epoch, series) of a record: the main metric (x100) on the train probe ("train") and on each dev
    split ("dev", or "dev <column>" when there are several), and the mean training loss ("train loss")."""
    main, columns = record["main"], record["columns"]
    metric = main["metric"]
    out = []
    for row in record["epochs"]:
        base = {"seed": int(record["seed"]), "epoch": int(row["epoch"])}
        if row.get("train") and metric in row["train"]:
            out.append({**base, "series": "train", "metric": metric, "value": 100 * float(row["train"][metric])})
        for split, column in columns.items():
            label = "dev" if len(columns) == 1 else f"dev {column}"
            out.append({**base, "series": label, "metric": metric, "value": 100 * float(row["dev"][split][metric])})
        if row.get("train_loss") is not None:
            out.append({**base, "series": "train loss", "metric": "loss", "value": float(row["train_loss"])})
    return out


def summarize(per_seed: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """mean, std (ddof=1; 0 for one value) and n of `value` per group."""
    out = per_seed.groupby(by, as_index=False, sort=True).agg(mean=("value", "mean"), std=("value", std),
                                                             n=("value", "size"))
    return out


def curves(run_dir) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Learning curves of a setting folder (every seed) or one seed folder.

    Returns (per_seed, summary, info): per_seed has seed, epoch, series, metric, value; summary has series, epoch,
    metric, mean, std, n (over seeds); info as `describe` plus each seed's chosen epoch.
    """
    paths = _files(run_dir, RECORD)
    records = []
    for path in paths:
        record = read_record(path)
        if record.get("status") == "finished":
            records.append(record)
    if not records:
        raise FileNotFoundError(f"{run_dir}: no finished {RECORD} here or in seed*/")
    per_seed = pd.DataFrame([r for rec in records for r in curve_rows(rec)],
                            columns=["seed", "epoch", "series", "metric", "value"])
    summary = summarize(per_seed, ["series", "epoch", "metric"])
    info = {**describe(run_dir), "chosen_epochs": {int(r["seed"]): r.get("chosen_epoch") for r in records},
            "select": records[0]["main"]["select"]}
    return per_seed, summary, info


# -----------------------------------------------------------------------------
# records under a runs folder, with their training data


def run_table(runs_dir, epoch: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """tables.collect's rows of the main dev split, plus n_train (training rows), subset (the data.train_subset_seed,
    or -1 for the first rows), family (a hash of everything that changes results except the training-set size and
    subset) and gap = train_score - score."""
    df, warnings = collect(runs_dir, epoch=epoch)
    df = df[df["main"].astype(bool)].copy()
    extra = [_record_extras(p) for p in df["path"]]
    for column in ("n_train", "subset", "family"):
        df[column] = [e[column] for e in extra]
    df["gap"] = df["train_score"] - df["score"]
    return df.reset_index(drop=True), warnings


def _record_extras(path) -> dict:
    record = json.loads(Path(path).read_text())
    data = dict((record.get("config") or {}).get("data") or {})
    subset = data.get("train_subset_seed")
    config = dict(record.get("config") or {})
    if config:
        config = {**config, "data": {k: v for k, v in data.items() if k not in ("max_train_samples",
                                                                               "train_subset_seed")}}
        family = hashlib.sha1(json.dumps(result_config(config), sort_keys=True, default=str).encode()).hexdigest()[:8]
    else:
        family = record["setting"]["hash"]
    n_train = (record.get("sizes") or {}).get("train")
    return {"n_train": -1 if n_train is None else int(n_train), "subset": -1 if subset is None else int(subset),
            "family": family}


# -----------------------------------------------------------------------------
# generalization gap

GAP_KEY = ["model", "task", "n_train", "subset", "method"]
GAP_COLUMNS = [*GAP_KEY, "lr", "hash", "n_seeds", "train_mean", "train_std", "dev_mean", "dev_std", "gap_mean",
               "gap_std", "n_lrs"]


def gap_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, training data, method): the lr with the best mean dev score (as the tables pick it; ties to
    the smaller lr), and at it the mean±std over seeds of the train metric, the dev metric and train - dev."""
    df = df.dropna(subset=["train_score"])
    if df.empty:
        return pd.DataFrame(columns=GAP_COLUMNS)
    setting = [*GAP_KEY, "lr", "hash"]
    means = df.groupby(setting, as_index=False)["score"].mean()
    means["n_lrs"] = means.groupby(GAP_KEY)["score"].transform("size")
    ranked = means.sort_values([*GAP_KEY, "score", "lr"], ascending=[True] * len(GAP_KEY) + [False, True])
    chosen = ranked.drop_duplicates(GAP_KEY)[[*setting, "n_lrs"]]
    picked = df.merge(chosen, on=setting)
    out = picked.groupby(setting, as_index=False).agg(
        n_seeds=("seed", "nunique"), train_mean=("train_score", "mean"), train_std=("train_score", std),
        dev_mean=("score", "mean"), dev_std=("score", std), gap_mean=("gap", "mean"), gap_std=("gap", std),
        n_lrs=("n_lrs", "first"))
    return out[GAP_COLUMNS].sort_values(GAP_KEY, ignore_index=True)


def gap_table(runs_dir, epoch: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The generalization gap of every (model, task, training data, method) under `runs_dir` (see gap_summary)."""
    df, warnings = run_table(runs_dir, epoch)
    return gap_summary(df), warnings


# -----------------------------------------------------------------------------
# Figure 2: dev score against training-set size

SIZE_KEY = ["model", "task", "method", "lr", "family"]
SIZE_COLUMNS = [*SIZE_KEY, "n_train", "mean", "std", "n", "seeds", "subsets"]


def datasize_summary(df: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """Runs on seeded subsets (data.train_subset_seed set) per (model, task, method, lr, family) and training-set
    size: mean, std and number of the dev scores over seeds and subset seeds."""
    df = df[df["subset"] >= 0]
    if task is not None:
        df = df[df["task"] == task]
    if df.empty:
        return pd.DataFrame(columns=SIZE_COLUMNS)
    out = df.groupby([*SIZE_KEY, "n_train"], as_index=False).agg(
        mean=("score", "mean"), std=("score", std), n=("score", "size"),
        seeds=("seed", lambda s: " ".join(str(x) for x in sorted(set(s)))),
        subsets=("subset", lambda s: " ".join(str(x) for x in sorted(set(s)))))
    return out[SIZE_COLUMNS].sort_values([*SIZE_KEY, "n_train"], ignore_index=True)


def datasize_table(runs_dir, task: str | None = None, epoch: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Dev score (main metric, x100, at the selected epoch) against training-set size, for `task` (None: all)."""
    df, warnings = run_table(runs_dir, epoch)
    return datasize_summary(df, task), warnings
