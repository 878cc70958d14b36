"""What a run is: the checkpoint and data it read (fingerprints), not where it read them from; records that are
checked against their place; schema-1 records adopted, not retrained; overwrite that never loses a result."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import GLUE, MINILM, quick

from bitfit_exp.results.records import (
    CorruptRecord,
    done,
    read_record,
    scan,
    seal,
    setting_key,
    v1_setting_key,
    write_json_atomic,
)

RUN = [sys.executable, "-c", "from bitfit_exp.commands.run import run; run()"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
LEGACY = Path(__file__).parent / "data" / "legacy_v1"
# The command that wrote tests/data/legacy_v1 (schema 1), with data.dir pointing at the same data.
LEGACY_ARGS = ["model=minilm", "task=rte", f"data.dir={GLUE}", "data.max_train_samples=16", "data.max_eval_samples=16",
               "data.train_eval_samples=16", "data.max_length=32", "train.epochs=1", "train.progress=false",
               "train.predict_test=false", "train.save_patch=false"]


def bitfit_run(*overrides):
    out = subprocess.run([*RUN, *overrides], capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def trained(out) -> list[str]:
    return [line.split(":")[0] for line in out.stdout.splitlines() if line.startswith("seed ") and " at epoch " in line]


def records(root) -> list[tuple[Path, dict]]:
    found, _ = scan(root)
    return found


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_schema1_records_are_adopted_not_retrained(tmp_path, glue_dir):
    shutil.copytree(LEGACY, tmp_path, dirs_exist_ok=True)
    (old0,) = tmp_path.glob("minilm/rte/bitfit/*/seed0/record.json")
    before = old0.read_bytes()
    out = bitfit_run(*LEGACY_ARGS, "seeds=[0,1,2]", f"runs_dir={tmp_path}")
    assert trained(out) == ["seed 2"]  # seeds 0 and 1 were finished under schema 1
    assert out.stdout.count("adopted, not retrained") == 2
    assert old0.read_bytes() == before  # the schema-1 folder is left as it was
    found = records(tmp_path)
    assert sorted(r["seed"] for _, r in found) == [0, 1, 2]  # the adopted copies stand for the schema-1 records
    assert {r["setting"]["hash"] for _, r in found} == {found[0][1]["setting"]["hash"]}
    adopted = {r["seed"]: r for _, r in found}
    old = json.loads(before)
    assert adopted[0]["best"] == old["best"] and adopted[0]["adopted_from"].endswith("seed0")
    again = bitfit_run(*LEGACY_ARGS, "seeds=[0,1,2]", f"runs_dir={tmp_path}")
    assert trained(again) == [] and "3 already finished" in again.stdout


def test_schema1_key_of_the_fixture_is_reproduced(tmp_path):
    (path,) = LEGACY.glob("minilm/rte/bitfit/*/seed0/record.json")
    record = json.loads(path.read_text())
    assert v1_setting_key(record["config"])["hash"] == record["setting"]["hash"]
    assert read_record(path)["schema"] == 1  # schema-1 records still pass the place check
    changed = {**record["config"], "method": {**record["config"]["method"], "name": "bq"}}
    assert v1_setting_key(changed) is None  # bq's selection changed since schema 1: never adopted


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_one_checkpoint_and_data_wherever_they_are_read_from(tmp_path, glue_dir):
    from bitfit_exp.model.loading import save_for_offline

    copy = save_for_offline(MINILM, tmp_path / "minilm_copy") or tmp_path / "minilm_copy"
    data = tmp_path / "glue_copy"
    shutil.copytree(glue_dir / "rte", data / "rte")
    runs = tmp_path / "runs"
    first = bitfit_run(*LEGACY_ARGS, "seeds=[0]", f"runs_dir={runs}")
    second = bitfit_run(*LEGACY_ARGS, "seeds=[0]", f"runs_dir={runs}", f"model.name_or_path={copy}",
                        f"data.dir={data}")
    assert trained(first) == ["seed 0"] and trained(second) == []
    assert len(records(runs)) == 1


def test_a_debug_copy_of_the_data_is_another_setting(tmp_path, tiny_bert_dir, glue_dir):
    small = tmp_path / "small"
    (small / "rte").mkdir(parents=True)
    for split in ("validation", "test"):
        shutil.copy(glue_dir / "rte" / f"{split}.parquet", small / "rte")
    pd.read_parquet(glue_dir / "rte" / "train.parquet").head(16).to_parquet(small / "rte" / "train.parquet")
    runs = tmp_path / "runs"
    args = [a for a in quick(tiny_bert_dir, runs, "train.epochs=1") if not a.startswith("data.dir=")]
    debug = bitfit_run(*args, f"data.dir={small}")
    real = bitfit_run(*args, f"data.dir={glue_dir}")
    assert trained(debug) == ["seed 0"] and trained(real) == ["seed 0"]  # not the 16-row result again
    found = records(runs)
    assert sorted(r["fingerprints"]["data"]["splits"]["train"]["rows"] for _, r in found) == [16, 2490]
    assert len({r["setting"]["hash"] for _, r in found}) == 2
    assert len({r["setting"]["config_hash"] for _, r in found}) == 1  # same config, other data


def sealed(tmp_path, seed=0, score=0.7) -> Path:
    config = {"model": {"name": "tiny", "name_or_path": "/x"}, "task": {"name": "rte"}, "method": {"name": "bitfit"},
              "optim": {"lr": 1e-3}, "train": {"epochs": 1}, "data": {}}
    row = {"epoch": 1, "dev": {"validation": {"accuracy": score}}}
    record = seal({"status": "finished", "seed": seed, "config": config, "main": {"split": "validation",
                   "metric": "accuracy", "select": "best"}, "epochs": [row], "best": row, "last": row,
                   "fingerprints": {"model": "m", "data": {"digest": "d", "splits": {}}}})
    path = tmp_path / record["setting"]["dir"] / f"seed{seed}" / "record.json"
    write_json_atomic(path, record)
    return path


def test_a_hand_edited_record_is_not_done(tmp_path):
    path = sealed(tmp_path)
    assert done(path)
    path.write_text(path.read_text().replace('"accuracy": 0.7', '"accuracy": 0.9'))
    assert not done(path)
    with pytest.raises(CorruptRecord, match="digest"):
        read_record(path)
    found, warnings = scan(tmp_path)
    assert found == [] and len(warnings) == 1 and str(path) in warnings[0]


@pytest.mark.parametrize("where", ["seed", "setting"])
def test_a_record_copied_elsewhere_is_ignored(tmp_path, where):
    path = sealed(tmp_path)
    if where == "seed":
        target = path.parent.parent / "seed3" / "record.json"
    else:
        target = path.parent.parent.parent / "lr0.001-00000000" / "seed0" / "record.json"
    target.parent.mkdir(parents=True)
    shutil.copy(path, target)
    assert done(path) and not done(target)
    with pytest.raises(CorruptRecord, match="copied or moved"):
        read_record(target)
    found, warnings = scan(tmp_path)
    assert [p for p, _ in found] == [path] and str(target) in warnings[0]


def test_non_finite_numbers_are_written_as_null(tmp_path):
    path = sealed(tmp_path, score=float("nan"))
    assert '"accuracy": null' in path.read_text() and read_record(path)["best"]["dev"]["validation"]["accuracy"] is None


def test_setting_key_ignores_where_things_were_read_from():
    cfg = {"model": {"name": "m", "name_or_path": "bert-base-cased"}, "task": {"name": "rte"},
           "method": {"name": "bitfit"}, "optim": {"lr": 1e-3}, "data": {"dir": None}}
    moved = {**cfg, "model": {"name": "m", "name_or_path": "/models/bert"}, "data": {"dir": "/data/glue"}}
    fp = {"model": "a", "data": "b"}
    assert setting_key(cfg, fp) == setting_key(moved, fp)
    assert setting_key(cfg, fp)["hash"] != setting_key(cfg, {"model": "a", "data": "c"})["hash"]
    assert setting_key(cfg, fp)["config_hash"] == setting_key(cfg, {"model": "z", "data": "c"})["config_hash"]


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_a_killed_overwrite_keeps_the_old_record_counted(tmp_path, tiny_bert_dir, glue_dir):
    args = quick(tiny_bert_dir, tmp_path, "train.epochs=2")
    bitfit_run(*args)
    (path,) = tmp_path.glob("**/seed0/record.json")
    old = path.read_text()
    cut = subprocess.run([*RUN, *args, "overwrite=true", "train.stop_after_epochs=1"], capture_output=True,
                         text=True, env=ENV, timeout=600)
    assert cut.returncode == 3  # stopped mid-overwrite
    assert path.read_text() == old and done(path)  # still counted
    assert not list(path.parent.glob("record.json.replaced-*"))
    resumed = bitfit_run(*args, "overwrite=true")
    assert "resumed from the checkpoint after epoch 1" in resumed.stdout
    (kept,) = path.parent.glob("record.json.replaced-*")
    assert kept.read_text() == old and done(path) and path.read_text() != old


def test_an_overwrite_does_not_redo_a_record_written_since_it_started(tmp_path):
    from bitfit_exp.train.runner import Member, _stamp, to_train

    path = sealed(tmp_path)
    member = Member(None, 0, path, _stamp(path))  # overwrite=true, seen at job start
    assert to_train(member)
    write_json_atomic(path, json.loads(path.read_text()))  # another overwriting job wrote a fresh record
    assert not to_train(member)
    assert not to_train(Member(None, 0, path, None))  # without overwrite: done is done


def test_a_diverged_seed_is_recorded_once_and_never_averaged(tmp_path, tiny_bert_dir, glue_dir):
    args = [a.replace("task=rte", "task=stsb") for a in quick(tiny_bert_dir, tmp_path, "seeds=[0,1]")]
    diverging = [*args, "optim.lr=1e30", "train.grad_clip=null"]
    out = bitfit_run(*diverging)
    assert out.stdout.count("DIVERGED at epoch") == 2 and "no finite result; 2 of 2 seeds diverged" in out.stdout
    found = records(tmp_path)
    assert sorted(r["status"] for _, r in found) == ["diverged", "diverged"]
    assert all(r["diverged"]["reason"] for _, r in found) and "NaN" not in found[0][0].read_text()
    again = bitfit_run(*diverging)  # done is done: no crash, no retraining
    assert "DIVERGED" not in again.stdout and "2 already finished" in again.stdout


# --- model fingerprints: what a checkpoint computes, not the random state it was loaded under ----------------------

# The fingerprints of fingerprint VERSION 1 (before the per-family keys and before leaving missing parameters out),
# which every existing run of these checkpoints is found by: they must never change.
PINNED = {"bert": "c39c96c83c95fdcf", "roberta": "310bfeee908511ad", "electra": "0130c7a0c653650e",
          "minilm": "9d78726d1bf7600d"}


def save_tiny_electra(folder: Path) -> Path:
    import torch
    import transformers as tf

    from bitfit_exp.model.loading import load_tokenizer

    torch.manual_seed(0)
    tf.AutoModel.from_config(tf.ElectraConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=32,
                                              max_position_embeddings=160, embedding_size=8)).save_pretrained(folder)
    load_tokenizer(MINILM).save_pretrained(folder)
    return folder


def test_fingerprints_of_bert_style_checkpoints_never_change(tmp_path, monkeypatch):
    from conftest import save_tiny

    from bitfit_exp.model.fingerprint import model_fingerprint

    monkeypatch.setenv("BITFIT_CACHE_DIR", str(tmp_path / "cache"))  # computed here, not read from a cache
    folders = {kind: str(save_tiny(tmp_path / kind, kind)) for kind in ("bert", "roberta")}
    folders.update(electra=str(save_tiny_electra(tmp_path / "electra")), minilm=MINILM)
    assert {kind: model_fingerprint(folder) for kind, folder in folders.items()} == PINNED


def other_value(value):
    """A value of the same kind as a config value, but another one."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1 if isinstance(value, int) else value / 2 + 0.01
    if isinstance(value, str):
        return "relu" if value != "relu" else "gelu"
    if isinstance(value, list):
        return value[:1] if len(value) > 1 else [*value, "x"]
    if isinstance(value, dict):
        return {**value, "rope_theta": 2 * value.get("rope_theta", 1.0)}
    return 8  # None: e.g. a sliding window switched on


@pytest.fixture(scope="module")
def tokenizer():
    from bitfit_exp.model.loading import load_tokenizer

    return load_tokenizer(MINILM)


@pytest.mark.parametrize("kind", ["bert", "electra", "distilbert", "albert", "deberta-v2", "gpt2", "qwen2"])
def test_every_computation_key_of_a_family_changes_its_fingerprint(kind, tokenizer):
    from test_architectures import config, tiny

    from bitfit_exp.model.fingerprint import ARCHITECTURE_KEYS, FAMILY_KEYS, model_digest

    model = tiny(kind)
    keys = [k for k in (*ARCHITECTURE_KEYS, *FAMILY_KEYS[kind]) if k in config(kind).to_dict() and k != "model_type"]
    assert len(keys) == {"bert": 8, "electra": 8, "distilbert": 9, "albert": 11, "deberta-v2": 16, "gpt2": 10,
                         "qwen2": 12}[kind]
    before = model_digest(model, tokenizer)
    for key in keys:
        value = model.config.to_dict()[key]
        setattr(model.config, key, other_value(value))
        assert model_digest(model, tokenizer) != before, key
        setattr(model.config, key, value)
    assert model_digest(model, tokenizer) == before


# Keys whose words look like computation (COMPUTATION_WORDS) but that no task kind's model reads: the summary head
# of GPT-2's double-heads and ELECTRA's multiple-choice models; GPT-2's positions are the shape of its wpe.
NOT_COMPUTATION = {"summary_activation", "summary_first_dropout", "summary_last_dropout", "n_positions"}


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "albert", "deberta-v2",
                                  "gpt2", "qwen2"])
def test_no_key_that_looks_like_computation_is_left_out(kind):
    from test_architectures import config

    from bitfit_exp.model.fingerprint import COMPUTATION_WORDS, computation_keys

    values = config(kind).to_dict()
    looks = {k for k in values if k.endswith("pdrop") or COMPUTATION_WORDS.intersection(k.split("_"))}
    assert looks - set(computation_keys(values)) - NOT_COMPUTATION == set()


def test_an_unmapped_family_hashes_the_keys_that_look_like_computation():
    from bitfit_exp.model.fingerprint import computation_keys

    config = {"model_type": "newformer", "hidden_act": "gelu", "norm_eps": 1e-5, "attn_pdrop": 0.1,
              "global_rope_theta": 1e4, "vocab_size": 9, "hidden_size": 16, "output_attentions": False}
    assert computation_keys(config) == ("model_type", "hidden_act", "norm_eps", "attn_pdrop", "global_rope_theta")


def save_without_pooler(folder: Path) -> Path:
    """A tiny BERT saved as masked-LM checkpoints are: no pooler."""
    import torch
    import transformers as tf
    from conftest import tiny_config

    from bitfit_exp.model.loading import load_tokenizer

    torch.manual_seed(0)
    tf.BertModel(tiny_config("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                 add_pooling_layer=False).save_pretrained(folder)
    load_tokenizer(MINILM).save_pretrained(folder)
    return folder


def test_parameters_the_checkpoint_lacks_are_not_fingerprinted(tmp_path, tokenizer):
    import torch

    from bitfit_exp.model.fingerprint import model_digest
    from bitfit_exp.model.loading import load_model, new_parameters

    folder = save_without_pooler(tmp_path / "nopooler")
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(load_model(str(folder), num_labels=2))
    assert new_parameters(models[0]) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                                         "classifier.weight"]
    pooler = [m.bert.pooler.dense.weight for m in models]
    assert not torch.equal(*pooler)  # two random poolers ...
    assert model_digest(models[0], tokenizer) == model_digest(models[1], tokenizer)  # ... one fingerprint
    assert new_parameters(load_model(MINILM, num_labels=2)) == ["classifier.bias", "classifier.weight"]
