"""Which parameters each fine-tuning method trains: one registry entry per method, like peft's tuners.

A method maps a model to a `Selection`: parameter name -> None (train the whole tensor) or a boolean mask (train
only those entries). The classification head is always trained in full.

>>> from transformers import BertConfig, BertForSequenceClassification
>>> from bitfit_exp.model.methods import select
>>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
...     num_attention_heads=2, intermediate_size=16, max_position_embeddings=16))
>>> sorted(select("bq", model).params)  # b_q of each layer, the pooler bias (as the authors' code), the head
['bert.encoder.layer.0.attention.self.query.bias', 'bert.pooler.dense.bias', 'classifier.bias', 'classifier.weight']
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bitfit_exp.core.errors import UserError
from bitfit_exp.model.architectures import (
    BERT,
    ROLES,
    model_type,
    require_architecture,
    role_parts,
    role_selection,
)

# Appendix A.1: the paper's bias notation -> the Hugging Face path inside BERT's `encoder.layer.N` (other families:
# bitfit_exp.model.architectures).
BIAS_COMPONENTS = dict(BERT.roles)


@dataclass
class Selection:
    """Trained parameters: name -> None (whole tensor) or a bool mask of the entries that train."""

    params: dict[str, torch.Tensor | None]
    # A method that injects modules (peft: bitfit_exp.model.peft_methods) returns the model to train instead of the
    # one it was given, the names of its trained head (the copy in `modules_to_save`), the size of the pre-trained
    # encoder (the injected modules are not part of it), and how its result is written (an adapter folder).
    wrapped: nn.Module | None = None
    head: list[str] | None = None
    encoder_total: int | None = None
    saver: Callable | None = None

    def head_names(self, model: nn.Module) -> list[str]:
        return head_parameter_names(model) if self.head is None else self.head

    def count(self, model: nn.Module, include_head: bool = True) -> int:
        named = dict(model.named_parameters())
        head = set(self.head_names(model))
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

    Matches the exact path after the layer prefix, so `output.dense.bias` (m3) never matches the attention output
    (m1). Any mapped family (bitfit_exp.model.architectures); None for a fused bias holding several roles (GPT-2's
    `c_attn.bias`: see `role_parts`).
    """
    parts = role_parts(name)
    return (parts[0][0], parts[0][1]) if len(parts) == 1 and parts[0][2] is None else None


def all_bias_names(model: nn.Module) -> list[str]:
    """Every bias of the pre-trained model: the per-layer ones plus embedding LayerNorm and pooler biases."""
    return [n for n in encoder_parameters(model) if n.endswith(".bias")]


def require_biases(model: nn.Module, method: str) -> None:
    """One line for a model without any bias term (Llama, Mistral, ModernBERT): the bias methods would train the
    classification head only."""
    if not all_bias_names(model):
        raise UserError(f"method={method}: this {model_type(model)} model has no bias terms, so it would train only "
                        f"the classification head; method=frozen trains just that, method=full everything")


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


def component_selection(model: nn.Module, keys, method: str) -> dict[str, torch.Tensor | None]:
    """The per-layer biases of roles `keys` in `model`'s family: name -> None, or a mask for part of a fused bias."""
    bad = [k for k in keys if k not in ROLES]
    if bad:
        raise UserError(f"unknown bias component {bad[0]!r}; valid: {', '.join(ROLES)}")
    if not keys:
        return {}
    require_biases(model, method)
    return role_selection(model, keys, method)


@register("full")
def full(model, **_):
    return Selection({n: None for n, _ in model.named_parameters()})


@register("bitfit", packable=True)
def bitfit(model, **_):
    require_biases(model, "bitfit")
    return with_head(model, all_bias_names(model))


def flag(option: str, value) -> bool:
    """A yes/no method option as given on the command line (`method.pooler_bias=false`)."""
    if not isinstance(value, bool):
        raise UserError(f"method.{option}={value!r} is not valid; choose true or false")
    return value


def bias_subset(model: nn.Module, keys, pooler_bias: bool = True, method: str = "biases") -> Selection:
    """Per-layer bias components `keys`, plus the pooler bias when `keys` is not empty (and `pooler_bias`), + head.

    The authors' code adds `pooler.dense.bias` to every non-empty trainable subset (`_deactivate_relevant_gradients`),
    so Table 3's bq, bm2 and bm2,bq rows trained it too; an empty subset trains the head only, like `frozen`.
    `pooler_bias=False` gives the subset as the paper's text names it, without the pooler. Roles are found through
    `model`'s family table (bitfit_exp.model.architectures); a family without one of `keys` raises one line naming it.
    """
    chosen = component_selection(model, keys, method)
    if keys and flag("pooler_bias", pooler_bias):
        chosen.update(dict.fromkeys(pooler_bias_names(model)))
    return Selection({**chosen, **{n: None for n in head_parameter_names(model)}})


@register("bm2_bq", packable=True)
def bm2_bq(model, pooler_bias=True, **_):
    return bias_subset(model, ["m2", "q"], pooler_bias, "bm2_bq")


@register("bm2", packable=True)
def bm2(model, pooler_bias=True, **_):
    return bias_subset(model, ["m2"], pooler_bias, "bm2")


@register("bq", packable=True)
def bq(model, pooler_bias=True, **_):
    return bias_subset(model, ["q"], pooler_bias, "bq")


@register("biases", packable=True)
def biases(model, components=(), pooler_bias=True, **_):
    return bias_subset(model, list(components), pooler_bias, "biases")


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
    require_biases(model, "rand_uniform")
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

    Other families: the layers are those of the family's table (bitfit_exp.model.architectures), so projections between
    the embeddings and the layers (ELECTRA's, ALBERT's) stay frozen like the embeddings. GPT-2's Conv1D stores its
    weight as [in, out]: the draw is made on the [out, in] view and transposed. ALBERT's one shared layer gets one
    draw. A layer module of another kind (Qwen2's RMSNorm) is refused.

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
    # Imported here, not with the registry: reading the method names (every config check) need not load transformers.
    from transformers.pytorch_utils import Conv1D

    prefix, repeats = base_prefix(model), flag("rows_with_replacement", rows_with_replacement)
    arch = require_architecture(model, "rand_rowcol")
    selection: dict[str, torch.Tensor | None] = {}
    for name, module in model.base_model.named_modules():
        in_scope = arch.in_layer(name) or name.split(".")[0] == "pooler"
        if not in_scope or not list(module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.Linear):
            selection[f"{prefix}{name}.weight"] = _column_or_rows(module.weight.shape, generator, repeats)
        elif isinstance(module, Conv1D):
            out_in = _column_or_rows(module.weight.T.shape, generator, repeats)  # Conv1D's weight is [in, out]
            selection[f"{prefix}{name}.weight"] = out_in.T.contiguous()
        elif isinstance(module, nn.LayerNorm):
            selection[f"{prefix}{name}.weight"] = None
        else:
            raise UserError(f"rand_rowcol knows Linear, Conv1D and LayerNorm layers only, not {name} "
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
