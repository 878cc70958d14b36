"""Run one job: a setting (model x task x method x lr), or with train.pack_lrs its whole lr grid, for every seed,
skipping seeds whose record says finished.

>>> from bitfit_exp.train.runner import run_job  # used by `bitfit-run`; see README.md for the command line
"""

import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bitfit_exp.core.errors import UserError
from bitfit_exp.core.paths import inside
from bitfit_exp.core.threads import threads_here
from bitfit_exp.data.batches import subset_rows
from bitfit_exp.kinds import kind_of
from bitfit_exp.kinds.metrics import baseline_note
from bitfit_exp.kinds.splits import load_splits
from bitfit_exp.model.device import pick_device
from bitfit_exp.model.fingerprint import data_fingerprint, model_fingerprint
from bitfit_exp.model.loading import load_model, load_tokenizer, new_parameters
from bitfit_exp.model.methods import PACKABLE, base_prefix, encoder_parameters, packable, select
from bitfit_exp.model.patch import load_trained_state, trained_state, write_patch
from bitfit_exp.results.artifacts import PATCH_DIGEST
from bitfit_exp.results.environment import environment
from bitfit_exp.results.records import (
    RECORD,
    adopt_v1,
    backup,
    check_runs_dir,
    done,
    job_settings,
    read_record,
    redo_reason,
    seal,
    sealed_setting,
    seed_dir,
    setting_dir,
    setting_key,
    write_json_atomic,
)
from bitfit_exp.train.checkpoints import read_checkpoint
from bitfit_exp.train.claims import Claim
from bitfit_exp.train.packed import packing_problem, train_packed
from bitfit_exp.train.progress import JobClock
from bitfit_exp.train.tracking.session import start_tracking
from bitfit_exp.train.trainer import SeedResult, predict, seed_everything, train_seed

METHOD_META = {"name", "default_lr", "lr_grid"}
CHECKPOINT = "checkpoint.pt"


def file_in(folder: Path, name: str) -> Path:
    """`folder / name` for a file the runner writes in a seed's or setting's folder, proven to resolve inside it
    (core.paths.inside): no name from the config, nor a symbolic link left there, makes a run write elsewhere."""
    return inside(folder / name, folder)


def log(msg: str) -> None:
    print(msg, flush=True)


class Prepared:
    """A job's data and the identity of what it reads: the raw splits and the fingerprints of the checkpoint and the
    data at once (they decide the setting's folder), the tokenized splits on first use (a job whose seeds are all
    done never tokenizes)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.kind = kind_of(cfg.task)
        self.tokenizer = load_tokenizer(cfg.model.name_or_path)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.raw = load_splits(cfg.task, cfg.data)
        self.fingerprints = {"model": model_fingerprint(cfg.model.name_or_path),
                             "data": data_fingerprint(self.raw, ["train", *cfg.task.eval_splits])}

    def _encode(self, dataset, role: str, limit=None):
        return self.kind.encode(dataset, self.cfg.task, self.tokenizer, self.cfg.data, role, limit)

    @cached_property
    def train_rows(self) -> list[int]:
        # data.train_subset_seed null: the first max_train_samples rows; an int: the first rows of a seeded permutation
        d = self.cfg.data
        return list(subset_rows(len(self.raw["train"]), d.max_train_samples, d.get("train_subset_seed")))

    @cached_property
    def train(self):
        return self._encode(self.raw["train"].select(self.train_rows), "train")

    @cached_property
    def train_probe(self):
        n, limit = len(self.train_rows), self.cfg.data.train_eval_samples
        probe = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:n if limit is None else min(limit, n)]
        return self._encode(self.raw["train"].select([self.train_rows[i] for i in probe.sort().values.tolist()]),
                            "eval")

    @cached_property
    def dev(self):
        return {s: self._encode(self.raw[s], "eval", self.cfg.data.max_eval_samples) for s in self.cfg.task.eval_splits}

    @cached_property
    def test(self):
        missing = [s for s in self.cfg.task.test_splits if s not in self.raw]
        if missing and self.cfg.train.predict_test:
            log(f"note: no {', '.join(missing)} split for {self.cfg.task.name}; skipping those test predictions")
        return {s: self._encode(self.raw[s], "test", self.cfg.data.max_eval_samples)
                for s in self.cfg.task.test_splits if s in self.raw}


def parameter_counts(model, selection) -> dict:
    """The record's "params": counts, and `new_encoder`: the encoder parameters the checkpoint lacks, which the run's
    seed initialised at random (a pooler missing from a masked-LM checkpoint; usually none)."""
    encoder_total = selection.encoder_total or sum(p.numel() for p in encoder_parameters(model).values())
    head = set(selection.head_names(model))
    trained_encoder = selection.count(model, include_head=False)
    return {
        "trainable": selection.count(model),
        "trainable_encoder": trained_encoder,
        "head": sum(p.numel() for n, p in model.named_parameters() if n in head),
        "encoder_total": encoder_total,
        "pct_encoder": 100.0 * trained_encoder / encoder_total,
        "new_encoder": [n for n in new_parameters(model) if n.startswith(base_prefix(model))],  # not the head
    }


def write_test_predictions(folder: Path, model, prepared: Prepared, cfg, device, seed: int) -> list[str]:
    """The test predictions of each test split in the file its benchmark wants (the task kind's `write_test`),
    named by the task's test_splits (GLUE: the server's <TASK>.tsv)."""
    written = []
    for split, data in prepared.test.items():
        name = cfg.task.test_splits[split]
        path = file_in(folder, name)  # refused before predicting
        predictions = predict(model, data, cfg, device, prepared.pad_id, desc=f"seed {seed} predict {split}")
        prepared.kind.write_test(predictions, data, cfg.task, path)
        written.append(name)
    return written


def start_seed(cfg, seed: int, device):
    """Seeded model load (the head's random init depends on the seed) and the method's parameter selection."""
    seed_everything(seed)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    kind = kind_of(cfg.task)
    model = load_model(cfg.model.name_or_path, kind.num_outputs(cfg.task), kind.AUTO_CLASS,
                       **kind.model_config(cfg.task)).to(device)
    options = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k not in METHOD_META}
    selection = select(cfg.method.name, model, torch.Generator().manual_seed(seed), **options)
    model = selection.wrapped or model  # a method that injects modules (peft) trains the model it made
    initial = {n: p.detach().cpu().clone() for n, p in model.named_parameters()
               if n in selection.params and selection.params[n] is None and n.endswith(".bias")}
    return model, selection, initial


def finish_seed(cfg, seed: int, prepared: Prepared, folder: Path, device, model, selection, initial,
                result: SeedResult, t0: float, started: str, extra: dict | None = None) -> dict:
    """Patch, test predictions and the run record (sealed, not yet written), from a model that holds the chosen
    epoch's parameters. A diverged seed (a non-finite loss or prediction) is recorded as such; it has a patch and
    test predictions only when an epoch before the divergence was chosen."""
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    diverged = getattr(result, "diverged", None)
    save = cfg.train.save_patch
    if result.chosen_state is not None and (save is True or (save == "auto" and cfg.method.name != "full")):
        # What the patch is (task, seed, setting) and its digest, so that a patch moved into another run's folder is
        # refused and a damaged one redone (results.artifacts.patch_mismatch).
        setting = sealed_setting(OmegaConf.to_container(cfg, resolve=True), prepared.fingerprints)
        name, artifacts[PATCH_DIGEST] = write_patch(
            folder, model, selection, result.chosen_state, initial,
            {"model": cfg.model.name_or_path, "task": cfg.task.name, "method": cfg.method.name,
             "epoch": result.chosen_epoch, "seed": seed, "model_fingerprint": prepared.fingerprints["model"],
             "setting": setting["hash"]})
        artifacts["patch"] = name  # our patch.safetensors, or a peft method's adapter/adapter_model.safetensors
    if result.chosen_state is not None and cfg.train.predict_test and prepared.test:
        artifacts["test_predictions"] = write_test_predictions(folder, model, prepared, cfg, device, seed)
    by_epoch = {row["epoch"]: row for row in result.epochs}
    record = {
        "status": "diverged" if diverged else "finished",
        "seed": seed,
        "main": {"split": next(iter(cfg.task.eval_splits)), "metric": cfg.task.metric, "select": cfg.train.select},
        "columns": dict(cfg.task.eval_splits),
        "params": parameter_counts(model, selection),
        "epochs": result.epochs,
        "best": by_epoch.get(result.best_epoch),
        "last": result.epochs[-1] if result.epochs else None,
        "chosen_epoch": result.chosen_epoch,
        "resumed_after_epoch": result.resumed_after,
        **({"diverged": diverged} if diverged else {}),
        "sizes": {"train": len(prepared.train), "train_examples": len(prepared.train_rows),
                  "train_probe": len(prepared.train_probe),
                  **{s: len(d) for s, d in prepared.dev.items()}},
        "timings": {**result.timings, "total_s": time.perf_counter() - t0, "started_at": started,
                    "finished_at": datetime.now(UTC).isoformat(timespec="seconds")},
        "env": environment(device),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "fingerprints": prepared.fingerprints,
        "artifacts": artifacts,
        **(extra or {}),
    }
    return seal(record)


def save_record(path: Path, record: dict) -> None:
    """Write a new record over the seed's old one (kept as record.json.replaced-<time>), then drop the checkpoint:
    until this moment the old record stays counted, so a killed overwrite loses nothing."""
    moved = backup(path)
    write_json_atomic(path, record)
    if moved:
        log(f"seed {record['seed']}: previous record kept as {moved.name}")
    (path.parent / CHECKPOINT).unlink(missing_ok=True)


def run_seed(cfg, seed: int, prepared: Prepared, folder: Path, device, heartbeat=lambda: None,
             on_epoch=lambda row: None, clock: JobClock | None = None) -> dict:
    started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    model, selection, initial = start_seed(cfg, seed, device)
    checkpoint = file_in(folder, CHECKPOINT) if cfg.train.checkpoint else None
    result = train_seed(model, selection, prepared.train, prepared.train_probe, prepared.dev, cfg, seed, device,
                        prepared.pad_id, checkpoint, heartbeat, on_epoch, clock=clock)
    return finish_seed(cfg, seed, prepared, folder, device, model, selection, initial, result, t0, started)


def score(record: dict, which: str | None = None) -> float | None:
    """The record's main dev metric at the chosen (or `which`) epoch, as a fraction; None for a diverged seed with
    no finite epoch."""
    main = record["main"]
    row = record[which or main["select"]]
    return None if row is None else row["dev"][main["split"]][main["metric"]]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def objective(settings: list[list[dict]]) -> float | None:
    """The best mean main dev score over the job's settings (what a Hydra sweeper optimises); None when none has a
    finished seed."""
    means = [mean_std(scores)[0] for records in settings
             if (scores := [score(r) for r in records if r["status"] == "finished" and score(r) is not None])]
    return max(means) if means else None


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def report(record: dict) -> None:
    main = record["main"]
    if record["status"] == "diverged":
        d = record["diverged"]
        chosen = f"; epoch {record['chosen_epoch']} kept ({main['metric']} {_pct(score(record))})" \
            if record["chosen_epoch"] else ""
        log(f"seed {record['seed']}: DIVERGED at epoch {d.get('epoch')} ({d.get('reason')}){chosen}; recorded as "
            f"diverged, not retrained")
        return
    train = (record[main["select"]].get("train") or {}).get(main["metric"])
    log(f"seed {record['seed']}: {main['metric']} {_pct(score(record))} at epoch {record['chosen_epoch']}"
        f"/{len(record['epochs'])} (last {_pct(score(record, 'last'))}; train {_pct(train)}) "
        f"trainable {record['params']['trainable']:,} ({record['params']['pct_encoder']:.3f}% of encoder) "
        f"{record['timings']['total_s']:.1f}s on {record['env']['device']}")


def summary(records: list[dict]) -> str:
    """One line over a setting's seeds: mean±std of the main dev metric over the finished ones, how many diverged,
    and whether the best epoch was the last for most seeds (the dev curve may still be rising)."""
    main = records[0]["main"]
    scores = [score(r) for r in records if r["status"] == "finished" and score(r) is not None]
    diverged = len(records) - len(scores)
    text = f"{main['metric']} ({main['split']}, {main['select']} epoch) "
    text += (f"{100 * mean_std(scores)[0]:.2f}±{100 * mean_std(scores)[1]:.2f} over {len(scores)} seeds"
             if scores else "no finite result")
    if diverged:
        text += f"; {diverged} of {len(records)} seeds diverged"
    at_last = sum(r["chosen_epoch"] == len(r["epochs"]) == r["config"]["train"]["epochs"] > 1
                  for r in records if r["status"] == "finished")
    if main["select"] == "best" and at_last * 2 > len(records):
        text += (f"; the best epoch was the last for {at_last} of {len(records)} seeds: the dev score may still be "
                 f"rising (more train.epochs?)")
    return text


@dataclass(frozen=True, eq=False)  # identity hash: members are dict keys
class Member:
    """One seed of one setting of a job: where its record goes, the config (learning rate) it trains with, and with
    overwrite=true the stamp of the record it was asked to replace."""

    cfg: DictConfig
    seed: int
    path: Path
    replaces: tuple | None = None


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def to_train(m: Member) -> bool:
    """Whether `m` still needs training: not done, or (overwrite=true) done by exactly the record that was there when
    this job started; a record another job wrote since is fresh and stays."""
    return not done(m.path) or (m.replaces is not None and _stamp(m.path) == m.replaces)


def run_packed(members: list[Member], prepared: Prepared, device, clock: JobClock) -> dict[Member, dict]:
    """Train the claimable `members` (seeds x learning rates of one bias-family setting) in packs over one frozen
    backbone; write and return their records. Members whose checkpoints stand at different epochs go in different
    packs, so each resumes where it stopped."""
    claims = {}
    for m in members:
        claim = Claim(m.path.parent, m.cfg.train.claim_timeout_s)
        holder = claim.acquire()
        if holder is None and to_train(m):
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
        clock.plan(len(groups))
        for _, group in sorted(groups.items(), reverse=True):
            records.update(train_pack(group, prepared, device, lambda: [c.beat() for c in claims.values()],
                                      clock=clock))
        return records
    finally:
        for claim in claims.values():
            claim.release()


def train_pack(resume: dict[Member, dict | None], prepared: Prepared, device, heartbeat,
               clock: JobClock | None = None) -> dict[Member, dict]:
    """One packed training of the claimed members in `resume` (all at the same checkpoint epoch; their checkpoints as
    values), then one record per member."""
    group = list(resume)
    cfg = group[0].cfg
    started, t0 = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    inits, initials = [], {}
    for m in group:  # each setting starts from its own seeded head, as a one-by-one run would
        model, selection, initials[m] = start_seed(m.cfg, m.seed, torch.device("cpu"))
        inits.append(trained_state(model, selection))
    checkpoints = [file_in(m.path.parent, CHECKPOINT) if cfg.train.checkpoint else None for m in group]
    tracking = [start_tracking(m.cfg, m.seed, m.path.parent, prepared.fingerprints, len(prepared.train))
                for m in group]
    try:
        results = train_packed(model, selection, inits, [m.seed for m in group], [m.cfg.optim.lr for m in group],
                               prepared.train, prepared.train_probe, prepared.dev, cfg, device, prepared.pad_id,
                               checkpoints, heartbeat, list(resume.values()), lambda k, row: tracking[k].epoch(row),
                               clock=clock)
    except BaseException as e:
        for t in tracking:
            t.abort()
        if not isinstance(e, torch.OutOfMemoryError):
            raise
        raise UserError(f"packed x{len(group)} ({len(group)} x batch {cfg.train.batch_size} rows) does not fit in "
                        f"{device} memory; pack fewer settings (train.pack_lrs=false, fewer seeds per job), "
                        f"train.bf16=true or data.padding=longest; finished epochs are kept in the checkpoints") from None
    resumed = f", resumed after epoch {results[0].resumed_after}" if results[0].resumed_after else ""
    speed = results[0].timings.get("packed_train_samples_per_s")
    log(f"packed x{len(group)}: {f'{speed:.1f}' if speed else 'n/a'} training samples/s over all settings on "
        f"{device}{resumed}")
    packed = {"settings": len(group), "seeds": [m.seed for m in group], "lrs": [m.cfg.optim.lr for m in group],
              "dropout": cfg.train.packed_dropout}
    records = {}
    for m, result, track in zip(group, results, tracking, strict=True):
        model, selection, _ = start_seed(m.cfg, m.seed, device)
        if result.chosen_state is not None:
            load_trained_state(model, selection, result.chosen_state)
        record = finish_seed(m.cfg, m.seed, prepared, m.path.parent, device, model, selection, initials[m], result,
                             t0, started, {"packed": packed})
        save_record(m.path, record)
        track.finish(record)
        records[m] = record
        report(record)
    return records


def run_one(m: Member, prepared: Prepared, device, clock: JobClock | None = None) -> dict | None:
    """Train one seed alone under its claim; None when another job holds it. `clock` has this training planned."""
    claim = Claim(m.path.parent, m.cfg.train.claim_timeout_s)
    holder = claim.acquire()
    if holder is not None:
        if clock is not None:
            clock.drop()
        log(f"seed {m.seed}: being trained by another job ({holder.get('host')}, pid {holder.get('pid')}, "
            f"SLURM job {holder.get('slurm_job_id')}); skipped")
        return None
    try:
        if not to_train(m):  # another job finished it while we waited
            if clock is not None:
                clock.drop()
            return read_record(m.path)
        tracking = start_tracking(m.cfg, m.seed, m.path.parent, prepared.fingerprints, len(prepared.train))
        try:
            record = run_seed(m.cfg, m.seed, prepared, m.path.parent, device, claim.beat, tracking.epoch,
                              clock=clock)
        except BaseException:
            tracking.abort()
            raise
        save_record(m.path, record)
        tracking.finish(record)
    finally:
        claim.release()
    if record["resumed_after_epoch"]:
        log(f"seed {m.seed}: resumed from the checkpoint after epoch {record['resumed_after_epoch']}")
    report(record)
    return record


def describe(key: dict) -> str:
    return f"{key['model']} {key['task']} {key['method']} lr={key['lr']:g}"


def job_members(cfg, prepared: Prepared, root: Path) -> list[tuple[DictConfig, dict, list[Member]]]:
    """Per setting of the job: its config, key and one Member per seed. Writes the setting's config.yaml, and adopts
    seeds finished under schema 1 (before fingerprints) instead of training them again."""
    out = []
    for setting in job_settings(cfg):
        config = OmegaConf.to_container(setting, resolve=True)
        key = setting_key(config, prepared.fingerprints)
        folder = setting_dir(root, key)  # a name that would leave runs_dir: UserError before anything is created
        folder.mkdir(parents=True, exist_ok=True)
        if not (config_file := file_in(folder, "config.yaml")).exists():
            OmegaConf.save(setting, config_file, resolve=True)
        members = []
        for seed in dict.fromkeys(cfg.seeds):  # a seed listed twice is one seed
            path = file_in(seed_dir(root, key, seed), RECORD)
            is_done = done(path)  # reads the record and checks its patch: once, not per question below
            if not is_done and (adopted := adopt_v1(root, config, key, prepared.fingerprints, seed)):
                log(f"seed {seed}: finished before fingerprints were recorded ({read_record(adopted)['adopted_from']});"
                    f" adopted, not retrained")
                is_done = done(path)
            if not is_done and (why := redo_reason(path)):  # a done seed has no reason to be redone
                log(f"seed {seed}: {why}; training it again")
            members.append(Member(setting, seed, path, _stamp(path) if cfg.overwrite and is_done else None))
        out.append((setting, key, members))
    return out


def packing_problem_of(cfg, seed: int) -> str | None:
    """Why this job's settings cannot train packed (the method, or this model's architecture), or None."""
    if not packable(cfg.method.name):
        return f"{cfg.method.name} cannot be packed (packed training covers {', '.join(sorted(PACKABLE))})"
    model, selection, _ = start_seed(cfg, seed, torch.device("cpu"))
    return packing_problem(model, selection)


def run_job(cfg) -> list[list[dict]]:
    """Train every unfinished seed of the job's settings (one, or the lr grid with train.pack_lrs); returns, per
    setting, all its done records (finished or diverged)."""
    torch.set_num_threads(threads_here(cfg.train.threads))  # the CPUs this job may use, not the node's (core.threads)
    device = pick_device(cfg.train.device)
    root = check_runs_dir(cfg.runs_dir)
    prepared = Prepared(cfg)  # the learning rate does not change the data
    settings = job_members(cfg, prepared, root)
    for _, key, members in settings:
        left = sum(to_train(m) for m in members)
        log(f"{describe(key)}: {len(members)} seeds, {len(members) - left} already finished -> {root / key['dir']}")
    todo = [m for _, _, members in settings for m in members if to_train(m)]
    records = {}
    clock = JobClock(-(-len(prepared.train) // cfg.train.batch_size) * cfg.train.epochs if todo else 0)
    if cfg.train.packed and todo:  # even a lone setting: its dropout stream must not depend on being alone
        problem = packing_problem_of(cfg, todo[0].seed)
        if problem is None:
            records.update(run_packed(todo, prepared, device, clock))
        else:
            log(f"note: {problem}; training one seed at a time")
    clock.plan(sum(m not in records for m in todo))
    out = []
    for _, key, members in settings:
        for m in members:
            if m in records:
                continue
            record = run_one(m, prepared, device, clock) if m in todo else read_record(m.path)
            if record is not None:
                records[m] = record
        mine = [records[m] for m in members if m in records]
        out.append(mine)
        if not mine:
            log(f"{describe(key)}: no finished seed yet")
            continue
        main = mine[0]["main"]
        baseline = prepared.kind.baseline(prepared.dev[main["split"]], main["metric"])
        log(f"{describe(key)}: {summary(mine)}{baseline_note(baseline)}")
    sys.stdout.flush()
    return out
