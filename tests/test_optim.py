"""optim.name: the authors' 2021 transformers AdamW (adamw_hf2021) against a plain reference of its update, one-by-one
and packed; the default stays torch.optim.AdamW."""

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bitfit_exp.core.config_dir import conf_dir
from bitfit_exp.core.errors import UserError
from bitfit_exp.model.methods import Selection
from bitfit_exp.train.optim import AdamWHF2021
from bitfit_exp.train.packed import PackedAdamW
from bitfit_exp.train.trainer import make_optimizer

B1, B2, STEPS = 0.9, 0.999, 6
EPS = 1e-3  # large, so that where eps meets the bias correction changes the result well above float error


def reference(rule: str, grads, p0, lr, eps=EPS, wd=0.0):
    """Each step written out from the update rules, element by element in float64."""
    p, m, v = list(p0), [0.0] * len(p0), [0.0] * len(p0)
    for t, g in enumerate(grads, start=1):
        for i in range(len(p)):
            if rule == "torch":
                p[i] *= 1 - lr * wd
            m[i] = B1 * m[i] + (1 - B1) * g[i]
            v[i] = B2 * v[i] + (1 - B2) * g[i] ** 2
            if rule == "hf2021":
                p[i] -= lr * math.sqrt(1 - B2**t) / (1 - B1**t) * m[i] / (math.sqrt(v[i]) + eps)
                p[i] *= 1 - lr * wd
            else:
                p[i] -= lr / (1 - B1**t) * m[i] / (math.sqrt(v[i]) / math.sqrt(1 - B2**t) + eps)
    return np.array(p)


def grads_and_start(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=1e-2, size=(STEPS, n)), rng.normal(size=n)


def run(optimizer_cls, grads, p0, lr, wd=0.0, dtype=torch.float64):
    p = torch.nn.Parameter(torch.tensor(p0, dtype=dtype))
    opt = optimizer_cls([p], lr=lr, betas=(B1, B2), eps=EPS, weight_decay=wd)
    for g in grads:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return p.detach().numpy()


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_hf2021_matches_the_reference_update(wd):
    grads, p0 = grads_and_start()
    ours = run(AdamWHF2021, grads, p0, lr=0.01, wd=wd)
    np.testing.assert_allclose(ours, reference("hf2021", grads, p0, 0.01, wd=wd), rtol=0, atol=1e-14)
    # The two rules really differ here, so the comparison above can tell them apart.
    assert np.abs(ours - reference("torch", grads, p0, 0.01, wd=wd)).max() > 1e-4


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_torch_adamw_is_the_reference_torch_update(wd):
    grads, p0 = grads_and_start(seed=1)
    np.testing.assert_allclose(run(torch.optim.AdamW, grads, p0, lr=0.01, wd=wd),
                               reference("torch", grads, p0, 0.01, wd=wd), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name,rule", [("adamw", "torch"), ("adamw_hf2021", "hf2021")])
def test_packed_adamw_follows_each_rule_per_setting(name, rule):
    """Two settings with their own learning rates in one [K, n] parameter; no clipping."""
    lrs, wd = [0.01, 0.03], 0.1
    grads, p0 = grads_and_start(n=4, seed=2)
    packed = torch.nn.Parameter(torch.tensor(np.stack([p0, -p0]), dtype=torch.float64))
    opt = PackedAdamW([packed], lrs, betas=(B1, B2), eps=EPS, weight_decay=wd, name=name)
    opt.lrs = torch.tensor(lrs, dtype=torch.float64)  # float32 learning rates would blur the comparison
    for g in grads:
        packed.grad = torch.tensor(np.stack([g, 2 * g]), dtype=torch.float64)
        opt.step()
    for k, (start, scale) in enumerate([(p0, 1), (-p0, 2)]):
        expected = reference(rule, grads * scale, start, lrs[k], wd=wd)
        np.testing.assert_allclose(packed[k].detach().numpy(), expected, rtol=0, atol=1e-12)


def test_make_optimizer_picks_by_name():
    model = torch.nn.Linear(3, 2)
    selection = Selection(params={"bias": None})
    optim = OmegaConf.create({"name": "adamw", "lr": 1e-3, "eps": 1e-6, "betas": [0.9, 0.999], "weight_decay": 0.0})
    assert type(make_optimizer(model, selection, optim)) is torch.optim.AdamW
    optim.name = "adamw_hf2021"
    made = make_optimizer(model, selection, optim)
    assert type(made) is AdamWHF2021 and made.param_groups[0]["eps"] == 1e-6
    optim.name = "adam"
    with pytest.raises(UserError, match="optim.name='adam' is not valid; choose one of adamw, adamw_hf2021"):
        make_optimizer(model, selection, optim)
    with pytest.raises(UserError, match="optim.name='sgd'"):
        PackedAdamW([torch.nn.Parameter(torch.zeros(2, 3))], [0.1, 0.2], name="sgd")


def test_config_group_switches_only_the_update():
    with initialize_config_dir(version_base="1.3", config_dir=conf_dir()):
        default = OmegaConf.to_container(compose("config").optim, resolve=True)
        authors = OmegaConf.to_container(compose("config", ["optim=adamw_hf2021"]).optim, resolve=True)
    assert default["name"] == "adamw" and authors["name"] == "adamw_hf2021"
    assert {k: v for k, v in authors.items() if k != "name"} == {k: v for k, v in default.items() if k != "name"}
