"""Which parameters each fine-tuning method trains: one registry entry per method, like peft's tuners.

A method maps a model to a `Selection`: parameter name -> None (train the whole tensor) or a boolean mask (train
only those entries). The classification head is always trained in full.

>>> from transformers import BertConfig, BertForSequenceClassification
>>> from bitfit_exp.methods import select
>>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
...     num_attention_heads=2, intermediate_size=16, max_position_embeddings=16))
>>> sorted(n for n in select("bq", model).params if "encoder" in n)
['bert.encoder.layer.0.attention.self.query.bias']
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# Appendix A.1: the paper's bias notation -> the Hugging Face module path inside `encoder.layer.N`.
BIAS_COMPONENTS = {
    "q": "attention.self.query.bias",
    "k": "attention.self.key.bias",
    "v": "attention.self.value.bias",
    "m1": "attention.output.dense.bias",
    "ln1": "attention.output.LayerNorm.bias",
    "m2": "intermediate.dense.bias",
    "m3": "output.dense.bias",
    "ln2": "output.LayerNorm.bias",
}
PAPER_LABELS = {"q": "b_q", "k": "b_k", "v": "b_v", "m1": "b_m1", "ln1": "b_LN1", "m2": "b_m2", "m3": "b_m3",
                "ln2": "b_LN2"}
_LAYER = re.compile(r"\.encoder\.layer\.(\d+)\.(.+)$")


@dataclass
class Selection:
    """Trained parameters: name -> None (whole tensor) or a bool mask of the entries that train."""

    params: dict[str, torch.Tensor | None]

    def count(self, model: nn.Module, include_head: bool = True) -> int:
        named = dict(model.named_parameters())
        head = set(head_parameter_names(model))
        return sum(named[n].numel() if m is None else int(m.sum())
                   for n, m in self.params.items() if include_head or n not in head)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return {n: m for n, m in self.params.items() if m is not None}


def base_prefix(model: nn.Module) -> str:
    return model.base_model_prefix + "."


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters outside the pre-trained encoder (the task head, e.g. `classifier.*`)."""
    prefix = base_prefix(model)
    return [n for n, _ in model.named_parameters() if not n.startswith(prefix)]


def encoder_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The pre-trained parameters (embeddings, layers, pooler): everything but the head."""
    prefix = base_prefix(model)
    return {n: p for n, p in model.named_parameters() if n.startswith(prefix)}


def bias_component(name: str) -> tuple[int, str] | None:
    """`bert.encoder.layer.3.intermediate.dense.bias` -> (3, "m2"); None for anything not in Appendix A.1.

    Matches the exact path after `layer.N.`, so `output.dense.bias` (m3) never matches the attention output (m1).
    """
    hit = _LAYER.search(name)
    if not hit:
        return None
    for key, path in BIAS_COMPONENTS.items():
        if hit.group(2) == path:
            return int(hit.group(1)), key
    return None


def all_bias_names(model: nn.Module) -> list[str]:
    """Every bias of the pre-trained model: the per-layer ones plus embedding LayerNorm and pooler biases."""
    return [n for n in encoder_parameters(model) if n.endswith(".bias")]


def with_head(model: nn.Module, names) -> Selection:
    return Selection({**{n: None for n in names}, **{n: None for n in head_parameter_names(model)}})


MethodFn = Callable[..., Selection]
METHODS: dict[str, MethodFn] = {}
PACKABLE: set[str] = set()  # methods that train whole bias vectors and the head only: packed training applies


def register(name: str, packable: bool = False):
    def wrap(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        if packable:
            PACKABLE.add(name)
        return fn

    return wrap


def packable(method: str) -> bool:
    return method in PACKABLE


def select(name: str, model: nn.Module, generator: torch.Generator | None = None, **options) -> Selection:
    """Apply method `name` to `model`; `generator` drives the random methods, `options` come from the method YAML."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name](model, generator=generator or torch.Generator().manual_seed(0), **options)


def component_names(model: nn.Module, keys) -> list[str]:
    bad = [k for k in keys if k not in BIAS_COMPONENTS]
    if bad:
        raise ValueError(f"unknown bias component {bad[0]!r}; valid: {', '.join(BIAS_COMPONENTS)}")
    return [n for n in encoder_parameters(model) if (hit := bias_component(n)) and hit[1] in keys]


@register("full")
def full(model, **_):
    return Selection({n: None for n, _ in model.named_parameters()})


@register("bitfit", packable=True)
def bitfit(model, **_):
    return with_head(model, all_bias_names(model))


@register("bm2_bq", packable=True)
def bm2_bq(model, **_):
    return with_head(model, component_names(model, ["m2", "q"]))


@register("bm2", packable=True)
def bm2(model, **_):
    return with_head(model, component_names(model, ["m2"]))


@register("bq", packable=True)
def bq(model, **_):
    return with_head(model, component_names(model, ["q"]))


@register("biases", packable=True)
def biases(model, components=(), **_):
    return with_head(model, component_names(model, components))


@register("frozen", packable=True)
def frozen(model, **_):
    return with_head(model, [])


def bias_budget(model: nn.Module) -> int:
    """Number of bias parameters in the pre-trained model: the size of the random baselines."""
    params = encoder_parameters(model)
    return sum(params[n].numel() for n in all_bias_names(model))


@register("rand_uniform")
def rand_uniform(model, generator, **_):
    params = encoder_parameters(model)
    names = list(params)
    sizes = torch.tensor([params[n].numel() for n in names])
    total, budget = int(sizes.sum()), bias_budget(model)
    chosen = _sample_without_replacement(total, budget, generator)
    owner = torch.searchsorted(torch.cumsum(sizes, 0), chosen, right=True)
    starts = torch.cumsum(sizes, 0) - sizes
    selection = {}
    for i in owner.unique().tolist():
        mask = torch.zeros(int(sizes[i]), dtype=torch.bool)
        mask[chosen[owner == i] - starts[i]] = True
        selection[names[i]] = mask.view_as(params[names[i]])
    return Selection({**selection, **{n: None for n in head_parameter_names(model)}})


def _sample_without_replacement(total: int, k: int, generator: torch.Generator) -> torch.Tensor:
    # randperm(total) would allocate 8 bytes per model parameter; draw with replacement and de-duplicate instead.
    picked = torch.empty(0, dtype=torch.long)
    while picked.numel() < k:
        extra = torch.randint(total, (k - picked.numel() + 64,), generator=generator)
        picked = torch.cat([picked, extra]).unique()
    return picked[torch.randperm(picked.numel(), generator=generator)[:k]].sort().values


@register("rand_rowcol")
def rand_rowcol(model, generator, **_):
    prefix = base_prefix(model)
    weights = [(prefix + n + ".weight", m.weight) for n, m in model.get_submodule(prefix[:-1]).named_modules()
               if isinstance(m, nn.Linear)]
    lines = [(w, axis, i) for w, (_, p) in enumerate(weights) for axis in (0, 1) for i in range(p.shape[axis])]
    masks = [torch.zeros_like(p, dtype=torch.bool) for _, p in weights]
    left = bias_budget(model)
    smallest = min(min(p.shape) for _, p in weights)
    for j in torch.randperm(len(lines), generator=generator).tolist():
        if left < smallest:
            break
        w, axis, i = lines[j]
        line = masks[w][i] if axis == 0 else masks[w][:, i]
        new = int((~line).sum())
        if new <= left:
            line.fill_(True)
            left -= new
    chosen = {weights[w][0]: m for w, m in enumerate(masks) if m.any()}
    return Selection({**chosen, **{n: None for n in head_parameter_names(model)}})
