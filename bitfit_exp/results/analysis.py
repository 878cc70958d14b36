"""The numbers behind the figures (`bitfit-plot`), as DataFrames: bias change per component and layer (the paper's
Figure 1), learning curves, the generalization gap, and dev score against training-set size (Figure 2).

    table, info = bias_change_summary("~/bitfit-runs/minilm/rte/bitfit/lr0.001-<hash>")  # rows b_q..b_LN2
    per_seed, summary, info = curves("~/bitfit-runs/minilm/rte/bitfit/lr0.001-<hash>")
    gaps, warnings = gap_table("~/bitfit-runs")                 # train - dev at the selected epoch, per method
    sizes, warnings = datasize_table("~/bitfit-runs", "rte")    # runs with data.train_subset_seed set

Everything is read from what the run records name: a seed counts only when its record passes records.scan (digest,
setting and folder agree) and is done; a patch counts only when a finished record names it in
`artifacts["patch"]`. Whatever is left out is said: in the warnings (one line per file, naming it) and in the
counts (`info["of_seeds"]`, `n_diverged`). Diverged seeds (status "diverged", metrics may be null) are never in a
mean; they are counted next to it.

Scores are x100, like the tables. Standard deviations are sample std over seeds (ddof=1; 0 for one seed).

>>> change = pd.DataFrame({1: [0.5, 0.0], 2: [1.5, 0.0]}, index=["q", "k"])
>>> float(with_average(change).loc["b_q", "Avg"])
1.0
>>> seeds_note(2, 3, ["seed 1's patch is missing"])
"2 of 3 seeds: seed 1's patch is missing"
"""

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
from safetensors import SafetensorError

from bitfit_exp.core.errors import UserError
from bitfit_exp.model.architectures import ALBERT, PAPER_LABELS, part_slice, role_parts
from bitfit_exp.model.methods import BIAS_COMPONENTS
from bitfit_exp.model.patch import bias_changes
from bitfit_exp.model.peft_methods import is_peft_method
from bitfit_exp.results.artifacts import patch_mismatch
from bitfit_exp.results.records import DONE, RECORD, CorruptRecord, once_per_seed, protocol, read_record, scan

PATCH = "patch.safetensors"
FINISHED, DIVERGED = "finished", "diverged"
COMPONENTS = list(BIAS_COMPONENTS)  # q k v m1 ln1 m2 m3 ln2: the paper's row order, top to bottom
# Training-data keys that a data-size family spans (the rest of the protocol is shared by its points).
SIZE_KEYS = ("max_train_samples", "train_subset_seed")


class NothingToDraw(FileNotFoundError):
    """No figure from this input; `warnings` names the bad files that are why (one line each)."""

    def __init__(self, message: str, warnings=()):
        super().__init__(message)
        self.warnings = list(warnings)


def std(values) -> float:
    values = [v for v in values if not (v is None or math.isnan(v))]
    return float(pd.Series(values).std()) if len(values) > 1 else 0.0


def _number(value) -> float:
    """A record's metric as a float; null (a non-finite number in JSON) as NaN."""
    return math.nan if value is None else float(value)


def seeds_note(used: int, total: int, left_out: list[str]) -> str:
    """'3 seeds', or 'u of t seeds: <why the others are left out>' when some are."""
    if used == total and not left_out:
        return f"{total} seed{'s' if total != 1 else ''}"
    return f"{used} of {total} seed{'s' if total != 1 else ''}" + (f": {'; '.join(left_out)}" if left_out else "")


# -----------------------------------------------------------------------------
# the records of a setting folder


def _seed(item: tuple[Path, dict]) -> int:
    return int(item[1]["seed"])


def setting_records(run_dir) -> tuple[list[tuple[Path, dict]], list[str]]:
    """The done records of a setting folder (its seed*/record.json) or of one seed folder, as records.scan accepts
    them, in seed order; and one warning per file left out (naming it)."""
    run_dir = Path(run_dir).expanduser()
    if (run_dir / RECORD).is_file():
        try:
            record = read_record(run_dir / RECORD)
        except CorruptRecord as e:
            return [], [f"{e}; ignored"]
        if record.get("status") not in DONE:
            return [], [f"{run_dir / RECORD}: status {record.get('status')!r}, not finished; ignored"]
        return [(run_dir / RECORD, record)], []
    found, warnings = scan(run_dir)
    return sorted(found, key=_seed), warnings


def by_setting(found: list[tuple[Path, dict]]) -> dict[Path, list[tuple[Path, dict]]]:
    """records.scan's records grouped by setting folder (the folder above seed<k>/), in seed order."""
    groups: dict[Path, list[tuple[Path, dict]]] = {}
    for path, record in found:
        groups.setdefault(path.parent.parent, []).append((path, record))
    return {folder: sorted(items, key=_seed) for folder, items in sorted(groups.items())}


def unclaimed_patches(root, found: list[tuple[Path, dict]]) -> list[str]:
    """A warning for every patch under `root` (a runs, setting or seed folder) that no accepted record names: the
    run was killed between writing its patch and its record, or its record is corrupt or names no patch."""
    root = Path(root).expanduser()
    named = {path.parent / r["artifacts"]["patch"] for path, r in found if (r.get("artifacts") or {}).get("patch")}
    folders = {path.parent for path, _ in found}
    # Schema-1 seed folders a record was adopted from (named relative to the runs folder, 5 levels above a record's
    # folder): the adopted copy stands for them.
    adopted = {path.parents[5] / r["adopted_from"] for path, r in found if r.get("adopted_from")}
    patches = [root / PATCH] if (root / PATCH).is_file() else sorted(root.glob(f"**/seed*/{PATCH}"))
    warnings = []
    for patch in patches:
        if patch in named or patch.parent in adopted:
            continue
        why = "its record does not name it" if patch.parent in folders else \
            "no finished run record beside it (killed before the record was written, or the record is corrupt)"
        warnings.append(f"{patch}: {why}; ignored")
    return warnings


def describe(records: list[tuple[Path, dict]], run_dir) -> dict:
    """model, task, method, lr, hash, seeds, train size and main metric of a setting (or seed) folder's records."""
    if not records:
        raise FileNotFoundError(f"{run_dir}: no finished {RECORD} here or in seed*/")
    record = records[0][1]
    setting = record["setting"]
    return {"model": setting["model"], "task": setting["task"], "method": setting["method"],
            "lr": float(setting["lr"]), "hash": setting["hash"], "seeds": [_seed(item) for item in records],
            "n_train": (record.get("sizes") or {}).get("train_examples", (record.get("sizes") or {}).get("train")),
            "metric": record["main"]["metric"],
            "seed_folder": (Path(run_dir).expanduser() / RECORD).is_file()}


def _records_and_warnings(run_dir, records) -> tuple[list[tuple[Path, dict]], list[str]]:
    """Given records (from a scan of the whole runs folder) as they are; else the folder's own, with the warnings
    about its records and unclaimed patches."""
    if records is not None:
        return sorted(records, key=_seed), []
    found, warnings = setting_records(run_dir)
    return found, warnings + unclaimed_patches(run_dir, found)


# -----------------------------------------------------------------------------
# Figure 1: change in bias components


def bias_change(path) -> pd.DataFrame:
    """Mean absolute change 1/dim(b) * ||b0 - bF||_1 of every per-layer bias in one patch.

    Rows: COMPONENTS (q ... ln2), columns: layer numbers 1..L; NaN where the patch holds no such bias (methods that
    train a subset of the biases, or a family without that role, e.g. Qwen2's m1..ln2). Works for every family of
    bitfit_exp.model.architectures: a fused bias (GPT-2's q|k|v `c_attn.bias`) gives one cell per third, and a third the
    run did not train (GPT-2 `bq` trains only the first) is NaN, not 0. ALBERT shares one layer across all its
    layers: its table has one column (the layer group), and `table.attrs["note"]` says so.
    """
    cells, shared = {}, False
    for name, (initial, final, trained) in bias_changes(Path(path)).items():
        for layer, key, part in role_parts(name):
            cut = part_slice(initial.shape[0], part)
            if trained[cut].any():  # the formula over the whole vector: an untrained entry counts as no change
                cells[(key, layer + 1)] = float((initial[cut].double() - final[cut].double()).abs().mean())
            shared = shared or ALBERT.split(name) is not None
    if not cells:
        raise ValueError(f"{path}: no per-layer encoder biases with initial values (not a bias patch?)")
    layers = range(1, max(layer for _, layer in cells) + 1)
    table = pd.DataFrame(math.nan, index=COMPONENTS, columns=list(layers))
    for (key, layer), value in cells.items():
        table.loc[key, layer] = value
    if shared:
        table.attrs["note"] = "ALBERT: all layers share one layer's biases (one column per layer group)"
    return table


def with_average(table: pd.DataFrame) -> pd.DataFrame:
    """Paper labels as the index (b_q ...), columns "1".."L" plus "Avg" (mean over the layers present)."""
    out = table.copy()
    out["Avg"] = table.mean(axis=1, skipna=True)
    out.columns = [str(c) for c in out.columns]
    out.index = pd.Index([PAPER_LABELS[k] for k in table.index], name="component")
    return out


def _seed_patch(path: Path, record: dict) -> tuple[pd.DataFrame | None, str | None, str | None]:
    """(bias-change table, None, None) for a finished record's named patch; else (None, why it is left out for the
    title, a warning naming the file or None)."""
    seed = int(record["seed"])
    if record["status"] == DIVERGED:
        return None, f"seed {seed} diverged", None
    name = (record.get("artifacts") or {}).get("patch")
    if not name:
        return None, f"seed {seed} saved no patch", None
    patch = path.parent / name
    if not patch.is_file():
        return None, f"seed {seed}'s patch is missing", f"{patch}: patch named by {path} is missing; seed {seed} " \
                                                         f"left out"
    try:
        mismatch = patch_mismatch(patch, record)
        table = None if mismatch else bias_change(patch)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        return None, f"seed {seed}'s patch is unreadable", f"{patch}: unreadable patch ({type(e).__name__}: {e}); " \
                                                            f"seed {seed} left out"
    if mismatch:
        return None, f"seed {seed}'s patch is not its own", f"{patch}: {mismatch}; seed {seed} left out"
    return table, None, None


def bias_change_summary(run_dir, records=None) -> tuple[pd.DataFrame, dict]:
    """The Figure 1 matrix of a setting folder (averaged over the patches its finished records name) or of one seed
    folder. `records`: the folder's records from a scan of the whole runs folder (else it is scanned here).

    Returns (table, info): table as `with_average` (rows b_q..b_LN2, columns 1..L, Avg); info as `describe` plus
    n_seeds (patches averaged), of_seeds (done records), left_out (why, per seed left out), note (seeds_note), the
    patch paths, warnings (one per bad file) and layers_note (what a column means when it is not one layer, e.g.
    ALBERT's shared layer; else None).
    """
    records, warnings = _records_and_warnings(run_dir, records)
    if not any((r.get("artifacts") or {}).get("patch") for _, r in records):
        raise NothingToDraw(f"{run_dir}: no {PATCH} named by a finished record here or in seed*/ (Full-FT saves "
                            f"one only with train.save_patch=true)", warnings)
    peft = sorted({m for _, r in records if is_peft_method(m := r["config"]["method"]["name"])})
    if peft:
        raise NothingToDraw(f"{run_dir}: method {', '.join(peft)} trained a peft adapter, not the model's own biases: "
                            f"the bias-change figure does not apply (curves and gap do)", warnings)
    per_seed, patches, left_out = [], [], []
    for path, record in records:
        table, why, warning = _seed_patch(path, record)
        if table is None:
            left_out.append(why)
            warnings += [warning] if warning else []
            continue
        per_seed.append(table)
        patches.append(str(path.parent / record["artifacts"]["patch"]))
    if not per_seed:
        raise NothingToDraw(f"{run_dir}: no readable patch ({'; '.join(left_out)})", warnings)
    shapes = {t.shape for t in per_seed}
    if len(shapes) > 1:
        raise ValueError(f"{run_dir}: patches of different models (shapes {sorted(shapes)})")
    mean = sum(per_seed) / len(per_seed)  # NaN stays NaN: a component is either trained in every seed or in none
    info = {**describe(records, run_dir), "n_seeds": len(per_seed), "of_seeds": len(records), "left_out": left_out,
            "note": seeds_note(len(per_seed), len(records), left_out), "patches": patches, "warnings": warnings,
            "layers_note": per_seed[0].attrs.get("note")}
    return with_average(mean), info


# -----------------------------------------------------------------------------
# learning curves


def curve_rows(record: dict) -> list[dict]:
    """One row per (epoch, series) of a record: the main metric (x100) on the train probe ("train") and on each dev
    split ("dev", or "dev <column>" when there are several), and the mean training loss ("train loss"). A null metric
    (a diverged epoch) is NaN."""
    main, columns = record["main"], record["columns"]
    metric = main["metric"]
    out = []
    for row in record["epochs"]:
        base = {"seed": int(record["seed"]), "epoch": int(row["epoch"]), "status": record["status"]}
        if row.get("train") and metric in row["train"]:
            out.append({**base, "series": "train", "metric": metric, "value": 100 * _number(row["train"][metric])})
        for split, column in columns.items():
            label = "dev" if len(columns) == 1 else f"dev {column}"
            value = ((row.get("dev") or {}).get(split) or {}).get(metric)
            out.append({**base, "series": label, "metric": metric, "value": 100 * _number(value)})
        if "train_loss" in row:
            out.append({**base, "series": "train loss", "metric": "loss", "value": _number(row["train_loss"])})
    return out


def summarize(per_seed: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """mean, std (ddof=1; 0 for one value) and n (values that are not NaN) of `value` per group."""
    out = per_seed.groupby(by, as_index=False, sort=True).agg(mean=("value", "mean"), std=("value", std),
                                                             n=("value", "count"))
    return out


CURVE_COLUMNS = ["seed", "status", "epoch", "series", "metric", "value"]


def curves(run_dir, records=None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Learning curves of a setting folder (every done seed) or one seed folder.

    Returns (per_seed, summary, info): per_seed has seed, status, epoch, series, metric, value (NaN where a diverged
    seed's metric is null); summary has series, epoch, metric, mean, std, n over the *finished* seeds only;
    info as `describe` plus each seed's chosen epoch, n_seeds (finished), of_seeds, diverged ({seed: epoch}), note
    and warnings.
    """
    records, warnings = _records_and_warnings(run_dir, records)
    if not records:
        raise NothingToDraw(f"{run_dir}: no finished {RECORD} here or in seed*/", warnings)
    per_seed = pd.DataFrame([row for _, rec in records for row in curve_rows(rec)], columns=CURVE_COLUMNS)
    summary = summarize(per_seed[per_seed["status"] == FINISHED], ["series", "epoch", "metric"])
    diverged = {_seed(item): (item[1].get("diverged") or {}).get("epoch") for item in records
                if item[1]["status"] == DIVERGED}
    left_out = [f"seed {s} diverged" + (f" in epoch {e}" if e is not None else "") for s, e in diverged.items()]
    n_finished = len(records) - len(diverged)
    info = {**describe(records, run_dir), "chosen_epochs": {_seed(item): item[1].get("chosen_epoch")
                                                            for item in records},
            "select": records[0][1]["main"]["select"], "n_seeds": n_finished, "of_seeds": len(records),
            "diverged": diverged, "note": seeds_note(n_finished, len(records), left_out), "warnings": warnings}
    return per_seed, summary, info


# -----------------------------------------------------------------------------
# records under a runs folder, with their training data

RUN_COLUMNS = ["model", "task", "method", "lr", "hash", "seed", "status", "metric", "score", "train_score", "gap",
               "n_train", "train_probe", "subset", "family", "finished_at", "path", "scores"]


def family(record: dict) -> str:
    """A hash of the record's protocol (records.protocol: result config without the lr, checkpoint and data) without
    the training-set size and subset: the points of one data-size curve share it."""
    config = dict(record["config"])
    config["data"] = {k: v for k, v in (config.get("data") or {}).items() if k not in SIZE_KEYS}
    spec = protocol(config, record.get("fingerprints"))
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8]


def task_metrics(record: dict) -> list[str]:
    """The metrics a record's task scores (its task YAML's `metrics`), the main one where the config names none."""
    return list((record["config"].get("task") or {}).get("metrics") or [record["main"]["metric"]])


def run_row(path, record: dict, epoch: str | None = None) -> dict:
    """One row of run_table: the main dev metric and the train-probe metric (x100; NaN where null, as in a diverged
    seed) at `epoch` ("best" | "last"; None: the record's main.select), with its training data; `scores` holds every
    metric of the task on the main dev split ({metric: x100}, NaN where null), e.g. SQuAD's exact_match and f1.
    n_train counts training examples (`sizes.train_examples`; SQuAD's questions, not their windows), or the
    training rows of records that predate it."""
    setting, main = record["setting"], record["main"]
    row = record[epoch or main["select"]] or {}
    metric = main["metric"]
    dev = ((row.get("dev") or {}).get(main["split"]) or {})
    scores = {name: 100 * _number(dev.get(name)) for name in task_metrics(record)}
    score = 100 * _number(dev.get(metric))
    train = 100 * _number((row.get("train") or {}).get(metric))
    data, sizes = (record["config"].get("data") or {}), (record.get("sizes") or {})
    subset, n_train = data.get("train_subset_seed"), sizes.get("train_examples", sizes.get("train"))
    return {"model": setting["model"], "task": setting["task"], "method": setting["method"],
            "lr": float(setting["lr"]), "hash": setting["hash"], "seed": int(record["seed"]),
            "status": record["status"], "metric": metric, "score": score, "train_score": train, "gap": train - score,
            "n_train": -1 if n_train is None else int(n_train), "train_probe": int(sizes.get("train_probe") or 0),
            "subset": -1 if subset is None else int(subset), "family": family(record),
            "finished_at": str((record.get("timings") or {}).get("finished_at") or ""), "path": str(path),
            "scores": scores}


def run_table(runs_dir, epoch: str | None = None, found=None) -> tuple[pd.DataFrame, list[str]]:
    """One row per done record under `runs_dir` (see run_row; `found`: records.scan's records, if already scanned),
    with gap = train_score - score; and one warning per file left out. A seed found twice under the root (a copied
    runs folder) is counted once, the newer record."""
    if epoch not in (None, "best", "last"):
        raise ValueError(f"epoch must be 'best', 'last' or None, not {epoch!r}")
    warnings: list[str] = []
    if found is None:
        found, warnings = scan(runs_dir)
    rows, more = once_per_seed(found, lambda path, record: run_row(path, record, epoch))
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    return df.sort_values(["model", "task", "method", "lr", "hash", "seed"], ignore_index=True), warnings + more


def _counted(df: pd.DataFrame, by: list[str], stats: dict) -> pd.DataFrame:
    """`stats` over the finished rows of `df` per group `by`, outer-joined with n_diverged (diverged rows per
    group), so a group whose every seed diverged is kept (with NaN statistics)."""
    finished = df[(df["status"] == FINISHED) & df["score"].notna()]
    out = finished.groupby(by, as_index=False).agg(**stats)
    diverged = df[df["status"] == DIVERGED].groupby(by, as_index=False).agg(n_diverged=("seed", "size"))
    out = out.merge(diverged, on=by, how="outer")
    out["n_diverged"] = out["n_diverged"].fillna(0).astype(int)
    return out


# -----------------------------------------------------------------------------
# generalization gap

GAP_KEY = ["model", "task", "n_train", "subset", "method"]
GAP_COLUMNS = [*GAP_KEY, "lr", "hash", "n_seeds", "n_diverged", "train_mean", "train_std", "dev_mean", "dev_std",
               "gap_mean", "gap_std", "n_lrs"]


def gap_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, training data, method): the lr with the best mean dev score over its finished seeds (as the
    tables pick it; ties to the smaller lr), and at it the mean±std over finished seeds of the train metric, the dev
    metric and train - dev. n_diverged counts that setting's diverged seeds (not in the means); a group whose every
    seed diverged keeps a row with NaN means. Only records with a train metric (a train probe) take part."""
    df = df[df["train_score"].notna() | ((df["status"] == DIVERGED) & (df["train_probe"] > 0))]
    if df.empty:
        return pd.DataFrame(columns=GAP_COLUMNS)
    setting = [*GAP_KEY, "lr", "hash"]
    out = _counted(df, setting, {
        "n_seeds": ("seed", "nunique"), "train_mean": ("train_score", "mean"), "train_std": ("train_score", std),
        "dev_mean": ("score", "mean"), "dev_std": ("score", std), "gap_mean": ("gap", "mean"),
        "gap_std": ("gap", std)})
    out["n_seeds"] = out["n_seeds"].fillna(0).astype(int)
    out["n_lrs"] = out.groupby(GAP_KEY)["lr"].transform("size")
    out["rank"] = out["dev_mean"].fillna(-math.inf)
    ranked = out.sort_values([*GAP_KEY, "rank", "lr"], ascending=[True] * len(GAP_KEY) + [False, True])
    return ranked.drop_duplicates(GAP_KEY)[GAP_COLUMNS].sort_values(GAP_KEY, ignore_index=True)


def gap_table(runs_dir, epoch: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The generalization gap of every (model, task, training data, method) under `runs_dir` (see gap_summary)."""
    df, warnings = run_table(runs_dir, epoch)
    return gap_summary(df), warnings


# -----------------------------------------------------------------------------
# Figure 2: dev score against training-set size

SIZE_KEY = ["model", "task", "metric", "method", "lr", "family"]
SIZE_COLUMNS = [*SIZE_KEY, "n_train", "mean", "std", "n", "n_diverged", "seeds", "subsets"]


def _joined(values) -> str:
    return " ".join(str(x) for x in sorted(set(values)))


def datasize_metrics(df: pd.DataFrame) -> list[str]:
    """The metrics run_table's rows score, in the order their tasks list them (SQuAD: exact_match, f1)."""
    return list(dict.fromkeys(name for scores in df["scores"] for name in scores))


def with_metric(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """run_table's rows with `score` and `metric` taken from another metric of the task (NaN where a record does not
    score it)."""
    scores = [scores.get(metric, math.nan) for scores in df["scores"]]
    return df.assign(score=pd.Series(scores, index=df.index, dtype=float), metric=metric)


def datasize_summary(df: pd.DataFrame, task: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """Runs on seeded subsets (data.train_subset_seed set) per (model, task, method, lr, family) and training-set
    size: mean, std and number (n) of the dev scores over finished seeds and subset seeds; n_diverged counts the
    diverged runs of the point (not in the mean). `metric`: which of the task's metrics (None: the main one); a
    metric the records do not score is an error naming those they do."""
    df = df[df["subset"] >= 0]
    if task is not None:
        df = df[df["task"] == task]
    if metric is not None and not df.empty:
        found = datasize_metrics(df)
        if metric not in found:
            raise UserError(f"no data-size run{f' of {task}' if task else ''} scores {metric!r}; they score: "
                            f"{', '.join(found)}")
        df = with_metric(df, metric)
    if df.empty:
        return pd.DataFrame(columns=SIZE_COLUMNS)
    out = _counted(df, [*SIZE_KEY, "n_train"], {
        "mean": ("score", "mean"), "std": ("score", std), "n": ("score", "size"), "seeds": ("seed", _joined),
        "subsets": ("subset", _joined)})
    out["n"] = out["n"].fillna(0).astype(int)
    out[["seeds", "subsets"]] = out[["seeds", "subsets"]].fillna("")
    return out[SIZE_COLUMNS].sort_values([*SIZE_KEY, "n_train"], ignore_index=True)


def datasize_table(runs_dir, task: str | None = None, epoch: str | None = None,
                   metric: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Dev score (x100, at the selected epoch) against training-set size, for `task` (None: all); `metric`: one of
    the task's metrics (None: its main metric)."""
    df, warnings = run_table(runs_dir, epoch)
    return datasize_summary(df, task, metric), warnings
