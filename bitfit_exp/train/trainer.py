"""One seed of one setting: freeze per the method, train with AdamW, evaluate every epoch, keep the chosen epoch.

>>> from bitfit_exp.train.trainer import seed_everything
>>> seed_everything(0)
"""

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitfit_exp.data.batches import Encoded, batches, padding
from bitfit_exp.kinds import all_finite, kind_of, model_logits, rows_of
from bitfit_exp.model.methods import Selection
from bitfit_exp.model.patch import load_trained_state, trained_state
from bitfit_exp.train.checkpoints import (
    checkpoint_problem,
    read_checkpoint,
    rng_states,
    save_checkpoint,
    set_aside_checkpoint,
    set_rng_states,
)
from bitfit_exp.train.optim import optimizer_class
from bitfit_exp.train.progress import JobClock, TrainProgress, batches_progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def compiled(model: nn.Module, mode) -> nn.Module:
    """`model` under torch.compile for the training steps (train.compile), sharing its parameters; itself when off.
    reduce-overhead replays CUDA graphs, which cuts the per-kernel launch cost that dominates small batches.

    Static shapes: one graph per input width (the paper's fixed 128, or each width of data.pad_multiple with dynamic
    padding). Symbolic shapes through the packed [K*B] reshapes made the second compile of a process take minutes.
    """
    mode = str(mode).lower()
    if mode == "false":
        return model
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)  # widths x last batch
    return torch.compile(model, mode=None if mode in ("true", "default") else mode, dynamic=False)


def freeze(model: nn.Module, selection: Selection) -> list[nn.Parameter]:
    """requires_grad only on the selected tensors; returns them in model order."""
    trained = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in selection.params)
        if name in selection.params:
            trained.append(p)
    return trained


def make_optimizer(model: nn.Module, selection: Selection, optim) -> torch.optim.Optimizer:
    named = dict(model.named_parameters())
    whole = [named[n] for n, m in selection.params.items() if m is None]
    masked = [named[n] for n, m in selection.params.items() if m is not None]
    groups = [{"params": whole, "weight_decay": optim.weight_decay}]
    if masked:
        # AdamW's decoupled decay would shrink unselected entries too; masked tensors get it in `masked_decay`.
        groups.append({"params": masked, "weight_decay": 0.0, "masked": True})
    adamw = optimizer_class(optim.name)  # torch.optim.AdamW, or the authors' 2021 transformers AdamW
    return adamw([g for g in groups if g["params"]], lr=optim.lr, eps=optim.eps, betas=tuple(optim.betas))


@dataclass
class Masks:
    """Gradient and weight-decay masks of a masked method, on the model's device."""

    by_param: list[tuple[nn.Parameter, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def build(cls, model: nn.Module, selection: Selection, device) -> "Masks":
        named = dict(model.named_parameters())
        return cls([(named[n], m.to(device)) for n, m in selection.masks.items()])

    def mask_grads(self) -> None:
        for p, m in self.by_param:
            if p.grad is not None:
                p.grad.mul_(m)

    def decay(self, lr: float, weight_decay: float) -> None:
        if weight_decay:
            with torch.no_grad():
                for p, m in self.by_param:
                    p.sub_(p * m * (lr * weight_decay))


def forward_all(model: nn.Module, data: Encoded, cfg, device, pad_id: int, k: int = 1,
                desc: str | None = None) -> tuple[list, list[bool]]:
    """Run every row of `data` through `model` in eval mode: per setting of a packed model of `k` settings (each
    scores every row), its logits batches (`model_logits` of each batch, float, on the CPU) and whether they were
    all finite. With `desc`, its progress is shown as train.progress says (train.progress)."""
    model.eval()
    out, finite = [[] for _ in range(k)], []
    todo = batches(data, range(len(data)), cfg.train.eval_batch_size, pad_id, **padding(cfg.data))
    if desc is not None:
        todo = batches_progress(todo, -(-len(data) // cfg.train.eval_batch_size), desc, cfg.train)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.train.bf16)):
        for batch in todo:
            inputs = {key: v.to(device).repeat(k, 1) for key, v in batch.items()}
            logits = _float(model_logits(model(**inputs)))
            for i in range(k):
                out[i].append(rows_of(logits, k, i))
            finite.append(torch.stack([all_finite(rows_of(logits, k, i)) for i in range(k)]))  # no sync per batch
    ok = torch.stack(finite).all(0).tolist() if finite else [True] * k
    return [[_cpu(b) for b in setting] for setting in out], ok


def _float(logits):
    return tuple(t.float() for t in logits) if isinstance(logits, tuple) else logits.float()


def _cpu(logits):
    return tuple(t.cpu() for t in logits) if isinstance(logits, tuple) else logits.cpu()


def predict(model: nn.Module, data: Encoded, cfg, device, pad_id: int, k: int = 1, desc: str | None = None):
    """The task kind's predictions for every example of `data` (GLUE: class ids, or scores for regression). A
    packed model of `k` settings scores every example once per setting and gets a list of k predictions back."""
    kind = kind_of(cfg.task)
    logits, _ = forward_all(model, data, cfg, device, pad_id, k, desc)
    predictions = [kind.decode(setting, data) for setting in logits]
    return predictions[0] if k == 1 else predictions


def evaluate(model, data: Encoded, cfg, device, pad_id, desc: str | None = None) -> dict[str, float]:
    """The task's metrics on `data` (NaN on every metric when the logits are not all finite)."""
    return evaluate_settings(model, data, cfg, device, pad_id, 1, desc)[0]


def evaluate_settings(model, data: Encoded, cfg, device, pad_id, k: int,
                      desc: str | None = None) -> list[dict[str, float]]:
    """Each of the `k` settings' metrics on `data` (a packed model scores every example once per setting). A
    setting whose logits are not all finite (a diverged model) scores NaN on every metric, without decoding."""
    kind, metrics = kind_of(cfg.task), list(cfg.task.metrics)
    logits, finite = forward_all(model, data, cfg, device, pad_id, k, desc)
    return [kind.score(kind.decode(setting, data), data, metrics) if ok else dict.fromkeys(metrics, float("nan"))
            for setting, ok in zip(logits, finite, strict=True)]


@dataclass
class SeedResult:
    """One trained setting. A diverged one (`diverged`: {"epoch": e, "reason": ...}) stopped at epoch e; its
    epochs, best and chosen epoch and state cover the finite epochs before e (None when there were none)."""

    epochs: list[dict]
    best_epoch: int | None
    chosen_epoch: int | None
    chosen_state: dict[str, torch.Tensor] | None
    timings: dict[str, float]
    resumed_after: int | None = None  # the epoch of the checkpoint this run continued from
    diverged: dict | None = None


def non_finite(loss: torch.Tensor | float, row_scores: dict[str, dict[str, float]]) -> str | None:
    """Why an epoch counts as diverged (a non-finite mean training loss, or NaN metrics from non-finite
    predictions), or None.

    >>> non_finite(0.5, {"dev": {"accuracy": 0.5}}), non_finite(float("nan"), {})
    (None, 'non-finite training loss')
    >>> non_finite(0.5, {"dev": {"accuracy": float("nan")}})
    'non-finite predictions on dev'
    """
    if not math.isfinite(float(loss)):
        return "non-finite training loss"
    for split, scores in row_scores.items():
        if not all(math.isfinite(v) for v in scores.values()):
            return f"non-finite predictions on {split}"
    return None


def lr_schedule(optimizer, steps_per_epoch: int, cfg):
    """Constant learning rate (the paper), after an optional linear warmup over optim.warmup_ratio of the steps."""
    warmup = int(cfg.optim.warmup_ratio * steps_per_epoch * cfg.train.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)


class Stopped(Exception):
    """Training stopped at an epoch boundary (train.stop_after_epochs); the checkpoint lets a rerun resume."""




def trained_shapes(model: nn.Module, selection: Selection) -> dict[str, torch.Size]:
    """Shape of each trained value as `trained_state` stores it (masked tensors: their selected entries)."""
    named = dict(model.named_parameters())
    return {n: named[n].shape if m is None else torch.Size([int(m.sum())]) for n, m in selection.params.items()}


def resume_single(state: dict, model, selection: Selection, optimizer, schedule, order_rng) -> bool:
    """Load a checkpoint's trained values, optimizer, schedule and RNG states; False (nothing changed) when they do
    not fit this model and optimizer."""
    if checkpoint_problem(state, "single", trained_shapes(model, selection)):
        return False
    before = (rng_states(order_rng), optimizer.state_dict(), schedule.state_dict())
    try:
        set_rng_states(state["rng"], order_rng)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError):
        set_rng_states(before[0], order_rng)
        optimizer.load_state_dict(before[1])
        schedule.load_state_dict(before[2])
        return False
    load_trained_state(model, selection, state["trained"])
    return True


def train_seed(model, selection: Selection, train: Encoded, train_probe: Encoded, dev: dict[str, Encoded],
               cfg, seed: int, device, pad_id: int, checkpoint: Path | None = None,
               heartbeat: Callable[[], None] = lambda: None,
               on_epoch: Callable[[dict], None] = lambda row: None, clock: JobClock | None = None) -> SeedResult:
    """Train `model` (already on `device`) for cfg.train.epochs; evaluate dev splits and a train probe each epoch.
    Progress (train.progress) is a bar or log lines whose job ETA comes from `clock` (the runner's, for all seeds).

    With `checkpoint`, the state after each epoch is saved there and a run that finds one resumes from it: trained
    parameters, optimizer and schedule, RNG states and data order, so the result equals an uninterrupted run.

    Divergence (a non-finite mean training loss, checked once per epoch, or non-finite predictions) stops training
    at that epoch: the result's `diverged` says where and why, and it keeps the finite epochs before it, the chosen
    one being the best (train.select=best) or the last of them; the model is left holding the chosen state.
    `on_epoch` gets each finished epoch's record row (the trackers, train.tracking).
    """
    trained = freeze(model, selection)
    forward = compiled(model, cfg.train.compile)
    labels = kind_of(cfg.task).batch_labels
    optimizer = make_optimizer(model, selection, cfg.optim)
    masks = Masks.build(model, selection, device)
    steps_per_epoch = -(-len(train) // cfg.train.batch_size)
    schedule = lr_schedule(optimizer, steps_per_epoch, cfg)
    order_rng = torch.Generator().manual_seed(seed)
    main_split, main_metric = next(iter(cfg.task.eval_splits)), cfg.task.metric
    keep_last = cfg.train.select != "best"

    # kept: the state of the epoch train.select would choose so far (the best, or the last finite one)
    epochs, best, kept, train_s, eval_s, first, diverged = [], None, None, 0.0, 0.0, 1, None
    state = read_checkpoint(checkpoint, "single") if checkpoint is not None else None
    if state is not None and not resume_single(state, model, selection, optimizer, schedule, order_rng):
        set_aside_checkpoint(checkpoint, f"checkpoint {checkpoint} does not fit this model and optimizer")
        state = None
    if state is not None:
        epochs, best, train_s, eval_s, first = (state["epochs"], state["best"], state["train_s"], state["eval_s"],
                                                state["epoch"] + 1)
        kept = state["trained"] if keep_last else state["best_state"]
    stop_at = first - 1 + cfg.train.stop_after_epochs if cfg.train.stop_after_epochs else None
    progress = TrainProgress(cfg.train, f"seed {seed}", steps_per_epoch, cfg.train.epochs, first, clock)

    for epoch in range(first, cfg.train.epochs + 1):
        model.train()
        t0, losses = time.perf_counter(), []
        order = torch.randperm(len(train), generator=order_rng).tolist()
        for batch in progress.epoch(batches(train, order, cfg.train.batch_size, pad_id, labels, **padding(cfg.data)),
                                    epoch):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.train.bf16)):
                loss = forward(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            masks.mask_grads()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(trained, cfg.train.grad_clip)
            masks.decay(schedule.get_last_lr()[0], cfg.optim.weight_decay)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            progress.step(losses)
            heartbeat()
        train_loss = float(torch.stack(losses).float().mean())  # the epoch's one sync
        t1 = time.perf_counter()
        train_s += t1 - t0
        if reason := non_finite(train_loss, {}):
            diverged = {"epoch": epoch, "reason": reason}
            break
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "dev": {split: evaluate(model, data, cfg, device, pad_id, f"seed {seed} epoch {epoch} eval {split}")
                    for split, data in dev.items()},
            "train": evaluate(model, train_probe, cfg, device, pad_id, f"seed {seed} epoch {epoch} eval train probe"),
        }
        t2 = time.perf_counter()
        progress.evaluated(t2 - t1)
        eval_s += t2 - t1
        if reason := non_finite(train_loss, {**row["dev"], "train probe": row["train"]}):
            diverged = {"epoch": epoch, "reason": reason}
            break
        row.update(train_s=t1 - t0, eval_s=t2 - t1)
        epochs.append(row)
        on_epoch(row)
        score = row["dev"][main_split][main_metric]
        progress.epoch_done(f"seed {seed}", row, main_split, main_metric)
        now = trained_state(model, selection) if keep_last or checkpoint is not None else None
        if best is None or score > best[1]:
            best = (epoch, score)
            if not keep_last:
                kept = trained_state(model, selection)
        if keep_last:
            kept = now
        if checkpoint is not None and epoch < cfg.train.epochs:
            save_checkpoint(checkpoint, mode="single", epoch=epoch, trained=now,
                            optimizer=optimizer.state_dict(), schedule=schedule.state_dict(),
                            rng=rng_states(order_rng), epochs=epochs, best=best,
                            best_state=None if keep_last else kept, train_s=train_s, eval_s=eval_s)
        heartbeat()
        if stop_at is not None and epoch == stop_at and epoch < cfg.train.epochs:
            raise Stopped(f"seed {seed}: stopped after epoch {epoch} (train.stop_after_epochs); rerun to resume")

    chosen_epoch = (epochs[-1]["epoch"] if keep_last else best[0]) if epochs else None
    if kept is not None:
        load_trained_state(model, selection, kept)
    trained_epochs = diverged["epoch"] if diverged else cfg.train.epochs
    timings = {"train_s": train_s, "eval_s": eval_s,
               "train_samples_per_s": len(train) * trained_epochs / train_s if train_s else None}
    return SeedResult(epochs, best[0] if best else None, chosen_epoch, kept, timings, first - 1 or None, diverged)
