"""peft BEFT adapter folders served next to BitFit run patches over one tiny BERT: each adapter row's answer equals
peft's own model on it, and adapters that cannot share the backbone (or lack what the server must know) are one
line each."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from test_serve import fake_run

from bitfit_exp.core.errors import UserError
from bitfit_exp.model.loading import load_model
from bitfit_exp.serving.adapters import AdapterOptions, adapter_reader
from bitfit_exp.serving.engine import MultiTaskEngine, find_patches

TEXTS = ["a gem of a film, warm and funny", "dull and far too long", "the cast is wonderful", "i hated every minute",
         "an honest, moving story", "flat, lifeless and dumb"]
PAIRS = [("A man plays a guitar.", "A man plays music."), ("The cat sleeps.", "A dog barks loudly."),
         ("He said yes to the offer.", "He accepted the offer.")]


def train_beft(base: Path, out: Path, num_labels: int, texts, labels, modules_to_save=("LayerNorm",), seed=0,
               target_modules=("query", "value", "dense")) -> Path:
    """A BEFT adapter trained with plain peft for a few steps (large lr, so every vector moves), saved to `out`."""
    from peft import BeftConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=num_labels)
    config = BeftConfig(task_type="SEQ_CLS", target_modules=list(target_modules),
                        modules_to_save=list(modules_to_save) or None)
    peft_model = get_peft_model(model, config)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    batch = tokenizer(*texts, padding=True, truncation=True, max_length=24, return_tensors="pt")
    optim = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)
    peft_model.train()
    for _ in range(8):
        loss = peft_model(**batch, labels=torch.tensor(labels)).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_bert_dir, glue_dir):
    root = tmp_path_factory.mktemp("adapters")
    single = train_beft(tiny_bert_dir, root / "sentiment", 2, [TEXTS], [0, 1, 0, 1, 0, 1])
    pair = train_beft(tiny_bert_dir, root / "nli", 3, [[a for a, _ in PAIRS], [b for _, b in PAIRS]], [0, 1, 2],
                      modules_to_save=(), seed=1)
    run = fake_run(root / "runs", tiny_bert_dir, "sst2", "bq", 1)
    return {"sentiment": single, "nli": pair, "sst2": run}


def peft_logits(base: Path, folder: Path, num_labels: int, texts, max_length: int) -> torch.Tensor:
    """peft's own answer: the adapter loaded over its base with PeftModel.from_pretrained."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=num_labels)
    model = PeftModel.from_pretrained(model, str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    out = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer(*text, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(model(**batch).logits[0])
    return torch.stack(out)


def options(**extra) -> AdapterOptions:
    return AdapterOptions.parse(["sentiment=negative,positive", *extra.get("labels", [])],
                                ["sentiment=sentence", "nli=premise,hypothesis"], ["sentiment=24", "nli=24"])


def test_beft_adapters_serve_next_to_patches_with_peft_s_answers(adapters, tiny_bert_dir, capsys):
    specs = [str(adapters["sst2"]), str(adapters["sentiment"]), str(adapters["nli"])]
    patches = find_patches(specs, adapter_reader(options()))
    assert [p.name for p in patches] == ["sst2", "sentiment", "nli"]
    engine = MultiTaskEngine(patches, max_batch=16)
    assert "base checked by name only" in capsys.readouterr().out
    items = [{"task": "sentiment", "text": t} for t in TEXTS[:3]] + [
        {"task": "nli", "text": a, "text_pair": b} for a, b in PAIRS] + [{"task": "sst2", "text": TEXTS[0]}]
    out = engine.predict(items)
    assert engine.forward_passes == 1  # run patch and both adapters in one forward pass
    want = peft_logits(tiny_bert_dir, adapters["sentiment"], 2, [[t] for t in TEXTS[:3]], 24)
    got = torch.tensor([o["logits"] for o in out[:3]])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert [o["label"] for o in out[:3]] == [["negative", "positive"][int(i)] for i in want.argmax(-1)]
    want = peft_logits(tiny_bert_dir, adapters["nli"], 3, [list(p) for p in PAIRS], 24)
    torch.testing.assert_close(torch.tensor([o["logits"] for o in out[3:6]]), want, rtol=1e-5, atol=1e-5)
    assert list(out[3]["probabilities"]) == ["0", "1", "2"]  # no --labels: label ids
    # the adapter really moved its biases: the base model with a fresh head would answer otherwise, and the
    # adapter's LayerNorm gains (modules_to_save) are per row too
    state = patches[1].tensors(load_model(str(tiny_bert_dir), 2))
    assert any(k.endswith("LayerNorm.weight") for k in state)
    alone = torch.tensor(engine.predict([items[0]])[0]["logits"])  # alone or mixed: the same answer
    torch.testing.assert_close(alone, torch.tensor(out[0]["logits"]), rtol=1e-5, atol=1e-5)
    tasks = {t["name"]: t for t in [p.describe() for p in engine.patches]}
    assert tasks["sentiment"]["source"] == "peft BEFT adapter" and tasks["nli"]["pair"]


def test_provenance_in_the_folder_replaces_the_options(adapters, tmp_path):
    folder = tmp_path / "stsb-like"
    shutil.copytree(adapters["sentiment"], folder)
    (folder / "bitfit_patch.json").write_text(json.dumps({"task": "movie", "text_fields": ["review"],
                                                          "max_length": 16, "labels": ["bad", "good"]}))
    [patch] = find_patches([str(folder / "adapter_model.safetensors")], adapter_reader(AdapterOptions()))
    assert (patch.name, patch.text_fields, patch.max_length, patch.labels()) == ("movie", ["review"], 16,
                                                                                 ["bad", "good"])


def refusal(specs, opts=None, model=None) -> str:
    with pytest.raises(UserError) as e:
        patches = find_patches(specs, adapter_reader(opts or options()))
        MultiTaskEngine(patches, model=model)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_adapters_that_cannot_be_served_are_one_line(adapters, tiny_bert_dir, tiny_roberta_dir, tmp_path):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"}))
    assert re.search(r"lora: a peft LORA adapter changes weight matrices, so it cannot share the served backbone "
                     r".*merge_and_unload\(\)", refusal([str(lora)]))
    assert "give --text-fields other=sentence" in refusal([f"other={adapters['sentiment']}"])
    message = refusal([str(adapters["sentiment"])], model=str(tiny_roberta_dir))
    assert f"its base is {tiny_bert_dir} (adapter_config.json base_model_name_or_path)" in message
    assert "compared by name" in message and "--model" in message
    wrong = AdapterOptions.parse(["sentiment=a,b,c"], ["sentiment=s"], ["sentiment=8"])
    assert "3 labels given (a, b, c) but its head has 2 outputs" in refusal([str(adapters["sentiment"])], wrong)
    embeddings = train_beft(tiny_bert_dir, tmp_path / "emb", 2, [TEXTS[:2]], [0, 1],
                            modules_to_save=("word_embeddings",))
    message = refusal([f"sentiment={embeddings}"])
    assert "modules_to_save holds bert.embeddings.word_embeddings.weight (a Embedding inside the encoder)" in message
    assert "merge_and_unload" in message
    (tmp_path / "broken").mkdir()
    shutil.copy(adapters["sentiment"] / "adapter_config.json", tmp_path / "broken")
    (tmp_path / "broken" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    assert "damaged adapter file" in refusal([f"sentiment={tmp_path / 'broken'}"])
    with pytest.raises(UserError, match="--max-length sentiment=x: give the number of tokens"):
        AdapterOptions.parse([], [], ["sentiment=x"])


def test_cli_refuses_in_one_line_and_writes_nothing(adapters, tmp_path, capsys):
    import pandas as pd

    from bitfit_exp.commands.predict import main

    pd.DataFrame({"text": TEXTS[:2]}).to_csv(tmp_path / "in.csv", index=False)
    base = [str(adapters["sentiment"]), "--input", str(tmp_path / "in.csv"), "--task", "sentiment", "--no-progress"]
    assert main([*base, "--output", str(tmp_path / "a.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--text-fields sentiment=" in err and "\n" not in err
    assert main([*base, "--output", str(tmp_path / "b.parquet"), "--text-fields", "sentimnt=sentence",
                 "--max-length", "sentiment=24"]) == 2
    assert "'sentimnt', which is no served adapter (adapters: sentiment" in capsys.readouterr().err
    assert not (tmp_path / "a.parquet").exists() and not (tmp_path / "b.parquet").exists()
    assert main([*base, "--output", str(tmp_path / "c.parquet"), "--text-fields", "sentiment=text",
                 "--max-length", "sentiment=24", "--labels", "sentiment=neg,pos"]) == 0
    assert pd.read_parquet(tmp_path / "c.parquet")["label"].isin(["neg", "pos"]).all()


def test_a_roberta_adapter_with_a_two_layer_head_serves_as_peft_answers(tiny_roberta_dir, tmp_path):
    """RoBERTa's head is classifier.dense + classifier.out_proj: the label count comes from out_proj."""
    folder = train_beft(tiny_roberta_dir, tmp_path / "roberta", 3, [TEXTS], [0, 1, 2, 0, 1, 2])
    opts = AdapterOptions.parse([], ["roberta=sentence"], ["roberta=24"])
    [patch] = find_patches([str(folder)], adapter_reader(opts))
    assert patch.num_labels == 3
    engine = MultiTaskEngine([patch])
    got = torch.tensor([o["logits"] for o in engine.predict([{"task": "roberta", "text": t} for t in TEXTS])])
    want = peft_logits(tiny_roberta_dir, folder, 3, [[t] for t in TEXTS], 24)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_serve_refuses_a_lora_adapter_in_one_line_before_serving(tmp_path, capsys, monkeypatch):
    import bitfit_exp.serving.limits as limits
    from bitfit_exp.commands.serve import main

    def never(*args, **kwargs):
        raise AssertionError("served a LoRA adapter")

    monkeypatch.setattr(limits, "serve", never)
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert main([str(tmp_path / "lora")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "peft LORA adapter" in err
