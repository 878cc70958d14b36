"""The span kind (extractive QA, SQuAD v1.1): windows, span decoding, metrics, losses, prediction file, split."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bitfit_exp.core.errors import UserError
from bitfit_exp.data.batches import Encoded
from bitfit_exp.data.carve import split_by_title
from bitfit_exp.kinds import span
from tests.conftest import MINILM, REPO, tiny_config

WORDS = "red blue green black white brown pink gray gold silver orange purple".split()  # one WordPiece token each
LONG_CONTEXT = " ".join(WORDS[i % len(WORDS)] for i in range(60))  # 60 tokens


@pytest.fixture(scope="module")
def tokenizer():
    from bitfit_exp.model.loading import load_tokenizer

    return load_tokenizer(MINILM)


def qa_frame(rows: list[tuple[str, str, str, str, list[str], list[int]]]) -> pd.DataFrame:
    """(id, title, question, context, answer texts, answer starts) rows in SQuAD's layout."""
    columns = ["id", "title", "question", "context"]
    frame = pd.DataFrame({name: [r[i] for r in rows] for i, name in enumerate(columns)})
    frame["answers"] = [{"text": r[4], "answer_start": r[5]} for r in rows]
    return frame


def word_start(context: str, word_index: int) -> int:
    return sum(len(w) + 1 for w in context.split()[:word_index])


def context_tokens(data, feature: int) -> list[int]:
    return [t for t, span_ in zip(data.input_ids[feature], data.extra["offsets"][feature], strict=True) if span_]


# ---------------------------------------------------------------- windows

def test_long_context_gives_overlapping_windows_with_the_stride(tokenizer):
    assert all(len(tokenizer.tokenize(w)) == 1 for w in WORDS)
    frame = qa_frame([("q", "t", "what colour?", LONG_CONTEXT, ["red"], [0])])
    data = span.encode(frame, {"doc_stride": 8}, tokenizer, {"max_length": 32}, role="eval")
    # [CLS] what colour ? [SEP] ... [SEP]: 32 - 3 question tokens - 3 special = 26 context tokens a window, each
    # next window starting 26 - 8 = 18 tokens later: 0-25, 18-43, 36-59
    assert len(data) == 3
    assert data.extra["example_index"].tolist() == [0, 0, 0] == data.idx.tolist()
    windows = [context_tokens(data, f) for f in range(len(data))]
    assert [len(w) for w in windows] == [26, 26, 24]
    for before, after in zip(windows, windows[1:], strict=False):
        assert before[-8:] == after[:8]  # consecutive windows share exactly doc_stride tokens
    assert [data.extra["offsets"][f][5][0] for f in range(3)] == [word_start(LONG_CONTEXT, w) for w in (0, 18, 36)]
    assert all(len(ids) <= 32 for ids in data.input_ids)
    assert data.input_ids[0][:5] == data.input_ids[2][:5]  # every window repeats the question
    assert data.extra["offsets"][0][:5] == [None] * 5 and data.extra["offsets"][0][-1] is None


def test_every_answer_that_fits_is_inside_a_window_with_the_right_token_positions(tokenizer):
    answers = [(3, 2), (20, 3), (24, 2), (40, 1), (57, 3)]  # (first word, words): some straddle a window border
    rows = []
    for n, (first, length) in enumerate(answers):
        text = " ".join(LONG_CONTEXT.split()[first:first + length])
        rows.append((f"q{n}", "t", "which colours?", LONG_CONTEXT, [text], [word_start(LONG_CONTEXT, first)]))
    data = span.encode(qa_frame(rows), {"doc_stride": 8}, tokenizer, {"max_length": 32}, role="train")
    assert "offsets" not in data.extra  # training windows carry positions, not offsets
    for n, (*_, golds, _) in enumerate(rows):
        features = np.flatnonzero(data.extra["example_index"] == n)
        labelled = [f for f in features if data.labels[f].tolist() != [0, 0]]
        assert labelled, f"answer {golds[0]!r} is in no window"
        for f in labelled:
            start, end = data.labels[f]
            assert tokenizer.decode(data.input_ids[f][start:end + 1]) == golds[0]
        # a window that does not hold the whole answer points at CLS
        assert all(data.labels[f].tolist() == [0, 0] for f in features if f not in labelled)
    assert len(data.labels) == len(data) == 3 * len(rows)


def test_answer_positions_map_back_to_the_answer_text_through_offsets(tokenizer):
    context = "The Broncos, champions of 2015, won Super Bowl 50 in Santa Clara."
    frame = qa_frame([("q", "t", "  Who won?", context, ["Broncos", "The Broncos"], [4, 0]),
                      ("r", "t", "Where?", context, ["Santa Clara"], [context.index("Santa")])])
    data = span.encode(frame, {"doc_stride": 16}, tokenizer, {"max_length": 64}, role="eval")
    assert len(data) == 2 and data.extra["example_ids"] == ["q", "r"]
    assert data.extra["answers"] == [["Broncos", "The Broncos"], ["Santa Clara"]]
    assert data.input_ids[0][1] == tokenizer.convert_tokens_to_ids("who")  # leading spaces of the question go
    for f, expected in enumerate(["Broncos", "Santa Clara"]):
        start, end = data.labels[f]  # the first gold answer
        offsets = data.extra["offsets"][f]
        assert context[offsets[start][0]:offsets[end][1]] == expected


def test_bad_windows_are_one_line_errors(tokenizer):
    frame = qa_frame([("q", "t", "what colour is the thing in this long question?", LONG_CONTEXT, ["red"], [0])])
    with pytest.raises(UserError, match="doc_stride=32 must be"):
        span.encode(frame, {"doc_stride": 32}, tokenizer, {"max_length": 32}, role="eval")
    with pytest.raises(UserError, match="a question of 10 tokens leaves 7 context tokens a window in "
                                        "data.max_length=20, not more than doc_stride=8"):
        span.encode(frame, {"doc_stride": 8}, tokenizer, {"max_length": 20}, role="eval")
    # 25 - 10 - 3 = 12 context tokens a window, 4 new ones per window: starts 0, 4, ..., 48
    assert len(span.encode(frame, {"doc_stride": 8}, tokenizer, {"max_length": 25}, role="eval")) == 13
    assert span.window_sizes({}, {"max_length": 384}) == (384, 128)


def test_batch_labels_are_the_rows_positions():
    data = Encoded([[1]] * 3, None, np.array([[0, 0], [3, 5], [7, 7]]), np.zeros(3))
    targets = span.batch_labels(data, torch.tensor([2, 1]), width=16)
    assert targets["start_positions"].tolist() == [7, 3] and targets["end_positions"].tolist() == [7, 5]


# ---------------------------------------------------------------- decoding

def hand_data(offsets: list[list], example_index: list[int], contexts: list[str], max_answer_length=3, n_best=20):
    return Encoded([[0] * len(o) for o in offsets], None, np.zeros((len(offsets), 2), dtype=np.int64),
                   np.array(example_index),
                   extra={"offsets": offsets, "example_index": np.array(example_index),
                          "example_ids": [f"id{e}" for e in range(len(contexts))], "contexts": contexts,
                          "answers": [[] for _ in contexts], "max_answer_length": max_answer_length,
                          "n_best": n_best})


CONTEXT = "alpha beta gamma delta epsilon"
WORD_SPANS = [(0, 5), (6, 10), (11, 16), (17, 22), (23, 30)]
WINDOW = [None, None, *WORD_SPANS, None]  # [CLS] question [SEP] alpha beta gamma delta epsilon [SEP]


def logits(start: list[float], end: list[float]):
    return torch.tensor([start]), torch.tensor([end])


def test_decode_takes_the_best_valid_span():
    data = hand_data([WINDOW], [0], [CONTEXT])
    assert span.decode([logits([0, 0, 1, 5, 0, 0, 0, 0], [0, 0, 0, 0, 4, 0, 0, 0])], data) == {"id0": "beta gamma"}


def test_decode_rejects_spans_outside_the_context_too_long_or_reversed():
    data = hand_data([WINDOW], [0], [CONTEXT])
    # CLS and the question score highest but lie outside the context; the best inside is alpha..alpha
    outside = logits([9, 9, 1, 0, 0, 0, 0, 9], [9, 9, 1, 0, 0, 0, 0, 9])
    assert span.decode([outside], data) == {"id0": "alpha"}
    # alpha..epsilon (18), alpha..delta and beta..epsilon are longer than max_answer_length=3: beta..delta (10)
    long = logits([0, 0, 9, 5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 5, 9, 0])
    assert span.decode([long], data) == {"id0": "beta gamma delta"}
    # end (beta) before start (delta) is no span: delta..delta beats gamma..beta's score
    reversed_ = logits([0, 0, 0, 0, 0, 9, 0, 0], [0, 0, 0, 9, 0, 1, 0, 0])
    assert span.decode([reversed_], data) == {"id0": "delta"}


def test_decode_ignores_batch_padding_and_takes_the_best_window():
    # example 0 has two windows (the second over "delta epsilon"), example 1 one short window; batches of 2 and 1,
    # padded to their widths: the padding positions carry the highest logits and must not be read
    second = [None, None, None, WORD_SPANS[3], WORD_SPANS[4], None]
    data = hand_data([WINDOW, second, [None, (0, 4), (5, 9), None]], [0, 0, 1], [CONTEXT, "some text"])
    batch1 = (torch.tensor([[0, 0, 3, 0, 0, 0, 0, 0], [0, 0, 0, 0, 4, 0, 50, 50]]),
              torch.tensor([[0, 0, 3, 0, 0, 0, 0, 0], [0, 0, 0, 2, 4, 0, 50, 50]]))
    batch2 = (torch.tensor([[0, 0, 1, 0, 50]]), torch.tensor([[0, 0, 2, 0, 50]]))
    assert span.decode([batch1, batch2], data) == {"id0": "epsilon", "id1": "text"}


def test_decode_without_a_valid_span_answers_empty():
    data = hand_data([[None, None, None]], [0], [CONTEXT])
    assert span.decode([logits([1, 2, 3], [3, 2, 1])], data) == {"id0": ""}
    with pytest.raises(ValueError, match="got logits for 2 features"):
        span.decode([logits([1, 2, 3], [3, 2, 1])] * 2, data)


def test_best_span_looks_only_at_the_n_best_starts_and_ends():
    start, end = np.array([0, 3, 2, 1.0]), np.array([0, 1, 0, 3.0])
    offsets = [None, (0, 1), (2, 3), (4, 5)]
    assert span.best_span(start, end, offsets, n_best=4, max_answer_length=30) == (6.0, 1, 3)
    assert span.best_span(start, end, offsets, n_best=1, max_answer_length=30) == (6.0, 1, 3)
    assert span.best_span(start, end, offsets, n_best=4, max_answer_length=2) == (5.0, 2, 3)


# ---------------------------------------------------------------- metrics

@pytest.mark.parametrize("prediction, gold, em, f1", [
    ("The Denver Broncos!", "denver broncos", 1.0, 1.0),   # case, article, punctuation
    ("an apple, a pear", "Apple pear.", 1.0, 1.0),
    ("Denver  Broncos", "Denver Broncos", 1.0, 1.0),       # whitespace
    ("cat", "dog", 0.0, 0.0),                              # no overlap
    ("the big red dog", "red dog barked", 0.0, 2 / 3),     # 2 common of 3 and 3 tokens
    ("x x y", "x y", 0.0, 0.8),                            # a repeated token counts once: P 2/3, R 1
    ("", "dog", 0.0, 0.0),
    ("the", "a", 1.0, 0.0),                                # both normalise to nothing: equal, no tokens
])
def test_exact_match_and_f1_by_hand(prediction, gold, em, f1):
    assert span.exact_match(prediction, gold) == em
    assert span.f1(prediction, gold) == pytest.approx(f1)


def test_score_takes_the_max_over_gold_answers_and_the_mean_over_examples():
    data = hand_data([WINDOW] * 3, [0, 1, 2], [CONTEXT] * 3)
    data.extra["answers"] = [["Denver Broncos", "Denver"], ["Denver Broncos", "the team"], ["Santa Clara"]]
    predictions = {"id0": "Denver", "id1": "Broncos team"}  # id2 missing: counts as ""
    scores = span.score(predictions, data, ["exact_match", "f1"])
    # id1: vs "Denver Broncos" P=R=1/2 -> 0.5, vs "team" P=1/2 R=1 -> 2/3
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    with pytest.raises(UserError, match="unknown metric 'accuracy'"):
        span.score(predictions, data, ["accuracy"])


# ---------------------------------------------------------------- losses

def qa_model_and_batch(rows: int, width: int = 10):
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_config()).eval()
    ids = torch.randint(1000, 2000, (rows, width))
    positions = torch.randint(0, width, (2, rows))
    positions[0, 1] = width + 5  # past the row: clamped to width and ignored, as transformers does
    return model, ids, {"start_positions": positions[0], "end_positions": positions[1]}


def test_setting_losses_equal_the_models_own_loss_for_one_setting():
    model, ids, targets = qa_model_and_batch(4)
    with torch.no_grad():
        out = model(input_ids=ids, **targets)
    losses = span.setting_losses((out.start_logits, out.end_logits), targets, k=1)
    assert losses.shape == (1,)
    assert losses[0].item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert span.setting_losses(out, targets, k=1)[0].item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_setting_losses_are_each_settings_own_loss():
    model, ids, targets = qa_model_and_batch(6)
    with torch.no_grad():
        out = model(input_ids=ids)
        own = [model(input_ids=ids[r], **{k: v[r] for k, v in targets.items()}).loss for r in (slice(0, 3),
                                                                                              slice(3, 6))]
    losses = span.setting_losses((out.start_logits, out.end_logits), targets, k=2)
    assert losses.tolist() == pytest.approx([x.item() for x in own], rel=1e-6)
    assert losses[0] != pytest.approx(losses[1].item())


# ---------------------------------------------------------------- files and splits

def test_write_test_writes_the_official_json(tmp_path):
    data = hand_data([WINDOW] * 3, [0, 1, 2], [CONTEXT] * 3)
    path = span.write_test({"id0": "Denver Broncos", "id2": "Zürich"}, data, {"name": "squad"},
                           tmp_path / "out" / "predictions.json")
    assert json.loads(path.read_text(encoding="utf-8")) == {"id0": "Denver Broncos", "id1": "", "id2": "Zürich"}
    assert list(json.loads(path.read_text(encoding="utf-8"))) == ["id0", "id1", "id2"]


def test_split_by_title_is_disjoint_complete_and_deterministic():
    import datasets

    titles = [f"t{i // 3}" for i in range(30)]  # 10 articles, 3 questions each
    frame = pd.DataFrame({"id": [str(i) for i in range(30)], "title": titles})
    train, dev = split_by_title(frame, 0.3, seed=1)
    assert len(set(dev.title)) == 3 and len(set(train.title)) == 7
    assert not set(train.title) & set(dev.title)
    assert sorted(train.id.tolist() + dev.id.tolist(), key=int) == frame.id.tolist()
    assert train.id.tolist() == sorted(train.id.tolist(), key=int)  # rows keep their order
    again_train, again_dev = split_by_title(frame, 0.3, seed=1)
    assert again_dev.id.tolist() == dev.id.tolist() and again_train.id.tolist() == train.id.tolist()
    other = {tuple(split_by_title(frame, 0.3, seed=s)[1].title.unique()) for s in range(5)}
    assert len(other) > 1  # the seed draws the articles
    ds_train, ds_dev = split_by_title(datasets.Dataset.from_pandas(frame), 0.3, seed=1)
    assert ds_dev["id"] == dev.id.tolist() and ds_train["id"] == train.id.tolist()
    with pytest.raises(UserError, match="dev_fraction=1.0"):
        split_by_title(frame, 1.0, seed=0)


def test_squad_yaml_names_the_kind_and_its_keys():
    from omegaconf import OmegaConf

    task = OmegaConf.load(REPO / "conf" / "task" / "squad.yaml")
    assert task.kind == "span" and task.metric in task.metrics and set(task.metrics) <= set(span.METRICS)
    assert span.window_sizes(task, {"max_length": task.max_length}) == (384, 128)
    assert (task.max_answer_length, task.n_best, span.num_outputs(task)) == (30, 20, 2) and task.num_labels == 2
