"""bitfit-export --format peft: a BEFT adapter that plain peft loads over the base checkpoint gives the logits of the
served patch (bitfit-predict's engine), and its merge_and_unload() equals the merged export; what BEFT cannot hold is
refused in one line with nothing written."""

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import GLUE, MINILM, compose, tiny_config
from test_serve import ITEMS, seal_run

from bitfit_exp.commands.export import main as export_main
from bitfit_exp.core.errors import UserError
from bitfit_exp.model.loading import load_model, load_tokenizer
from bitfit_exp.model.patch import apply_patch
from bitfit_exp.serving.engine import MultiTaskEngine, find_patches
from bitfit_exp.serving.export import export
from bitfit_exp.serving.peft_export import adapter_plan, export_peft
from bitfit_exp.train.runner import start_seed

# method, task, extra overrides: every method BEFT can express, over single, pair and regression tasks
EXPRESSIBLE = [("bitfit", "rte", ()), ("bq", "sst2", ()), ("bm2", "stsb", ()), ("bm2_bq", "mrpc", ()),
               ("biases", "sst2", ("method.components=[v,ln1,m3]", "method.pooler_bias=false")),
               ("frozen", "rte", ())]


def perturbed_run(root: Path, model_dir: Path, task: str, method: str, seed: int, *extra: str) -> Path:
    """A sealed run folder whose patch is the method's selection (the runner's start_seed, method options included)
    moved far from its starting values, as tests/test_serve.py's fake_run."""
    cfg = compose(f"model.name_or_path={model_dir}", f"runs_dir={root}", f"data.dir={GLUE}", f"task={task}",
                  f"method={method}", "data.max_length=24", "train.epochs=1", f"seeds=[{seed}]", *extra)
    model, selection, initial = start_seed(cfg, seed, "cpu")
    return seal_run(cfg, model_dir, seed, model, selection, initial)


def peft_loaded(out: Path, num_labels: int):
    """The adapter as a user loads it: plain transformers + plain peft, base named by the adapter's config."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(PeftConfig.from_pretrained(out).base_model_name_or_path,
                                                              num_labels=num_labels)
    return PeftModel.from_pretrained(base, out).eval()


def check_round_trip(runs: list[Path], tmp_path: Path, served: bool = True, atol: float = 1e-5) -> None:
    """For each run: the peft-loaded adapter's logits equal the served patch's (or, for a patch the engine refuses,
    the patched model's), and merge_and_unload() equals the merged export, parameter by parameter."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    patches = find_patches([str(r) for r in runs])
    engine = MultiTaskEngine(patches) if served else None
    for run, patch in zip(runs, patches, strict=True):
        out = export_peft(str(run), tmp_path / f"peft-{patch.task}-{patch.method}")
        model = peft_loaded(out, patch.num_labels)
        tokenizer = AutoTokenizer.from_pretrained(out)
        assert tokenizer.model_max_length == patch.max_length
        items = [{**i, "task": patch.name} for i in ITEMS if ("text_pair" in i) == (len(patch.text_fields) == 2)]
        expected = engine.predict(items) if engine else None
        for k, item in enumerate(items):
            texts = [t for t in (item["text"], item.get("text_pair")) if t is not None]
            batch = tokenizer(*texts, truncation=True, return_tensors="pt")
            with torch.no_grad():
                got = model(**batch).logits[0]
            if engine:
                want = torch.tensor(expected[k]["logits"])
            else:  # the patched model itself, tokenized as the engine does
                patched = apply_patch(load_model(patch.model, patch.num_labels), patch.path).eval()
                with torch.no_grad():
                    want = patched(**load_tokenizer(patch.model)(*texts, truncation=True, max_length=patch.max_length,
                                                                 return_tensors="pt")).logits[0]
            where = f"{patch.name}, {item}"
            torch.testing.assert_close(got, want, rtol=atol, atol=atol, msg=lambda m, where=where: f"{where}: {m}")
        merged_dir = export(str(run), tmp_path / f"merged-{patch.task}-{patch.method}")
        merged = AutoModelForSequenceClassification.from_pretrained(merged_dir)
        unloaded = dict(model.merge_and_unload().named_parameters())
        for name, value in merged.named_parameters():
            torch.testing.assert_close(unloaded[name], value, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_a_peft_adapter_gives_the_served_logits_and_merges_into_the_merged_export(family, request, tmp_path,
                                                                                   glue_dir):
    model_dir = request.getfixturevalue(f"tiny_{family}_dir")
    runs = [perturbed_run(tmp_path / "runs", model_dir, task, method, seed, *extra)
            for seed, (method, task, extra) in enumerate(EXPRESSIBLE)]
    check_round_trip(runs, tmp_path)
    bitfit = tmp_path / "peft-rte-bitfit"
    config = json.loads((bitfit / "adapter_config.json").read_text())
    assert config["peft_type"] == "BEFT"
    assert config["base_model_name_or_path"] == str(model_dir)  # a local checkpoint: its path
    prefix = "bert" if family == "bert" else "roberta"
    assert f"{prefix}.encoder.layer.0.attention.self.query" in config["target_modules"]
    assert f"{prefix}.encoder.layer.1.output.LayerNorm" in config["modules_to_save"]
    head = ["classifier"] if family == "bert" else ["classifier.dense", "classifier.out_proj"]
    assert set(head) <= set(config["modules_to_save"])
    source = json.loads((bitfit / "bitfit_patch.json").read_text())
    assert source["format"] == "peft" and source["method"] == "bitfit" and source["base_on_hub"] is False


def test_a_pooler_the_checkpoint_lacked_travels_whole_in_modules_to_save(tmp_path, glue_dir):
    """A BERT saved without its pooler (as BertForMaskedLM checkpoints are): each seed drew the pooler at random
    (`fixed.` weight, trained bias), so the adapter must carry the whole module, or it would not reproduce the run."""
    from transformers import BertForMaskedLM

    folder = tmp_path / "mlm"
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config("bert")).save_pretrained(folder)
    load_tokenizer(MINILM).save_pretrained(folder)
    runs = [perturbed_run(tmp_path / "runs", folder, "rte", "bitfit", 0),
            perturbed_run(tmp_path / "runs", folder, "sst2", "frozen", 1)]
    with pytest.raises(UserError, match="its checkpoint lacks bert.pooler.dense.weight"):
        MultiTaskEngine(find_patches([str(runs[0])]))  # so compare with the patched model itself
    check_round_trip(runs, tmp_path, served=False)
    config = json.loads((tmp_path / "peft-rte-bitfit" / "adapter_config.json").read_text())
    assert "bert.pooler.dense" in config["modules_to_save"]
    assert "bert.pooler.dense" not in config["target_modules"]
    frozen = json.loads((tmp_path / "peft-sst2-frozen" / "bitfit_patch.json").read_text())
    assert frozen["beft_targets"] == 0 and frozen["zero_vector"]  # head only: one zero vector keeps peft loading


def test_deberta_v2_adapters_reproduce_the_run(tmp_path, glue_dir):
    """DeBERTa-v2 runs its query/key projections on the shared relative positions too (the engine refuses it); a
    BEFT vector sits on those same Linear layers, so the adapter still equals the patched model."""
    from test_serve import save_family

    deberta = save_family(tmp_path / "deberta", "deberta-v2")
    runs = [perturbed_run(tmp_path / "runs", deberta, "rte", "bitfit", 0),
            perturbed_run(tmp_path / "runs", deberta, "sst2", "bq", 1)]
    check_round_trip(runs, tmp_path, served=False)
    config = json.loads((tmp_path / "peft-rte-bitfit" / "adapter_config.json").read_text())
    assert "deberta.encoder.layer.0.attention.self.query_proj" in config["target_modules"]
    assert {"deberta.encoder.LayerNorm", "pooler.dense", "classifier"} <= set(config["modules_to_save"])


@pytest.mark.parametrize("method, why", [
    ("rand_uniform", r"has only some of its entries trained \(a masked method\)"),
    ("rand_rowcol", r"has only some of its entries trained \(a masked method\)"),
    ("full", r"is a trained Embedding weight \(not a bias\)"),
])
def test_what_beft_cannot_hold_is_one_line_exit_2_nothing_written(method, why, tmp_path, tiny_bert_dir, glue_dir,
                                                                     capsys):
    run = perturbed_run(tmp_path / "runs", tiny_bert_dir, "rte", method, 0)
    out = tmp_path / "adapter"
    assert export_main(["--format", "peft", str(run), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert re.search(rf"bert\.\S+ {why}, which a BEFT adapter cannot hold; export the merged model instead: "
                     rf"bitfit-export {re.escape(str(run))} OUT", err), err
    assert not out.exists()
    assert export_main([str(run), str(out)]) == 0  # the merged export the line points to works
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_gpt2_conv1d_and_deberta_v1_fused_biases_are_refused_by_name():
    from transformers import (
        DebertaConfig,
        DebertaForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
    )

    gpt2 = GPT2ForSequenceClassification(GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=20, n_positions=16))
    with pytest.raises(UserError, match=r"^p: transformer\.h\.0\.attn\.c_attn\.bias is the bias of a Conv1D layer "
                                        r"\(BEFT wraps nn\.Linear layers only\), which a BEFT adapter cannot hold"):
        adapter_plan(gpt2, {"trained.transformer.h.0.attn.c_attn.bias": torch.zeros(24)}, "p")
    deberta = DebertaForSequenceClassification(DebertaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                             intermediate_size=16, vocab_size=20))
    name = next(n for n, _ in deberta.named_parameters() if n.endswith("q_bias"))
    with pytest.raises(UserError, match=rf"^p: {re.escape(name)} is the bias of a DisentangledSelfAttention layer"):
        adapter_plan(deberta, {f"trained.{name}": torch.zeros(8)}, "p")


@pytest.mark.slow
def test_real_minilm_round_trip_every_expressible_method(tmp_path, glue_dir):
    from bitfit_exp.model.loading import resolve_model_path

    minilm = Path(resolve_model_path(MINILM))
    runs = [perturbed_run(tmp_path / "runs", minilm, task, method, seed, *extra)
            for seed, (method, task, extra) in enumerate(EXPRESSIBLE)]
    check_round_trip(runs, tmp_path)

