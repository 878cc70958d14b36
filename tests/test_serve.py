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
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import GLUE, MINILM, REPO, compose, quick
from omegaconf import OmegaConf

from bitfit_exp.core.errors import UserError
from bitfit_exp.model.fingerprint import model_fingerprint
from bitfit_exp.model.loading import load_model, load_tokenizer
from bitfit_exp.model.methods import select
from bitfit_exp.model.patch import apply_patch, save_patch, trained_state
from bitfit_exp.results import records
from bitfit_exp.serving.engine import BadInput, MultiTaskEngine, find_patches

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
    return seal_run(cfg, model_dir, seed, model, selection, initial)


def seal_run(cfg, model_dir: Path, seed: int, model, selection, initial) -> Path:
    """Move every parameter of `model` far from its start (only the selected entries are saved), then write the
    patch and the sealed record where the runner would; returns the seed folder."""
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    fingerprint = model_fingerprint(str(model_dir))
    record = records.seal({"status": "finished", "seed": seed, "chosen_epoch": 1, "epochs": [],
                           "config": OmegaConf.to_container(cfg, resolve=True),
                           "fingerprints": {"model": fingerprint, "data": {"digest": "d0", "splits": {}}},
                           "artifacts": {"patch": "patch.safetensors"}})
    folder = Path(cfg.runs_dir) / record["setting"]["dir"] / f"seed{seed}"
    save_patch(folder / "patch.safetensors", model, selection, trained_state(model, selection), initial,
               {"model": str(model_dir), "task": cfg.task.name, "method": cfg.method.name, "epoch": 1,
                "seed": seed, "model_fingerprint": fingerprint})
    records.write_json_atomic(folder / "record.json", record)
    return folder


def start_server(args: list[str], wait_s: float = 180) -> tuple[subprocess.Popen, str]:
    """A real bitfit-serve process with `args` on a free local port, once /health answers 200: (process, url)."""
    import httpx

    port = free_port()
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "bitfit_exp.commands.serve", *args, "--port", str(port)],
                            env={**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"bitfit-serve did not start:\n{proc.stdout.read() if proc.poll() is not None else ''}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir, glue_dir) -> dict[str, Path]:
    """Run folders of four tasks (pair / single / regression / head only) over one tiny BERT, and a masked one."""
    from bitfit_exp.train.runner import run_job

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
             ({"task": "sst2", "text": "x" * 51}, 413, "51 characters; the limit is 50 (--max-chars)"),
             ({"task": ["sst2"], "text": "a"}, 422, "'task' must be a string (serving: rte, sst2, stsb, mrpc), got list"),
             ({"task": {"x": 1}, "text": "a"}, 422, "'task' must be a string"),
             ({"task": "sst2", "text": "a \ud800"}, 422, "'text' is not valid Unicode text (a lone surrogate at "
                                                         "character 2)"),
             ({"task": "rte", "text": "a", "text_pair": "\udfff"}, 422, "'text_pair' is not valid Unicode text")]
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


def save_family(folder: Path, kind: str) -> Path:
    """A tiny random DeBERTa-v2 or Qwen2 checkpoint with MiniLM's tokenizer (Qwen2 takes no token types)."""
    from transformers import AutoModel, DebertaV2Config, Qwen2Config

    size = dict(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=160)
    config = {"deberta-v2": lambda: DebertaV2Config(**size, type_vocab_size=0, relative_attention=True,
                                                    position_buckets=16, pos_att_type=["p2c", "c2p"],
                                                    norm_rel_ebd="layer_norm", share_att_key=True),
              "qwen2": lambda: Qwen2Config(**size, num_key_value_heads=1)}[kind]()
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer = load_tokenizer(MINILM)
    if kind == "qwen2":
        tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.save_pretrained(folder)
    return folder


def test_deberta_patches_are_refused_and_qwen2_heads_without_bias_serve(tmp_path, glue_dir):
    deberta = save_family(tmp_path / "deberta", "deberta-v2")
    refused = fake_run(tmp_path / "deberta-runs", deberta, "sst2", "bitfit", 1)
    with pytest.raises(UserError, match=r"seed1/patch.safetensors: DeBERTa-v2 applies its query/key projections to "
                                        r"the relative-position embeddings .* export it with `bitfit-export "):
        MultiTaskEngine(find_patches([str(refused)]))
    head_only = fake_run(tmp_path / "deberta-runs", deberta, "rte", "frozen", 2)  # the backbone is untouched
    assert MultiTaskEngine(find_patches([str(head_only)])).predict([{"task": "rte", "text": "a", "text_pair": "b"}])

    qwen = save_family(tmp_path / "qwen2", "qwen2")
    runs = {"sst2": fake_run(tmp_path / "qwen-runs", qwen, "sst2", "bitfit", 1),
            "rte": fake_run(tmp_path / "qwen-runs", qwen, "rte", "bitfit", 2)}
    engine = MultiTaskEngine(find_patches([str(r) for r in runs.values()]))
    items = [{"task": "sst2", "text": "a gem of a film"}, {"task": "rte", "text": "A man plays.", "text_pair": "He sings."},
             {"task": "sst2", "text": "dull and long and boring, and then it got worse"}]
    tokenizer = load_tokenizer(str(qwen))
    for item, pred in zip(items, engine.predict(items), strict=True):  # rows of other lengths: padding is masked out
        [patch] = find_patches([str(runs[item["task"]])])
        model = apply_patch(load_model(patch.model, patch.num_labels), patch.path).eval()
        texts = [t for t in (item["text"], item.get("text_pair")) if t is not None]
        with torch.no_grad():
            alone = model(**tokenizer(*texts, truncation=True, max_length=24, return_tensors="pt")).logits[0]
        torch.testing.assert_close(torch.tensor(pred["logits"]), alone, rtol=1e-5, atol=1e-5)


def damaged_copy(run: Path, root: Path) -> Path:
    """A copy of run folder `run` (in the same place under `root`) whose patch file is cut after 1000 bytes."""
    folder = root / run.relative_to(run.parents[4])  # <model>/<task>/<method>/lr<lr>-<hash>/seed<k>
    folder.mkdir(parents=True)
    (folder / "record.json").write_bytes((run / "record.json").read_bytes())
    (folder / "patch.safetensors").write_bytes((run / "patch.safetensors").read_bytes()[:1000])
    return folder


def test_a_damaged_patch_file_is_one_line(runs, tmp_path, capsys):
    from bitfit_exp.commands.export import main as export_main
    from bitfit_exp.commands.predict import main as predict_main

    folder = damaged_copy(runs["sst2"], tmp_path)
    reason = f"{folder / 'patch.safetensors'}: damaged patch file (SafetensorError: "
    with pytest.raises(UserError, match=re.escape(reason)):
        find_patches([str(folder)])
    pd.DataFrame({"text": ["a gem"]}).to_csv(tmp_path / "in.csv", index=False)
    assert predict_main([str(folder), "--task", "sst2", "--input", str(tmp_path / "in.csv"),
                         "--output", str(tmp_path / "o.csv")]) == 2
    assert export_main([str(folder), str(tmp_path / "exported")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith(f"error: {reason}") for e in errors)
    assert not (tmp_path / "exported").exists()  # a refused export leaves no folder behind


# ---------------------------------------------------------------------------------------------- the real server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs):
    """A real bitfit-serve process on a free local port: batches of up to 4 rows, collected for up to 3 s; bodies of
    up to 0.05 MiB (52,428 bytes)."""
    proc, url = start_server([*served(runs), "--window-ms", "3000", "--max-batch", "4", "--max-items", "8",
                              "--max-body-mb", "0.05"])
    try:
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


def test_any_bad_body_is_a_one_line_json_4xx(server):
    import httpx

    deep = 20_000  # json.loads gives up (RecursionError) long before this depth; the body stays under the limit
    bad = [(b'{"task": ["sst2"], "text": "a"}', 422, "item 0: 'task' must be a string"),
           (b'{"task": {"x": 1}, "items": [{"text": "a"}]}', 422, "the default 'task' must be a string, got dict"),
           (b'{"task": "sst2", "text": "\\ud800"}', 422, "item 0: 'text' is not valid Unicode text"),
           (b'{"task": "rte", "text": "a", "text_pair": "b \\udfff"}', 422, "item 0: 'text_pair' is not valid Unicode"),
           (b"[" * deep + b"]" * deep, 400, "the body is not JSON (nested too deeply)"),
           (json.dumps({"task": "sst2", "text": "x" * 60_000}).encode(), 413,
            "the body is larger than 52,428 bytes (--max-body-mb)")]
    for body, status, reason in bad:
        got = httpx.post(f"{server}/predict", content=body, timeout=60)
        assert (got.status_code, got.headers["content-type"]) == (status, "application/json"), got.text
        assert reason in got.json()["error"] and "\n" not in got.json()["error"], got.text

    def chunks():  # no Content-Length: the limit holds while the body streams in
        yield b'{"task": "sst2", "text": "'
        for _ in range(10):
            yield b"x" * 10_000
        yield b'"}'

    got = httpx.post(f"{server}/predict", content=chunks(), timeout=60)
    assert got.status_code == 413 and "larger than 52,428 bytes" in got.json()["error"]
    missing = httpx.get(f"{server}/nope")
    assert missing.status_code == 404 and missing.json()["error"].startswith("Not Found: GET /nope (routes: ")
    wrong = httpx.get(f"{server}/predict")
    assert wrong.status_code == 405 and wrong.json()["error"].startswith("Method Not Allowed: GET /predict")
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def test_preparing_a_request_does_not_block_other_requests():
    """A slow prepare (tokenizing long texts) runs in a worker thread: /health answers meanwhile. An unexpected
    error while preparing is the request's 422, not a 500."""
    import httpx

    from bitfit_exp.serving.server import create_app

    class SlowEngine:
        name_or_path, fingerprint, patches, forward_passes, device, max_batch = "m", "f", [], 0, "cpu", 4

        def prepare(self, items, default=None):
            time.sleep(1.5)
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]\nsecond line")

    async def race():
        transport = httpx.ASGITransport(app=create_app(SlowEngine()))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            slow = asyncio.create_task(client.post("/predict", json={"task": "t", "text": "a"}))
            await asyncio.sleep(0.2)
            start = time.monotonic()
            health = await client.get("/health")
            return health, time.monotonic() - start, await slow

    health, waited, slow = asyncio.run(race())
    assert health.status_code == 200 and waited < 0.5
    assert slow.status_code == 422
    assert slow.json() == {"error": "the request could not be prepared (TypeError: TextEncodeInput must be "
                                    "Union[TextInputSequence, ...])"}


def test_a_full_queue_is_a_503_and_the_server_goes_on():
    """Rows waiting for the model are bounded (--max-queued-rows): a flood gets 503s, not unbounded memory."""
    import httpx

    from bitfit_exp.serving.server import create_app

    class SlowModel:
        name_or_path, fingerprint, patches, forward_passes, device, max_batch = "m", "f", [], 0, "cpu", 2

        def prepare(self, items, default=None):
            return [SimpleNamespace(task="t") for _ in items]

        def logits(self, rows):
            time.sleep(1.0)
            return [[0.0]] * len(rows)

        def result(self, row, logits):
            return {"score": logits[0]}

    async def flood():
        app = create_app(SlowModel(), window_ms=1, max_items=2, max_queued_rows=3)
        transport = httpx.ASGITransport(app=app)  # which does not run the app's lifespan (the batcher): here
        async with app.router.lifespan_context(app), \
                httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            body = {"task": "t", "items": [{"text": "a"}, {"text": "b"}]}
            first = asyncio.create_task(client.post("/predict", json=body))  # taken at once: the model runs 1 s
            await asyncio.sleep(0.3)
            second = asyncio.create_task(client.post("/predict", json=body))  # waits: 2 rows queued
            await asyncio.sleep(0.3)
            third = await client.post("/predict", json=body)  # 2 + 2 > 3
            return await first, await second, third

    first, second, third = asyncio.run(flood())
    assert first.status_code == second.status_code == 200 and len(second.json()["predictions"]) == 2
    assert third.status_code == 503
    assert third.json() == {"error": "the server is busy: 2 rows wait for the model (--max-queued-rows 3); retry "
                                     "later"}


# ---------------------------------------------------------------------------------------------- files and export


def test_predict_files_mixed_tasks(runs, alone, tmp_path):
    from bitfit_exp.commands.predict import main

    frame = pd.DataFrame([{"task": i["task"], "text": i["text"], "text_pair": i.get("text_pair", "")} for i in ITEMS])
    frame.to_csv(tmp_path / "in.csv", index=False)
    for suffix in ("csv", "jsonl", "parquet"):
        assert main([*served(runs), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / f"out.{suffix}"),
                     "--max-batch", "4", "--no-progress"]) == 0
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert list(out.columns) == ["task", "text", "text_pair", "label", "score", "probabilities", "logits",
                                 "truncated"]
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
    from bitfit_exp.commands.predict import main

    # a null (JSON Lines) is a missing text; an empty one ("" in a CSV cell) is a text: tests/test_hostile_cli.py
    pd.DataFrame({"sentence1": ["a", "b"], "sentence2": ["c", None]}).to_json(tmp_path / "rte.jsonl", orient="records",
                                                                             lines=True)
    assert main([str(runs["rte"]), "--input", str(tmp_path / "rte.jsonl"), "--output", str(tmp_path / "o.csv"),
                 "--task", "rte"]) == 2
    assert capsys.readouterr().err.strip() == ("error: row 1: task rte takes a text pair (sentence1 + sentence2); "
                                               "'text_pair' is missing")
    assert main([str(runs["rte"]), "--input", str(tmp_path / "rte.jsonl"), "--output", str(tmp_path / "o.xlsx"),
                 "--task", "rte"]) == 2
    assert "unknown file type .xlsx" in capsys.readouterr().err

def test_predict_refuses_bad_files_and_outputs_before_predicting(runs, tmp_path, capsys, monkeypatch):
    import bitfit_exp.commands.predict as predict

    def never(*args, **kwargs):
        raise AssertionError("predicted before the files were checked")

    monkeypatch.setattr(predict, "predictions", never)
    (tmp_path / "bad.jsonl").write_text('{"text": "a gem"}\n{"text": broken\n')
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "bad.parquet").write_text("not parquet\n")
    (tmp_path / "afile").write_text("")
    pd.DataFrame({"text": ["a gem"]}).to_csv(tmp_path / "in.csv", index=False)
    pd.DataFrame({"text": ["a gem"], "label": [1]}).to_parquet(tmp_path / "labelled.parquet")
    cases = [("bad.jsonl", "o.csv", "bad.jsonl: is not a readable JSON Lines file: ArrowInvalid: JSON parse error: "
                                    "Invalid value. in row 1 (fix --input)"),
             ("empty.csv", "o.csv", "empty.csv: is empty (0 bytes) (fix --input)"),
             ("bad.parquet", "o.csv", "bad.parquet: is not a readable parquet file: "),
             ("in.csv", "afile/o.csv", "afile/o.csv cannot be written ("),
             ("in.csv", "afile", "unknown file type (none)"),
             ("labelled.parquet", "o.csv", "the input already has column(s) label, which bitfit-predict adds")]
    for source, output, reason in cases:
        code = predict.main([str(runs["sst2"]), "--task", "sst2", "--input", str(tmp_path / source),
                             "--output", str(tmp_path / output)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and reason in err and "\n" not in err, err


def test_predict_reads_tsv_as_training_does_and_max_chars(runs, alone, tmp_path, capsys):
    from bitfit_exp.commands.predict import main

    texts = ['"a gem" , said the critic', "worst film ever", "word " * 29 + "end"]  # 30 words, 148 characters
    (tmp_path / "in.tsv").write_text("text\n" + "\n".join(texts) + "\n")
    args = [str(runs["sst2"]), "--task", "sst2", "--input", str(tmp_path / "in.tsv"), "--output"]
    assert main([*args, str(tmp_path / "o.tsv"), "--max-chars", "100"]) == 2
    assert capsys.readouterr().err.strip() == ("error: row 2: 'text' has 148 characters; the limit is 100 "
                                               "(--max-chars)")
    assert main([*args, str(tmp_path / "o.tsv"), "--max-chars", "0", "--no-progress"]) == 0  # 0: no limit
    out = pd.read_csv(tmp_path / "o.tsv", sep="\t", quoting=3, keep_default_na=False)  # csv.QUOTE_NONE
    assert out["text"].tolist() == texts  # the quotes are text, as training reads TSV
    for text, (_, row) in zip(texts, out.iterrows(), strict=True):
        probs = alone({"task": "sst2", "text": text}).softmax(-1)
        assert row["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert out["truncated"].tolist() == [False, False, True]



def test_export_round_trip_loads_with_plain_transformers(runs, alone, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from bitfit_exp.serving.export import export, patched_model

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
    regression = json.loads((tmp_path / "stsb" / "config.json").read_text())
    assert regression["problem_type"] == "regression"  # so pipelines give the raw score, no sigmoid
    score = pipeline("text-classification", model=str(tmp_path / "stsb"), device="cpu")
    item = ITEMS[2]
    got = score({"text": item["text"], "text_pair": item["text_pair"]})
    assert (got[0] if isinstance(got, list) else got)["score"] == pytest.approx(float(alone(item)[0]), abs=1e-5)
    masked, _, _ = patched_model(str(runs["masked"]))  # masked methods export too (they cannot be served shared)
    export(str(runs["masked"]), tmp_path / "masked")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "masked")
    for (name, a), b in zip(masked.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match="is not empty"):
        export(str(runs["rte"]), tmp_path / "rte")
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'afile'} is a file; export into a new folder")):
        export(str(runs["rte"]), tmp_path / "afile")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'afile' / 'x'}: cannot create the folder there (")):
        export(str(runs["rte"]), tmp_path / "afile" / "x")
