"""bitfit-serve / bitfit-predict / bitfit-export: many task patches over one backbone, checked against each task's
fine-tuned model run alone (tiny BERT; one patch from a real run, the others written like the runner writes them)."""

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import GLUE, REPO, compose, quick
from omegaconf import OmegaConf

from bitfit_exp import records
from bitfit_exp.errors import UserError
from bitfit_exp.fingerprint import model_fingerprint
from bitfit_exp.methods import select
from bitfit_exp.models import load_model, load_tokenizer
from bitfit_exp.multitask import BadInput, MultiTaskEngine, find_patches
from bitfit_exp.patch import apply_patch, save_patch, trained_state

LONG = " ".join(["the committee approved the long and detailed budget proposal"] * 6)
ITEMS = [  # one of each served task, the rte one longer than max_length (24 tokens)
    {"task": "rte", "text": LONG, "text_pair": "The budget was approved."},
    {"task": "sst2", "text": "a gem of a film, warm and funny"},
    {"task": "stsb", "text": "A cat sits on the mat.", "text_pair": "A dog lies on a rug."},
    {"task": "mrpc", "text": "He said yes to the offer.", "text_pair": "He accepted the offer."},
    {"task": "sst2", "text": "dull"},
    {"task": "rte", "text": "A man plays a guitar.", "text_pair": "A man plays music."},
]


def fake_run(root: Path, model_dir: Path, task: str, method: str, seed: int) -> Path:
    """A run folder as the runner leaves it (sealed record + patch), with biases and head moved far from their
    starting values so that every task computes something clearly different."""
    cfg = compose(f"model.name_or_path={model_dir}", f"runs_dir={root}", f"data.dir={GLUE}", f"task={task}",
                  f"method={method}", "data.max_length=24", "train.epochs=1", f"seeds=[{seed}]")
    model = load_model(str(model_dir), cfg.task.num_labels)
    selection = select(method, model, torch.Generator().manual_seed(seed))
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".bias")}
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))  # only the selected entries are saved
    fingerprint = model_fingerprint(str(model_dir))
    record = records.seal({"status": "finished", "seed": seed, "chosen_epoch": 1, "epochs": [],
                           "config": OmegaConf.to_container(cfg, resolve=True),
                           "fingerprints": {"model": fingerprint, "data": {"digest": "d0", "splits": {}}},
                           "artifacts": {"patch": "patch.safetensors"}})
    folder = root / record["setting"]["dir"] / f"seed{seed}"
    save_patch(folder / "patch.safetensors", model, selection, trained_state(model, selection), initial,
               {"model": str(model_dir), "task": task, "method": method, "epoch": 1, "seed": seed,
                "model_fingerprint": fingerprint})
    records.write_json_atomic(folder / "record.json", record)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir, glue_dir) -> dict[str, Path]:
    """Run folders of four tasks (pair / single / regression / head only) over one tiny BERT, and a masked one."""
    from bitfit_exp.runner import run_job

    root = tmp_path_factory.mktemp("serve-runs")
    [[real]] = run_job(compose(*quick(tiny_bert_dir, root, "train.epochs=1", "data.max_length=24", "optim.lr=0.05",
                                      "train.predict_test=false")))
    return {"rte": root / real["setting"]["dir"] / "seed0",
            "sst2": fake_run(root, tiny_bert_dir, "sst2", "bq", 1),
            "stsb": fake_run(root, tiny_bert_dir, "stsb", "bm2_bq", 2),
            "mrpc": fake_run(root, tiny_bert_dir, "mrpc", "frozen", 3),
            "masked": fake_run(root / "masked", tiny_bert_dir, "rte", "rand_uniform", 4)}


@pytest.fixture(scope="module")
def alone(runs):
    """task -> function(item) giving the logits of that task's fine-tuned model run alone on the item."""
    models, tokenizer = {}, None

    def logits(item):
        nonlocal tokenizer
        [patch] = find_patches([str(runs[item["task"]])])
        if item["task"] not in models:
            models[item["task"]] = apply_patch(load_model(patch.model, patch.num_labels), patch.path).eval()
        tokenizer = tokenizer or load_tokenizer(patch.model)
        texts = [t for t in (item["text"], item.get("text_pair")) if t is not None]
        batch = tokenizer(*texts, truncation=True, max_length=patch.max_length, return_tensors="pt")
        with torch.no_grad():
            return models[item["task"]](**batch).logits[0]

    return logits


def served(runs) -> list[str]:
    return [str(runs[t]) for t in ("rte", "sst2", "stsb", "mrpc")]


def test_a_mixed_batch_equals_each_task_alone(runs, alone):
    engine = MultiTaskEngine(find_patches(served(runs)), max_batch=4)  # 6 rows: two sub-batches
    out = engine.predict(ITEMS)
    assert engine.forward_passes == 2
    for item, pred in zip(ITEMS, out, strict=True):
        torch.testing.assert_close(torch.tensor(pred["logits"]), alone(item), rtol=1e-5, atol=1e-5)
        assert pred["task"] == item["task"]
        if "label" in pred:
            assert pred["label"] == list(pred["probabilities"])[int(alone(item).argmax())]
    assert set(out[1]["probabilities"]) == {"negative", "positive"}
    assert sum(out[1]["probabilities"].values()) == pytest.approx(1.0)
    assert "label" not in out[2] and out[2]["score"] == out[2]["logits"][0]  # regression: a score
    assert "24 tokens" in out[0]["truncated"] and "truncated" not in out[5]
    # the tasks really differ: the same pair through rte's and mrpc's patches gives other logits
    pair = {"text": "He said yes to the offer.", "text_pair": "He accepted the offer."}
    rte, mrpc = engine.predict([{"task": "rte", **pair}, {"task": "mrpc", **pair}])
    assert (torch.tensor(rte["logits"]) - torch.tensor(mrpc["logits"])).abs().max() > 1e-2


def test_bad_items_are_one_line_4xx(runs):
    engine = MultiTaskEngine(find_patches(served(runs)), max_chars=50)
    cases = [({"task": "nope", "text": "a"}, 404, "unknown task 'nope' (serving: rte, sst2, stsb, mrpc)"),
             ({"task": "rte", "text": "a"}, 422, "task rte takes a text pair (sentence1 + sentence2)"),
             ({"task": "sst2", "text": "a", "text_pair": "b"}, 422, "task sst2 takes one text (sentence)"),
             ({"task": "sst2"}, 422, "missing 'text'"), ({"text": "a"}, 422, "missing 'task'"),
             ({"task": "sst2", "text": 3}, 422, "'text' must be a string"),
             ({"task": "sst2", "text": "x" * 51}, 413, "51 characters; the limit is 50")]
    for item, status, reason in cases:
        with pytest.raises(BadInput, match=re.escape(reason)) as e:
            engine.prepare([{"task": "sst2", "text": "fine"}, item])
        assert e.value.status == status and str(e.value).startswith("item 1: ") and "\n" not in str(e.value)


def test_unservable_patches_are_refused_with_a_clear_line(runs, tiny_roberta_dir):
    with pytest.raises(UserError, match=r"method rand_uniform changes entries of .* cannot share the frozen backbone "
                                        r"\(servable: biases, bitfit, bm2, bm2_bq, bq, frozen\); export it"):
        MultiTaskEngine(find_patches([str(runs["sst2"]), str(runs["masked"])]))
    with pytest.raises(UserError, match=r"trained on another checkpoint .* than the one served"):
        MultiTaskEngine(find_patches([str(runs["sst2"])]), model=str(tiny_roberta_dir))


def test_names_come_from_tasks_runs_or_the_user(runs):
    root = runs["sst2"].parents[3]  # the runs dir: rte (real) and sst2, stsb, mrpc
    assert sorted(p.name for p in find_patches([str(root)])) == ["mrpc", "rte", "sst2", "stsb"]
    two = find_patches([str(runs["rte"]), str(runs["masked"] / "patch.safetensors")])
    assert [p.name for p in two] == [f"rte/bitfit/{runs['rte'].parent.name}/seed0",
                                     f"rte/rand_uniform/{runs['masked'].parent.name}/seed4"]
    assert [p.name for p in find_patches([f"entail={runs['rte']}", str(runs["masked"])])] == ["entail", "rte"]
    with pytest.raises(UserError, match="name one with NAME=PATH"):
        find_patches([f"x={runs['rte']}", f"x={runs['sst2']}"])
    with pytest.raises(UserError, match="no record.json next to it"):
        lone = runs["rte"].parents[4] / "lone.safetensors"
        lone.write_bytes((runs["rte"] / "patch.safetensors").read_bytes())
        find_patches([str(lone)])


# ---------------------------------------------------------------------------------------------- the real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs):
    """A real bitfit-serve process on a free local port: batches of up to 4 rows, collected for up to 3 s."""
    import httpx

    port = free_port()
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bitfit_exp.serve", *served(runs), "--port", str(port),
                             "--window-ms", "3000", "--max-batch", "4", "--max-items", "8"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"bitfit-serve did not start:\n{proc.stdout.read() if proc.poll() is not None else ''}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_server_lists_tasks_and_health(server):
    import httpx

    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["tasks"] == 4
    tasks = {t["name"]: t for t in httpx.get(f"{server}/tasks").json()["tasks"]}
    assert list(tasks) == ["rte", "sst2", "stsb", "mrpc"]
    assert tasks["rte"]["labels"] == ["entailment", "not_entailment"] and tasks["rte"]["pair"]
    assert tasks["stsb"]["regression"] and tasks["stsb"]["labels"] == []
    assert (tasks["sst2"]["method"], tasks["sst2"]["pair"], tasks["sst2"]["max_length"]) == ("bq", False, 24)


def test_concurrent_requests_of_four_tasks_share_one_forward_pass(server, alone):
    import httpx

    async def burst():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            good = [client.post("/predict", json=item) for item in ITEMS[:4]]
            bad = client.post("/predict", json={"task": "sst2", "text": "x", "text_pair": "y"})
            return await asyncio.gather(*good[:2], bad, *good[2:])

    before = httpx.get(f"{server}/health").json()["forward_passes"]
    answers = asyncio.run(burst())
    bad = answers.pop(2)
    assert bad.status_code == 422
    assert bad.json() == {"error": "item 0: task sst2 takes one text (sentence); drop 'text_pair'"}
    for item, answer in zip(ITEMS[:4], answers, strict=True):
        assert answer.status_code == 200, answer.text
        [pred] = answer.json()["predictions"]
        torch.testing.assert_close(torch.tensor(pred["logits"]), alone(item), rtol=1e-5, atol=1e-5)
        assert answer.json()["batch"] == {"requests": 4, "rows": 4, "tasks": 4, "forward_passes": 1}
    assert httpx.get(f"{server}/health").json()["forward_passes"] == before + 1


def test_a_large_mixed_request_is_split_and_bad_ones_do_not_stop_the_server(server, alone):
    import httpx

    answer = httpx.post(f"{server}/predict", json={"items": ITEMS}, timeout=60)
    assert answer.status_code == 200
    assert answer.json()["batch"] == {"requests": 1, "rows": 6, "tasks": 4, "forward_passes": 2}
    for item, pred in zip(ITEMS, answer.json()["predictions"], strict=True):
        torch.testing.assert_close(torch.tensor(pred["logits"]), alone(item), rtol=1e-5, atol=1e-5)
    assert "cut to 24 tokens" in answer.json()["predictions"][0]["truncated"]
    bad = [(b"{not json", 400, "the body is not JSON"), (json.dumps({"items": []}), 400, "non-empty list"),
           (json.dumps({"items": ITEMS + ITEMS}), 413, "12 items; at most 8 per request"),
           (json.dumps({"task": "qqp", "text": "a"}), 404, "unknown task 'qqp'"),
           (json.dumps({"task": "sst2", "items": [{"text": "ok"}, {"text": None}]}), 422, "item 1: missing 'text'")]
    for body, status, reason in bad:
        got = httpx.post(f"{server}/predict", content=body)
        assert got.status_code == status and reason in got.json()["error"], got.text
    still = httpx.post(f"{server}/predict", json={"task": "sst2", "items": [{"text": "dull"}]}, timeout=60)
    assert still.status_code == 200 and still.json()["predictions"][0]["task"] == "sst2"


# ---------------------------------------------------------------------------------------------- files and export


def test_predict_files_mixed_tasks(runs, alone, tmp_path):
    from bitfit_exp.predict import main

    frame = pd.DataFrame([{"task": i["task"], "text": i["text"], "text_pair": i.get("text_pair", "")} for i in ITEMS])
    frame.to_csv(tmp_path / "in.csv", index=False)
    for suffix in ("csv", "jsonl", "parquet"):
        assert main([*served(runs), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / f"out.{suffix}"),
                     "--max-batch", "4", "--no-progress"]) == 0
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(out.columns) == ["task", "text", "text_pair", "label", "score", "probabilities", "truncated"]
    for item, (_, row) in zip(ITEMS, out.iterrows(), strict=True):
        logits = alone(item)
        if item["task"] == "stsb":
            assert row["label"] == "" and row["score"] == pytest.approx(float(logits[0]), abs=1e-5)
        else:
            probs = json.loads(row["probabilities"])
            assert row["label"] == list(probs)[int(logits.argmax())]
            assert row["score"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)
    assert out["truncated"].tolist() == [True, False, False, False, False, False]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet")[["label", "score"]].fillna(""),
                                  out[["label", "score"]], check_dtype=False)
    assert len(pd.read_json(tmp_path / "out.jsonl", lines=True)) == len(ITEMS)


def test_predict_file_errors_are_one_line(runs, tmp_path, capsys):
    from bitfit_exp.predict import main

    pd.DataFrame({"sentence1": ["a", "b"], "sentence2": ["c", ""]}).to_csv(tmp_path / "rte.csv", index=False)
    assert main([str(runs["rte"]), "--input", str(tmp_path / "rte.csv"), "--output", str(tmp_path / "o.csv"),
                 "--task", "rte"]) == 2
    assert capsys.readouterr().err.strip() == ("error: row 1: task rte takes a text pair (sentence1 + sentence2); "
                                               "'text_pair' is missing")
    assert main([str(runs["rte"]), "--input", str(tmp_path / "rte.csv"), "--output", str(tmp_path / "o.xlsx"),
                 "--task", "rte"]) == 2
    assert "unknown file type .xlsx" in capsys.readouterr().err


def test_export_round_trip_loads_with_plain_transformers(runs, alone, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from bitfit_exp.export import export, patched_model

    for task in ("rte", "stsb"):
        out = export(str(runs[task]), tmp_path / task)
        model = AutoModelForSequenceClassification.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        assert tokenizer.model_max_length == 24
        for item in [i for i in ITEMS if i["task"] == task]:
            batch = tokenizer(item["text"], item["text_pair"], truncation=True, return_tensors="pt")
            with torch.no_grad():
                torch.testing.assert_close(model(**batch).logits[0], alone(item), rtol=1e-6, atol=1e-6)
    classify = pipeline("text-classification", model=str(tmp_path / "rte"), device="cpu")
    item = ITEMS[5]
    got = classify({"text": item["text"], "text_pair": item["text_pair"]})
    assert (got[0] if isinstance(got, list) else got)["label"] == ["entailment", "not_entailment"][
        int(alone(item).argmax())]
    masked, _, _ = patched_model(str(runs["masked"]))  # masked methods export too (they cannot be served shared)
    export(str(runs["masked"]), tmp_path / "masked")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "masked")
    for (name, a), b in zip(masked.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match="is not empty"):
        export(str(runs["rte"]), tmp_path / "rte")
