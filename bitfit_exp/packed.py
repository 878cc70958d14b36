"""Packed training: K bias-only settings (seeds, learning rates) in one forward/backward over one frozen backbone.

Bias-family methods never change a weight matrix, so K settings can share the frozen weights and run as one batch
of K*B rows: each setting keeps its own biases, head, AdamW state, learning rate, gradient clipping and data order.
Linear and LayerNorm modules with trained parameters are swapped for packed versions that hold K copies of what
trains and add setting k's bias to rows [k*B, (k+1)*B). Losses are summed over settings (each the mean over its own
rows), so every setting gets exactly its own gradient.

What differs from K separate runs: dropout masks are drawn for the packed batch (same distribution, another random
stream) and matrix products run on other shapes, so results agree to floating-point tolerance with dropout off and
within seed noise with it on (tests/test_packed.py).

>>> from bitfit_exp.packed import packable
>>> packable("bitfit"), packable("full")
(True, False)
"""

import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bitfit_exp.data import Encoded, batches
from bitfit_exp.methods import Selection
from bitfit_exp.metrics import compute_metrics
from bitfit_exp.training import SeedResult, freeze, lr_schedule, predict

PACKABLE = {"bitfit", "bm2_bq", "bm2", "bq", "biases", "frozen"}


def packable(method: str) -> bool:
    return method in PACKABLE


class PackedLinear(nn.Module):
    """nn.Linear with a frozen shared weight (or K trained weights) and K trained biases (or a frozen one)."""

    def __init__(self, linear: nn.Linear, k: int, train_weight: bool, train_bias: bool):
        super().__init__()
        self.k, self.out_features = k, linear.out_features
        self.register_buffer("weight", linear.weight.detach(), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)
        self.weights = nn.ParameterList([linear.weight.detach().clone() for _ in range(k)] if train_weight else [])
        self.biases = nn.ParameterList([linear.bias.detach().clone() for _ in range(k)] if train_bias else [])

    def forward(self, x):
        rows = x.reshape(self.k, -1, x.shape[-1])
        if len(self.weights):
            y = torch.bmm(rows, torch.stack(list(self.weights)).transpose(1, 2))
        else:
            y = F.linear(rows, self.weight, None if len(self.biases) else self.bias)
        if len(self.biases):
            y = y + torch.stack(list(self.biases))[:, None, :]
        return y.reshape(*x.shape[:-1], self.out_features)


class PackedLayerNorm(nn.Module):
    """nn.LayerNorm with a frozen shared gain and K trained biases."""

    def __init__(self, norm: nn.LayerNorm, k: int):
        super().__init__()
        self.k, self.shape, self.eps = k, norm.normalized_shape, norm.eps
        self.register_buffer("weight", norm.weight.detach(), persistent=False)
        self.biases = nn.ParameterList([norm.bias.detach().clone() for _ in range(k)])

    def forward(self, x):
        y = F.layer_norm(x, self.shape, self.weight, None, self.eps)
        rows = y.reshape(self.k, -1, y.shape[-1]) + torch.stack(list(self.biases))[:, None, :]
        return rows.reshape(y.shape)


def pack(model: nn.Module, selection: Selection, k: int) -> list[dict[str, nn.Parameter]]:
    """Swap the modules that own trained parameters for packed ones, in place; returns, per setting, its trained
    parameters under their unpacked names (`bert.encoder.layer.0.attention.self.query.bias`, ...)."""
    if selection.masks:
        raise ValueError("packed training needs whole trained tensors; masked methods (rand_*) train one by one")
    trained = set(selection.params)
    settings: list[dict[str, nn.Parameter]] = [{} for _ in range(k)]
    for name, module in list(model.named_modules()):
        owned = {p: f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)}
        hit = {p for p, full in owned.items() if full in trained}
        if not hit:
            continue
        if isinstance(module, nn.Linear):
            packed = PackedLinear(module, k, "weight" in hit, "bias" in hit)
        elif isinstance(module, nn.LayerNorm) and hit == {"bias"}:
            packed = PackedLayerNorm(module, k)
        else:
            raise ValueError(f"packed training cannot train {sorted(owned[p] for p in hit)}: only biases of linear "
                             f"and LayerNorm layers and linear heads; train this method one setting at a time")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, packed)
        for i in range(k):
            if "weight" in hit:
                settings[i][owned["weight"]] = packed.weights[i]
            if "bias" in hit:
                settings[i][owned["bias"]] = packed.biases[i]
    for p in model.parameters():
        p.requires_grad_(False)
    for params in settings:
        for p in params.values():
            p.requires_grad_(True)
    return settings


def packed_loss(logits, labels, k: int, regression: bool):
    """Sum over settings of each setting's mean loss: setting k's gradient is exactly that of its own loss."""
    if regression:
        rows = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype), reduction="none")
    else:
        rows = F.cross_entropy(logits, labels, reduction="none")
    per_setting = rows.view(k, -1).mean(1)
    return per_setting.sum(), per_setting.detach()


def packed_evaluate(model, data: Encoded, cfg, device, pad_id, k) -> list[dict[str, float]]:
    preds = predict(model, data, cfg, device, pad_id, k)
    return [compute_metrics(cfg.task.metrics, p, data.labels) for p in preds]


def train_packed(model, selection: Selection, inits: list[dict[str, torch.Tensor]], seeds: list[int],
                 lrs: list[float], train: Encoded, train_probe: Encoded, dev: dict[str, Encoded], cfg, device,
                 pad_id: int) -> list[SeedResult]:
    """Train len(seeds) settings of one bias-family method at once; `inits[k]` holds setting k's initial trained
    values (its seeded head), `lrs[k]` its learning rate. Returns one SeedResult per setting, as `train_seed`."""
    k = len(seeds)
    freeze(model, selection)
    settings = pack(model, selection, k)
    with torch.no_grad():
        for params, init in zip(settings, inits, strict=True):
            for name, p in params.items():
                p.copy_(init[name])
    model.to(device)
    optimizer = torch.optim.AdamW(
        [{"params": list(params.values()), "lr": lr} for params, lr in zip(settings, lrs, strict=True)],
        eps=cfg.optim.eps, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    bsz, n = cfg.train.batch_size, len(train)
    schedule = lr_schedule(optimizer, -(-n // bsz), cfg)
    order_rngs = [torch.Generator().manual_seed(s) for s in seeds]
    main_split, main_metric = next(iter(cfg.task.eval_splits)), cfg.task.metric
    show = {"auto": None, True: False, False: True}[cfg.train.progress]
    regression = cfg.task.num_labels == 1

    epochs = [[] for _ in range(k)]
    best, best_state = [None] * k, [None] * k
    train_s = eval_s = 0.0
    for epoch in range(1, cfg.train.epochs + 1):
        model.train()
        t0, losses = time.perf_counter(), []
        orders = [torch.randperm(n, generator=g).tolist() for g in order_rngs]
        for start in tqdm(range(0, n, bsz), desc=f"packed x{k} epoch {epoch}/{cfg.train.epochs}", leave=False,
                          disable=show):
            rows = [order[start:start + bsz] for order in orders]
            width = cfg.data.max_length if cfg.data.padding == "max_length" else \
                max(len(train.input_ids[i]) for r in rows for i in r)
            parts = [next(batches(train, r, len(r), pad_id, width)) for r in rows]
            batch = {key: torch.cat([p[key] for p in parts]).to(device) for key in parts[0]}
            labels = batch.pop("labels")
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(cfg.train.bf16)):
                logits = model(**batch).logits.float()
            loss, per_setting = packed_loss(logits, labels, k, regression)
            loss.backward()
            if cfg.train.grad_clip:
                for group in optimizer.param_groups:  # per setting: a global norm would couple them
                    torch.nn.utils.clip_grad_norm_(group["params"], cfg.train.grad_clip)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(per_setting)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        dev_scores = {split: packed_evaluate(model, data, cfg, device, pad_id, k) for split, data in dev.items()}
        train_scores = packed_evaluate(model, train_probe, cfg, device, pad_id, k)
        t2 = time.perf_counter()
        train_s, eval_s = train_s + t1 - t0, eval_s + t2 - t1
        mean_loss = torch.stack(losses).float().mean(0)
        for i in range(k):
            row = {"epoch": epoch, "train_loss": float(mean_loss[i]),
                   "dev": {split: scores[i] for split, scores in dev_scores.items()}, "train": train_scores[i],
                   "train_s": t1 - t0, "eval_s": t2 - t1}
            epochs[i].append(row)
            score = row["dev"][main_split][main_metric]
            if best[i] is None or score > best[i][1]:
                best[i] = (epoch, score)
                if cfg.train.select == "best":
                    best_state[i] = {name: p.detach().cpu().clone() for name, p in settings[i].items()}

    results = []
    for i in range(k):
        last = {name: p.detach().cpu().clone() for name, p in settings[i].items()}
        chosen = best_state[i] if cfg.train.select == "best" else last
        timings = {"train_s": train_s, "eval_s": eval_s, "train_samples_per_s": n * cfg.train.epochs / train_s,
                   "packed_train_samples_per_s": k * n * cfg.train.epochs / train_s}
        results.append(SeedResult(epochs[i], best[i][0], best[i][0] if cfg.train.select == "best" else
                                  cfg.train.epochs, chosen, timings))
    return results
