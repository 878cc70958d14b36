"""The model card both export formats write (README.md), read back with huggingface_hub's own parser, and
`--push-to-hub` up to the upload call (the Hub itself is not reachable from the tests)."""

import re
from pathlib import Path

import huggingface_hub
import pytest
from conftest import compose, quick

from bitfit_exp.commands.export import main as export_main
from bitfit_exp.results.card import CITATION, dev_score
from bitfit_exp.results.records import read_record, setting_key


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory, tiny_bert_dir, glue_dir):
    """A real two-seed run of a tiny BERT on RTE with a non-default batch size: (seed0 folder, its record)."""
    from bitfit_exp.train.runner import run_job

    root = tmp_path_factory.mktemp("card-runs")
    [[first, _]] = run_job(compose(*quick(tiny_bert_dir, root, "seeds=[0,1]", "train.epochs=1", "data.max_length=24",
                                          "optim.lr=0.05", "train.batch_size=4", "train.predict_test=false")))
    folder = root / first["setting"]["dir"] / "seed0"
    return folder, read_record(folder / "record.json")


@pytest.mark.parametrize("fmt", ["merged", "peft"])
def test_the_card_carries_the_run_and_its_metadata_parses(fmt, two_seeds, tmp_path, tiny_bert_dir):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    folder, record = two_seeds
    out = tmp_path / fmt
    assert export_main(["--format", fmt, str(folder), str(out)]) == 0
    card = ModelCard.load(out / "README.md")
    [result] = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type, result.dataset_config,
            result.dataset_split) == ("accuracy", dev_score(record), "nyu-mll/glue", "rte", "validation")
    name, [again] = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == card.data.model_name and again.metric_value == result.metric_value
    assert card.data.library_name == ("peft" if fmt == "peft" else "transformers")
    assert card.data.base_model is None  # a local checkpoint: no Hub id in the metadata, the text says so
    assert f"`{tiny_bert_dir}` (a local folder, not a Hub name" in card.text
    scores = [100 * dev_score(read_record(folder.parent / f"seed{s}" / "record.json")) for s in (0, 1)]
    mean, std = sum(scores) / 2, abs(scores[0] - scores[1]) / 2 ** 0.5
    assert f"{mean:.2f} ± {std:.2f} over 2 seeds (0, 1)" in card.text
    assert f"| dev accuracy (this seed, 0) | {100 * dev_score(record):.2f} |" in card.text
    params = record["params"]
    assert (f"| trainable | {params['trainable_encoder']:,} encoder parameters ({params['pct_encoder']:.4f}% of its "
            f"{params['encoder_total']:,}) and the head's {params['head']:,} |") in card.text
    assert record["fingerprints"]["model"] in card.text and record["fingerprints"]["data"]["digest"] in card.text
    assert CITATION in card.text and "2022.acl-short.1" in card.text


@pytest.mark.parametrize("fmt", ["merged", "peft"])
def test_the_cards_loading_snippet_runs(fmt, two_seeds, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    out = tmp_path / fmt
    assert export_main(["--format", fmt, str(two_seeds[0]), str(out)]) == 0
    snippet = re.search(r"```python\n(.*?)```", ModelCard.load(out / "README.md").text, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # the snippet names the folder as its reader has it: by its name
    namespace = {}
    exec(snippet, namespace)
    assert tuple(namespace["logits"].shape) == (1, 2)


def test_a_hub_base_is_the_cards_base_model_metadata(two_seeds):
    from bitfit_exp.results.card import Base, model_card

    folder, record = two_seeds
    card = model_card(folder / "record.json", record, "peft", Base("google-bert/bert-base-cased", True), "me/rte")
    assert card.data.base_model == "google-bert/bert-base-cased"
    assert "`google-bert/bert-base-cased` (a Hugging Face Hub model)" in card.text
    assert '"google-bert/bert-base-cased", num_labels=2' in card.text and 'PeftModel.from_pretrained(base, "me/rte")' \
        in card.text


def test_the_cards_command_trains_the_same_setting(two_seeds):
    """Composing the card's bitfit-run overrides gives the record's setting hash (batch size and lr included)."""
    import shlex

    from omegaconf import OmegaConf

    from bitfit_exp.results.rerun import rerun_command

    folder, record = two_seeds
    command, note = rerun_command(record)
    assert note is None
    words = shlex.split(command)
    assert words[0] == "bitfit-run" and "train.batch_size=4" in words and "seeds=[0]" in words
    cfg = OmegaConf.to_container(compose(*words[1:]), resolve=True)
    assert setting_key(cfg, record["fingerprints"])["hash"] == record["setting"]["hash"]


def fake_hub(monkeypatch, calls: list):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        files = sorted(p.name for p in Path(kw["folder_path"]).iterdir())
        calls.append(("upload_folder", kw["repo_id"], {**kw, "files": files}))
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/abc",
                                          commit_message="m", commit_description="", oid="abc")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)


@pytest.mark.parametrize("public", [False, True])
def test_push_creates_a_private_repo_and_uploads_the_folder(public, two_seeds, tmp_path, monkeypatch, capsys):
    calls = []
    fake_hub(monkeypatch, calls)
    out = tmp_path / "adapter"
    argv = ["--format", "peft", str(two_seeds[0]), str(out), "--push-to-hub", "me/tiny-rte-bitfit"]
    assert export_main([*argv, *(["--public"] if public else [])]) == 0
    [(_, repo, create), (_, repo2, upload)] = calls
    assert repo == repo2 == "me/tiny-rte-bitfit"
    assert create["private"] is (not public) and create["exist_ok"] is True and create["repo_type"] == "model"
    assert upload["folder_path"] == str(out)
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "bitfit_patch.json",
            "tokenizer.json"} <= set(upload["files"])
    assert f"{out} -> https://huggingface.co/me/tiny-rte-bitfit/commit/abc ({'public' if public else 'private'})" \
        in capsys.readouterr().out


def test_push_offline_or_refused_is_one_line_and_the_folder_stays(two_seeds, tmp_path, monkeypatch, capsys):
    out = tmp_path / "offline"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert export_main([str(two_seeds[0]), str(out), "--push-to-hub", "me/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: pushing to the Hub needs the network, and HF_HUB_OFFLINE "
                                                   f"is set; the folder {out} was written; upload it later with "
                                                   f"`hf upload me/x {out} .`")
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
    # the card's snippet loads the repository the push was meant to create
    assert 'from_pretrained("me/x")' in (out / "README.md").read_text()

    calls = []
    fake_hub(monkeypatch, calls)

    def no_token(self, repo_id, **kw):
        raise huggingface_hub.errors.LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_token)
    assert export_main([str(two_seeds[0]), str(tmp_path / "no-token"), "--push-to-hub", "me/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(r"error: pushing to me/x failed \(LocalTokenNotFoundError: Token is "
                                             r"required .*\); the folder .*no-token was written", err)


@pytest.mark.parametrize("argv, message", [
    (["--push-to-hub", "me/not ok"], "error: --push-to-hub me/not ok: not a Hub repository id ("),
    (["--public"], "error: --public applies to --push-to-hub REPO_ID only; add it or drop --public"),
])
def test_bad_push_options_are_refused_before_anything_is_written(argv, message, two_seeds, tmp_path, capsys):
    out = tmp_path / "never"
    assert export_main([str(two_seeds[0]), str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not out.exists()
