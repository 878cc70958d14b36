"""Task kinds end to end: SQuAD (span) and POS (token) through `bitfit-run`'s job runner with a tiny model on a few
local examples: records, resume, packed == one-by-one without dropout, test prediction files; and the registry."""

import json

import pytest
import torch
from conftest import REPO, compose, save_tiny

from bitfit_exp.core.errors import UserError
from bitfit_exp.kinds import kind_of, model_logits, rows_of
from bitfit_exp.results.records import RECORD
from bitfit_exp.train.runner import run_job

DATA = REPO.parent / "shared" / "data"
TASKS = {  # a few examples of each; SQuAD has only validation here: train and dev are cut from it by title
    "squad": ["task=squad", "task.title_split={dev_fraction:0.5,seed:0}", "data.max_length=64", "task.doc_stride=16",
              "data.max_train_samples=6", "data.max_eval_samples=5", "data.train_eval_samples=4"],
    "pos": ["task=pos", "data.max_length=32", "data.max_train_samples=16", "data.max_eval_samples=6",
            "data.train_eval_samples=6"],
}
FILES = {"squad": ("squad_predictions.json", "validation.parquet"), "pos": ("pos_test.conll", "ud_ewt/test.parquet")}


@pytest.fixture(scope="module")
def no_dropout_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_nodrop"), "bert", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)


def job(task: str, model_dir, runs_dir, *extra: str):
    local = DATA / ("squad" if task == "squad" else "") / FILES[task][1]
    if not local.is_file():
        pytest.skip(f"local {task} data not found at {local}")
    return compose(f"model.name_or_path={model_dir}", f"runs_dir={runs_dir}", f"data.dir={DATA}", "method=bitfit",
                   "optim.lr=0.01", "train.epochs=2", "train.progress=false", "seeds=[0,1]", *TASKS[task], *extra)


def records(runs_dir) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(runs_dir.rglob(RECORD))}


@pytest.mark.parametrize("task", ["squad", "pos"])
def test_a_kind_runs_resumes_and_packs_like_one_by_one(task, no_dropout_dir, tmp_path, capsys):
    alone = run_job(job(task, no_dropout_dir, tmp_path / "alone"))
    assert [r["status"] for r in alone[0]] == ["finished", "finished"]
    written = records(tmp_path / "alone")
    metrics = list(job(task, no_dropout_dir, tmp_path).task.metrics)
    for record in written.values():
        scores = record["best"]["dev"]
        assert list(scores["validation"]) == metrics and all(0 <= v <= 1 for v in scores["validation"].values())
        assert record["config"]["task"]["kind"] == {"squad": "span", "pos": "token"}[task]
    assert written["seed0"]["epochs"][0]["train_loss"] != written["seed1"]["epochs"][0]["train_loss"]

    # Test predictions in the benchmark's format, one entry per example of the (limited) split.
    predictions = next((tmp_path / "alone").rglob(FILES[task][0]))
    if task == "squad":
        answers = json.loads(predictions.read_text())
        assert len(answers) == 5 and all(isinstance(a, str) for a in answers.values())
    else:
        sentences = predictions.read_text().split("\n\n")
        assert sentences[0].startswith("# sent_id = ") and len([s for s in sentences if s.strip()]) == 6

    # A rerun finds both seeds finished and trains nothing.
    capsys.readouterr()
    again = run_job(job(task, no_dropout_dir, tmp_path / "alone"))
    out = capsys.readouterr().out
    assert "2 seeds, 2 already finished" in out
    assert ("; most frequent tag " in out) == (task == "pos") and "majority class" not in out
    assert records(tmp_path / "alone") == written and [r["seed"] for r in again[0]] == [0, 1]

    # Packed (both seeds in one batch) trains exactly what one-by-one training does, dropout off.
    packed = run_job(job(task, no_dropout_dir, tmp_path / "packed", "train.packed=true"))
    for a, b in zip(alone[0], packed[0], strict=True):
        assert b["packed"]["settings"] == 2
        assert [r["train_loss"] for r in b["epochs"]] == pytest.approx([r["train_loss"] for r in a["epochs"]],
                                                                       rel=1e-5)
        assert [r["dev"] for r in b["epochs"]] == [r["dev"] for r in a["epochs"]]


def test_kind_of_defaults_to_sequence_and_rejects_unknown_kinds():
    assert kind_of({"name": "rte"}).AUTO_CLASS == "AutoModelForSequenceClassification"
    assert kind_of({"name": "squad", "kind": "span"}).AUTO_CLASS == "AutoModelForQuestionAnswering"
    assert kind_of({"name": "pos", "kind": "token"}).AUTO_CLASS == "AutoModelForTokenClassification"
    with pytest.raises(UserError, match=r"^task x has kind 'ner'; valid kinds: sequence, span, token$"):
        kind_of({"name": "x", "kind": "ner"})


def test_packed_logits_split_by_setting():
    from transformers.modeling_outputs import QuestionAnsweringModelOutput

    start, end = torch.arange(12.0).view(4, 3), -torch.arange(12.0).view(4, 3)
    logits = model_logits(QuestionAnsweringModelOutput(loss=torch.tensor(1.0), start_logits=start, end_logits=end))
    assert isinstance(logits, tuple) and len(logits) == 2  # the loss is not a logit
    second = rows_of(logits, 2, 1)
    assert second[0].tolist() == start[2:].tolist() and second[1].tolist() == end[2:].tolist()


def test_the_config_schema_knows_each_kinds_task_keys():
    from bitfit_exp.config.schema import problems

    base = ["task.title_split={dev_fraction:0.5,seed:0}"]
    for task in ["rte", "stsb", "squad", "pos"]:
        assert problems(compose(f"task={task}", *(base if task == "squad" else []))) == [], task
    assert problems(compose("task=squad", "task.metrics=[f1,matthews]", "task.doc_stride=-1",
                            "task.title_split={dev_fraction:1.5,seed:0}")) == [
        "task.doc_stride=-1 is not valid; expected an integer >= 0",
        "task.metrics=['f1', 'matthews'] is not valid: matthews is not a metric of span tasks; choose "
        "among exact_match, f1",
        "task.title_split={dev_fraction: 1.5, seed: 0} is not valid; expected null or {dev_fraction: a number in "
        "(0, 1), seed: an integer >= 0}"]
    assert problems(compose("task=pos", "task.kind=ner", "~task.label_names")) == [
        "task.kind='ner' is not valid; choose one of sequence, span, token"]
    assert problems(compose("task=rte", "~task.text_fields")) == [
        "task.text_fields is missing; a sequence task needs it"]
