"""Where the paper's bias roles live in each architecture: one table per family, looked up by `config.model_type`.

Appendix A.1 names eight biases per layer: b_q b_k b_v (query, key, value), b_m1 (attention output), b_LN1,
b_m2 (MLP in), b_m3 (MLP out), b_LN2. A table maps each role the family has to its path inside one layer; roles it
lacks are absent. The subset methods (bq, bm2, bm2_bq, biases), the bias-change figure and rand_rowcol read these
tables; bitfit (every bias) needs none and works on any model with biases.

Role -> path inside a layer (every path ends in `.bias`):

- bert, roberta, xlm-roberta, camembert, electra; layer `encoder.layer.N`: q k v `attention.self.{query,key,value}`,
  m1 `attention.output.dense`, ln1 `attention.output.LayerNorm`, m2 `intermediate.dense`, m3 `output.dense`,
  ln2 `output.LayerNorm`.
- deberta-v2 (DeBERTa-v2 and -v3); layer `encoder.layer.N`: q k v `attention.self.{query,key,value}_proj`, the
  rest as BERT.
- distilbert; layer `transformer.layer.N`: q k v `attention.{q,k,v}_lin`, m1 `attention.out_lin`,
  ln1 `sa_layer_norm`, m2 `ffn.lin1`, m3 `ffn.lin2`, ln2 `output_layer_norm`.
- albert; layer `encoder.albert_layer_groups.N.albert_layers.0`: q k v `attention.{query,key,value}`,
  m1 `attention.dense`, ln1 `attention.LayerNorm`, m2 `ffn`, m3 `ffn_output`, ln2 `full_layer_layer_norm`.
- gpt2; layer `h.N`: q k v the thirds of the fused `attn.c_attn`, m1 `attn.c_proj`, ln1 `ln_1`, m2 `mlp.c_fc`,
  m3 `mlp.c_proj`, ln2 `ln_2`.
- qwen2; layer `layers.N`: q k v `self_attn.{q,k,v}_proj`; no other role (no MLP, output or norm bias).

Decisions:
- GPT-2 fuses q, k and v into one `c_attn` bias [3 x hidden]: b_q is its first third, b_k the second, b_v the third.
  A subset with some but not all three trains a mask of `c_attn.bias` (exact count; trains one setting at a time,
  as masked methods do); with all three (or bitfit) it is the whole tensor. The figure splits it into its thirds.
- GPT-2 is pre-LayerNorm: b_LN1 is the layer's first norm (`ln_1`, before attention), b_LN2 its second (`ln_2`,
  before the MLP); in BERT, post-LayerNorm, LN1 follows the attention. Same count per layer, order within the layer.
- ALBERT shares one layer's weights across all its layers: each role is one tensor for all 12 layers, so the budgets
  count it once (bias share and rand_* budgets are parameter counts) and the figure has one column (layer group 1).
  Only the first inner layer of a group is mapped (every released ALBERT has inner_group_num=1).
- Qwen2 has q/k/v biases only: bm2 and b_m1..b_LN2 subsets are refused, naming the missing roles.
- DeBERTa-v2 applies its query/key projections (and `pos_*_proj`, the relative-embedding LayerNorm) to the relative
  position embeddings, which every row of a batch shares: packed training cannot give each setting its own copy, so
  DeBERTa trains one setting at a time (`pack_refusal`).
- Extra biases outside the layers (embedding LayerNorm, ELECTRA's `embeddings_project`, ALBERT's
  `embedding_hidden_mapping_in`, GPT-2's `ln_f`, DeBERTa's `pos_*_proj`) are trained by bitfit only; the pooler bias
  (BERT, ALBERT: `pooler`) joins every non-empty subset as in the authors' code. Poolers outside the base model
  (DeBERTa, ELECTRA's and RoBERTa's `classifier.dense`, DistilBERT's `pre_classifier`) belong to the head.

>>> from bitfit_exp.model.architectures import role_parts
>>> role_parts("distilbert.transformer.layer.2.ffn.lin1.bias")
[(2, 'm2', None)]
>>> role_parts("transformer.h.0.attn.c_attn.bias")  # GPT-2's fused q|k|v bias
[(0, 'q', (0, 3)), (0, 'k', (1, 3)), (0, 'v', (2, 3))]
"""

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from bitfit_exp.core.errors import UserError

ROLES = ("q", "k", "v", "m1", "ln1", "m2", "m3", "ln2")  # Appendix A.1, the paper's row order
PAPER_LABELS = {"q": "b_q", "k": "b_k", "v": "b_v", "m1": "b_m1", "ln1": "b_LN1", "m2": "b_m2", "m3": "b_m3",
                "ln2": "b_LN2"}

# A role's place inside a layer: a whole bias ("path.bias"), or part i of n equal slices of a fused one.
Where = str | tuple[str, int, int]


@dataclass(frozen=True)
class Architecture:
    """One family's table. `layer`: regex of a layer's prefix (group 1: the layer number) inside a parameter or
    module name; `roles`: role -> bias path inside the layer; `attention`: the module inside a layer that calls
    transformers' attention interface and `attention_dropout` its attribute holding the attention-probability
    dropout (an nn.Dropout or a float); `pack_refusal`: why packed training cannot serve this family, if so."""

    family: str
    layer: str
    roles: dict[str, Where]
    attention: str | None = None
    attention_dropout: str | None = None
    shared_layers: bool = False
    pack_refusal: str | None = None
    pattern: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "pattern", re.compile(rf"(?:^|\.){self.layer}\.(.+)$"))

    def split(self, name: str) -> tuple[int, str] | None:
        """`bert.encoder.layer.3.intermediate.dense.bias` -> (3, "intermediate.dense.bias"); None outside layers."""
        hit = self.pattern.search(name)
        return (int(hit.group(1)), hit.group(2)) if hit else None

    def in_layer(self, name: str) -> bool:
        return self.split(name + ".x") is not None


def _whole(**paths: str) -> dict[str, Where]:
    return {role: paths[role] for role in ROLES if role in paths}


BERT = Architecture(
    "BERT", r"encoder\.layer\.(\d+)",
    _whole(q="attention.self.query.bias", k="attention.self.key.bias", v="attention.self.value.bias",
           m1="attention.output.dense.bias", ln1="attention.output.LayerNorm.bias", m2="intermediate.dense.bias",
           m3="output.dense.bias", ln2="output.LayerNorm.bias"),
    attention="attention.self", attention_dropout="dropout")
DEBERTA_V2 = Architecture(
    "DeBERTa-v2", r"encoder\.layer\.(\d+)",
    {**BERT.roles, "q": "attention.self.query_proj.bias", "k": "attention.self.key_proj.bias",
     "v": "attention.self.value_proj.bias"},
    pack_refusal="DeBERTa-v2 applies its query/key projections to the relative-position embeddings that all rows "
                 "of a batch share, so the settings of a pack cannot keep their own biases there")
DISTILBERT = Architecture(
    "DistilBERT", r"transformer\.layer\.(\d+)",
    _whole(q="attention.q_lin.bias", k="attention.k_lin.bias", v="attention.v_lin.bias",
           m1="attention.out_lin.bias", ln1="sa_layer_norm.bias", m2="ffn.lin1.bias", m3="ffn.lin2.bias",
           ln2="output_layer_norm.bias"),
    attention="attention", attention_dropout="dropout")
ALBERT = Architecture(
    "ALBERT", r"encoder\.albert_layer_groups\.(\d+)\.albert_layers\.0",
    _whole(q="attention.query.bias", k="attention.key.bias", v="attention.value.bias", m1="attention.dense.bias",
           ln1="attention.LayerNorm.bias", m2="ffn.bias", m3="ffn_output.bias", ln2="full_layer_layer_norm.bias"),
    attention="attention", attention_dropout="attention_dropout", shared_layers=True)
GPT2 = Architecture(
    "GPT-2", r"h\.(\d+)",
    {"q": ("attn.c_attn.bias", 0, 3), "k": ("attn.c_attn.bias", 1, 3), "v": ("attn.c_attn.bias", 2, 3),
     **_whole(m1="attn.c_proj.bias", ln1="ln_1.bias", m2="mlp.c_fc.bias", m3="mlp.c_proj.bias", ln2="ln_2.bias")},
    attention="attn", attention_dropout="attn_dropout")
QWEN2 = Architecture(
    "Qwen2", r"layers\.(\d+)",
    _whole(q="self_attn.q_proj.bias", k="self_attn.k_proj.bias", v="self_attn.v_proj.bias"),
    attention="self_attn", attention_dropout="attention_dropout")

ARCHITECTURES: dict[str, Architecture] = {
    "bert": BERT, "roberta": BERT, "xlm-roberta": BERT, "camembert": BERT, "electra": BERT,
    "deberta-v2": DEBERTA_V2, "distilbert": DISTILBERT, "albert": ALBERT, "gpt2": GPT2, "qwen2": QWEN2,
}
FAMILIES = (BERT, DEBERTA_V2, DISTILBERT, ALBERT, GPT2, QWEN2)


def model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def architecture(model: nn.Module) -> Architecture | None:
    """The table of `model`'s family, or None for a model_type not mapped here."""
    return ARCHITECTURES.get(model_type(model))


def require_architecture(model: nn.Module, method: str) -> Architecture:
    arch = architecture(model)
    if arch is None:
        raise UserError(f"method={method} needs the bias roles of model_type {model_type(model)!r}, which "
                        f"bitfit_exp/model/architectures.py does not map (mapped: {', '.join(sorted(ARCHITECTURES))}); "
                        f"method=bitfit trains every bias of any model")
    return arch


def role_parts(name: str, arch: Architecture | None = None) -> list[tuple[int, str, tuple[int, int] | None]]:
    """(layer, role, (part, parts) or None for the whole tensor) for each role the parameter `name` holds, in table
    order; [] for anything else. Without `arch`, every table is tried (patch files carry names only); the tables'
    paths never collide, and where two families share a path they give it the same role."""
    for table in [arch] if arch else FAMILIES:
        if not (hit := table.split(name)):
            continue
        layer, path = hit
        parts = [(layer, role, None if isinstance(where, str) else where[1:])
                 for role, where in table.roles.items() if (where if isinstance(where, str) else where[0]) == path]
        if parts:
            return parts
    return []


def part_slice(length: int, part: tuple[int, int] | None) -> slice:
    """The entries of a fused bias of `length` that `part` = (i, n) names (all of it for None)."""
    if part is None:
        return slice(None)
    i, n = part
    return slice(i * length // n, (i + 1) * length // n)


def role_selection(model: nn.Module, roles, method: str) -> dict[str, torch.Tensor | None]:
    """Parameter name -> None (whole) or bool mask (part of a fused bias) holding exactly `roles` in every layer.

    A role the family lacks raises one line naming the missing roles and those the family has.
    """
    arch = require_architecture(model, method)
    missing = [r for r in roles if r not in arch.roles]
    if missing:
        raise UserError(f"method={method}: {arch.family} ({model_type(model)}) has no "
                        f"{' '.join(PAPER_LABELS[r] for r in missing)}; its per-layer biases are "
                        f"{' '.join(PAPER_LABELS[r] for r in arch.roles)}")
    masks: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        for _, role, part in role_parts(name, arch):
            if role in roles:
                mask = masks.setdefault(name, torch.zeros(param.shape, dtype=torch.bool))
                mask[part_slice(param.shape[0], part)] = True
    return {name: None if bool(mask.all()) else mask for name, mask in masks.items()}
