"""Which parameters each method trains, checked against names and counts written out by hand from Appendix A.1."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig

from bitfit_exp.core.errors import UserError
from bitfit_exp.model.methods import METHODS, Selection, bias_budget, encoder_parameters, select
from bitfit_exp.results.tables import fmt_param
from bitfit_exp.train.runner import parameter_counts

# Deliberately distinct sizes, so a swapped dimension shows up in the hand-computed counts.
V, H, HEADS, INTER, L, P, T, LABELS = 40, 8, 2, 20, 2, 24, 3, 3
ALL_METHODS = ["full", "bitfit", "bm2_bq", "bm2", "bq", "biases", "frozen", "rand_uniform", "rand_rowcol"]
# Appendix A.1, written out (not taken from bitfit_exp.model.methods.BIAS_COMPONENTS).
A1 = {
    "q": "attention.self.query.bias",
    "k": "attention.self.key.bias",
    "v": "attention.self.value.bias",
    "m1": "attention.output.dense.bias",
    "ln1": "attention.output.LayerNorm.bias",
    "m2": "intermediate.dense.bias",
    "m3": "output.dense.bias",
    "ln2": "output.LayerNorm.bias",
}
SIZE = {"q": H, "k": H, "v": H, "m1": H, "ln1": H, "m2": INTER, "m3": H, "ln2": H}


def build(kind: str) -> nn.Module:
    cls = {"bert": BertConfig, "roberta": RobertaConfig}[kind]
    config = cls(vocab_size=V, hidden_size=H, num_attention_heads=HEADS, intermediate_size=INTER, num_hidden_layers=L,
                 max_position_embeddings=P, type_vocab_size=T, num_labels=LABELS)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tiny(request):
    return request.param, build(request.param)


def head(kind):
    """Hand-written head names -> sizes."""
    if kind == "bert":
        return {"classifier.weight": LABELS * H, "classifier.bias": LABELS}
    return {"classifier.dense.weight": H * H, "classifier.dense.bias": H,
            "classifier.out_proj.weight": LABELS * H, "classifier.out_proj.bias": LABELS}


def layer_names(kind, keys):
    return {f"{kind}.encoder.layer.{n}.{A1[k]}" for n in range(L) for k in keys}


def pooler_bias(kind):
    """The authors' code adds `pooler.dense.bias` to every non-empty bias subset; RoBERTa's classifier has no pooler."""
    return {"bert.pooler.dense.bias"} if kind == "bert" else set()


def expected_names(kind, method):
    """The selection of each deterministic method, built from the naming scheme."""
    extra = {f"{kind}.embeddings.LayerNorm.bias"} | pooler_bias(kind)
    encoder = {
        "bitfit": layer_names(kind, A1) | extra,
        "bm2_bq": layer_names(kind, ["m2", "q"]) | pooler_bias(kind),
        "bm2": layer_names(kind, ["m2"]) | pooler_bias(kind),
        "bq": layer_names(kind, ["q"]) | pooler_bias(kind),
        "biases": set(),  # no components given
        "frozen": set(),
    }[method]
    return encoder | set(head(kind))


def full_count(kind):
    embeddings = V * H + P * H + T * H + 2 * H
    layer = 4 * (H * H + H) + 2 * H + (H * INTER + INTER) + (INTER * H + H) + 2 * H
    pooler = H * H + H if kind == "bert" else 0
    return embeddings + L * layer + pooler + sum(head(kind).values())


def expected_count(kind, method):
    head_count = sum(head(kind).values())
    pooler = H if kind == "bert" else 0
    return {
        "full": full_count(kind),
        "bitfit": L * (4 * H + H + INTER + H + H) + H + pooler + head_count,  # + embedding LayerNorm bias
        "bm2_bq": L * (INTER + H) + pooler + head_count,
        "bm2": L * INTER + pooler + head_count,
        "bq": L * H + pooler + head_count,
        "biases": head_count,
        "frozen": head_count,
    }[method]


def test_registry_is_complete():
    assert set(METHODS) == set(ALL_METHODS) | {"lora", "ia3", "beft", "peft"}  # peft's: tests/test_peft_methods.py


@pytest.mark.parametrize("method", ["bitfit", "bm2_bq", "bm2", "bq", "biases", "frozen"])
def test_selected_names_and_count(tiny, method):
    kind, model = tiny
    selection = select(method, model)
    assert set(selection.params) == expected_names(kind, method)
    assert selection.masks == {}
    assert selection.count(model) == expected_count(kind, method)


def test_roberta_names_written_out():
    # No pooler in RoBERTa's sequence classifier, so bq is b_q of each layer and the head, nothing else.
    model = build("roberta")
    assert sorted(select("bq", model).params) == [
        "classifier.dense.bias", "classifier.dense.weight", "classifier.out_proj.bias", "classifier.out_proj.weight",
        "roberta.encoder.layer.0.attention.self.query.bias", "roberta.encoder.layer.1.attention.self.query.bias"]
    assert not any("pooler" in n for n, _ in model.named_parameters())


def test_bert_names_written_out():
    model = build("bert")
    assert sorted(select("bm2", model).params) == [
        "bert.encoder.layer.0.intermediate.dense.bias", "bert.encoder.layer.1.intermediate.dense.bias",
        "bert.pooler.dense.bias", "classifier.bias", "classifier.weight"]


def test_full_selects_everything(tiny):
    kind, model = tiny
    selection = select("full", model)
    assert set(selection.params) == {n for n, _ in model.named_parameters()}
    assert selection.masks == {}
    assert selection.count(model) == full_count(kind) == sum(p.numel() for p in model.parameters())


def test_hand_counts_match_the_model(tiny):
    # The hand formulas above describe the model actually built (guards the expected values themselves).
    kind, model = tiny
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    assert {n: sizes[n] for n in head(kind)} == head(kind)
    for key in A1:
        for name in layer_names(kind, [key]):
            assert sizes[name] == SIZE[key], name
    assert (f"{kind}.pooler.dense.bias" in sizes) == (kind == "bert")


@pytest.mark.parametrize("method", ALL_METHODS)
def test_head_always_fully_trained(tiny, method):
    kind, model = tiny
    selection = select(method, model, generator=torch.Generator().manual_seed(1))
    for name in head(kind):
        assert name in selection.params and selection.params[name] is None, name
    assert selection.count(model) - selection.count(model, include_head=False) == sum(head(kind).values())


def test_frozen_trains_no_encoder_parameter(tiny):
    _, model = tiny
    assert select("frozen", model).count(model, include_head=False) == 0


@pytest.mark.parametrize("keys", [["m3"], ["m1"], ["ln1"], ["ln2"], ["k", "v"], list(A1)])
def test_biases_components_exact_paths(tiny, keys):
    kind, model = tiny
    selection = select("biases", model, components=keys)
    assert set(selection.params) - set(head(kind)) == layer_names(kind, keys) | pooler_bias(kind)
    assert selection.count(model, include_head=False) == L * sum(SIZE[k] for k in keys) + len(pooler_bias(kind)) * H


@pytest.mark.parametrize("method, keys", [("bq", ["q"]), ("bm2", ["m2"]), ("bm2_bq", ["m2", "q"]),
                                          ("biases", ["k", "v"])])
def test_pooler_bias_false_leaves_the_pooler_out(tiny, method, keys):
    kind, model = tiny
    options = {"components": keys} if method == "biases" else {}
    selection = select(method, model, pooler_bias=False, **options)
    assert set(selection.params) == layer_names(kind, keys) | set(head(kind))
    assert set(select(method, model, **options).params) - set(selection.params) == pooler_bias(kind)


@pytest.mark.parametrize("method, option", [("bq", "pooler_bias"), ("rand_rowcol", "rows_with_replacement")])
def test_yes_no_options_refuse_other_values(method, option):
    with pytest.raises(UserError, match=f"method.{option}='no' is not valid; choose true or false"):
        select(method, build("bert"), **{option: "no"})


def test_method_yamls_set_the_options():
    # A YAML key enters the setting hash: records of the earlier selections (no pooler bias in bq/bm2/bm2_bq,
    # rand_rowcol by a global budget) are not taken for these.
    from conftest import compose

    for method in ["bq", "bm2", "bm2_bq", "biases"]:
        assert compose(f"method={method}").method.pooler_bias is True, method
    assert compose("method=rand_rowcol").method.rows_with_replacement is False


def test_empty_bias_subset_is_head_only(tiny):
    # As the authors' code: the pooler bias joins a non-empty subset only, so `biases` with no component = frozen.
    kind, model = tiny
    assert set(select("biases", model, components=[]).params) == set(select("frozen", model).params) == set(head(kind))


def test_m3_never_matches_the_attention_output(tiny):
    kind, model = tiny
    m3 = set(select("biases", model, components=["m3"]).params)
    m1 = set(select("biases", model, components=["m1"]).params) - set(head(kind)) - pooler_bias(kind)
    assert not any(n.endswith("attention.output.dense.bias") for n in m3)
    assert {n for n in m3 if n.endswith("output.dense.bias")} == {f"{kind}.encoder.layer.{i}.output.dense.bias"
                                                                   for i in range(L)}
    assert m1 == {f"{kind}.encoder.layer.{i}.attention.output.dense.bias" for i in range(L)}
    for method in ["bm2_bq", "bm2", "bq"]:
        names = select(method, model).params
        assert not any(n.endswith("output.dense.bias") for n in names), method


def test_unknown_method_names_valid_choices(tiny):
    _, model = tiny
    with pytest.raises(ValueError, match="nope") as info:
        select("nope", model)
    for name in ALL_METHODS:
        assert name in str(info.value)


def test_unknown_component_names_valid_choices(tiny):
    _, model = tiny
    with pytest.raises(UserError, match="m4") as info:
        select("biases", model, components=["q", "m4"])
    for key in A1:
        assert key in str(info.value)


def seeded(method, model, seed):
    return select(method, model, generator=torch.Generator().manual_seed(seed))


def test_bias_budget_is_the_bitfit_encoder_count(tiny):
    kind, model = tiny
    assert bias_budget(model) == expected_count(kind, "bitfit") - sum(head(kind).values())


def test_rand_uniform(tiny):
    kind, model = tiny
    encoder = encoder_parameters(model)
    a, b, a2 = seeded("rand_uniform", model, 0), seeded("rand_uniform", model, 1), seeded("rand_uniform", model, 0)
    budget = L * (7 * H + INTER) + H + (H if kind == "bert" else 0)
    assert bias_budget(model) == budget
    for selection in (a, b):
        assert sum(int(m.sum()) for m in selection.masks.values()) == budget
        assert selection.count(model, include_head=False) == budget
        assert set(selection.masks) <= set(encoder)
        assert set(selection.params) - set(selection.masks) == set(head(kind))
        for name, mask in selection.masks.items():
            assert mask.dtype == torch.bool and mask.shape == encoder[name].shape and mask.any(), name
    assert a.masks.keys() == a2.masks.keys() and all(torch.equal(a.masks[n], a2.masks[n]) for n in a.masks)
    assert a.masks.keys() != b.masks.keys() or any(not torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    # spread over the whole encoder, not confined to biases: the word embeddings alone hold most entries
    assert f"{kind}.embeddings.word_embeddings.weight" in a.masks


ROWCOL_MATRICES = {  # path inside `encoder.layer.N` -> (out, in), Appendix A.1 shapes
    "attention.self.query.weight": (H, H), "attention.self.key.weight": (H, H),
    "attention.self.value.weight": (H, H), "attention.output.dense.weight": (H, H),
    "intermediate.dense.weight": (INTER, H), "output.dense.weight": (H, INTER)}
LAYERNORM_GAINS = ["attention.output.LayerNorm.weight", "output.LayerNorm.weight"]


def rowcol_expected(kind):
    """Hand-written rand_rowcol targets: masked matrix name -> (out, in), and the LayerNorm gains trained whole."""
    matrices = {f"{kind}.encoder.layer.{n}.{p}": shape for n in range(L) for p, shape in ROWCOL_MATRICES.items()}
    if kind == "bert":
        matrices["bert.pooler.dense.weight"] = (H, H)
    gains = {f"{kind}.encoder.layer.{n}.{p}" for n in range(L) for p in LAYERNORM_GAINS}
    return matrices, gains


def drawn(mask):
    """("column", j) if `mask` is exactly one whole column, ("rows", {i...}) if exactly whole rows, else None."""
    rows, cols = mask.all(dim=1).nonzero().flatten().tolist(), mask.all(dim=0).nonzero().flatten().tolist()
    if len(cols) == 1 and int(mask.sum()) == mask.shape[0]:
        return "column", cols[0]
    if rows and int(mask.sum()) == len(rows) * mask.shape[1]:
        return "rows", frozenset(rows)
    return None


def test_rand_rowcol_targets(tiny):
    kind, model = tiny
    matrices, gains = rowcol_expected(kind)
    selection = seeded("rand_rowcol", model, 0)
    assert set(selection.masks) == set(matrices)
    assert {n for n, m in selection.params.items() if m is None} == gains | set(head(kind))
    # one column (out entries) or out // in rows (in entries each): 20 // 8 = 2 rows of the 20 x 8 intermediate
    rows_part = {name: (out // inp) * inp for name, (out, inp) in matrices.items()}
    lines = 0
    for name, mask in selection.masks.items():
        assert mask.dtype == torch.bool and tuple(mask.shape) == matrices[name], name
        how = drawn(mask)
        assert how is not None, name
        assert how[0] == "column" or len(how[1]) == matrices[name][0] // matrices[name][1], name
        lines += int(mask.sum())
        assert int(mask.sum()) == (matrices[name][0] if how[0] == "column" else rows_part[name]), name
    assert selection.count(model, include_head=False) == lines + len(gains) * H


def test_rand_rowcol_draws(tiny):
    kind, model = tiny
    matrices, _ = rowcol_expected(kind)
    draws = {seed: {n: drawn(m) for n, m in seeded("rand_rowcol", model, seed).masks.items()} for seed in range(6)}
    assert draws[0] == {n: drawn(m) for n, m in seeded("rand_rowcol", model, 0).masks.items()}
    assert draws[0] != draws[1]
    kinds = {how[0] for d in draws.values() for name, how in d.items() if matrices[name][0] >= matrices[name][1]}
    assert kinds == {"column", "rows"}  # square and tall matrices: either, by a fair coin
    wide = [how[0] for d in draws.values() for name, how in d.items() if matrices[name][0] < matrices[name][1]]
    assert len(wide) == 6 * L and set(wide) == {"column"}  # out < in: always a column


def narrow_bert():
    """Hidden size 2, intermediate 64: a tall 64 x 2 weight takes 32 of its 64 rows whenever the coin says rows."""
    config = BertConfig(vocab_size=V, hidden_size=2, num_attention_heads=1, intermediate_size=64, num_hidden_layers=4,
                        max_position_embeddings=P)
    return AutoModelForSequenceClassification.from_config(config)


def test_rand_rowcol_rows_are_distinct():
    # The authors drew row indices with replacement (a repeat left a matrix short); ours are distinct, where
    # repeats would be near certain.
    model = narrow_bert()
    rows = [drawn(m) for seed in range(3) for n, m in seeded("rand_rowcol", model, seed).masks.items()
            if n.endswith("intermediate.dense.weight")]
    assert sum(how[0] == "rows" for how in rows) >= 3
    assert all(len(how[1]) == 32 for how in rows if how[0] == "rows")


def test_rand_rowcol_rows_with_replacement_as_the_authors():
    model = narrow_bert()
    rows = [drawn(m) for seed in range(3)
            for n, m in select("rand_rowcol", model, torch.Generator().manual_seed(seed),
                               rows_with_replacement=True).masks.items() if n.endswith("intermediate.dense.weight")]
    counts = [len(how[1]) for how in rows if how[0] == "rows"]
    assert counts and max(counts) <= 32 and min(counts) < 32  # 32 draws from 64 rows repeat some


def test_rand_rowcol_unknown_layer_is_a_user_error():
    model = build("bert")
    model.bert.encoder.layer[0].extra = nn.Embedding(3, H)
    with pytest.raises(UserError, match="encoder.layer.0.extra"):
        select("rand_rowcol", model)


def test_selection_count_uses_masks():
    model = build("bert")
    mask = torch.zeros(H, H, dtype=torch.bool)
    mask[0, :3] = True
    selection = Selection({"bert.pooler.dense.weight": mask, "bert.pooler.dense.bias": None, "classifier.bias": None})
    assert selection.count(model) == 3 + H + LABELS
    assert selection.count(model, include_head=False) == 3 + H


# ---- paper percentages (Section 3.1 / Tables 1-2) on full-size shapes, built on the meta device (no memory).

def meta_bert(vocab, hidden, layers, heads, intermediate):
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=512, type_vocab_size=2)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def bert_encoder_total(vocab, h, layers, i):
    embeddings = vocab * h + 512 * h + 2 * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return embeddings + layers * layer + h * h + h


def share(model, method):
    total = sum(p.numel() for p in encoder_parameters(model).values())
    return select(method, model).count(model, include_head=False), total


@pytest.fixture(scope="module")
def bert_base_cased():
    """bert-base-cased's real shapes (BertConfig defaults, cased vocabulary), two labels, on the meta device."""
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(BertConfig(vocab_size=28996, num_labels=2))


# Trained parameters on bert-base-cased with a 2-label head (768 x 2 + 2 = 1,538), and the %Param the tables print.
BERT_BASE_TRAINED = {"bitfit": (104_450, "0.10%"), "bm2_bq": (48_386, "0.04%"), "bm2": (39_170, "0.03%"),
                     "bq": (11_522, "0.01%"), "frozen": (1_538, "0.00%"), "rand_rowcol": (103_682, "0.09%")}


def test_bert_base_counts(bert_base_cased):
    model = bert_base_cased
    assert next(model.parameters()).device.type == "meta"
    total = bert_encoder_total(28996, 768, 12, 3072)
    assert total == 108_310_272
    pooler = 768
    expected = {"bitfit": 12 * (7 * 768 + 3072) + 768 + pooler,  # = 102,912
                "bm2_bq": 12 * (3072 + 768) + pooler, "bm2": 12 * 3072 + pooler, "bq": 12 * 768 + pooler,
                "frozen": 0,
                # a bias-sized share of the 6 matrices of each layer, both LayerNorm gains, the pooler matrix
                "rand_rowcol": 12 * (4 * 768 + 3072 + 768 + 2 * 768) + pooler}
    for method, count in expected.items():
        assert share(model, method) == (count, total), method
        assert count + 1_538 == BERT_BASE_TRAINED[method][0], method


@pytest.mark.parametrize("method", sorted(BERT_BASE_TRAINED))
def test_bert_base_trainable_and_param_column(bert_base_cased, method):
    trained, shown = BERT_BASE_TRAINED[method]
    counts = parameter_counts(bert_base_cased, select(method, bert_base_cased))
    assert (counts["trainable"], counts["head"]) == (trained, 1_538)
    assert fmt_param(counts["pct_encoder"]) == shown


def test_bert_base_rand_rowcol_is_exact_for_every_seed(bert_base_cased):
    # 4 distinct rows of the 3072 x 768 intermediate weight, or one column: 3,072 either way, whatever the draw.
    intermediate = set()
    for seed in (1, 2):
        selection = seeded("rand_rowcol", bert_base_cased, seed)
        assert selection.count(bert_base_cased) == 103_682
        intermediate |= {drawn(m)[0] for n, m in selection.masks.items() if n.endswith("intermediate.dense.weight")}
    assert intermediate == {"column", "rows"}


@pytest.mark.parametrize("method, paper", [("bm2_bq", 0.04), ("bm2", 0.03), ("bq", 0.01)])
def test_bert_base_cased_percentages(bert_base_cased, method, paper):
    trained, total = share(bert_base_cased, method)
    assert round(100 * trained / total, 2) == paper


def test_bert_base_bitfit_percentage(bert_base_cased):
    # bert-base-cased gives 102,912 / 108,310,272 = 0.0950%: round() says 0.10, the paper prints 0.09 (Tables 1-3).
    # The paper's figure matches the uncased vocabulary (30,522 -> 109,482,240 parameters, 0.0940%), i.e. the usual
    # "110M" BERT-base size, for all four methods at once.
    trained, total = share(bert_base_cased, "bitfit")
    assert 0.0950 < 100 * trained / total < 0.0951
    uncased = meta_bert(30522, 768, 12, 12, 3072)
    for method, paper in [("bitfit", 0.09), ("bm2_bq", 0.04), ("bm2", 0.03), ("bq", 0.01)]:
        trained, total = share(uncased, method)
        assert total == bert_encoder_total(30522, 768, 12, 3072) == 109_482_240
        assert round(100 * trained / total, 2) == paper, method


def test_bert_large_bitfit_percentage():
    model = meta_bert(28996, 1024, 24, 16, 4096)
    trained, total = share(model, "bitfit")
    assert trained == 24 * (7 * 1024 + 4096) + 1024 + 1024 == 272_384
    assert total == bert_encoder_total(28996, 1024, 24, 4096)
    assert round(100 * trained / total, 2) == 0.08
