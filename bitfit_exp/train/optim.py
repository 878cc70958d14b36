"""Optimizer choice (`optim.name`): torch.optim.AdamW (`adamw`, the default) or the 2021 `transformers` AdamW the
authors' code used (`adamw_hf2021`, transformers 4.2.1 with correct_bias=True).

The two differ only in where eps meets the bias correction (and, with weight decay on, in its order):

    torch:  p -= lr*wd*p;  p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
    hf2021: p -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps);  p -= lr*wd*p

so hf2021's eps weighs sqrt(1-b2^t) times less early on (about 0.03x at the first step with b2=0.999).

>>> from bitfit_exp.train.optim import optimizer_class
>>> optimizer_class("adamw_hf2021").__name__
'AdamWHF2021'
"""

import math

import torch

from bitfit_exp.core.errors import UserError


class AdamWHF2021(torch.optim.Optimizer):
    """`transformers.AdamW` as of 2021 (v4.2.1, correct_bias=True): eps added to sqrt(v) before the bias
    correction, which is folded into the step size; decoupled weight decay applied after the Adam update."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                step_size = group["lr"] * math.sqrt(1 - b2**t) / (1 - b1**t)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-step_size)
                if group["weight_decay"] > 0:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
        return loss


OPTIMIZERS = {"adamw": torch.optim.AdamW, "adamw_hf2021": AdamWHF2021}


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class of `optim.name`; a UserError naming the choices for anything else."""
    if name not in OPTIMIZERS:
        raise UserError(f"optim.name={name!r} is not valid; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]
