"""The peft-backed methods (lora, ia3, beft, peft): what trains (against peft's own count), frozen weights untouched,
seeded and resumable runs, the adapter folder as the run's checked result, the schema's checks of their keys, the
consumers that do not apply saying so in one line, and the peft table's cells."""

import json
import statistics

import pytest
import torch
from conftest import compose, quick
from safetensors.torch import load_file

from bitfit_exp.config.schema import problems
from bitfit_exp.core.errors import UserError
from bitfit_exp.model.methods import select
from bitfit_exp.model.peft_methods import base_name
from bitfit_exp.results.records import done, redo_reason
from bitfit_exp.results.selection import collect, peft_selection, select_best_lr
from bitfit_exp.results.tables import build_table, compare
from bitfit_exp.serving.engine import AdapterRun, find_patches
from bitfit_exp.serving.export import export
from bitfit_exp.serving.peft_export import export_peft
from bitfit_exp.train.runner import Prepared, parameter_counts, run_job, run_seed, start_seed
from bitfit_exp.train.trainer import Stopped, predict, train_seed

CPU = torch.device("cpu")
LAYERS, HIDDEN, FF = 2, 16, 32  # conftest.tiny_config


def tiny_model(kind: str):
    from conftest import tiny_config
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(kind, num_labels=2))


# The trained encoder parameters each method adds, by the layer's module path and size, written out by hand.
def expected_encoder(method: str, prefix: str) -> dict[str, int]:
    out = {}
    for i in range(LAYERS):
        layer = f"base_model.model.{prefix}.encoder.layer.{i}."
        if method == "lora":  # r=8 on query and value: A is r x in, B is out x r
            for module in ("attention.self.query", "attention.self.value"):
                out[f"{layer}{module}.lora_A.default.weight"] = 8 * HIDDEN
                out[f"{layer}{module}.lora_B.default.weight"] = HIDDEN * 8
        elif method == "ia3":  # key, value: one per output; output.dense (feed-forward): one per input
            out[f"{layer}attention.self.key.ia3_l.default"] = HIDDEN
            out[f"{layer}attention.self.value.ia3_l.default"] = HIDDEN
            out[f"{layer}attention.output.dense.ia3_l.default"] = HIDDEN
            out[f"{layer}output.dense.ia3_l.default"] = FF
        elif method == "beft":  # one bias vector on the value projection
            out[f"{layer}attention.self.value.beft_bias.default"] = HIDDEN
    return out


HEAD = {"bert": {"classifier.weight": HIDDEN * 2, "classifier.bias": 2},
        "roberta": {"classifier.dense.weight": HIDDEN * HIDDEN, "classifier.dense.bias": HIDDEN,
                    "classifier.out_proj.weight": HIDDEN * 2, "classifier.out_proj.bias": 2}}
OPTIONS = {"lora": {"r": 8, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["query", "value"]},
           "ia3": {}, "beft": {}}


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("method", ["lora", "ia3", "beft"])
def test_what_trains_by_name_and_count_against_peft(kind, method):
    selection = select(method, tiny_model(kind), **OPTIONS[method])
    wrapped = selection.wrapped
    encoder = expected_encoder(method, kind)
    head = {f"base_model.model.{n.replace('classifier.', 'classifier.modules_to_save.default.', 1)}": size
            for n, size in HEAD[kind].items()}
    named = dict(wrapped.named_parameters())
    assert {n: named[n].numel() for n in selection.params} == {**encoder, **head}
    assert sorted(base_name(n) for n in selection.head) == sorted(HEAD[kind])
    counts = parameter_counts(wrapped, selection)
    trainable, total = wrapped.get_nb_trainable_parameters()  # what peft's print_trainable_parameters prints
    assert counts["trainable"] == trainable == sum(encoder.values()) + sum(HEAD[kind].values())
    assert counts["trainable_encoder"] == sum(encoder.values()) and counts["head"] == sum(HEAD[kind].values())
    # the pre-trained encoder: peft's total less what it injected and the head (its copy and the frozen original)
    assert counts["encoder_total"] == total - sum(encoder.values()) - 2 * sum(HEAD[kind].values())
    assert counts["pct_encoder"] == pytest.approx(100 * sum(encoder.values()) / counts["encoder_total"])


def test_generic_peft_method_passes_its_keys_to_the_chosen_config_class():
    selection = select("peft", tiny_model("bert"), peft_type="LOHA", r=4, target_modules=["query"])
    assert type(selection.wrapped.peft_config["default"]).__name__ == "LoHaConfig"
    assert selection.wrapped.peft_config["default"].r == 4
    trained = [n for n in selection.params if n not in selection.head]
    assert trained and all(".attention.self.query.hada_" in n for n in trained)


def test_schema_checks_peft_keys_in_one_line_each():
    def lines(*overrides):
        return problems(compose("task=rte", *overrides))

    assert lines("method=lora") == [] and lines("method=ia3") == [] and lines("method=beft") == []
    assert lines("method=peft", "method.peft_type=LOHA", "+method.r=4") == []
    (bad,) = lines("method=lora", "+method.rank=4")
    assert bad.startswith("method.rank=4 is not an option of peft's LoraConfig") and "lora_alpha" in bad
    (bad,) = lines("method=lora", "method.r=eight")
    assert bad == "method.r='eight' is not valid; expected an integer (peft's LoraConfig.r, method=lora)"
    (bad,) = lines("method=peft", "method.peft_type=NOPE")
    assert "is not a peft type; choose one of" in bad and "LOHA" in bad
    assert any("option of method peft, not of lora" in line for line in lines("method=lora", "+method.peft_type=X"))
    (bad,) = lines("method=ia3", "method.target_modules=[key]", "method.feedforward_modules=[value]")
    assert "IA3Config refuses" in bad and "subset of `target_modules`" in bad
    assert lines("method=bitfit", "+method.r=4")[0].startswith("method.r=4 is not a config key")  # ours unchanged


def trained_run(cfg, prepared, seed=0):
    model, selection, _ = start_seed(cfg, seed, CPU)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_seed(model, selection, prepared.train, prepared.train_probe, prepared.dev, cfg, seed, CPU,
                        prepared.pad_id)
    return model, selection, before, result


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("method", ["lora", "ia3", "beft"])
def test_frozen_weights_stay_bit_identical_and_a_seed_reproduces_its_run(method, kind, tmp_path, glue_dir, request):
    # LoRA dropout 0.1 and the tiny models' own dropout: the run depends on the seeded random streams.
    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    cfg = compose(*quick(folder, tmp_path, f"method={method}", "optim.lr=0.01"))
    prepared = Prepared(cfg)
    model, selection, before, result = trained_run(cfg, prepared)
    after = dict(model.named_parameters())
    frozen = [n for n in before if n not in selection.params]
    assert len(frozen) > 30 and all(torch.equal(before[n], after[n]) for n in frozen)
    assert all(not torch.equal(before[n], after[n]) for n in selection.params)  # every trained tensor moved
    _, _, _, again = trained_run(cfg, prepared)
    assert [r["train_loss"] for r in again.epochs] == [r["train_loss"] for r in result.epochs]
    assert all(torch.equal(again.chosen_state[n], result.chosen_state[n]) for n in result.chosen_state)
    _, _, _, other = trained_run(cfg, prepared, seed=1)
    assert any(not torch.equal(other.chosen_state[n], result.chosen_state[n]) for n in result.chosen_state)


def strip_times(epochs):
    return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in epochs]


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_resume_from_an_epoch_checkpoint_equals_the_uninterrupted_run(kind, tmp_path, glue_dir, request):
    folder = request.getfixturevalue(f"tiny_{kind}_dir")
    cfg = compose(*quick(folder, tmp_path, "method=lora", "train.epochs=3", "train.select=last", "optim.lr=0.01"))
    prepared = Prepared(cfg)
    whole = run_seed(cfg, 0, prepared, tmp_path / "whole", CPU)
    cfg.train.stop_after_epochs = 1
    with pytest.raises(Stopped):
        run_seed(cfg, 0, prepared, tmp_path / "cut", CPU)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "adapter").exists()
    cfg.train.stop_after_epochs = None
    torch.manual_seed(7)  # whatever ran before in this process: the checkpoint restores the streams
    resumed = run_seed(cfg, 0, prepared, tmp_path / "cut", CPU)
    assert resumed["resumed_after_epoch"] == 1 and strip_times(resumed["epochs"]) == strip_times(whole["epochs"])
    a, b = (load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors")) for d in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, tiny_bert_dir, glue_dir):
    """Three seeds of LoRA and of BitFit on the tiny BERT, run as bitfit-run runs them."""
    runs = tmp_path_factory.mktemp("peft_runs")
    for method in ("lora", "bitfit"):
        run_job(compose(*quick(tiny_bert_dir, runs, f"method={method}", "seeds=[0,1,2]", "optim.lr=0.01")))
    return runs


def test_the_result_is_a_checked_peft_adapter_folder(lora_runs, tiny_bert_dir, tmp_path):
    from peft import PeftModel

    from bitfit_exp.model.loading import load_model

    (path,) = [p for p in lora_runs.glob("**/lora/*/seed0/record.json")]
    record = json.loads(path.read_text())
    assert record["artifacts"]["patch"] == "adapter/adapter_model.safetensors" and done(path)
    assert record["env"]["peft"] == __import__("peft").__version__
    adapter = path.parent / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and sorted(config["target_modules"]) == ["query", "value"]
    # peft loads it onto a fresh checkpoint (whatever head that draws) and predicts what the run predicted
    loaded = PeftModel.from_pretrained(load_model(str(tiny_bert_dir), 2), adapter).eval()
    cfg = compose(*quick(tiny_bert_dir, lora_runs, "method=lora", "optim.lr=0.01"))
    prepared = Prepared(cfg)
    (split, name), = cfg.task.test_splits.items()
    data = prepared.test[split]
    prepared.kind.write_test(predict(loaded, data, cfg, CPU, prepared.pad_id), data, cfg.task, tmp_path / name)
    assert (tmp_path / name).read_bytes() == (path.parent / name).read_bytes()
    # its identity is checked like a patch's: another file in its place is not the run's
    blob = (adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(blob[:-4] + b"    ")
    try:
        assert not done(path) and "not its own" in redo_reason(path)
    finally:
        (adapter / "adapter_model.safetensors").write_bytes(blob)
    assert done(path)


def test_serving_says_in_one_line_and_export_copies_the_adapter(lora_runs, tmp_path, capsys):
    (seed,) = [p.parent for p in lora_runs.glob("**/lora/*/seed0/record.json")]
    with pytest.raises(AdapterRun) as refused:
        find_patches([str(seed)])
    assert "\n" not in str(refused.value) and "PeftModel.from_pretrained" in str(refused.value)
    patches = find_patches([str(lora_runs)])  # a folder of runs: the bias patches, the adapters skipped
    assert {p.method for p in patches} == {"bitfit"} and capsys.readouterr().out.count("a peft adapter (lora)") == 3
    with pytest.raises(UserError, match=r"its 3 runs trained peft adapters \(lora\), not bias patches"):
        find_patches([str(seed.parent)])  # a folder of nothing but adapters
    out = export(str(seed), tmp_path / "exported")
    assert (out / "adapter_config.json").read_bytes() == (seed / "adapter" / "adapter_config.json").read_bytes()
    source = json.loads((out / "bitfit_patch.json").read_text())
    assert source["method"] == "lora" and source["seed"] == 0 and source["adapter_sha256"]
    assert "the [peft](https://github.com/huggingface/peft) LORA adapter the run trained" in (out / "README.md").read_text()
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 32  # quick()'s max_length
    as_peft = export_peft(str(seed), tmp_path / "as_peft")  # --format peft: the same adapter
    assert (as_peft / "adapter_model.safetensors").read_bytes() == (seed / "adapter" / "adapter_model.safetensors").read_bytes()


def test_the_peft_table_cell_is_the_hand_computed_mean_and_std(lora_runs):
    df, warnings = collect(lora_runs)
    assert not warnings
    selection = peft_selection(select_best_lr(df))
    cells = compare(selection.best, selection.rows).set_index(["method", "column"])
    for method in ("lora", "bitfit"):
        scores = [100 * json.loads(p.read_text())["best"]["dev"]["validation"]["accuracy"]
                  for p in lora_runs.glob(f"**/{method}/*/seed*/record.json")]
        assert len(scores) == 3
        assert cells.at[(method, "rte"), "mean"] == pytest.approx(statistics.mean(scores), abs=1e-9)
        assert cells.at[(method, "rte"), "std"] == pytest.approx(statistics.stdev(scores), abs=1e-9)
    table = build_table(selection.best, selection.rows, expected_seeds=3).set_index("Method")
    lora = cells.loc[("lora", "rte")]
    assert table.at["LoRA", "RTE"] == f"{lora['mean']:.1f}±{lora['std']:.1f} (1/4 lrs)"
    assert table.at["LoRA", "%Param"] == f"{lora['pct_encoder']:.2f}%"
    assert list(table.index) == ["BitFit", "LoRA"]  # the paper's order: BitFit first


def test_target_modules_the_model_lacks_stop_the_seed_in_one_line_naming_its_layers(tmp_path, tiny_bert_dir,
                                                                                     glue_dir):
    cfg = compose(*quick(tiny_bert_dir, tmp_path, "method=lora", "method.target_modules=[nowhere]"))
    with pytest.raises(UserError) as refused:
        start_seed(cfg, 0, CPU)
    message = str(refused.value)
    assert message.startswith("method=lora: peft cannot apply LoraConfig (target_modules=['nowhere']) to this bert")
    assert "\n" not in message and "its Linear layers: classifier, dense, key, query, value" in message


def test_a_beft_run_exported_is_served_as_peft_itself_answers(tmp_path, tiny_bert_dir, glue_dir):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from bitfit_exp.model.loading import load_model
    from bitfit_exp.serving.adapters import AdapterOptions, adapter_reader
    from bitfit_exp.serving.engine import MultiTaskEngine

    runs = tmp_path / "runs"
    run_job(compose(*quick(tiny_bert_dir, runs, "method=beft", "optim.lr=0.05")))
    (seed,) = [p.parent for p in runs.glob("**/seed0/record.json")]
    out = export(str(seed), tmp_path / "beft")
    (served,) = find_patches([f"rte={out}"], other=adapter_reader(AdapterOptions.parse()))
    assert (served.text_fields, served.max_length) == (["sentence1", "sentence2"], 32)
    assert served.label_names == ["entailment", "not_entailment"]
    items = [{"task": "rte", "text": "A man plays a guitar.", "text_pair": "A man plays music."},
             {"task": "rte", "text": "It rains in the city today.", "text_pair": "The sun shines."}]
    answers = MultiTaskEngine([served]).predict(items)
    loaded = PeftModel.from_pretrained(load_model(str(tiny_bert_dir), 2), out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)  # as the card's snippet loads it
    for item, answer in zip(items, answers, strict=True):
        with torch.no_grad():
            logits = loaded(**tokenizer(item["text"], item["text_pair"], truncation=True, return_tensors="pt")).logits
        torch.testing.assert_close(torch.tensor(answer["logits"]), logits[0], rtol=1e-5, atol=1e-5)


def test_bitfit_tables_peft_writes_the_table_or_says_why_not(lora_runs, tmp_path, tiny_bert_dir, capsys):
    from bitfit_exp.commands.tables import main

    assert main(["--runs-dir", str(lora_runs), "--table", "peft", "--out", str(tmp_path / "t"),
                 "--expected-seeds", "3"]) == 0
    md = (tmp_path / "t" / "peft.md").read_text()
    assert md.startswith("### BitFit and peft methods under one protocol, GLUE dev")
    assert "| BERT-base | BitFit | ours |" in md and "| BERT-base | LoRA | ours |" in md
    assert "|  |  | paper | 0.09% | 90.2±0.2 |" in md  # the paper's BitFit row of this model name, for reference
    others = tmp_path / "others"
    run_job(compose(*quick(tiny_bert_dir, others, "method=frozen", "train.epochs=1")))
    capsys.readouterr()
    assert main(["--runs-dir", str(others), "--table", "peft", "--out", str(tmp_path / "u")]) == 1
    assert capsys.readouterr().err.startswith("no GLUE records of full, bitfit, bq, beft, lora, ia3, peft under ")
    assert not (tmp_path / "u" / "peft.md").exists()
