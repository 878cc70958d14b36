"""bitfit-serve describes itself: a real server process (run patches and a peft BEFT adapter over one tiny BERT)
serves /openapi.json, and its real 200 and 4xx answers validate against that document with jsonschema; /docs is
one HTML page that needs no network; bitfit-predict writes what the server answers, as list columns."""

import json

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jsonschema import Draft202012Validator
from test_serve import fake_run, start_server
from test_serve_adapters import TEXTS, train_beft

ADAPTER = ["--text-fields", "movie=sentence", "--max-length", "movie=24", "--labels", "movie=bad,good"]
LONG = " ".join(["the committee approved the long and detailed budget proposal"] * 6)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bert_dir, glue_dir):
    root = tmp_path_factory.mktemp("api")
    runs = [fake_run(root, tiny_bert_dir, "sst2", "bq", 1), fake_run(root, tiny_bert_dir, "stsb", "bitfit", 2)]
    adapter = train_beft(tiny_bert_dir, root / "movie", 2, [TEXTS], [0, 1, 0, 1, 0, 1])
    tasks = [*map(str, runs), str(adapter), *ADAPTER]
    proc, url = start_server([*tasks, "--max-items", "4", "--window-ms", "0"])
    try:
        yield url, tasks
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def document(served):
    got = httpx.get(f"{served[0]}/openapi.json")
    assert got.status_code == 200 and got.headers["content-type"] == "application/json"
    doc = got.json()
    assert doc["openapi"].startswith("3.1")
    return doc


def validator(doc: dict, schema: dict) -> Draft202012Validator:
    """A validator of `schema` whose `#/components/...` references resolve in the OpenAPI document."""
    return Draft202012Validator({**schema, "components": doc["components"]})


def check_answer(doc: dict, method: str, path: str, answer: httpx.Response) -> None:
    """The answer's status is documented for the route, and its JSON body is valid against that status's schema."""
    documented = doc["paths"][path][method]["responses"]
    assert str(answer.status_code) in documented, (path, answer.status_code, sorted(documented))
    schema = documented[str(answer.status_code)]["content"]["application/json"]["schema"]
    assert answer.headers["content-type"] == "application/json"
    errors = [e.message for e in validator(doc, schema).iter_errors(answer.json())]
    assert not errors, (path, answer.status_code, errors, answer.text)


def test_the_document_is_valid_and_documents_every_route(document):
    Draft202012Validator.check_schema({"components": document["components"]})
    assert {(p, m) for p, ops in document["paths"].items() for m in ops} == {
        ("/health", "get"), ("/tasks", "get"), ("/predict", "post")}
    predict = document["paths"]["/predict"]["post"]
    assert set(predict["responses"]) == {"200", "400", "404", "405", "408", "413", "422", "500", "503"}
    body = predict["requestBody"]["content"]["application/json"]
    for name, example in body["examples"].items():
        assert validator(document, body["schema"]).is_valid(example["value"]), name
    # the body schema refuses what the server refuses as malformed (422) and accepts what it serves
    request = validator(document, body["schema"])
    assert not request.is_valid({"task": "sst2"}) and not request.is_valid({"items": []})
    assert not request.is_valid({"task": "sst2", "text": "a", "extra": 1})
    assert request.is_valid({"task": "sst2", "items": [{"text": "a"}, {"task": "movie", "text": "b"}]})


def test_real_answers_match_the_document(served, document):
    url, _ = served
    check_answer(document, "get", "/health", httpx.get(f"{url}/health"))
    tasks = httpx.get(f"{url}/tasks")
    check_answer(document, "get", "/tasks", tasks)
    assert [t["name"] for t in tasks.json()["tasks"]] == ["sst2", "stsb", "movie"]
    assert tasks.json()["tasks"][2]["source"] == "peft BEFT adapter"
    items = [{"task": "sst2", "text": LONG}, {"task": "stsb", "text": "a", "text_pair": "b"},
             {"task": "movie", "text": "the cast is wonderful"}]
    ok = httpx.post(f"{url}/predict", json={"items": items}, timeout=60)
    assert ok.status_code == 200
    check_answer(document, "post", "/predict", ok)
    got = ok.json()["predictions"]
    assert "truncated" in got[0] and "score" in got[1] and got[2]["label"] in ("bad", "good")
    bad = [(b"{not json", 400), (json.dumps({"items": []}).encode(), 400), (b"[1]", 400),
           (json.dumps({"task": "qqp", "text": "a"}).encode(), 404),
           (json.dumps({"items": items * 2}).encode(), 413),
           (json.dumps({"task": "sst2"}).encode(), 422),
           (json.dumps({"task": "stsb", "text": "a"}).encode(), 422)]
    for body, status in bad:
        answer = httpx.post(f"{url}/predict", content=body)
        assert answer.status_code == status, answer.text
        check_answer(document, "post", "/predict", answer)
    wrong = httpx.get(f"{url}/predict")
    assert wrong.status_code == 405
    check_answer(document, "post", "/predict", wrong)
    for path in ("/health", "/tasks"):
        check_answer(document, "get", path, httpx.post(f"{url}{path}"))
    missing = httpx.get(f"{url}/nope")  # no route to document it under: the Error schema still holds
    assert missing.status_code == 404 and "/openapi.json" in missing.json()["error"]
    assert validator(document, {"$ref": "#/components/schemas/Error"}).is_valid(missing.json())
    # an undocumented key would fail: the answers' schemas are closed
    stray = {**ok.json(), "extra": 1}
    assert not validator(document, {"$ref": "#/components/schemas/Predictions"}).is_valid(stray)


def test_the_docs_page_is_self_contained_html(served, document):
    page = httpx.get(f"{served[0]}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert html.startswith("<!doctype html>") and "<script" not in html and "src=" not in html
    assert "http://" not in html and "https://" not in html and "@import" not in html  # nothing fetched
    for heading in ("GET /health", "GET /tasks", "POST /predict"):
        assert heading in html
    for status, answer in document["paths"]["/predict"]["post"]["responses"].items():
        assert f"<td>{status}</td>" in html and answer["description"].split(" (")[0].replace("'", "&#x27;") in html
    for schema in document["components"]["schemas"]:
        assert f'id="schema-{schema}"' in html


def test_predict_writes_the_server_s_answers_as_list_columns(served, tmp_path):
    from bitfit_exp.commands.predict import main

    url, tasks = served
    rows = [{"task": "sst2", "text": LONG, "text_pair": None}, {"task": "stsb", "text": "a", "text_pair": "b"},
            {"task": "movie", "text": "the cast is wonderful", "text_pair": None}]
    pd.DataFrame(rows).to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    server = httpx.post(f"{url}/predict", json={"items": [{k: v for k, v in r.items() if v is not None}
                                                          for r in rows]}, timeout=60).json()["predictions"]
    for suffix in ("parquet", "jsonl", "csv"):
        assert main([*tasks, "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / f"out.{suffix}"),
                     "--no-progress"]) == 0
    out = pd.read_parquet(tmp_path / "out.parquet")
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert schema.field("probabilities").type == schema.field("logits").type == pa.list_(pa.float64())
    lines = pd.read_json(tmp_path / "out.jsonl", lines=True)
    csv = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    for i, answer in enumerate(server):
        logits = out["logits"][i].tolist()
        assert all(isinstance(v, float) for v in logits)
        assert logits == pytest.approx(answer["logits"], abs=1e-5) and lines["logits"][i] == pytest.approx(logits)
        assert json.loads(csv["logits"][i]) == pytest.approx(logits)
        if "probabilities" in answer:
            want = list(answer["probabilities"].values())
            assert out["probabilities"][i].tolist() == pytest.approx(want, abs=1e-6)
            assert lines["probabilities"][i] == pytest.approx(want, abs=1e-6)
            assert json.loads(csv["probabilities"][i]) == pytest.approx(answer["probabilities"], abs=1e-6)
            assert out["label"][i] == answer["label"]
        else:  # regression: no probabilities
            assert out["probabilities"][i] is None and out["score"][i] == pytest.approx(answer["score"], abs=1e-5)
    assert out["truncated"].tolist() == [True, False, False]
