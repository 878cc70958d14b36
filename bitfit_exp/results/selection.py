"""Which records make each cell of a table: run records as rows, the best learning rate within one protocol, and
per cell the protocol a table shows, with a line for every record it leaves out (bitfit_exp.results.tables lays them out).

A setting's *protocol* is its result config without the learning rate, plus the checkpoint and data it read
(`records.protocol`): settings of one protocol differ only in the lr, and the best lr is picked among those only. A
paper table takes, per cell, the protocol of its experiment's config (`+experiment=table3 model=... task=...
method=...`, composed as `bitfit-run` would); records of any other protocol are left out, and the notes under the
table say which. `ours` shows every protocol found, one row each.

    df, warnings = collect("~/bitfit-runs")          # one row per (record, dev split), scores x100
    best = select_best_lr(df)                        # per (model, task, method, protocol): the best lr
    chosen = table_selection(df, TABLES["table3"])   # the table's protocol and lrs per cell; what was left out
    mine = ours_selection(best)                      # every protocol found, one row each

Diverged seeds (a non-finite loss or prediction; `status: diverged`) are results: they are counted in their cell,
never averaged, and an lr with one ranks after every lr without.

>>> fmt_seeds([0, 1, 2, 4])
'0-2, 4'
>>> config_diff({"train.batch_size": 16, "optim.lr": 1e-3}, {"train.batch_size": 8}, "table3")
'train.batch_size=16 (table3: 8), optim.lr=0.001 (table3: (unset))'
"""

import hashlib
import json
import math
from dataclasses import dataclass, field

import pandas as pd

from bitfit_exp.kinds import kind_name
from bitfit_exp.results.labels import METHODS, MODELS, TASKS, row_label
from bitfit_exp.results.records import once_per_seed, protocol, scan

KEY = ["model", "task", "method"]
GROUP = [*KEY, "protocol_id"]  # one protocol of one (model, task, method): its settings differ only in the lr
SETTING = [*GROUP, "lr", "hash"]
ROW_COLUMNS = [*KEY, "kind", "lr", "hash", "seed", "column", "main", "score", "train_score", "pct_encoder", "finished_at",
               "path", "status", "diverged", "epoch", "at_last", "expected_lrs", "protocol", "identity",
               "protocol_id"]
BEST_COLUMNS = [*KEY, "column", "mean", "std", "n_seeds", "lr", "hash", "pct_encoder", "train_mean", "n_lrs",
                "n_diverged", "n_no_score", "seeds", "n_at_last", "n_records", "expected_lrs", "protocol", "identity",
                "protocol_id"]


GLUE_TASKS = ("qnli", "sst2", "mnli", "cola", "mrpc", "stsb", "rte", "qqp")


@dataclass(frozen=True)
class TableDef:
    """A paper table: its (model, method) rows, per model the experiment config whose protocol it shows, and the
    tasks whose records it reads (others, e.g. SQuAD or POS runs of the same model, are not its business)."""
    title: str
    paper: int | None  # table number in the paper, for the reference numbers
    rows: list[tuple[str, str]]  # (model, method)
    experiments: dict[str, str] = field(default_factory=dict)  # model -> the experiment config its runs use
    tasks: tuple[str, ...] = GLUE_TASKS


TABLES = {
    "table1": TableDef("Table 1: BERT-large, GLUE dev", 1, [("bert_large", "full"), ("bert_large", "bitfit")],
                       {"bert_large": "table1"}),
    "table2": TableDef("Table 2: BERT-base, BERT-large, RoBERTa-base, GLUE dev", 2,
                       [(m, f) for m in ("bert_base", "bert_large", "roberta_base") for f in ("full", "bitfit")],
                       {"bert_base": "table2", "bert_large": "table2", "roberta_base": "table2_roberta"}),
    "table3": TableDef("Table 3: BERT-base, subsets of parameters, GLUE dev", 3,
                       [("bert_base", m) for m in ("full", "bitfit", "bm2_bq", "bm2", "bq", "frozen", "rand_uniform",
                                                   "rand_rowcol")], {"bert_base": "table3"}),
    # Section 4, "Token-level tasks": the paper tagged PTB; conf/task/pos.yaml reads UD English-EWT's xpos tags.
    "pos": TableDef("Token-level: POS tagging accuracy (ours: UD English-EWT PTB-style tags; paper: PTB)", None,
                    [(m, f) for m in ("bert_base", "bert_large", "roberta_base") for f in ("full", "bitfit")],
                    dict.fromkeys(("bert_base", "bert_large", "roberta_base"), "pos"), ("pos",)),
}
OTHER_PROTOCOL = "other protocol"  # the variant label of a row of records that are not the table's protocol

# -----------------------------------------------------------------------------
# records -> rows


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)


def expected_lrs(config: dict) -> int:
    """How many learning rates the config's sweep compares: 1 where the experiment fixes the lr, else the grid."""
    if config.get("fixed_lr"):
        return 1
    return len((config.get("method") or {}).get("lr_grid") or [None])


def record_rows(record: dict, path, epoch: str | None = None) -> list[dict]:
    """One row per dev split of a done record, at `epoch` ("best" | "last"; None: the record's main.select).

    A diverged record's rows have score NaN (whatever it scored before diverging) and `diverged` True; a finished
    record whose metric is undefined (written as null; rare, since metrics.py scores constant predictions 0) has
    score NaN.
    """
    setting, main, config = record["setting"], record["main"], record["config"]
    which = epoch or main["select"]
    diverged = record["status"] == "diverged"
    row = record[which] or {}
    if not diverged and not row:
        raise ValueError(f"no {which!r} epoch")
    metric = main["metric"]
    if not record["columns"]:
        raise ValueError("no dev splits in 'columns'")
    proto = protocol(config, record.get("fingerprints"))
    ids = {"protocol": _canonical(proto["config"]), "identity": _canonical(proto["fingerprints"])}
    n_epochs = (config.get("train") or {}).get("epochs") or len(record.get("epochs") or ())
    chosen = row.get("epoch")
    common = {
        "model": setting["model"], "task": setting["task"], "kind": kind_name(config.get("task") or {}),
        "method": setting["method"], "lr": float(setting["lr"]), "hash": setting["hash"], "seed": int(record["seed"]), "pct_encoder": float(record["params"]["pct_encoder"]),
        "finished_at": str((record.get("timings") or {}).get("finished_at") or ""), "path": str(path),
        "status": record["status"], "diverged": diverged, "epoch": math.nan if chosen is None else int(chosen),
        "at_last": bool(not diverged and which == "best" and n_epochs > 1 and chosen == n_epochs),
        "expected_lrs": expected_lrs(config), **ids,
        "protocol_id": hashlib.sha1((ids["protocol"] + ids["identity"]).encode()).hexdigest()[:8],
    }
    out = []
    for split, column in record["columns"].items():
        value = None if diverged else row["dev"][split][metric]
        train = None if diverged else (row.get("train") or {}).get(metric)
        out.append({**common, "column": column, "main": split == main["split"],
                    "score": math.nan if value is None else 100 * float(value),
                    "train_score": math.nan if train is None else 100 * float(train)})
    return out


def collect(runs_dir, epoch: str | None = None, found=None) -> tuple[pd.DataFrame, list[str]]:
    """Every done record under `runs_dir` (records.scan: checked, finished or diverged) as rows (see ROW_COLUMNS),
    plus warnings for what was skipped.

    Diverged records are rows with score NaN and `diverged` True: count them, never average them away. Corrupt,
    unfinished or malformed records are skipped with a warning naming the file. A seed found twice (e.g. a runs
    folder copied under the root) is counted once: the newest finished_at wins (records.once_per_seed). `found`:
    records.scan's records of `runs_dir`, where already read (its warnings are then the caller's).
    """
    if epoch not in (None, "best", "last"):
        raise ValueError(f"epoch must be 'best', 'last' or None, not {epoch!r}")
    found, warnings = scan(runs_dir) if found is None else (found, [])
    kept, more = once_per_seed(found, lambda path, record: record_rows(record, path, epoch))
    warnings = [w.replace("; ignored", "; skipped") for w in warnings + more]
    df = pd.DataFrame([r for rows in kept for r in rows], columns=ROW_COLUMNS)
    for flag in ("main", "diverged", "at_last"):
        df[flag] = df[flag].astype(bool)
    return df.sort_values([*KEY, "lr", "hash", "seed"], kind="stable", ignore_index=True), warnings


# -----------------------------------------------------------------------------
# rows -> best lr per protocol


def fmt_seeds(seeds) -> str:
    """Seed numbers as ranges: 0-2, 4."""
    seeds, parts = sorted(int(s) for s in seeds), []
    for s in seeds:
        if parts and s == parts[-1][1] + 1:
            parts[-1][1] = s
        else:
            parts.append([s, s])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def select_best_lr(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task, method, protocol): the lr whose seeds have the best mean of the task's main column.

    Only settings of one protocol compete (they differ in the lr alone). An lr with a seed that diverged or has no
    score ranks after every lr without one; then the best mean over its finished seeds; ties go to the smaller lr.
    Dev-on-dev selection, as in the paper: the same dev scores choose the lr and are reported. Returns one row per
    (model, task, method, protocol, column) (see BEST_COLUMNS): mean and std (ddof=1; 0 with one seed) over the
    finished seeds, n_seeds (done seeds: finished or diverged), n_diverged, n_no_score (finished, metric undefined),
    seeds, lr, n_lrs (lrs compared), n_at_last (seeds whose best epoch was the last), n_records (the protocol's
    records over all its lrs), expected_lrs (the sweep's grid size), and the protocol (JSON) with its id.
    """
    if df.empty:
        return pd.DataFrame(columns=BEST_COLUMNS)
    main = df[df["main"]].assign(bad=lambda d: d["score"].isna())
    per_lr = main.groupby(SETTING, as_index=False).agg(score=("score", "mean"), bad=("bad", "sum"))
    per_lr["clean"] = per_lr["bad"] == 0
    # Equal means (the same number of correct answers over the seeds) differ in their last bits as float sums of
    # 100*k/n: rounded, they tie, and the tie goes to the smaller lr as documented.
    per_lr["rank"] = per_lr["score"].round(9)
    per_lr["n_lrs"] = per_lr.groupby(GROUP)["lr"].transform("size")
    per_lr = per_lr.merge(main.groupby(GROUP, as_index=False).agg(n_records=("seed", "size")), on=GROUP)
    ranked = per_lr.sort_values([*GROUP, "clean", "rank", "lr", "hash"], na_position="last",
                                ascending=[True] * len(GROUP) + [False, False, True, True])
    chosen = ranked.drop_duplicates(GROUP)[[*SETTING, "n_lrs", "n_records"]]
    picked = df.merge(chosen, on=SETTING).assign(no_score=lambda d: d["score"].isna() & ~d["diverged"])
    out = picked.groupby([*GROUP, "column"], as_index=False, sort=False).agg(
        mean=("score", "mean"), std=("score", "std"), n_finite=("score", "count"), n_seeds=("seed", "nunique"),
        n_diverged=("diverged", "sum"), n_no_score=("no_score", "sum"), seeds=("seed", lambda s: fmt_seeds(set(s))),
        lr=("lr", "first"), hash=("hash", "first"), pct_encoder=("pct_encoder", "mean"),
        train_mean=("train_score", "mean"), n_lrs=("n_lrs", "first"), n_at_last=("at_last", "sum"),
        n_records=("n_records", "first"), expected_lrs=("expected_lrs", "max"), protocol=("protocol", "first"),
        identity=("identity", "first"))
    out.loc[out["n_finite"] == 1, "std"] = 0.0
    for count in ("n_seeds", "n_diverged", "n_no_score", "n_lrs", "n_at_last", "n_records", "expected_lrs"):
        out[count] = out[count].astype(int)
    return out[BEST_COLUMNS]


# -----------------------------------------------------------------------------
# protocols: which records make a table


_UNSET = object()


def flat(config: dict) -> dict:
    """{"train.batch_size": 8, ...} from {"train": {"batch_size": 8}, ...}."""
    return {f"{group}.{key}": value for group, values in config.items() for key, value in (values or {}).items()}


def fmt_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def config_diff(ours: dict, table: dict, table_name: str = "table") -> str:
    """The keys whose values differ between two flat configs: "train.batch_size=16 (table: 8)"."""
    keys = [k for k in (*table, *(k for k in ours if k not in table)) if ours.get(k, _UNSET) != table.get(k, _UNSET)]
    return ", ".join(f"{k}={fmt_value(ours[k]) if k in ours else '(unset)'} "
                     f"({table_name}: {fmt_value(table[k]) if k in table else '(unset)'})" for k in keys)


def identity_diff(ours: dict | None, used: dict | None) -> str:
    """What differs between two checkpoint/data identities (records.identity; None: a schema-1 record)."""
    if ours is None or used is None:
        return f"fingerprints {'none (schema-1 record)' if ours is None else ours} (used: " \
               f"{'none (schema-1 records)' if used is None else used})"
    parts = [f"{name} fingerprint {ours[key]} (used: {used[key]})" for key, name in (("model", "checkpoint"),
                                                                                    ("data", "data")) if ours[key] != used[key]]
    return ", ".join(parts)


@dataclass(frozen=True)
class Composed:
    """An experiment's config for one (model, task, method): its protocol (result config without the lr) and the
    learning rates its sweep trains (the method's grid, or the one lr an experiment fixes)."""
    config: dict
    lrs: tuple[float, ...]

    @property
    def key(self) -> str:
        return _canonical(self.config)

    @property
    def expected_lrs(self) -> int:
        return len(self.lrs)

    def sweeps(self, lr: float) -> bool:
        return any(math.isclose(lr, x, rel_tol=1e-9) for x in self.lrs)


def sweep_lrs(config: dict) -> tuple[float, ...]:
    """The learning rates the sweep of a resolved config trains: optim.lr where the experiment fixes it, else the
    method's grid."""
    if config.get("fixed_lr"):
        return (float(config["optim"]["lr"]),)
    return tuple(float(x) for x in config["method"]["lr_grid"])


_COMPOSED: dict[tuple, Composed | str] = {}


def composed_protocols(cells) -> dict[tuple, Composed | str]:
    """(experiment or None, model, task, method) -> its Composed protocol, or the error text when the config cannot
    be composed (an unknown name). Composed as `bitfit-run +experiment=... model=... task=... method=...` would;
    nothing is loaded (no data, no checkpoint). Cached per process; many at once are composed by forked processes,
    one per CPU (Hydra takes ~50 ms of CPU per composition: a large runs dir's tables need hundreds)."""
    cells = list(dict.fromkeys(cells))
    todo = [c for c in cells if c not in _COMPOSED]
    if todo:
        _COMPOSED.update(_compose_in_parallel(todo) or _compose(todo))
    return {c: _COMPOSED[c] for c in cells}


def _compose(cells: list[tuple]) -> dict[tuple, Composed | str]:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from bitfit_exp.core.config_dir import (
        conf_dir,  # also registers the `index` resolver the sweeps' lr uses
    )

    out: dict[tuple, Composed | str] = {}
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        for experiment, model, task, method in cells:
            overrides = [*([f"+experiment={experiment}"] if experiment else []), f"model={model}",
                         f"task={task}", f"method={method}"]
            try:
                config = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
            except (HydraException, OmegaConfBaseException) as e:
                out[(experiment, model, task, method)] = str(e).strip().splitlines()[0]
                continue
            out[(experiment, model, task, method)] = Composed(protocol(config)["config"], sweep_lrs(config))
    return out


COMPOSE_PER_PROCESS = 16  # below this many compositions per process, forking costs more than it saves


def _compose_share(cells: list[tuple]) -> dict[tuple, Composed | str] | None:
    import gc

    gc.set_threshold(100_000, 50, 100)  # Hydra's many small linked objects: the collector would take a tenth
    try:
        return _compose(cells)
    except Exception:  # noqa: BLE001 - the parent composes them all again in turn, raising what that raises
        return None


def _compose_in_parallel(cells: list[tuple]) -> dict[tuple, Composed | str] | None:
    """_compose's result from forked processes, one per CPU this process may use; None where not worth it (few
    cells, one CPU, no safe fork) or where a process fails (the caller then composes them in turn)."""
    import multiprocessing
    import sys

    from bitfit_exp.core.threads import cpus_allowed

    workers = min(cpus_allowed(), len(cells) // COMPOSE_PER_PROCESS)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods() or sys.platform == "darwin":
        return None
    size = -(-len(cells) // workers)
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            shares = pool.map(_compose_share, [cells[i:i + size] for i in range(0, len(cells), size)], chunksize=1)
    except OSError:  # no process could be forked (a limit on processes or memory)
        return None
    if any(share is None for share in shares):
        return None
    return {cell: value for share in shares for cell, value in share.items()}


def _protocols(best: pd.DataFrame) -> pd.DataFrame:
    """One row per protocol found: its main-column row of `best`."""
    return best.drop_duplicates("protocol_id").reset_index(drop=True)


def _most_records(candidates: pd.DataFrame) -> str:
    """The protocol id with the most done seeds (ties: the smaller identity text, to be deterministic)."""
    return candidates.sort_values(["n_records", "identity"], ascending=[False, True]).iloc[0]["protocol_id"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _left_out_line(p, what: str, n_records: int | None = None, n_lrs: int | None = None) -> str:
    """One line for records of cell p (a protocol's row of select_best_lr) that a table leaves out, and why."""
    n_records, n_lrs = p.n_records if n_records is None else n_records, p.n_lrs if n_lrs is None else n_lrs
    return (f"left out of {row_label(p.model, p.method)} {TASKS.get(p.task, p.task)}: "
            f"{_plural(n_records, 'record')} ({_plural(n_lrs, 'lr')}) {what}")


@dataclass
class Selection:
    """What a table shows: `best` rows (one protocol per cell, with a `variant` label), its rows (model, method,
    variant), and one line per protocol found for its cells but left out."""
    best: pd.DataFrame
    rows: list[tuple[str, str, str]]
    left_out: list[str]


OUTSIDE_SWEEP = "at lrs outside the sweep"  # records of a cell's own protocol: no other row shows them
OTHER_CHECKPOINT = "with another checkpoint than the row's"  # a paper row holds one checkpoint over all its cells


def _checkpoint(identity: str) -> str:
    """The checkpoint part of an identity (`identity`: records.identity as JSON text) as JSON text ("null": a
    schema-1 record, whose checkpoint is unknown): what a table row holds fixed over its cells, whose data differ."""
    ident = json.loads(identity)
    return _canonical(None if ident is None else ident["model"])


def _sweep_counts(df: pd.DataFrame, found: pd.DataFrame, target: Composed) -> pd.DataFrame:
    """The protocols of a cell (`found`, one row each; `df`: its rows) with `target`'s config and records at its
    sweep's lrs, with n_records = those records (done seeds over the sweep's lrs)."""
    main = df[df["main"] & df["lr"].map(target.sweeps)]
    matching = found[found["protocol"] == target.key]
    counts = matching.assign(n_records=[(main["protocol_id"] == pid).sum() for pid in matching["protocol_id"]])
    return counts[counts["n_records"] > 0]


def _row_checkpoint(counts: list[pd.DataFrame]) -> str | None:
    """The checkpoint (see _checkpoint) with the most done seeds over a row's cells (`counts`: _sweep_counts of
    each), ties to the smaller text; None when the row has no records of its config."""
    found = pd.concat(counts, ignore_index=True)
    per_checkpoint = found.groupby(found["identity"].map(_checkpoint))["n_records"].sum()
    return min(per_checkpoint.index, key=lambda c: (-per_checkpoint[c], c), default=None)


def _row_reference(ours: dict | None, checkpoint: str) -> dict | None:
    """What a left-out protocol of a cell without records of its row's checkpoint is described against: that
    checkpoint with the protocol's own data, so that only the checkpoint reads as different."""
    model = json.loads(checkpoint)
    return None if model is None else {"model": model, "data": ours["data"] if ours else "(unknown)"}


def _table_cell(df: pd.DataFrame, found: pd.DataFrame, target: Composed, experiment: str, checkpoint: str | None):
    """One cell of a paper table: the rows of the records of `target`'s protocol at its sweep's lrs that read the
    row's `checkpoint` (of those, the data identity with the most done seeds; None when there are none), whose best
    lr select_best_lr picks, and a line per left-out group of the cell's records (`found`: its protocols, one row
    each; `df`: its rows)."""
    counts = _sweep_counts(df, found, target)
    counts = counts[counts["identity"].map(_checkpoint) == checkpoint]
    used = _most_records(counts) if len(counts) else None
    chosen = df[(df["protocol_id"] == used) & df["lr"].map(target.sweeps)] if used else None
    used_identity = json.loads(counts.set_index("protocol_id").at[used, "identity"]) if used else None
    left_out, sweep = [], ", ".join(f"{x:g}" for x in target.lrs)
    for p in found.itertuples():
        if p.protocol != target.key:
            diff = config_diff(flat(json.loads(p.protocol)), flat(target.config), experiment)
            left_out.append(_left_out_line(p, f"with another config: {diff}"))
            continue
        mine = df[df["main"] & (df["protocol_id"] == p.protocol_id)]
        outside = mine[~mine["lr"].map(target.sweeps)]
        if len(outside):
            lrs = ", ".join(f"{x:g}" for x in sorted(set(outside["lr"])))
            left_out.append(_left_out_line(p, f"{OUTSIDE_SWEEP} of +experiment={experiment}: {lrs} (sweep: {sweep})",
                                           len(outside), outside["lr"].nunique()))
        inside = mine[mine["lr"].map(target.sweeps)]
        if p.protocol_id != used and len(inside):
            ours = json.loads(p.identity)
            diff = identity_diff(ours, used_identity if used else _row_reference(ours, checkpoint))
            what = OTHER_CHECKPOINT if _checkpoint(p.identity) != checkpoint else "with another checkpoint or data"
            left_out.append(_left_out_line(p, f"{what}: {diff}", len(inside), inside["lr"].nunique()))
    return chosen, left_out


def table_selection(df: pd.DataFrame, table: TableDef) -> Selection:
    """The cells of a paper table from collect's rows: per (model, task, method) the protocol of its experiment's
    config (composed) at the lrs its sweep trains. A row (model, method) reads one checkpoint in all its cells, the
    one with the most done seeds over the row, so that its Avg never mixes checkpoints; per cell, of the records
    with that config and checkpoint, the data identity with the most done seeds; the best lr is picked among those.
    Every other protocol of those cells (a cell with records of another checkpoint only is missing), and records at
    lrs outside the sweep, are left out and named. Only records of the table's tasks take part."""
    df = df[df["task"].isin(table.tasks)]
    df = df[[(m, f) in set(table.rows) for m, f in zip(df["model"], df["method"], strict=True)]]
    protocols = _protocols(select_best_lr(df))
    wanted = composed_protocols((table.experiments.get(p.model), p.model, p.task, p.method)
                                for p in protocols.itertuples())
    cells, per_row = [], {}  # cells: (model, method, rows, found, target, experiment), or lines without a target
    by_cell = dict(tuple(df.groupby(KEY, sort=False)))  # one pass, not a scan of every row per cell
    for (model, task, method), found in protocols.groupby(KEY, sort=False):
        experiment = table.experiments.get(model)
        target = wanted[(experiment, model, task, method)]
        if isinstance(target, str):
            cells.append([_left_out_line(p, f"with no config of +experiment={experiment} to compare ({target})")
                          for p in found.itertuples()])
            continue
        rows = by_cell[(model, task, method)]
        cells.append((model, method, rows, found, target, experiment))
        per_row.setdefault((model, method), []).append(_sweep_counts(rows, found, target))
    checkpoints = {row: _row_checkpoint(counts) for row, counts in per_row.items()}
    chosen, left_out, expected = [], [], {}
    for c in cells:
        if isinstance(c, list):
            left_out += c
            continue
        model, method, rows, found, target, experiment = c
        used, lines = _table_cell(rows, found, target, experiment, checkpoints[(model, method)])
        if used is not None:
            chosen.append(used)
            expected[(model, used["task"].iloc[0], method)] = target.expected_lrs
        left_out += lines
    # One select_best_lr over every cell's rows (one protocol each): per cell, as its own rows would give it
    picked = select_best_lr(pd.concat(chosen, ignore_index=True) if chosen else df.iloc[:0])
    picked["expected_lrs"] = [expected.get(k, 0) for k in zip(picked["model"], picked["task"], picked["method"],
                                                               strict=True)]
    return Selection(picked.assign(variant=""), [(m, f, "") for m, f in table.rows], left_out)


CONFIG_GROUPS = ["model", "task", "method", "optim", "train", "data"]  # records.result_config's order


def _key_order(key: str) -> tuple:
    group = key.split(".")[0]
    return CONFIG_GROUPS.index(group) if group in CONFIG_GROUPS else len(CONFIG_GROUPS), key


def _signature(diff: dict, identity: str) -> tuple:
    model_fp = (json.loads(identity) or {}).get("model")
    return tuple(sorted((k, _canonical(v)) for k, v in diff.items())), model_fp


def _variant_labels(signatures: dict[tuple, list[dict]]) -> dict[tuple, str]:
    """Per row signature of one (model, method): the keys whose values differ between its rows, with this row's
    values (a key a row leaves at its default shows the default, or "default" where it differs per task)."""
    if len(signatures) == 1:
        return dict.fromkeys(signatures, "")
    diffs = {sig: dict(sig[0]) for sig in signatures}
    keys = sorted({k for d in diffs.values() for k in d}, key=_key_order)
    keys = [k for k in keys if len({d.get(k, _UNSET) for d in diffs.values()}) > 1]
    fps = {sig[1] for sig in signatures}
    labels = {}
    for sig, defaults in signatures.items():
        parts = []
        for k in keys:
            if k in diffs[sig]:
                parts.append(f"{k}={fmt_value(json.loads(diffs[sig][k]))}")
            else:
                values = {_canonical(d.get(k)) for d in defaults}
                parts.append(f"{k}={fmt_value(json.loads(values.pop())) if len(values) == 1 else 'default'}")
        if len(fps) > 1:
            parts.append(f"checkpoint {sig[1] or 'unknown (schema-1)'}")
        labels[sig] = ", ".join(parts)
    return labels


def _reference(protocols: pd.DataFrame, p, default: Composed | str) -> dict:
    """The flat config protocol p is described against: the default config of its (model, task, method), or where
    that cannot be composed (an unknown name) the protocol of that cell with the most records."""
    if isinstance(default, Composed):
        return flat(default.config)
    same = protocols[(protocols["model"] == p.model) & (protocols["task"] == p.task) & (protocols["method"] == p.method)]
    return flat(json.loads(same.sort_values("n_records", ascending=False).iloc[0]["protocol"]))


def ours_selection(best: pd.DataFrame) -> Selection:
    """Every (model, method, protocol) found, one row each. A row collects, over tasks, the protocols that differ
    from the default config of their (model, task, method) (`bitfit-run model=... task=... method=...`, composed) in
    the same keys and values and used the same checkpoint. Rows of one (model, method) are labelled by the keys
    that differ between them. Where one row has several data identities for a task, the one with the most done
    seeds is used and the others are named as left out."""
    protocols = _protocols(best)
    defaults = composed_protocols((None, p.model, p.task, p.method) for p in protocols.itertuples())
    rows, per_row = {}, {}  # (model, method) -> {signature: [flat defaults]}; (model, method, sig, task) -> ids
    for p in protocols.itertuples():
        reference = _reference(protocols, p, defaults[(None, p.model, p.task, p.method)])
        mine = flat(json.loads(p.protocol))
        diff = {k: mine.get(k) for k in (*reference, *mine) if mine.get(k, _UNSET) != reference.get(k, _UNSET)}
        sig = _signature(diff, p.identity)
        rows.setdefault((p.model, p.method), {}).setdefault(sig, []).append(reference)
        per_row.setdefault((p.model, p.method, sig, p.task), []).append(p.protocol_id)
    labels = {(model, method, sig): label for (model, method), sigs in rows.items()
              for sig, label in _variant_labels(sigs).items()}
    # Signatures with one label are one row: a key left at a task's default reads as its value there (RTE's
    # default 20 epochs and MNLI's train.epochs=20 are both "train.epochs=20").
    per_label = {}
    for (model, method, sig, task), ids in per_row.items():
        per_label.setdefault((model, method, labels[(model, method, sig)], task), []).extend(ids)
    chosen, left_out = [], []
    for (_model, _method, variant, _task), ids in per_label.items():
        candidates = protocols[protocols["protocol_id"].isin(ids)]
        used = _most_records(candidates)
        chosen.append(best[best["protocol_id"] == used].assign(variant=variant))
        used_identity = json.loads(candidates.set_index("protocol_id").at[used, "identity"])
        left_out += [_left_out_line(p, f"with another data set: {identity_diff(json.loads(p.identity), used_identity)}")
                     for p in candidates[candidates["protocol_id"] != used].itertuples()]
    order = {pair: i for i, pair in enumerate(found_rows(best))}
    table_rows = sorted(dict.fromkeys((model, method, labels[(model, method, sig)]) for (model, method), sigs in
                                      rows.items() for sig in sigs),
                        key=lambda r: (order[r[:2]], r[2] != _main_label(rows, labels, r), r[2]))
    picked = pd.concat(chosen, ignore_index=True) if chosen else best.iloc[:0].assign(variant="")
    return Selection(picked, table_rows, left_out)


# `--table peft`: BitFit and its bias subset bq next to the peft-backed methods and Full-FT (model/peft_methods.py).
PEFT_TABLE_METHODS = ("full", "bitfit", "bq", "beft", "lora", "ia3", "peft")


def peft_selection(best: pd.DataFrame) -> Selection:
    """ours_selection over the methods `--table peft` sets side by side (PEFT_TABLE_METHODS), one row per protocol
    found, in the paper's order of models and methods."""
    return ours_selection(best[best["method"].isin(PEFT_TABLE_METHODS)])


def _main_label(rows, labels, row) -> str:
    """The label of the row of (model, method) that is the default config everywhere (if any): listed first."""
    model, method, _ = row
    return next((labels[(model, method, sig)] for sig in rows[(model, method)] if not sig[0]), None)


def found_rows(best: pd.DataFrame) -> list[tuple[str, str]]:
    """Every (model, method) with records, in the paper's order (unknown names last, alphabetically)."""
    def order(pair):
        model, method = pair
        return (list(MODELS).index(model) if model in MODELS else len(MODELS), model,
                list(METHODS).index(method) if method in METHODS else len(METHODS), method)
    return sorted(set(zip(best["model"], best["method"], strict=True)), key=order)


def with_other_protocols(df: pd.DataFrame, table: TableDef) -> Selection:
    """table_selection's cells, and below them every other protocol found for the table's tasks as rows of their
    own (another model, or a config other than the table's experiment, e.g. a small CPU run): labelled as
    ours_selection labels them, and "other protocol" where that leaves a paper row's label empty. Nothing is mixed
    into the paper's cells; `left_out` names only what no row shows: records of a cell's own protocol at lrs
    outside its sweep, and another data identity of a shown row."""
    df = df[df["task"].isin(table.tasks)]
    paper = table_selection(df, table)
    unshown = [line for line in paper.left_out if OUTSIDE_SWEEP in line]
    rest = df[~df["protocol_id"].isin(set(paper.best["protocol_id"]))]
    if rest.empty:
        return Selection(paper.best, paper.rows, unshown)
    others = ours_selection(select_best_lr(rest))
    relabel = {(m, f, v): (m, f, _against_table(others.best, (m, f, v), table) if (m, f) in table.rows else v)
               for m, f, v in others.rows}
    best = others.best.assign(variant=[relabel[(m, f, v)][2] for m, f, v in
                                       zip(others.best["model"], others.best["method"], others.best["variant"],
                                           strict=True)])
    return Selection(pd.concat([paper.best, best], ignore_index=True), paper.rows + [relabel[r] for r in others.rows],
                     unshown + others.left_out)


def _against_table(best: pd.DataFrame, row: tuple[str, str, str], table: TableDef) -> str:
    """The label of a row of other protocols of a paper row's (model, method): the keys whose values differ from the
    table's experiment config (`data.max_train_samples=1000 (pos: null)`), then ours_selection's label if any, or
    "other protocol" where neither says anything (the same config at other lrs, checkpoint or data)."""
    model, method, variant = row
    mine = best[(best["model"] == model) & (best["method"] == method) & (best["variant"] == variant)].iloc[0]
    experiment = table.experiments.get(model)
    target = composed_protocols([(experiment, model, mine["task"], method)])[(experiment, model, mine["task"], method)]
    if isinstance(target, str):
        return variant or OTHER_PROTOCOL
    diff = config_diff(flat(json.loads(mine["protocol"])), flat(target.config), experiment or "default")
    # ours_selection's own label stays, after the diff: it tells apart rows with the same diff (another checkpoint)
    return "; ".join(part for part in (diff, variant) if part) or OTHER_PROTOCOL
