"""Run one job: a setting (model x task x method x lr), or with train.pack_lrs its whole lr grid, for every seed,
skipping seeds whose record says finished.

>>> from bitfit_exp.runner import run_job   # used by `bitfit-run`; see README.md for the command line
"""

import csv
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bitfit_exp.data import encode, load_splits, subset_rows
from bitfit_exp.errors import UserError
from bitfit_exp.methods import PACKABLE, encoder_parameters, head_parameter_names, packable, select
from bitfit_exp.metrics import baseline_note
from bitfit_exp.models import load_model, load_tokenizer
from bitfit_exp.packed import train_packed
from bitfit_exp.patch import load_trained_state, save_patch, trained_state
from bitfit_exp.records import (
    RECORD,
    SCHEMA,
    Claim,
    environment,
    finished,
    job_settings,
    read_record,
    seed_dir,
    set_aside,
    setting_key,
    write_json_atomic,
)
from bitfit_exp.training import SeedResult, pick_device, predict, read_checkpoint, seed_everything, train_seed

METHOD_META = {"name", "default_lr", "lr_grid"}
CHECKPOINT = "checkpoint.pt"


def log(msg: str) -> None:
    print(msg, flush=True)


class Prepared:
    """Tokenized splits of one task, shared by all seeds of a setting."""

    def __init__(self, cfg):
        self.tokenizer = load_tokenizer(cfg.model.name_or_path)
        self.pad_id = self.tokenizer.pad_token_id or 0
        raw = load_splits(cfg.task, cfg.data)
        length, d = cfg.data.max_length, cfg.data
        # data.train_subset_seed null: the first max_train_samples rows; an int: the first rows of a seeded permutation
        rows = subset_rows(len(raw["train"]), d.max_train_samples, d.get("train_subset_seed"))
        self.train = encode(raw["train"].select(rows), cfg.task, self.tokenizer, length)
        probe_n = len(self.train) if d.train_eval_samples is None else min(d.train_eval_samples, len(self.train))
        probe_rows = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(0))[:probe_n].sort()
        self.train_probe = encode(raw["train"].select([rows[i] for i in probe_rows.values.tolist()]), cfg.task,
                                  self.tokenizer, length)
        self.dev = {s: encode(raw[s], cfg.task, self.tokenizer, length, d.max_eval_samples) for s in cfg.task.eval_splits}
        self.test = {s: encode(raw[s], cfg.task, self.tokenizer, length, d.max_eval_samples)
                     for s in cfg.task.test_splits if s in raw}
        missing = [s for s in cfg.task.test_splits if s not in raw]
        if missing and cfg.train.predict_test:
            log(f"note: no {', '.join(missing)} split for {cfg.task.name}; skipping those test predictions")


def parameter_counts(model, selection) -> dict:
    encoder_total = sum(p.numel() for p in encoder_parameters(model).values())
    head = set(head_parameter_names(model))
    trained_encoder = selection.count(model, include_head=False)
    return {
        "trainable": selection.count(model),
        "trainable_encoder": trained_encoder,
        "head": sum(p.numel() for n, p in model.named_parameters() if n in head),
        "encoder_total": encoder_total,
        "pct_encoder": 100.0 * trained_encoder / encoder_total,
    }


def glue_label(prediction, task) -> str | int:
    """A prediction as the GLUE server wants it: label names (MNLI, QNLI, RTE), ids, or a 0-5 score (STS-B)."""
    if task.test_labels == "names":
        return task.label_names[int(prediction)]
    if task.test_labels == "float":
        return f"{min(5.0, max(0.0, prediction)):.3f}"
    return int(prediction)


def write_test_predictions(folder: Path, model, prepared: Prepared, cfg, device) -> list[str]:
    written = []
    for split, data in prepared.test.items():
        preds = predict(model, data, cfg, device, prepared.pad_id)
        name = cfg.task.test_splits[split]
        with open(folder / name, "w", newline="") as f:
            out = csv.writer(f, delimiter="\t", lineterminator="\n")
            out.writerow(["index", "prediction"])
            out.writerows([idx, glue_label(p, cfg.task)] for idx, p in zip(data.idx.tolist(), preds.tolist(),
                                                                             strict=True))
        written.append(name)
    return written


def start_seed(cfg, seed: int, device):
    """Seeded model load (the head's random init depends on the seed) and the method's parameter selection."""
    seed_everything(seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    model = load_model(cfg.model.name_or_path, cfg.task.num_labels).to(device)
    options = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k not in METHOD_META}
    selection = select(cfg.method.name, model, torch.Generator().manual_seed(seed), **options)
    initial = {n: p.detach().cpu().clone() for n, p in model.named_parameters()
               if n in selection.params and selection.params[n] is None and n.endswith(".bias")}
    return model, selection, initial


def finish_seed(cfg, seed: int, prepared: Prepared, folder: Path, device, model, selection, initial,
                result: SeedResult, t0: float, started: str, extra: dict | None = None) -> dict:
    """Patch, test predictions and the run record, from a model that holds the chosen epoch's parameters."""
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    save = cfg.train.save_patch
    if save is True or (save == "auto" and cfg.method.name != "full"):
        save_patch(folder / "patch.safetensors", model, selection, result.chosen_state, initial,
                   {"model": cfg.model.name_or_path, "task": cfg.task.name, "method": cfg.method.name,
                    "epoch": result.chosen_epoch, "seed": seed})
        artifacts["patch"] = "patch.safetensors"
    if cfg.train.predict_test and prepared.test:
        artifacts["test_predictions"] = write_test_predictions(folder, model, prepared, cfg, device)
    by_epoch = {row["epoch"]: row for row in result.epochs}
    return {
        "schema": SCHEMA,
        "status": "finished",
        "setting": setting_key(OmegaConf.to_container(cfg, resolve=True)),
        "seed": seed,
        "main": {"split": next(iter(cfg.task.eval_splits)), "metric": cfg.task.metric, "select": cfg.train.select},
        "columns": dict(cfg.task.eval_splits),
        "params": parameter_counts(model, selection),
        "epochs": result.epochs,
        "best": by_epoch[result.best_epoch],
        "last": result.epochs[-1],
        "chosen_epoch": result.chosen_epoch,
        "resumed_after_epoch": result.resumed_after,
        "sizes": {"train": len(prepared.train), "train_probe": len(prepared.train_probe),
                  **{s: len(d) for s, d in prepared.dev.items()}},
        "timings": {**result.timings, "total_s": time.perf_counter() - t0, "started_at": started,
                    "finished_at": datetime.now(UTC).isoformat(timespec="seconds")},
        "env": environment(device),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "artifacts": artifacts,
        **(extra or {}),
    }


def run_seed(cfg, seed: int, prepared: Prepared, folder: Path, device, heartbeat=lambda: None) -> dict:
    started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    model, selection, initial = start_seed(cfg, seed, device)
    checkpoint = folder / CHECKPOINT if cfg.train.checkpoint else None
    result = train_seed(model, selection, prepared.train, prepared.train_probe, prepared.dev, cfg, seed, device,
                        prepared.pad_id, checkpoint, heartbeat)
    return finish_seed(cfg, seed, prepared, folder, device, model, selection, initial, result, t0, started)


def score(record: dict, which: str | None = None) -> float:
    """The record's main dev metric at the chosen (or `which`) epoch, as a fraction."""
    main = record["main"]
    row = record[which or main["select"]]
    return row["dev"][main["split"]][main["metric"]]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report(record: dict) -> None:
    main = record["main"]
    log(f"seed {record['seed']}: {main['metric']} {100 * score(record):.2f} at epoch {record['chosen_epoch']}"
        f"/{len(record['epochs'])} (last {100 * score(record, 'last'):.2f}; train "
        f"{100 * record[main['select']]['train'][main['metric']]:.2f}) "
        f"trainable {record['params']['trainable']:,} ({record['params']['pct_encoder']:.3f}% of encoder) "
        f"{record['timings']['total_s']:.1f}s on {record['env']['device']}")


@dataclass(frozen=True, eq=False)  # identity hash: members are dict keys
class Member:
    """One seed of one setting of a job: where its record goes and the config (learning rate) it trains with."""

    cfg: DictConfig
    seed: int
    path: Path


def run_packed(members: list[Member], prepared: Prepared, device) -> dict[Member, dict]:
    """Train the claimable `members` (seeds x learning rates of one bias-family setting) in packs over one frozen
    backbone; write and return their records. Members whose checkpoints stand at different epochs go in different
    packs, so each resumes where it stopped."""
    claims = {}
    for m in members:
        claim = Claim(m.path.parent, m.cfg.train.claim_timeout_s)
        holder = claim.acquire()
        if holder is None and not (finished(m.path) and not m.cfg.overwrite):
            claims[m] = claim
        elif holder is None:
            claim.release()
        else:
            log(f"seed {m.seed} lr={m.cfg.optim.lr:g}: being trained by another job ({holder.get('host')}, "
                f"pid {holder.get('pid')}); skipped")
    records = {}
    try:
        groups = defaultdict(dict)  # checkpoint epoch -> {member: its checkpoint (None: from the start)}
        for m in claims:
            state = read_checkpoint(m.path.parent / CHECKPOINT, "packed") if m.cfg.train.checkpoint else None
            groups[state["epoch"] if state else 0][m] = state
        for _, group in sorted(groups.items(), reverse=True):
            records.update(train_pack(group, prepared, device, lambda: [c.beat() for c in claims.values()]))
        return records
    finally:
        for claim in claims.values():
            claim.release()


def train_pack(resume: dict[Member, dict | None], prepared: Prepared, device, heartbeat) -> dict[Member, dict]:
    """One packed training of the claimed members in `resume` (all at the same checkpoint epoch; their checkpoints as
    values), then one record per member."""
    group = list(resume)
    cfg = group[0].cfg
    started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    inits, initials = [], {}
    for m in group:  # each setting starts from its own seeded head, as a one-by-one run would
        model, selection, initials[m] = start_seed(m.cfg, m.seed, torch.device("cpu"))
        inits.append(trained_state(model, selection))
    for m in group:
        moved = set_aside(m.path)
        if moved:
            log(f"seed {m.seed} lr={m.cfg.optim.lr:g}: previous record kept as {moved.name}")
    checkpoints = [m.path.parent / CHECKPOINT if cfg.train.checkpoint else None for m in group]
    try:
        results = train_packed(model, selection, inits, [m.seed for m in group], [m.cfg.optim.lr for m in group],
                               prepared.train, prepared.train_probe, prepared.dev, cfg, device, prepared.pad_id,
                               checkpoints, heartbeat, list(resume.values()))
    except torch.OutOfMemoryError:
        raise UserError(f"packed x{len(group)} ({len(group)} x batch {cfg.train.batch_size} rows) does not fit in "
                        f"{device} memory; pack fewer settings (train.pack_lrs=false, fewer seeds per job), "
                        f"train.bf16=true or data.padding=longest; finished epochs are kept in the checkpoints") from None
    resumed = f", resumed after epoch {results[0].resumed_after}" if results[0].resumed_after else ""
    log(f"packed x{len(group)}: {results[0].timings['packed_train_samples_per_s']:.1f} training samples/s "
        f"over all settings on {device}{resumed}")
    packed = {"settings": len(group), "seeds": [m.seed for m in group], "lrs": [m.cfg.optim.lr for m in group],
              "dropout": cfg.train.packed_dropout}
    records = {}
    for m, result in zip(group, results, strict=True):
        model, selection, _ = start_seed(m.cfg, m.seed, device)
        load_trained_state(model, selection, result.chosen_state)
        record = finish_seed(m.cfg, m.seed, prepared, m.path.parent, device, model, selection, initials[m], result,
                             t0, started, {"packed": packed})
        write_json_atomic(m.path, record)
        (m.path.parent / CHECKPOINT).unlink(missing_ok=True)
        records[m] = record
        report(record)
    return records


def run_one(m: Member, prepared: Prepared, device) -> dict | None:
    """Train one seed alone under its claim; None when another job holds it."""
    claim = Claim(m.path.parent, m.cfg.train.claim_timeout_s)
    holder = claim.acquire()
    if holder is not None:
        log(f"seed {m.seed}: being trained by another job ({holder.get('host')}, pid {holder.get('pid')}, "
            f"SLURM job {holder.get('slurm_job_id')}); skipped")
        return None
    try:
        if finished(m.path) and not m.cfg.overwrite:  # another job finished it while we waited
            return read_record(m.path)
        moved = set_aside(m.path)
        if moved:
            log(f"seed {m.seed}: previous record kept as {moved.name}")
            (m.path.parent / CHECKPOINT).unlink(missing_ok=True)
        record = run_seed(m.cfg, m.seed, prepared, m.path.parent, device, claim.beat)
        write_json_atomic(m.path, record)
        (m.path.parent / CHECKPOINT).unlink(missing_ok=True)
    finally:
        claim.release()
    if record["resumed_after_epoch"]:
        log(f"seed {m.seed}: resumed from the checkpoint after epoch {record['resumed_after_epoch']}")
    report(record)
    return record


def describe(cfg) -> str:
    key = setting_key(OmegaConf.to_container(cfg, resolve=True))
    return f"{key['model']} {key['task']} {key['method']} lr={key['lr']:g}"


def run_job(cfg) -> list[list[dict]]:
    """Train every unfinished seed of the job's settings (one, or the lr grid with train.pack_lrs); returns, per
    setting, all its finished records."""
    device = pick_device(cfg.train.device)
    root = Path(cfg.runs_dir).expanduser()
    settings, members = job_settings(cfg), []
    for setting in settings:
        key = setting_key(OmegaConf.to_container(setting, resolve=True))
        (root / key["dir"]).mkdir(parents=True, exist_ok=True)
        if not (root / key["dir"] / "config.yaml").exists():
            OmegaConf.save(setting, root / key["dir"] / "config.yaml", resolve=True)
        mine = [Member(setting, seed, seed_dir(root, key, seed) / RECORD) for seed in cfg.seeds]
        members += mine
        todo = sum(cfg.overwrite or not finished(m.path) for m in mine)
        log(f"{describe(setting)}: {len(cfg.seeds)} seeds, {len(cfg.seeds) - todo} already finished -> "
            f"{root / key['dir']}")
    todo = [m for m in members if cfg.overwrite or not finished(m.path)]
    prepared = Prepared(cfg) if todo else None  # the learning rate does not change the data
    records = {}
    if cfg.train.packed and todo:  # even a lone setting: its dropout stream must not depend on being alone
        if packable(cfg.method.name):
            records.update(run_packed(todo, prepared, device))
        else:
            log(f"note: {cfg.method.name} cannot be packed (packed training covers "
                f"{', '.join(sorted(PACKABLE))}); training one seed at a time")
    for m in members:
        if m in records:
            continue
        if m not in todo:
            records[m] = read_record(m.path)
            continue
        record = run_one(m, prepared, device)
        if record is not None:
            records[m] = record
    out = []
    for setting in settings:
        mine = [records[m] for m in members if m.cfg is setting and m in records]
        out.append(mine)
        if not mine:
            log(f"{describe(setting)}: no finished seed yet")
            continue
        mean, std = mean_std([score(r) for r in mine])
        main = mine[0]["main"]
        log(f"{describe(setting)}: {main['metric']} ({main['split']}, {main['select']} epoch) "
            f"{100 * mean:.2f}±{100 * std:.2f} over {len(mine)} seeds"
            + baseline_note(main["metric"], prepared and prepared.dev[main["split"]].labels))
    sys.stdout.flush()
    return out
