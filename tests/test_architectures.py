"""Every mapped family on a tiny random model built here (no download): the roles each method selects, exact counts,
one step moving exactly those tensors, patch round trips, and packed training equal to one-by-one (or its
fallback line)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers as tf
from torch import nn

from bitfit_exp.core.errors import UserError
from bitfit_exp.model.methods import select
from bitfit_exp.model.patch import apply_patch, save_patch, trained_state
from bitfit_exp.results.analysis import bias_change
from bitfit_exp.train.packed import DropoutStreams, pack, packing_problem
from bitfit_exp.train.trainer import Masks, freeze, make_optimizer

H, L, V, PAD = 16, 2, 64, 63
COMMON = dict(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=2, intermediate_size=32,
              max_position_embeddings=40)


def config(kind: str, p: float = 0.0):
    """A tiny config of family `kind`, every dropout probability p."""
    bert_drop = dict(hidden_dropout_prob=p, attention_probs_dropout_prob=p)
    return {
        "bert": lambda: tf.BertConfig(**COMMON, **bert_drop),
        "roberta": lambda: tf.RobertaConfig(**COMMON, **bert_drop),
        "xlm-roberta": lambda: tf.XLMRobertaConfig(**COMMON, **bert_drop),
        "electra": lambda: tf.ElectraConfig(**COMMON, **bert_drop, embedding_size=8),
        "distilbert": lambda: tf.DistilBertConfig(vocab_size=V, dim=H, n_layers=L, n_heads=2, hidden_dim=32,
                                                  max_position_embeddings=40, dropout=p, attention_dropout=p,
                                                  seq_classif_dropout=p),
        "albert": lambda: tf.AlbertConfig(**COMMON, **bert_drop, embedding_size=8, classifier_dropout_prob=p),
        "deberta-v2": lambda: tf.DebertaV2Config(**COMMON, **bert_drop, pooler_dropout=p, relative_attention=True,
                                                 pos_att_type=["p2c", "c2p"], share_att_key=True,
                                                 norm_rel_ebd="layer_norm", position_buckets=8,
                                                 max_relative_positions=16),
        # A decoder classifier needs a pad token: GPT-2 has none, so it is the eos token here.
        "gpt2": lambda: tf.GPT2Config(vocab_size=V, n_embd=H, n_layer=L, n_head=2, n_positions=40, resid_pdrop=p,
                                      embd_pdrop=p, attn_pdrop=p, bos_token_id=PAD, eos_token_id=PAD,
                                      pad_token_id=PAD),
        "qwen2": lambda: tf.Qwen2Config(**COMMON, num_key_value_heads=1, attention_dropout=p, pad_token_id=PAD,
                                        bos_token_id=PAD, eos_token_id=PAD),
    }[kind]()


def tiny(kind: str, p: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    return tf.AutoModelForSequenceClassification.from_config(config(kind, p))


KINDS = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "albert", "deberta-v2", "gpt2", "qwen2"]
# Written out from the modules of each family (not taken from bitfit_exp.model.architectures): layer N's prefix, b_q and
# b_m2 paths inside it, and the pooler bias the subsets add.
LAYER = {"bert": "bert.encoder.layer.{}.", "roberta": "roberta.encoder.layer.{}.",
         "xlm-roberta": "roberta.encoder.layer.{}.", "electra": "electra.encoder.layer.{}.",
         "distilbert": "distilbert.transformer.layer.{}.", "deberta-v2": "deberta.encoder.layer.{}.",
         "albert": "albert.encoder.albert_layer_groups.0.albert_layers.0.", "gpt2": "transformer.h.{}.",
         "qwen2": "model.layers.{}."}
BQ = {"distilbert": "attention.q_lin.bias", "albert": "attention.query.bias", "deberta-v2": "attention.self.query_proj.bias",
      "gpt2": "attn.c_attn.bias", "qwen2": "self_attn.q_proj.bias"}
BM2 = {"distilbert": "ffn.lin1.bias", "albert": "ffn.bias", "gpt2": "mlp.c_fc.bias"}
POOLER = {"bert": ["bert.pooler.dense.bias"], "albert": ["albert.pooler.bias"]}
HEAD = {"bert": ["classifier.weight", "classifier.bias"], "albert": ["classifier.weight", "classifier.bias"],
        "distilbert": ["pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"],
        "deberta-v2": ["pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"],
        "gpt2": ["score.weight"], "qwen2": ["score.weight"]}
for _k in ("roberta", "xlm-roberta", "electra"):
    HEAD[_k] = ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                "classifier.out_proj.bias"]


def layer_names(kind: str, path: str) -> list[str]:
    return sorted({LAYER[kind].format(n) + path for n in range(L)})  # ALBERT: one shared name


def sizes(model) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", KINDS)
def test_subsets_select_the_roles_of_the_table(kind):
    model = tiny(kind)
    size, head = sizes(model), sum(sizes(model)[n] for n in HEAD[kind])
    q_names = layer_names(kind, BQ.get(kind, "attention.self.query.bias"))
    bq = select("bq", model)
    assert sorted(bq.params) == sorted(q_names + POOLER.get(kind, []) + HEAD[kind])
    q_count = len(q_names) * H  # b_q is hidden-sized in every family (GPT-2: a third of c_attn)
    assert bq.count(model) == q_count + sum(size[n] for n in POOLER.get(kind, [])) + head
    if kind == "gpt2":  # the first third of the fused q|k|v bias, and only it
        mask = bq.params[q_names[0]]
        assert mask.tolist() == [True] * H + [False] * 2 * H
    if kind == "qwen2":
        with pytest.raises(UserError, match=r"Qwen2 \(qwen2\) has no b_m2; its per-layer biases are b_q b_k b_v$"):
            select("bm2_bq", model)
        return
    m2_names = layer_names(kind, BM2.get(kind, "intermediate.dense.bias"))
    both = select("bm2_bq", model, pooler_bias=False)
    assert sorted(both.params) == sorted(q_names + m2_names + HEAD[kind])
    assert both.count(model, include_head=False) == q_count + sum(size[n] for n in m2_names)
    qkv = select("biases", model, components=["q", "k", "v"])
    assert all(m is None for m in qkv.params.values())  # GPT-2 too: all three thirds are the whole c_attn bias


@pytest.mark.parametrize("kind", KINDS)
def test_bitfit_trains_every_bias_and_the_head(kind):
    model = tiny(kind)
    prefix = model.base_model_prefix + "."
    biases = [n for n in sizes(model) if n.startswith(prefix) and n.endswith(".bias")]
    selection = select("bitfit", model)
    assert sorted(selection.params) == sorted(biases + HEAD[kind])
    assert selection.count(model, include_head=False) == sum(sizes(model)[n] for n in biases)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "qwen2"])
def test_rand_rowcol_draws_a_bias_sized_share_of_each_layer_matrix(kind):
    model = tiny(kind)
    selection = select("rand_rowcol", model, torch.Generator().manual_seed(0))
    named = dict(model.named_parameters())
    in_layers = [n for n in named if n.startswith(LAYER[kind].format(0)[:-2]) or ".pooler." in n]
    # one weight per bias of a layer's Linear/Conv1D/LayerNorm (and the pooler): a share of its bias' size
    expected = {n[:-len("bias")] + "weight": named[n].numel() for n in in_layers if n.endswith(".bias")}
    encoder = {n: m for n, m in selection.params.items() if n not in HEAD[kind]}
    assert encoder.keys() == expected.keys()
    for name, mask in encoder.items():
        assert (mask is None and named[name].dim() == 1) or mask.shape == named[name].shape
        assert (named[name].numel() if mask is None else int(mask.sum())) == expected[name], name


def test_rand_rowcol_refuses_rmsnorm_layers():
    with pytest.raises(UserError, match=r"not layers\.0\.input_layernorm \(Qwen2RMSNorm\)"):
        select("rand_rowcol", tiny("qwen2"))


@pytest.mark.parametrize("model", [
    tf.LlamaForSequenceClassification(tf.LlamaConfig(vocab_size=V, hidden_size=H, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, pad_token_id=0)),
    tf.ModernBertForSequenceClassification(tf.ModernBertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=1,
                                                               num_attention_heads=2, intermediate_size=32,
                                                               pad_token_id=0))], ids=["llama", "modernbert"])
@pytest.mark.parametrize("method", ["bitfit", "bq", "rand_uniform"])
def test_models_without_biases_say_so(model, method):
    with pytest.raises(UserError, match=rf"^method={method}: this \w+ model has no bias terms, so it would train "
                                        r"only the classification head; method=frozen"):
        select(method, model)


def test_subsets_of_an_unmapped_family_name_the_mapped_ones():
    model = tf.LlamaForSequenceClassification(tf.LlamaConfig(
        vocab_size=V, hidden_size=H, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        pad_token_id=0, attention_bias=True))
    with pytest.raises(UserError, match=r"model_type 'llama', which .* does not map \(mapped: albert, bert, .*\); "
                                        r"method=bitfit trains every bias"):
        select("bq", model)
    assert len(select("bitfit", model).params) == 4 + 1  # q k v o biases of its one layer, and the head


def batch(kind, rows=3, width=7, pad_last=2):
    ids = torch.randint(3, 60, (rows, width), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[-1, width - pad_last:] = 0
    ids[-1, width - pad_last:] = PAD if kind in ("gpt2", "qwen2") else 0
    return {"input_ids": ids, "attention_mask": mask}


def one_step(model, selection, inputs):
    """One AdamW step on `selection` as train_seed takes it (masked gradients and decay, weight decay on)."""
    freeze(model, selection)
    optim = SimpleNamespace(name="adamw", lr=0.01, eps=1e-8, betas=(0.9, 0.999), weight_decay=0.1)
    optimizer, masks = make_optimizer(model, selection, optim), Masks.build(model, selection, "cpu")
    model.train()
    model(**inputs, labels=torch.tensor([0, 1, 1])).loss.backward()
    masks.mask_grads()
    masks.decay(optim.lr, optim.weight_decay)
    optimizer.step()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["bitfit", "bq"])
def test_one_step_moves_exactly_the_selection_and_the_patch_round_trips(kind, method, tmp_path):
    model = tiny(kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    selection = select(method, model)
    one_step(model, selection, batch(kind))
    after = dict(model.named_parameters())
    for name, value in before.items():
        moved = after[name] != value
        if name not in selection.params:
            assert not moved.any(), f"{name}: not selected, but moved"
        else:  # some entries may not move: a zero bias with a zero gradient (b_k: softmax ignores a constant)
            mask = selection.params[name]
            assert moved.any() and (mask is None or not (moved & ~mask).any()), name
    path = tmp_path / "patch.safetensors"
    save_patch(path, model, selection, trained_state(model, selection), before, {"seed": "0"})
    fresh = apply_patch(tiny(kind), path)
    assert all(torch.equal(p, after[n]) for n, p in fresh.named_parameters())
    if method == "bitfit" and kind != "qwen2":
        table = bias_change(path)
        assert table.notna().all().all() and list(table.columns) == ([1] if kind == "albert" else [1, 2])
        assert ("note" in table.attrs) == (kind == "albert")
    if kind == "gpt2":  # the fused bias is split into its q, k, v thirds; bq trains (and shows) only the first
        table = bias_change(path)
        name = "transformer.h.1.attn.c_attn.bias"
        thirds = (before[name] - after[name]).abs().double().view(3, H).mean(1).tolist()
        shown = table.loc[["q", "k", "v"], 2].tolist()
        assert shown == thirds if method == "bitfit" else (shown[0] == thirds[0] > 0 and np.isnan(shown[1:]).all())
        assert table.drop(index="q").isna().all().all() if method == "bq" else table.notna().all().all()


def settings(kind, selection, k):
    """k plain models whose trained tensors differ (setting i: its own seeded head and shifted biases)."""
    models = []
    for i in range(k):
        model = tiny(kind)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in selection.params:
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i + 7)) * 0.1)
        models.append(model)
    return models


def packed_twin(kind, selection, models, p=0.0, seeds=None):
    twin = tiny(kind, p)
    freeze(twin, selection)
    streams = DropoutStreams(seeds, "cpu") if seeds is not None else None
    params = pack(twin, selection, len(models), streams)
    for i, model in enumerate(models):
        params.load(i, trained_state(model, selection))
    return twin, params


PACKABLE_KINDS = [k for k in KINDS if k != "deberta-v2"]


@pytest.mark.parametrize("kind", PACKABLE_KINDS)
def test_packed_equals_one_by_one_without_dropout(kind):
    model = tiny(kind)
    selection = select("bitfit", model)
    models = settings(kind, selection, 2)
    twin, params = packed_twin(kind, selection, models)
    inputs, labels = batch(kind), torch.tensor([0, 1, 1])
    twin.train()
    packed = twin(**{k: v.repeat(2, 1) for k, v in inputs.items()}).logits
    losses = nn.functional.cross_entropy(packed, labels.repeat(2), reduction="none").view(2, -1).mean(1)
    losses.sum().backward()
    for i, alone in enumerate(models):
        freeze(alone, selection)
        alone.train()
        logits = alone(**inputs).logits
        torch.testing.assert_close(packed[3 * i:3 * (i + 1)], logits, rtol=1e-5, atol=1e-6)
        nn.functional.cross_entropy(logits, labels).backward()
        grads = dict(alone.named_parameters())
        for name, tensor in zip(params.names, params.tensors, strict=True):
            torch.testing.assert_close(tensor.grad[i], grads[name].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", PACKABLE_KINDS)
def test_per_setting_dropout_reaches_every_dropout(kind):
    """A setting's dropout masks are its own: packed alone or after another setting, the same logits; and the
    per-setting attention path (masks, causality, grouped heads) computes what SDPA does when nothing drops."""
    model = tiny(kind)
    selection = select("bitfit", model)
    first, second = settings(kind, selection, 2)
    inputs = batch(kind)
    alone, _ = packed_twin(kind, selection, [second], p=0.2, seeds=[5])
    pair, _ = packed_twin(kind, selection, [first, second], p=0.2, seeds=[4, 5])
    alone.train(), pair.train()
    lone = alone(**inputs).logits
    assert not torch.allclose(lone, alone.eval()(**inputs).logits)  # dropout is on
    paired = pair(**{k: v.repeat(2, 1) for k, v in inputs.items()}).logits
    torch.testing.assert_close(paired[3:], lone, rtol=1e-5, atol=1e-6)
    never, _ = packed_twin(kind, selection, [second], p=1e-7, seeds=[5])  # per-setting path, nothing dropped
    reference = tiny(kind, 1e-7)
    reference.load_state_dict(second.state_dict())
    never.train(), reference.train()
    for rows in (inputs, batch(kind, pad_last=0)):
        torch.testing.assert_close(never(**rows).logits, reference(**rows).logits, rtol=1e-4, atol=1e-5)


def test_deberta_and_masked_selections_fall_back_with_their_line():
    deberta = tiny("deberta-v2")
    assert packing_problem(deberta, select("bitfit", deberta)).startswith(
        "DeBERTa-v2 applies its query/key projections to the relative-position embeddings")
    with pytest.raises(ValueError, match="relative-position embeddings"):
        pack(deberta, select("bm2", deberta), 2)
    gpt2 = tiny("gpt2")
    assert "GPT-2's b_q alone" in packing_problem(gpt2, select("bq", gpt2))
    assert packing_problem(gpt2, select("bm2", gpt2)) is None


@pytest.mark.parametrize("group, checkpoint", [
    ("roberta_large", "roberta-large"), ("xlm_roberta_base", "FacebookAI/xlm-roberta-base"),
    ("electra_base", "google/electra-base-discriminator"), ("distilbert_base", "distilbert-base-uncased"),
    ("albert_base", "albert/albert-base-v2"), ("deberta_v3_base", "microsoft/deberta-v3-base"),
    ("gpt2", "openai-community/gpt2"), ("qwen2_0_5b", "Qwen/Qwen2.5-0.5B")])
def test_model_groups_of_the_mapped_families(group, checkpoint):
    from conftest import compose

    cfg = compose(f"model={group}")
    assert (cfg.model.name, cfg.model.name_or_path) == (group, checkpoint)


def test_a_packed_job_on_deberta_trains_one_by_one_with_its_note(tmp_path, glue_dir, capsys):
    from conftest import MINILM, compose, quick

    from bitfit_exp.model.loading import load_tokenizer
    from bitfit_exp.train.runner import run_job

    folder = tmp_path / "deberta"
    torch.manual_seed(0)
    tf.AutoModel.from_config(tf.DebertaV2Config(**{**COMMON, "vocab_size": 30522, "max_position_embeddings": 64},
                                                relative_attention=True, pos_att_type=["p2c", "c2p"],
                                                position_buckets=8, max_relative_positions=16)).save_pretrained(folder)
    load_tokenizer(MINILM).save_pretrained(folder)
    (records,) = run_job(compose(*quick(folder, tmp_path / "runs", "train.packed=true", "seeds=[0,1]",
                                        "train.epochs=1")))
    out = capsys.readouterr().out
    assert "note: DeBERTa-v2 applies its query/key projections" in out and "training one seed at a time" in out
    assert sorted(r["seed"] for r in records) == [0, 1] and all("packed" not in r for r in records)


def test_a_packed_job_on_a_checkpoint_without_pooler_trains_one_by_one_with_its_note(tmp_path, glue_dir, capsys):
    """Each seed initialises the missing pooler at random; a pack would share one seed's frozen pooler weight."""
    from conftest import compose, quick
    from test_identity import save_without_pooler

    from bitfit_exp.train.runner import run_job

    folder = save_without_pooler(tmp_path / "nopooler")
    runs = {}
    for packed in ("false", "true"):
        (records,) = run_job(compose(*quick(folder, tmp_path / f"runs-{packed}", f"train.packed={packed}",
                                            "seeds=[0,1]", "train.epochs=1", "optim.lr=0.05")))
        runs[packed] = {r["seed"]: r for r in records}
    out = capsys.readouterr().out
    assert ("note: the checkpoint lacks bert.pooler.dense.weight, which each seed initialises at random but a pack "
            "would share frozen from one seed") in out and "training one seed at a time" in out
    assert all("packed" not in r for r in runs["true"].values())
    for seed in (0, 1):  # what a one-by-one run gives
        assert runs["true"][seed]["epochs"][-1]["train_loss"] == runs["false"][seed]["epochs"][-1]["train_loss"]
        assert runs["true"][seed]["params"]["new_encoder"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]

    # The patch carries the seed's random pooler weight: applied under any random state, it gives the run's model.
    from safetensors.torch import load_file

    from bitfit_exp.model.loading import load_model
    from bitfit_exp.model.patch import apply_patch
    from bitfit_exp.serving.engine import MultiTaskEngine, find_patches

    (patch,) = (tmp_path / "runs-false").glob("**/seed0/patch.safetensors")
    assert "fixed.bert.pooler.dense.weight" in load_file(str(patch))
    patched = []
    for state in (1, 2):
        torch.manual_seed(state)
        patched.append(dict(apply_patch(load_model(str(folder), 2), patch).named_parameters()))
    assert all(torch.equal(v, patched[1][n]) for n, v in patched[0].items())
    # One served backbone cannot hold each task's own random pooler: refused, pointing to bitfit-export.
    with pytest.raises(UserError, match=r"its checkpoint lacks bert\.pooler\.dense\.weight, which the run "
                                        r"initialised at random .*bitfit-export"):
        MultiTaskEngine(find_patches([str(patch.parent)]))


def test_a_missing_parameter_that_every_setting_trains_does_not_stop_packing(tmp_path):
    from test_identity import save_without_pooler

    from bitfit_exp.model.loading import load_model
    from bitfit_exp.model.methods import Selection

    model = load_model(str(save_without_pooler(tmp_path / "nopooler")), num_labels=2)
    selection = select("bitfit", model)
    assert packing_problem(model, selection).startswith("the checkpoint lacks bert.pooler.dense.weight, which")
    with_pooler = Selection({**selection.params, "bert.pooler.dense.weight": None})  # starts from its seed's values
    assert packing_problem(model, with_pooler) is None


def save_tiny_gpt2_without_padding(folder):
    """A tiny GPT-2 as published: a byte-level BPE tokenizer with only <|endoftext|>, and no pad_token_id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    words = ["the cat sat on the mat", "a dog is not a cat", "entailment holds here", "Hello, world"] * 4
    bpe.train_from_iterator(words, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                           unk_token="<|endoftext|>", model_input_names=["input_ids", "attention_mask"])
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = tf.GPT2Config(vocab_size=len(tokenizer), n_embd=H, n_layer=L, n_head=2, n_positions=64,
                           eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    assert tokenizer.pad_token is None and config.pad_token_id is None
    tf.AutoModel.from_config(config).save_pretrained(folder)
    return folder


def test_a_decoder_without_a_padding_token_pads_with_eos(tmp_path, glue_dir):
    from conftest import compose, quick

    from bitfit_exp.model.loading import load_model, load_tokenizer
    from bitfit_exp.train.runner import run_job

    folder = save_tiny_gpt2_without_padding(tmp_path / "gpt2")
    tokenizer, model = load_tokenizer(str(folder)), load_model(str(folder), 2)
    assert tokenizer.pad_token == "<|endoftext|>" and model.config.pad_token_id == tokenizer.eos_token_id
    # Padded rows score as they do alone: the classifier reads each row's last real token.
    batch = tokenizer(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        together = model(**batch).logits
        alone = model(**tokenizer(["a dog"], return_tensors="pt")).logits
    torch.testing.assert_close(together[1], alone[0], rtol=1e-5, atol=1e-6)
    (records,) = run_job(compose(*quick(folder, tmp_path / "runs", "train.batch_size=8")))
    assert [r["status"] for r in records] == ["finished"]
