"""Packed training: K bias-only settings (seeds, learning rates) in one forward/backward over one frozen backbone.

Bias-family methods never change a weight matrix, so K settings can share the frozen weights and run as one batch
of K*B rows: each setting keeps its own biases, head, AdamW state, learning rate, gradient clipping, data order and
dropout stream. Linear and LayerNorm modules with trained parameters are swapped for packed versions that hold K
copies of what trains and add setting k's bias to rows [k*B, (k+1)*B). Losses are summed over settings (each the
mean over its own rows), so every setting gets exactly its own gradient.

Dropout (train.packed_dropout): `per_setting` (default) draws setting k's masks from its own generator, seeded from
its seed, so a setting's result does not depend on which other settings share its pack (packed alone or with 19
others: the same record, to float tolerance) and each setting resumes from its own checkpoint. `shared` keeps the
model's fused attention kernels and draws one mask stream for the whole packed batch: faster, but a setting's masks
then depend on its place in the pack. Either way the masks differ from a one-by-one run's (another random stream,
same distribution); with dropout off, packed and one-by-one runs agree to float tolerance (tests/test_packed.py).

>>> from bitfit_exp.train.packed import dropout_seed
>>> dropout_seed(0) != 0  # a stream apart from the data order's
True
"""

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.pytorch_utils import Conv1D

from bitfit_exp.core.errors import UserError
from bitfit_exp.data.batches import Encoded, gather, padding
from bitfit_exp.kinds import kind_of, model_logits
from bitfit_exp.model.architectures import architecture, model_type
from bitfit_exp.model.loading import new_parameters
from bitfit_exp.model.methods import Selection
from bitfit_exp.train.checkpoints import checkpoint_problem, save_checkpoints, set_aside_checkpoint
from bitfit_exp.train.optim import AdamWHF2021, optimizer_class
from bitfit_exp.train.progress import JobClock, TrainProgress
from bitfit_exp.train.trainer import (
    SeedResult,
    Stopped,
    compiled,
    evaluate_settings,
    freeze,
    lr_schedule,
    non_finite,
)

ATTENTION = "bitfit_per_setting"


def dropout_seed(seed: int) -> int:
    """A setting's dropout stream: derived from its seed, apart from the data-order stream seeded with the seed."""
    return (seed * 1_000_003 + 0x5EED) % 2**63


class DropoutStreams:
    """One generator per setting on the model's device: rows [k*B, (k+1)*B) get masks from generator k only."""

    def __init__(self, seeds: list[int], device):
        self.generators = [torch.Generator(device).manual_seed(dropout_seed(s)) for s in seeds]

    def keep(self, x: torch.Tensor, p: float) -> torch.Tensor:
        scale = torch.empty_like(x)
        for rows, g in zip(scale.view(len(self.generators), -1), self.generators, strict=True):
            rows.bernoulli_(1 - p, generator=g)
        return scale.div_(1 - p)

    def states(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def set_states(self, states: list[torch.Tensor]) -> None:
        for g, state in zip(self.generators, states, strict=True):
            g.set_state(state)


class SettingDropout(nn.Module):
    """nn.Dropout over a packed batch whose masks come from each setting's own stream."""

    def __init__(self, p: float, streams: DropoutStreams):
        super().__init__()
        self.p, self.streams = p, streams

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * self.streams.keep(x, self.p)


def per_setting_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention whose probability dropout is the module's SettingDropout (`setting_dropout`, set by `pack`);
    without dropout (eval), plain SDPA. Covers grouped key/value heads (Qwen2) and causal decoders (GPT-2)."""
    drop = getattr(module, "setting_dropout", None)
    if not dropout or drop is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if (groups := getattr(module, "num_key_value_groups", 1)) > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling or query.size(-1) ** -0.5)
    if attention_mask is not None:  # sdpa_mask: True = attend (causality included)
        scores = scores.masked_fill(~attention_mask[..., :key.shape[-2]], torch.finfo(scores.dtype).min)
    elif kwargs.get("is_causal", getattr(module, "is_causal", False)) and query.shape[2] > 1:  # mask skipped for SDPA
        future = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    weights = drop(scores.softmax(-1))
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(ATTENTION, per_setting_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


class PackedLinear(nn.Module):
    """nn.Linear with a frozen shared weight (or K trained weights, [K, out, in]) and K trained biases ([K, out])."""

    def __init__(self, linear: nn.Linear, k: int, train_weight: bool, train_bias: bool):
        super().__init__()
        self.k, self.out_features = k, linear.out_features
        self.register_buffer("weight", linear.weight.detach(), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)
        self.weights = nn.Parameter(linear.weight.detach().expand(k, -1, -1).clone()) if train_weight else None
        self.biases = nn.Parameter(linear.bias.detach().expand(k, -1).clone()) if train_bias else None

    def forward(self, x):
        rows = x.reshape(self.k, -1, x.shape[-1])
        if self.weights is not None:
            y = torch.bmm(rows, self.weights.transpose(1, 2).to(rows.dtype))
        else:
            y = F.linear(rows, self.weight, None if self.biases is not None else self.bias)
        if self.biases is not None:
            y = y + self.biases[:, None, :].to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)


class PackedLayerNorm(nn.Module):
    """nn.LayerNorm with a frozen shared gain and K trained biases ([K, features])."""

    def __init__(self, norm: nn.LayerNorm, k: int):
        super().__init__()
        self.k, self.shape, self.eps = k, norm.normalized_shape, norm.eps
        self.register_buffer("weight", norm.weight.detach(), persistent=False)
        self.biases = nn.Parameter(norm.bias.detach().expand(k, -1).clone())

    def forward(self, x):
        y = F.layer_norm(x, self.shape, self.weight, None, self.eps)
        rows = y.reshape(self.k, -1, y.shape[-1]) + self.biases[:, None, :].to(y.dtype)
        return rows.reshape(y.shape)


class PackedParams:
    """The trained tensors of a packed model: one [K, *shape] parameter per trained tensor of the plain model, so
    every update touches all K settings in one kernel. `state(k)` / `load(k, values)` move one setting's values
    under the plain model's names (`bert.encoder.layer.0.attention.self.query.bias`, ...)."""

    def __init__(self, k: int):
        self.k, self.names, self.tensors = k, [], []

    def add(self, name: str, tensor: nn.Parameter) -> None:
        self.names.append(name)
        self.tensors.append(tensor)

    def state(self, k: int) -> dict[str, torch.Tensor]:
        return {n: t[k].detach().cpu().clone() for n, t in zip(self.names, self.tensors, strict=True)}

    def load(self, k: int, values: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, t in zip(self.names, self.tensors, strict=True):
                t[k].copy_(values[n])


def pack(model: nn.Module, selection: Selection, k: int, streams: DropoutStreams | None = None) -> PackedParams:
    """Swap the modules that own trained parameters for packed ones, in place, and return the packed parameters.
    With `streams`, every dropout (attention probabilities included) draws each setting's masks from its stream.
    Raises ValueError with `packing_problem`'s line when this model and selection cannot be packed."""
    if problem := packing_problem(model, selection):
        raise ValueError(problem)
    params = PackedParams(k)
    for name, module, owned, hit in _trained_modules(model, selection):
        if isinstance(module, nn.Linear):
            packed = PackedLinear(module, k, "weight" in hit, "bias" in hit)
        elif isinstance(module, Conv1D):
            packed = PackedConv1D(module, k)
        else:
            packed = PackedLayerNorm(module, k)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, packed)
        if "weight" in hit:
            params.add(owned["weight"], packed.weights)
        if "bias" in hit:
            params.add(owned["bias"], packed.biases)
    if streams is not None:
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Dropout):
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, SettingDropout(module.p, streams))
        _route_attention_dropout(model, streams)
        model.set_attn_implementation(ATTENTION)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.tensors:
        p.requires_grad_(True)
    return params


class PackedAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW's update for K settings at once, each with its own learning rate (`lrs`, [K]) and its own
    gradient-norm clipping, on [K, ...] parameters: a handful of kernels per step whatever K is.

    The group's `lr` is a schedule factor (LambdaLR scales it), so setting k steps with lrs[k] * lr.
    `name="adamw_hf2021"` steps like the authors' 2021 transformers AdamW instead (bitfit_exp/train/optim.py).
    """

    def __init__(self, params: list[nn.Parameter], lrs, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 max_grad_norm: float | None = None, name: str = "adamw"):
        super().__init__(params, {"lr": 1.0, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.lrs = torch.as_tensor(lrs, dtype=torch.float32)
        self.max_grad_norm = max_grad_norm
        self.k = len(self.lrs)
        self.hf2021 = optimizer_class(name) is AdamWHF2021

    def _flat(self, tensors) -> torch.Tensor:
        return torch.cat([t.reshape(self.k, -1) for t in tensors], dim=1)

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return None
        b1, b2 = group["betas"]
        grad = self._flat([p.grad for p in params])
        if self.max_grad_norm:  # clip_grad_norm_ per setting: coefficient max_norm / (norm + 1e-6), at most 1
            norms = grad.norm(dim=1, keepdim=True)
            grad.mul_((self.max_grad_norm / (norms + 1e-6)).clamp_(max=1.0))
        state = self.state[params[0]]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        lr = self.lrs.to(grad.device)[:, None] * group["lr"]
        value = self._flat(params)
        if group["weight_decay"] and not self.hf2021:
            value.mul_(1 - lr * group["weight_decay"])
        m.lerp_(grad, 1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        if self.hf2021:  # eps on the uncorrected sqrt(v); the bias correction goes into the step size
            value.sub_(m.div(v.sqrt().add_(group["eps"])).mul_(lr * (math.sqrt(1 - b2**t) / (1 - b1**t))))
            if group["weight_decay"]:  # decay after the update, as transformers' AdamW did
                value.mul_(1 - lr * group["weight_decay"])
        else:
            denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(group["eps"])
            value.sub_(m.div(denom).mul_(lr / (1 - b1**t)))
        torch._foreach_copy_(params, [part.view_as(p) for part, p in
                                      zip(value.split([p[0].numel() for p in params], dim=1), params, strict=True)])
        return None

    def setting_state(self, k: int) -> dict:
        state = self.state[self.param_groups[0]["params"][0]]
        if not state:
            return {}
        return {"step": state["step"], "exp_avg": state["exp_avg"][k].cpu().clone(),
                "exp_avg_sq": state["exp_avg_sq"][k].cpu().clone()}

    def load_setting_state(self, k: int, saved: dict, device) -> None:
        if not saved:
            return
        first = self.param_groups[0]["params"][0]
        state = self.state[first]
        if not state:
            width = sum(p[0].numel() for p in self.param_groups[0]["params"])
            state.update(step=saved["step"], exp_avg=torch.zeros(self.k, width, device=device),
                         exp_avg_sq=torch.zeros(self.k, width, device=device))
        if state["step"] != saved["step"]:
            raise ValueError("settings of one pack must resume from the same optimizer step")
        state["exp_avg"][k].copy_(saved["exp_avg"])
        state["exp_avg_sq"][k].copy_(saved["exp_avg_sq"])


def packed_loss(kind, logits, targets: dict[str, torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over settings of each setting's loss (the task kind's `setting_losses`: each the mean over its own rows),
    so setting k's gradient is exactly that of its own loss; and the per-setting losses, detached."""
    per_setting = kind.setting_losses(logits, targets, k)
    return per_setting.sum(), per_setting.detach()


def seek(schedule, step: int) -> None:
    """Put a LambdaLR schedule where it is after `step` steps, as if it had been stepped that often."""
    schedule.last_epoch = step
    for group, base, fn in zip(schedule.optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas, strict=True):
        group["lr"] = base * fn(step)
    schedule._last_lr = [group["lr"] for group in schedule.optimizer.param_groups]


def train_packed(model, selection: Selection, inits: list[dict[str, torch.Tensor]], seeds: list[int],
                 lrs: list[float], train: Encoded, train_probe: Encoded, dev: dict[str, Encoded], cfg, device,
                 pad_id: int, checkpoints: list[Path | None] | None = None,
                 heartbeat: Callable[[], None] = lambda: None,
                 resume: list[dict | None] | None = None,
                 on_epoch: Callable[[int, dict], None] = lambda k, row: None,
                 clock: JobClock | None = None) -> list[SeedResult]:
    """Train len(seeds) settings of one bias-family method at once; `inits[k]` holds setting k's initial trained
    values (its seeded head), `lrs[k]` its learning rate. Returns one SeedResult per setting, as `train_seed`.

    With `checkpoints`, setting k's state after each epoch is saved to checkpoints[k] (its own seed folder).
    `resume[k]`, a state read from such a checkpoint (`read_checkpoint(path, "packed")`), continues setting k from
    it; all settings of one call must be at the same epoch (the runner groups them). With per-setting dropout a
    setting resumes exactly, whichever settings share the new pack.

    A setting that diverges (non-finite mean training loss or predictions in an epoch) stops there as in
    `train_seed`; the others train on unchanged. Its rows never mix with theirs (every op is per row or per setting,
    clipping included), and it is parked from then on: its finite chosen state (or its init) back in place, its
    learning rate and Adam moments zeroed, so the pack carries no NaN. `on_epoch(k, row)` gets setting k's record
    row of each finished epoch (the trackers, train.tracking).
    """
    k = len(seeds)
    checkpoints = checkpoints or [None] * k
    freeze(model, selection)
    streams = DropoutStreams(seeds, device) if cfg.train.packed_dropout == "per_setting" else None
    params = pack(model, selection, k, streams)
    for i, init in enumerate(inits):
        params.load(i, init)
    model.to(device)
    forward = compiled(model, cfg.train.compile)
    optimizer = PackedAdamW(params.tensors, lrs, betas=cfg.optim.betas, eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay, max_grad_norm=cfg.train.grad_clip,
                            name=cfg.optim.name)
    bsz, n = cfg.train.batch_size, len(train)
    steps_per_epoch = -(-n // bsz)
    schedule = lr_schedule(optimizer, steps_per_epoch, cfg)
    order_rngs = [torch.Generator().manual_seed(s) for s in seeds]
    main_split, main_metric = next(iter(cfg.task.eval_splits)), cfg.task.metric
    kind = kind_of(cfg.task)
    pad = padding(cfg.data)
    keep_last = cfg.train.select != "best"

    # kept[i]: the state of the epoch train.select would choose so far for setting i (best, or last finite)
    epochs, best, kept, diverged = [[] for _ in range(k)], [None] * k, [None] * k, [None] * k
    train_s, eval_s, first = [0.0] * k, [0.0] * k, 1
    saved = resume or [None] * k
    if any(saved):
        done = {s["epoch"] if s else 0 for s in saved}
        if len(done) != 1:
            raise ValueError(f"settings of one pack must resume from the same epoch, got {sorted(done)}")
        first = done.pop() + 1
        shapes = {name: t.shape[1:] for name, t in zip(params.names, params.tensors, strict=True)}
        for i, state in enumerate(saved):
            if problem := checkpoint_problem(state, "packed", shapes):
                if checkpoints[i] is not None:
                    set_aside_checkpoint(checkpoints[i], f"checkpoint {checkpoints[i]} {problem}")
                raise UserError(f"seed {seeds[i]} lr={lrs[i]:g}: its checkpoint does not fit this model ({problem}); "
                                f"it was set aside: rerun to start that seed over")
            params.load(i, state["trained"])
            optimizer.load_setting_state(i, state["adam"], device)
            order_rngs[i].set_state(state["order"])
            epochs[i], best[i], diverged[i] = state["epochs"], state["best"], state.get("diverged")
            kept[i] = state["trained"] if keep_last else state["best_state"]
            train_s[i], eval_s[i] = state["train_s"], state["eval_s"]
        if streams is not None:
            streams.set_states([state["dropout"] for state in saved])
        seek(schedule, (first - 1) * steps_per_epoch)
        park(params, optimizer, [i for i in range(k) if diverged[i]], kept, inits, device)
    stop_at = first - 1 + cfg.train.stop_after_epochs if cfg.train.stop_after_epochs else None
    progress = TrainProgress(cfg.train, f"packed x{k}", steps_per_epoch, cfg.train.epochs, first, clock, "pack")

    ran = first - 1
    for epoch in range(first, cfg.train.epochs + 1):
        live = [i for i in range(k) if diverged[i] is None]
        if not live:
            break
        ran = epoch
        model.train()
        t0, losses = time.perf_counter(), []
        orders = [torch.randperm(n, generator=g).tolist() for g in order_rngs]
        for start in progress.epoch(range(0, n, bsz), epoch):
            rows = [i for order in orders for i in order[start:start + bsz]]  # setting k: rows [k*B, (k+1)*B)
            inputs = gather(train, rows, pad_id, **pad)
            targets = kind.batch_labels(train, torch.as_tensor(rows, dtype=torch.long), inputs["input_ids"].shape[1])
            inputs, targets = ({key: v.to(device, non_blocking=True) for key, v in part.items()}
                               for part in (inputs, targets))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.train.bf16)):
                logits = model_logits(forward(**inputs))
            loss, per_setting = packed_loss(kind, logits, targets, k)
            loss.backward()
            optimizer.step()  # clips each setting's gradient by its own norm: a global norm would couple them
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(per_setting)
            progress.step(losses)
            heartbeat()
        mean_loss = torch.stack(losses).float().mean(0).tolist()  # the epoch's one sync
        t1 = time.perf_counter()
        dev_scores = {split: evaluate_settings(model, data, cfg, device, pad_id, k,
                                               f"packed x{k} epoch {epoch} eval {split}")
                      for split, data in dev.items()}
        train_scores = evaluate_settings(model, train_probe, cfg, device, pad_id, k,
                                         f"packed x{k} epoch {epoch} eval train probe")
        t2 = time.perf_counter()
        progress.evaluated(t2 - t1)
        for i in live:
            train_s[i], eval_s[i] = train_s[i] + t1 - t0, eval_s[i] + t2 - t1
            row = {"epoch": epoch, "train_loss": mean_loss[i],
                   "dev": {split: scores[i] for split, scores in dev_scores.items()}, "train": train_scores[i],
                   "train_s": t1 - t0, "eval_s": t2 - t1}
            if reason := non_finite(mean_loss[i], {**row["dev"], "train probe": row["train"]}):
                diverged[i] = {"epoch": epoch, "reason": reason}
                continue
            epochs[i].append(row)
            on_epoch(i, row)
            score = row["dev"][main_split][main_metric]
            progress.epoch_done(f"seed {seeds[i]} lr={lrs[i]:g}", row, main_split, main_metric)
            if best[i] is None or score > best[i][1]:
                best[i] = (epoch, score)
                if not keep_last:
                    kept[i] = params.state(i)
            if keep_last:
                kept[i] = params.state(i)
        park(params, optimizer, [i for i in live if diverged[i]], kept, inits, device)
        if epoch < cfg.train.epochs:
            dropout_states = streams.states() if streams is not None else [None] * k
            save_checkpoints({
                path: dict(mode="packed", epoch=epoch, seed=seeds[i], lr=lrs[i], trained=params.state(i),
                           adam=optimizer.setting_state(i), order=order_rngs[i].get_state(),
                           dropout=dropout_states[i], epochs=epochs[i], best=best[i],
                           best_state=None if keep_last else kept[i], train_s=train_s[i], eval_s=eval_s[i],
                           diverged=diverged[i])
                for i, path in enumerate(checkpoints) if path is not None})
        heartbeat()
        if stop_at is not None and epoch == stop_at and epoch < cfg.train.epochs:
            raise Stopped(f"packed x{k}: stopped after epoch {epoch} (train.stop_after_epochs); rerun to resume")

    results = []
    for i in range(k):
        chosen = kept[i] if diverged[i] or not keep_last else params.state(i)
        chosen_epoch = (epochs[i][-1]["epoch"] if keep_last else best[i][0]) if epochs[i] else None
        trained_epochs = diverged[i]["epoch"] if diverged[i] else ran
        per_s = n * trained_epochs / train_s[i] if train_s[i] else None
        timings = {"train_s": train_s[i], "eval_s": eval_s[i], "train_samples_per_s": per_s,
                   "packed_train_samples_per_s": k * per_s if per_s else None}
        results.append(SeedResult(epochs[i], best[i][0] if best[i] else None, chosen_epoch, chosen, timings,
                                  first - 1 or None, diverged[i]))
    return results


def park(params: PackedParams, optimizer: PackedAdamW, settings: list[int], kept: list, inits: list, device) -> None:
    """Stop diverged `settings` from moving or carrying NaN: their chosen finite values (else their initial ones)
    back in place, learning rate 0, Adam moments zeroed. They keep riding in the pack, unread."""
    for i in settings:
        params.load(i, kept[i] if kept[i] is not None else inits[i])
        optimizer.lrs[i] = 0.0
        moments = optimizer.setting_state(i)
        if moments:
            optimizer.load_setting_state(i, {**moments, "exp_avg": torch.zeros_like(moments["exp_avg"]),
                                             "exp_avg_sq": torch.zeros_like(moments["exp_avg_sq"])}, device)


# --- packing across architectures (bitfit_exp.model.architectures) ---------------------------------------------------------


class PackedConv1D(nn.Module):
    """transformers' Conv1D (GPT-2; weight [in, out]) with a frozen shared weight and K trained biases ([K, out])."""

    def __init__(self, conv: Conv1D, k: int):
        super().__init__()
        self.k, self.nf = k, conv.nf
        self.register_buffer("weight", conv.weight.detach(), persistent=False)
        self.biases = nn.Parameter(conv.bias.detach().expand(k, -1).clone())

    def forward(self, x):
        rows = x.reshape(self.k, -1, x.shape[-1])
        y = torch.matmul(rows, self.weight.to(rows.dtype)) + self.biases[:, None, :].to(rows.dtype)
        return y.reshape(*x.shape[:-1], self.nf)


def _trained_modules(model: nn.Module, selection: Selection):
    """(module name, module, {own parameter: full name}, {own parameters that train}) for each module owning a
    trained parameter; a module shared by several layers (ALBERT) comes once."""
    trained = set(selection.params)
    for name, module in list(model.named_modules()):
        owned = {p: f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)}
        hit = {p for p, full in owned.items() if full in trained}
        if hit:
            yield name, module, owned, hit


def _packable_module(module: nn.Module, hit: set[str]) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, Conv1D | nn.LayerNorm) and hit == {"bias"}


def packing_problem(model: nn.Module, selection: Selection) -> str | None:
    """Why `selection` of `model` cannot train packed (one line, for the runner's note before it trains the
    settings one by one), or None. Packed training covers every family of bitfit_exp.model.architectures but DeBERTa-v2,
    with whole trained biases of Linear, Conv1D and LayerNorm layers and a linear head; per-setting dropout reaches
    each family's attention through the table's `attention` module. A parameter the checkpoint lacks
    (`models.new_parameters`) must be trained (each setting then starts from its own seed's values), not shared.

    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from bitfit_exp.model.methods import select
    >>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=16, max_position_embeddings=16))
    >>> packing_problem(model, select("bitfit", model)) is None
    True
    """
    if selection.masks:
        return ("packed training needs whole trained tensors; masked methods (rand_*, or part of a fused bias such "
                "as GPT-2's b_q alone) train one setting at a time")
    arch = architecture(model)
    if arch is None:
        return (f"packed training covers the families of bitfit_exp/model/architectures.py, not model_type "
                f"{model_type(model)!r}; training one setting at a time")
    if arch.pack_refusal:
        return f"{arch.pack_refusal}; training one setting at a time"
    if shared := [n for n in new_parameters(model) if n not in selection.params]:
        return (f"the checkpoint lacks {', '.join(shared)}, which each seed initialises at random but a pack would "
                f"share frozen from one seed (a checkpoint saved without its pooler, as masked-LM ones are)")
    for _, module, owned, hit in _trained_modules(model, selection):
        if not _packable_module(module, hit):
            return (f"packed training cannot train {sorted(owned[p] for p in hit)}: only biases of linear, Conv1D "
                    f"and LayerNorm layers and linear heads; train this method one setting at a time")
    return None


def can_pack(model: nn.Module, selection: Selection) -> bool:
    return packing_problem(model, selection) is None


def _route_attention_dropout(model: nn.Module, streams: DropoutStreams) -> None:
    """Give each attention module of the table its SettingDropout as `setting_dropout`, for per_setting_attention:
    the (already swapped) dropout module, or a new one for a family that keeps the probability as a float."""
    arch = architecture(model)
    for name, module in model.named_modules():
        layer = arch.split(name + ".")
        if layer is None or layer[1] != arch.attention + ".":
            continue
        drop = getattr(module, arch.attention_dropout)
        module.setting_dropout = drop if isinstance(drop, SettingDropout) else SettingDropout(float(drop), streams)
