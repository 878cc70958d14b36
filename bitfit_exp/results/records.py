"""Run records: one JSON file per (setting, seed), written atomically, checked against where it lies when read.

Layout under `runs_dir`:  <model>/<task>/<method>/lr<lr>-<hash>/seed<k>/record.json  (+ patch.safetensors, *.tsv)
The hash covers every config value that changes results plus the fingerprints of the checkpoint and of the data
read (bitfit_exp.model.fingerprint), so two settings never share a folder, and one checkpoint is one setting whether it was
read by hub name or from a local copy.

A record carries a `digest` of its own content; a reader (runner, plan, tables, plots, compare) accepts a record only
when the digest, its setting hash (recomputed from its config and fingerprints) and its seed agree with the record and
with the folder it lies in: a hand-edited record, or one copied into another setting's or seed's folder, is reported
and ignored.

>>> cfg = {"model": {"name": "minilm", "name_or_path": "x"}, "task": {"name": "rte"}, "method": {"name": "bitfit"},
...        "optim": {"lr": 1e-3}, "train": {"batch_size": 8}, "data": {"max_length": 128}}
>>> key = setting_key(cfg, {"model": "m0", "data": "d0"})
>>> key["dir"].startswith("minilm/rte/bitfit/lr0.001-"), key == setting_key({**cfg, "model": {"name": "minilm",
...     "name_or_path": "/elsewhere"}}, {"model": "m0", "data": "d0"})
(True, True)
"""

import copy
import hashlib
import json
import math
import numbers
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

from bitfit_exp.core.atomic import write_atomic
from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.core.paths import child
from bitfit_exp.results.artifacts import patch_problem

SCHEMA = 2  # 1: hash without fingerprints (model identified by its path), no digest


RECORD = "record.json"


DONE = ("finished", "diverged")  # a seed in either state is not trained again


# Config keys that do not change what a run computes (where it reads/writes, how it reports, which seeds). The
# checkpoint and the data enter the hash through their fingerprints, not through where they were read from (nor how
# a dev split was carved from train: data.dev_fraction and dev_seed change the rows, which the fingerprint covers).
NON_RESULT_KEYS = {
    "data": {"dir", "hub_name", "dev_fraction", "dev_seed"},
    "train": {"device", "progress", "predict_test", "save_patch", "eval_batch_size", "checkpoint", "stop_after_epochs",
              "packed", "packed_dropout", "pack_lrs", "compile", "claim_timeout_s", "threads", "report_to",
              "log_every", "log_every_s"},
    "method": {"lr_grid", "default_lr"},
    "model": {"name", "name_or_path"},
    "task": {"train_size", "files"},
}


# Keys added after records existed whose null default reproduces the earlier behaviour: left out of the hash while
# null, so settings run before the key existed keep their folder (and finished seeds are not redone).
NULL_DEFAULT_KEYS = {"data": {"train_subset_seed", "pad_multiple"}}


# Schema 1 (records written before fingerprints): its hash rule, frozen, to find and verify those records.
V1_NON_RESULT_KEYS = {**NON_RESULT_KEYS, "model": {"name"}}


# Keys that did not exist in schema 1, with the default that reproduces schema-1 behaviour: a setting with another
# value cannot have schema-1 records.
V1_ABSENT_DEFAULTS: dict[tuple[str, str], object] = {}


# Methods whose selection changed since schema 1 (the authors' pooler bias and rand_rowcol): their schema-1 records
# are another experiment and are never adopted.
V1_CHANGED_METHODS = {"bq", "bm2", "bm2_bq", "biases", "rand_rowcol"}


def _result_config(cfg: dict, non_result: dict, null_default: dict) -> dict:
    out = {}
    for group in ("model", "task", "method", "optim", "train", "data"):
        values = dict(cfg.get(group) or {})
        out[group] = {k: v for k, v in sorted(values.items()) if k not in non_result.get(group, ())
                      and not (v is None and k in null_default.get(group, ()))}
    return out


def result_config(cfg: dict) -> dict:
    """The part of the resolved config that determines a setting's results (the checkpoint and data aside)."""
    return _result_config(cfg, NON_RESULT_KEYS, NULL_DEFAULT_KEYS)


def _digest(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def identity(fingerprints: dict | None) -> dict | None:
    """The part of a record's fingerprints that enters the hash: the checkpoint's and the data's digests."""
    if fingerprints is None:
        return None
    return {"model": fingerprints["model"], "data": fingerprints["data"]["digest"]}


def setting_key(cfg: dict, fingerprints: dict | None) -> dict:
    """model, task, method, lr, hash and folder of the setting of resolved config `cfg` trained on the checkpoint
    and data of `fingerprints` (bitfit_exp.model.fingerprint; `{"model": ..., "data": ...}` digests also work)."""
    ident = fingerprints if fingerprints is None or isinstance(fingerprints.get("data"), str) else identity(fingerprints)
    config = result_config(cfg)
    lr = float(cfg["optim"]["lr"])
    digest = _digest({**config, "fingerprints": ident})
    return {
        "model": cfg["model"]["name"],
        "task": cfg["task"]["name"],
        "method": cfg["method"]["name"],
        "lr": lr,
        "hash": digest,
        "config_hash": _digest(config),
        "dir": f"{cfg['model']['name']}/{cfg['task']['name']}/{cfg['method']['name']}/lr{lr:g}-{digest}",
    }


def protocol(config: dict, fingerprints: dict | None = None) -> dict:
    """A setting's protocol: its result config without the learning rate, and the checkpoint and data it read
    (settings of one protocol differ only in the lr). Schema-1 records have no fingerprints (None)."""
    out = copy.deepcopy(result_config(config))
    out["optim"].pop("lr", None)
    return {"config": out, "fingerprints": identity(fingerprints)}


def v1_setting_key(cfg: dict) -> dict | None:
    """The key the setting of `cfg` had under schema 1 (None when it cannot have schema-1 records)."""
    if cfg["method"]["name"] in V1_CHANGED_METHODS:
        return None
    cfg = copy.deepcopy(cfg)
    for (group, key), default in V1_ABSENT_DEFAULTS.items():
        if cfg.get(group, {}).get(key, default) != default:
            return None
        cfg.get(group, {}).pop(key, None)
    key = v1_setting_key_exact(cfg)
    return {**key, "dir": f"{key['model']}/{key['task']}/{key['method']}/lr{key['lr']:g}-{key['hash']}"}


def job_settings(cfg) -> list:
    """The settings one job trains: cfg's own, or with train.pack_lrs one per learning rate of method.lr_grid."""
    if not cfg.train.pack_lrs:
        return [cfg]
    if cfg.get("fixed_lr"):
        raise UserError(f"this sweep fixes the learning rate ({cfg.optim.lr:g}); train.pack_lrs would train the whole "
                        f"lr grid instead: use train.packed=true without train.pack_lrs")
    settings = []
    for lr in cfg.method.lr_grid:
        setting = copy.deepcopy(cfg)
        setting.optim.lr = float(lr)
        settings.append(setting)
    return settings


def setting_dir(runs_dir, key: dict) -> Path:
    """The setting's folder, key["dir"] under runs_dir: <model>/<task>/<method>/lr<lr>-<hash>, each a plain file or
    folder name (core.paths.child), so that it lies inside runs_dir; a UserError naming the key otherwise."""
    folder = Path(runs_dir)
    for what, name in (("model.name", key["model"]), ("task.name", key["task"]), ("method.name", key["method"]),
                       ("the setting's folder", key["dir"].rsplit("/", 1)[-1])):
        folder = child(folder, name, what)
    return folder


def seed_dir(runs_dir, key: dict, seed: int) -> Path:
    """Seed `seed`'s folder in the setting's folder (setting_dir)."""
    return setting_dir(runs_dir, key) / f"seed{seed}"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see half a record. Non-finite
    floats (a diverged run's NaN metric) are written as null, so records stay strict JSON. A failed write (full
    disk) leaves no temporary file and raises one line (UserError).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "record.json"
    >>> write_json_atomic(path, {"loss": float("nan"), "dev": [0.5, float("inf")]})
    >>> path.read_text().split()
    ['{', '"loss":', 'null,', '"dev":', '[', '0.5,', 'null', ']', '}']
    """
    path = Path(path)
    text = json.dumps(_finite_or_null(data), indent=1, default=str, allow_nan=False)
    write_atomic(path, lambda f: f.write(text.encode()), path.with_name(f".{path.name}.{os.getpid()}.tmp"))


def _finite_or_null(value):
    """NaN and infinities as null: JSON has no such numbers, and a null metric cannot be averaged by accident."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        return None
    return value


class CorruptRecord(ValueError):
    pass


def _content_digest(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def seal(record: dict) -> dict:
    """The record as it is written: JSON-safe (non-finite numbers as null), its setting recomputed from its config and
    fingerprints, and a digest of its content that readers check."""
    record = json.loads(json.dumps(_finite_or_null(record), default=str))
    record["schema"] = SCHEMA
    record["setting"] = setting_key(record["config"], record["fingerprints"])
    record["digest"] = _content_digest(record)
    return record


def sealed_setting(config: dict, fingerprints: dict | None) -> dict:
    """The setting seal() gives a record of `config` and `fingerprints` (hashed as written: JSON-safe), known before
    the record is (its patch's metadata names it)."""
    config, fingerprints = json.loads(json.dumps(_finite_or_null([config, fingerprints]), default=str))
    return setting_key(config, fingerprints)


def _expected_key(record: dict) -> dict:
    if record.get("schema") == 1:
        return v1_setting_key_exact(record["config"])
    return setting_key(record["config"], record["fingerprints"])


def v1_setting_key_exact(config: dict) -> dict:
    """The schema-1 key of a schema-1 record's own config (no adjustments: it was written by that rule)."""
    digest = _digest(_result_config(config, V1_NON_RESULT_KEYS, NULL_DEFAULT_KEYS))
    lr = float(config["optim"]["lr"])
    return {"hash": digest, "lr": lr, "model": config["model"]["name"], "task": config["task"]["name"],
            "method": config["method"]["name"]}


def check_record(record, path: Path) -> None:
    """Raise CorruptRecord unless `record` is a run record whose content, setting and seed agree with each other and
    with where it lies: <model>/<task>/<method>/lr<lr>-<hash>/seed<k>/record.json."""
    path = Path(path)
    if not isinstance(record, dict) or record.get("schema") not in (1, SCHEMA) or "setting" not in record:
        raise CorruptRecord(f"{path}: not a bitfit-exp run record (schema 1 or {SCHEMA})")
    if record.get("status") not in (*DONE, "running"):
        raise CorruptRecord(f"{path}: unknown status {record.get('status')!r}")
    try:
        if record["schema"] == SCHEMA and record.get("digest") != _content_digest(record):
            raise CorruptRecord(f"{path}: content does not match its digest (edited by hand?)")
        setting, seed = record["setting"], int(record["seed"])
        expected = _expected_key(record)
        for field in ("model", "task", "method", "hash"):
            if setting[field] != expected[field]:
                raise CorruptRecord(f"{path}: setting {field} {setting[field]!r} does not match its config "
                                    f"({expected[field]!r})")
        if float(setting["lr"]) != expected["lr"]:
            raise CorruptRecord(f"{path}: lr {setting['lr']} does not match its config ({expected['lr']})")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, CorruptRecord):
            raise
        raise CorruptRecord(f"{path}: malformed run record ({type(e).__name__}: {e})") from None
    where = path.parts[-6:-1]
    wanted = (setting["model"], setting["task"], setting["method"], f"lr{float(setting['lr']):g}-{setting['hash']}",
              f"seed{seed}")
    if len(where) == 5 and tuple(where) != wanted:
        raise CorruptRecord(f"{path}: a record of {'/'.join(wanted)} lies in {'/'.join(where)} (copied or moved?)")


def read_record(path: Path) -> dict:
    """The record at `path`, checked (check_record); CorruptRecord says what is wrong with it."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecord(f"{path}: unreadable run record ({e})") from None
    check_record(record, path)
    return record


def done(path: Path) -> bool:
    """A seed is done when its record exists, passes check_record, says finished or diverged, and the patch it names
    (if any) is its own (patch_problem); anything else is redone."""
    try:
        record = read_record(path)
    except CorruptRecord:
        return False
    return record.get("status") in DONE and patch_problem(path, record) is None


def not_a_file(path: Path) -> str | None:
    """What `path` is when something other than a regular file (or a link to one) lies there: a folder, a dangling
    link, ...; None when it is a file or absent."""
    path = Path(path)
    if path.is_file() or not os.path.lexists(path):
        return None
    if path.is_symlink():
        return f"a link to {os.readlink(path)}, which does not exist" if not path.exists() else "a link to a non-file"
    return "a folder" if path.is_dir() else "not a regular file"


def redo_reason(path: Path) -> str | None:
    """Why the seed of record path `path` is trained again although something lies there that a rerun would
    otherwise take for done or trip over: `path` is not a file, or its record says done but its patch_problem; None
    when there is nothing to say (no record, a done seed with its patch, a running or corrupt record)."""
    if what := not_a_file(path):
        return f"{path} is {what}, not a run record (set aside as {RECORD}.replaced-<time> when the new one is written)"
    try:
        record = read_record(path)
    except CorruptRecord:
        return None
    if record.get("status") in DONE and (problem := patch_problem(path, record)):
        return f"its record says {record['status']} but {problem} (the record is kept as {RECORD}.replaced-<time>)"
    return None


def backup(path: Path) -> Path | None:
    """Keep the current record (overwrite=true, or a done seed whose patch is not its own) as
    record.json.replaced-<time>, as a hard link, so the record stays counted until the new one replaces it. Anything
    else at `path` (a folder, a dangling link) is moved there whole: it is no record, and a new one cannot replace it."""
    if not os.path.lexists(path):
        return None
    target = path.with_name(f"{path.name}.replaced-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S-%f')}")
    try:
        if not_a_file(path):
            os.rename(path, target)
            return target
        try:
            os.link(path, target)
        except OSError:  # file systems without hard links
            shutil.copy2(path, target)
    except OSError as e:
        raise UserError(f"{path}: cannot keep it as {target.name} ({first_line(e)}); move it away and rerun") from None
    return target


_SEED = re.compile(r"seed(\d+)$")


def scan(root) -> tuple[list[tuple[Path, dict]], list[str]]:
    """Every record under `root` that passes check_record and is done (finished or diverged), as (path, record); and
    one warning per file skipped. A schema-1 record that a newer record was adopted from (`adopted_from`) is skipped
    silently: the adopted copy stands for it."""
    root = Path(root).expanduser()
    found, warnings = [], []
    for path in sorted(root.glob(f"**/seed*/{RECORD}")):
        try:
            record = read_record(path)
        except CorruptRecord as e:
            warnings.append(f"{e}; ignored")
            continue
        if record.get("status") not in DONE:
            warnings.append(f"{path}: status {record.get('status')!r}, not finished; ignored")
            continue
        found.append((path, record))
    adopted = {root / r["adopted_from"] for _, r in found if r.get("adopted_from")}
    return [(p, r) for p, r in found if p.parent not in adopted], warnings


def once_per_seed(found, read) -> tuple[list, list[str]]:
    """read(path, record) for scan's records, once per seed folder (model, setting hash, seed): a seed found twice
    under the root (a runs folder copied below it) counts once, the record that finished last. A record `read` finds
    malformed (KeyError, TypeError, ValueError, AttributeError) is left out. Returns what `read` returned, in the
    order found, and one warning per record left out."""
    kept, warnings = {}, []  # (model, hash, seed) -> (path, finished_at, what read returned)
    for path, record in found:
        try:
            value = read(path, record)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            warnings.append(f"{path}: malformed run record ({type(e).__name__}: {e}); ignored")
            continue
        key = (record["setting"]["model"], record["setting"]["hash"], int(record["seed"]))
        finished_at = str((record.get("timings") or {}).get("finished_at") or "")
        if key in kept:
            other, other_finished_at, _ = kept[key]
            newer = finished_at > other_finished_at
            keep, drop = (path, other) if newer else (other, path)
            warnings.append(f"{drop}: duplicate of {keep} (setting {key[1]}, seed {key[2]}); counted once, keeping "
                            f"the newer")
            if not newer:
                continue
        kept[key] = (path, finished_at, value)
    return [value for _, _, value in kept.values()], warnings


def find_done(root, cfg: dict, seeds) -> dict[str | None, set[int]]:
    """Without fingerprints (nothing loaded): the done seeds of the setting of `cfg` under `root`, per checkpoint and
    data identity found (a JSON string of `identity`; None: schema-1 records, adoptable by any). `bitfit-plan` counts
    with it and loads the data and checkpoint only when several identities are found."""
    root, key, old = Path(root).expanduser(), setting_key(cfg, None), v1_setting_key(cfg)
    found: dict[str | None, set[int]] = {}
    for seed in seeds:
        for path in root.glob(f"{key['model']}/{key['task']}/{key['method']}/lr{key['lr']:g}-*/seed{seed}/{RECORD}"):
            try:
                record = read_record(path)
            except CorruptRecord:
                continue
            if record["status"] not in DONE or patch_problem(path, record):
                continue
            if record["schema"] == 1 and old is not None and record["setting"]["hash"] == old["hash"]:
                found.setdefault(None, set()).add(seed)
            elif record["schema"] == SCHEMA and record["setting"]["config_hash"] == key["config_hash"]:
                found.setdefault(json.dumps(identity(record["fingerprints"]), sort_keys=True), set()).add(seed)
    return found


def adopt_v1(root: Path, cfg: dict, key: dict, fingerprints: dict, seed: int) -> Path | None:
    """Find seed `seed` of the setting of `cfg` among schema-1 records (written before fingerprints) and adopt it:
    its folder is copied to the setting's folder under `key`, the record stamped with today's fingerprints (the
    checkpoint and data this run reads, which a schema-1 run read by the same name) and `adopted_from`. The schema-1
    folder stays as it was. Returns the new record's path, or None."""
    old_key = v1_setting_key(cfg)
    if old_key is None:
        return None
    old = seed_dir(root, old_key, seed)
    try:
        record = read_record(old / RECORD)
    except CorruptRecord:
        return None
    if record.get("schema") != 1 or record.get("status") != "finished":
        return None
    new = seed_dir(root, key, seed)
    new.mkdir(parents=True, exist_ok=True)
    for item in old.iterdir():
        if item.is_file() and item.name != RECORD and not item.name.startswith((".", "claim", "checkpoint")) \
                and ".replaced-" not in item.name:
            shutil.copy2(item, new / item.name)
    # The current config: equal to the schema-1 one in every result key (that is what the schema-1 hash matched),
    # plus keys added since at their schema-1 defaults, so the adopted record hashes to this setting.
    record = {**record, "config": cfg, "fingerprints": fingerprints, "adopted_from": str(old.relative_to(root)),
              "adopted_at": datetime.now(UTC).isoformat(timespec="seconds")}
    backup(new / RECORD)  # a record there (its patch not its own, or corrupt) is kept, not overwritten
    write_json_atomic(new / RECORD, seal(record))
    return new / RECORD


def check_runs_dir(path) -> Path:
    """`path` (~ expanded) as a writable folder, created with its parents if absent; a one-line UserError naming it
    when it is not a folder or cannot be created or written.

    >>> check_runs_dir("conf/config.yaml")
    Traceback (most recent call last):
    bitfit_exp.core.errors.UserError: conf/config.yaml: runs_dir is not a folder (point runs_dir=... at a folder)
    """
    import tempfile

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: runs_dir is not a folder (point runs_dir=... at a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # the one sure test: permissions, ACLs, read-only mounts, quotas
            pass
    except OSError as e:
        raise UserError(f"{folder}: runs_dir cannot be created or written: {e.strerror or e} "
                        f"(choose another runs_dir=... or fix its permissions)") from None
    return folder
