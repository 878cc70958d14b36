"""Which parameters each fine-tuning method trains: one registry entry per method, like peft's tuners.

A method maps a model to a `Selection`: parameter name -> None (train the whole tensor) or a boolean mask (train
only those entries). The classification head is always trained in full.

>>> from transformers import BertConfig, BertForSequenceClassification
>>> from bitfit_exp.methods import select
>>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
...     num_attention_heads=2, intermediate_size=16, max_position_embeddings=16))
>>> sorted(select("bq", model).params)  # b_q of each layer, the pooler bias (as the authors' code), the head
['bert.encoder.layer.0.attention.self.query.bias', 'bert.pooler.dense.bias', 'classifier.bias', 'classifier.weight']
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bitfit_exp.errors import UserError

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


def pooler_bias_names(model: nn.Module) -> list[str]:
    """The pooler's bias (BERT's `pooler.dense.bias`); empty for a model without a pooler (RoBERTa's classifier)."""
    pooler = base_prefix(model) + "pooler."
    return [n for n in encoder_parameters(model) if n.startswith(pooler) and n.endswith(".bias")]


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
        raise UserError(f"unknown bias component {bad[0]!r}; valid: {', '.join(BIAS_COMPONENTS)}")
    return [n for n in encoder_parameters(model) if (hit := bias_component(n)) and hit[1] in keys]


@register("full")
def full(model, **_):
    return Selection({n: None for n, _ in model.named_parameters()})


@register("bitfit", packable=True)
def bitfit(model, **_):
    return with_head(model, all_bias_names(model))


def flag(option: str, value) -> bool:
    """A yes/no method option as given on the command line (`method.pooler_bias=false`)."""
    if not isinstance(value, bool):
        raise UserError(f"method.{option}={value!r} is not valid; choose true or false")
    return value


def bias_subset(model: nn.Module, keys, pooler_bias: bool = True) -> Selection:
    """Per-layer bias components `keys`, plus the pooler bias when `keys` is not empty (and `pooler_bias`), + head.

    The authors' code adds `pooler.dense.bias` to every non-empty trainable subset (`_deactivate_relevant_gradients`),
    so Table 3's bq, bm2 and bm2,bq rows trained it too; an empty subset trains the head only, like `frozen`.
    `pooler_bias=False` gives the subset as the paper's text names it, without the pooler.
    """
    names = component_names(model, keys)
    return with_head(model, names + pooler_bias_names(model) if keys and flag("pooler_bias", pooler_bias) else names)


@register("bm2_bq", packable=True)
def bm2_bq(model, pooler_bias=True, **_):
    return bias_subset(model, ["m2", "q"], pooler_bias)


@register("bm2", packable=True)
def bm2(model, pooler_bias=True, **_):
    return bias_subset(model, ["m2"], pooler_bias)


@register("bq", packable=True)
def bq(model, pooler_bias=True, **_):
    return bias_subset(model, ["q"], pooler_bias)


@register("biases", packable=True)
def biases(model, components=(), pooler_bias=True, **_):
    return bias_subset(model, list(components), pooler_bias)


@register("frozen", packable=True)
def frozen(model, **_):
    return with_head(model, [])


def bias_budget(model: nn.Module) -> int:
    """Number of bias parameters in the pre-trained model: the size of the random baselines."""
    params = encoder_parameters(model)
    return sum(params[n].numel() for n in all_bias_names(model))


@register("rand_uniform")
def rand_uniform(model, generator, **_):
    """`bias_budget(model)` entries drawn uniformly without replacement from all pre-trained parameters at once.

    The authors' `set_uniform_mask` instead gave each tensor floor(size x budget / total) entries, drawn with
    replacement inside it, from a hard-coded budget (100,000 for BERT-base): a tensor under 1,084 entries (every
    768-long bias or LayerNorm vector) got none, and floors and repeats left about 99,830 distinct entries.
    """
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
def rand_rowcol(model, generator, rows_with_replacement=False, **_):
    """The authors' "rand row/col" baseline (Table 3; `set_row_and_column_random_mask` in their code).

    Every 2-D weight of the encoder layers and of the pooler trains a share the size of its bias: one random column
    (`out` entries), or `out // in` random whole rows. Every LayerNorm gain inside the encoder layers trains whole.
    Nothing else of the pre-trained model trains: no bias, no embedding (its LayerNorm included). The head trains in
    full. On BERT-base that is 12 x 8,448 + 768 (pooler) = 102,144 entries: BitFit's count less the embedding
    LayerNorm bias.

    Details of the authors' draw, kept here:
    - A fair coin is tossed for every matrix; heads, or a wide matrix (out < in, e.g. BERT's `output.dense`),
      gives a column; otherwise rows. So square and tall matrices take a column with probability 1/2.
    - The number of rows is the floor of out / in: bias-sized only when `in` divides `out` (always so in BERT and
      RoBERTa: 1 row of a square matrix, 4 rows of the 3072 x 768 `intermediate.dense`).
    - The authors drew the row indices with replacement (`np.random.randint`), so a repeated index left a matrix
      one row short (about 0.2% of the time for 4 rows out of 3,072). We draw distinct rows, so every matrix gets
      exactly its bias-sized share, as their docstring states; `rows_with_replacement=True` draws as they did.
    - Their random stream is numpy's global one; ours is `generator` (seeded per seed), same order of draws
      (matrices in model order, coin then index), so the pattern of the draw matches but not its values.
    """
    prefix, repeats = base_prefix(model), flag("rows_with_replacement", rows_with_replacement)
    selection: dict[str, torch.Tensor | None] = {}
    for name, module in model.base_model.named_modules():
        if name.split(".")[0] not in ("encoder", "pooler") or not list(module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.Linear):
            selection[f"{prefix}{name}.weight"] = _column_or_rows(module.weight.shape, generator, repeats)
        elif isinstance(module, nn.LayerNorm):
            selection[f"{prefix}{name}.weight"] = None
        else:
            raise UserError(f"rand_rowcol knows Linear and LayerNorm layers only, not {name} "
                            f"({type(module).__name__}); choose another method for this model")
    return Selection({**selection, **{n: None for n in head_parameter_names(model)}})


def _column_or_rows(shape: torch.Size, generator: torch.Generator, repeats: bool = False) -> torch.Tensor:
    """Mask of an (out, in) weight: one random column, or out // in random rows, distinct unless `repeats`."""
    out_dim, in_dim = shape
    mask = torch.zeros(out_dim, in_dim, dtype=torch.bool)
    heads = bool(torch.randint(2, (1,), generator=generator))
    if heads or out_dim < in_dim:
        mask[:, int(torch.randint(in_dim, (1,), generator=generator))] = True
    else:
        n_rows = out_dim // in_dim
        rows = (torch.randint(out_dim, (n_rows,), generator=generator) if repeats
                else torch.randperm(out_dim, generator=generator)[:n_rows])
        mask[rows] = True
    return mask
