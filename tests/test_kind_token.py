"""The token-classification kind (POS tagging): first-sub-token labels, truncation, losses, decoding, files."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from bitfit_exp.commands import convert_pos
from bitfit_exp.core.errors import UserError
from bitfit_exp.kinds import token as kind
from bitfit_exp.kinds.splits import load_splits
from tests.conftest import MINILM, REPO, tiny_config

UD_EWT = REPO.parent / "shared" / "data" / "ud_ewt"
TASK = {"name": "toy", "kind": "token", "label_names": ["DT", "NN", "VBZ", ".", ",", "NNP", "-LRB-", "-RRB-"],
        "eval_splits": {"validation": "toy"}, "test_splits": {"test": "toy.conll"}}


def load(task: dict, data_dir) -> dict:
    """The task's splits as the runner loads them (bitfit_exp.kinds.splits.load_splits)."""
    return load_splits(OmegaConf.create(task), OmegaConf.create({"dir": None if data_dir is None else str(data_dir),
                                                                   "hub_name": "nyu-mll/glue"}))


@pytest.fixture(scope="module")
def tokenizer():
    from bitfit_exp.model.loading import load_tokenizer

    return load_tokenizer(MINILM)


def frame(*sentences: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame({"sent_id": [f"s{i}" for i in range(len(sentences))],
                         "tokens": [[w for w, _ in s] for s in sentences],
                         "xpos": [[t for _, t in s] for s in sentences]})


SPLIT_WORDS = [("The", "DT"), ("hyperparameterization", "NN"), ("works", "VBZ"), (",", ","), ("(", "-LRB-"),
               ("Zaman", "NNP"), (")", "-RRB-"), (".", ".")]


def test_first_sub_token_carries_the_tag(tokenizer):
    data = kind.encode(frame(SPLIT_WORDS), TASK, tokenizer, {"max_length": 64}, role="train")
    pieces = tokenizer.convert_ids_to_tokens(data.input_ids[0])
    assert pieces == ["[CLS]", "the", "hyper", "##para", "##meter", "##ization", "works", ",", "(", "za", "##man",
                      ")", ".", "[SEP]"]
    assert data.labels[0] == [-100, 0, 1, -100, -100, -100, 2, 4, 6, 5, -100, 7, 3, -100]
    assert data.extra["first_positions"] == [[1, 2, 6, 7, 8, 9, 11, 12]]
    assert data.extra["tags"] == [[0, 1, 2, 4, 6, 5, 7, 3]]
    assert kind.truncation_counts(data) == {"sentences": 0, "words": 0}
    assert data.idx.tolist() == [0] and kind.num_outputs(TASK) == 8


def test_words_cut_by_max_length_are_predicted_as_cut_and_count_as_errors(tokenizer):
    # 10 tokens: [CLS] the hyper ##para ##meter ##ization works , ( [SEP]: "Zaman" ")" "." are cut
    data = kind.encode(frame(SPLIT_WORDS, [("The", "DT"), (".", ".")]), TASK, tokenizer, {"max_length": 10},
                       role="eval")
    assert len(data.input_ids[0]) == 10
    assert data.labels[0] == [-100, 0, 1, -100, -100, -100, 2, 4, 6, -100]
    assert kind.truncation_counts(data) == {"sentences": 1, "words": 3}
    perfect = torch.nn.functional.one_hot(torch.tensor([[0, 0, 1, 1, 1, 1, 2, 4, 6, 0], [0, 0, 3, 0, 0, 0, 0, 0, 0, 0]]),
                                          8).float()
    predictions = kind.decode([perfect], data)
    assert predictions == [[0, 1, 2, 4, 6, kind.CUT, kind.CUT, kind.CUT], [0, 3]]
    assert kind.score(predictions, data, ["accuracy"]) == {"accuracy": 7 / 10}


def test_a_word_cut_after_its_first_sub_token_is_still_scored(tokenizer):
    data = kind.encode(frame(SPLIT_WORDS[:3]), TASK, tokenizer, {"max_length": 4}, role="eval")
    assert tokenizer.convert_ids_to_tokens(data.input_ids[0]) == ["[CLS]", "the", "hyper", "[SEP]"]
    assert data.extra["first_positions"] == [[1, 2]]
    assert kind.truncation_counts(data) == {"sentences": 1, "words": 1}


def test_decode_reads_batches_of_different_widths_in_order(tokenizer):
    data = kind.encode(frame([("Works", "VBZ"), (".", ".")], [("The", "DT")], SPLIT_WORDS[:2]), TASK, tokenizer,
                       {"max_length": 32}, role="eval")
    first = torch.zeros(2, 4, 8)
    first[0, 1, 5], first[0, 2, 3], first[1, 1, 0] = 1.0, 1.0, 1.0  # "works" -> NNP (wrong), "." right, "the" right
    second = torch.zeros(1, 7, 8)
    second[0, 1, 0], second[0, 2, 1], second[0, 3, 7] = 1.0, 1.0, 1.0  # a continuation's logits are never read
    predictions = kind.decode([first, second.numpy()], data)
    assert predictions == [[5, 3], [0], [0, 1]]
    assert kind.score(predictions, data, ["accuracy"]) == {"accuracy": 4 / 5}
    with pytest.raises(ValueError, match="2 logit rows for the 3 features"):
        kind.decode([first], data)


TRAINING_TEXT = [" President Bush on Tuesday nominated two individuals .", " The hyperparameterization works ."] * 4


@pytest.fixture(scope="module")
def byte_level_tokenizer(tmp_path_factory):
    """A tiny roberta-base-like tokenizer: byte-level BPE, RobertaTokenizer, add_prefix_space=False, as
    AutoTokenizer loads roberta-base."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    folder = tmp_path_factory.mktemp("roberta")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TRAINING_TEXT, vocab_size=320, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()[1:] if line]
    tokenizer = RobertaTokenizerFast(vocab=bpe.get_vocab(), merges=merges)
    assert tokenizer.add_prefix_space is False
    return tokenizer


def test_byte_level_bpe_sees_each_word_with_its_leading_space(byte_level_tokenizer):
    tok = byte_level_tokenizer
    words = [("President", "NNP"), ("Bush", "NNP"), ("works", "VBZ"), ("hyperparameterization", "NN"), (".", ".")]
    glued = tok.convert_ids_to_tokens(tok([w for w, _ in words], is_split_into_words=True)["input_ids"])
    assert glued[:4] == ["<s>", "Pr", "esid", "ent"]  # fed as given, each word would lose its word start
    data = kind.encode(frame(words), TASK, tok, {"max_length": 64}, role="eval")
    pieces = tok.convert_ids_to_tokens(data.input_ids[0])
    assert pieces == ["<s>", "ĠPresid", "ent", "ĠBush", "Ġworks", "Ġhy", "perpar", "amet", "eriz", "ation", "Ġ.",
                      "</s>"]
    assert pieces[1:-1] == tok.tokenize(" President Bush works hyperparameterization .")  # as in running text
    assert data.labels[0] == [-100, 5, -100, 5, 2, 1, -100, -100, -100, -100, 3, -100]
    assert [pieces[p] for p in data.extra["first_positions"][0]] == ["ĠPresid", "ĠBush", "Ġworks", "Ġhy", "Ġ."]
    assert data.extra["words"] == [["President", "Bush", "works", "hyperparameterization", "."]]  # as given
    assert kind.needs_prefix_space(tok)


def test_wordpiece_and_sentencepiece_words_are_fed_as_given(tokenizer):
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    spm = SentencePieceBPETokenizer()
    spm.train_from_iterator(TRAINING_TEXT, vocab_size=120, special_tokens=["<pad>", "<unk>"])
    metaspace = PreTrainedTokenizerFast(tokenizer_object=spm._tokenizer, unk_token="<unk>", pad_token="<pad>")
    assert not kind.needs_prefix_space(tokenizer) and not kind.needs_prefix_space(metaspace)
    data = kind.encode(frame([("President", "NNP"), ("Bushes", "NNP")]), TASK, metaspace, {"max_length": 64},
                       role="eval")
    pieces = metaspace.convert_ids_to_tokens(data.input_ids[0])
    assert pieces == ["▁President", "▁Bush", "es"] and data.labels[0] == [5, 5, -100]


def test_null_tags_are_dropped_and_empty_words_become_unknown(tokenizer):
    table = pd.DataFrame({"tokens": [["don't", "do", "n't", "\u200b", "it"]],
                          "xpos": [[None, "VBZ", "DT", "NN", "NNP"]]})
    data = kind.encode(table, TASK, tokenizer, {"max_length": 32}, role="eval")
    assert data.extra["words"] == [["do", "n't", "\u200b", "it"]] and data.extra["ids"] == ["0"]
    assert tokenizer.convert_ids_to_tokens(data.input_ids[0]) == ["[CLS]", "do", "n", "'", "t", "[UNK]", "it",
                                                                  "[SEP]"]
    assert data.labels[0] == [-100, 2, 0, -100, -100, 1, 5, -100]


def test_a_tag_outside_label_names_is_one_line_naming_it(tokenizer, tmp_path):
    with pytest.raises(UserError, match=r"^the train split: tag 'XX' \(sentence s0\) is not in the task's label_"):
        kind.encode(frame([("The", "DT"), ("cat", "XX")]), TASK, tokenizer, {"max_length": 32}, role="train")
    folder = tmp_path / "toy"
    folder.mkdir()
    frame([("The", "DT")]).to_parquet(folder / "train.parquet")
    frame([("cat", "NN"), ("!", "XX")]).to_parquet(folder / "validation.parquet")
    with pytest.raises(UserError, match=f"^{folder / 'validation.parquet'}: tag 'XX' ") as e:
        load(TASK, tmp_path)
    assert "\n" not in str(e.value)


def test_words_and_tags_of_different_lengths_or_no_tags(tokenizer):
    bad = pd.DataFrame({"tokens": [["a", "b"]], "xpos": [["DT"]]})
    with pytest.raises(UserError, match="sentence 0 has 2 words but 1 tags"):
        kind.encode(bad, TASK, tokenizer, {"max_length": 32}, role="train")
    untagged = pd.DataFrame({"tokens": [["The", "cat"]]})
    with pytest.raises(UserError, match="the validation split has no 'xpos' column"):
        kind.encode(untagged, TASK, tokenizer, {"max_length": 32}, role="validation")
    test = kind.encode(untagged, TASK, tokenizer, {"max_length": 32}, role="test")
    assert test.labels == [[-100, -100, -100, -100]] and test.extra["tags"] is None
    with pytest.raises(UserError, match="no gold tags"):
        kind.score([[0, 1]], test, ["accuracy"])
    with pytest.raises(UserError, match="metric 'f1' is not one the token kind computes"):
        kind.score([[0, 1]], test, ["f1"])


def test_limit_takes_the_first_sentences_of_a_dataset(tokenizer):
    import datasets

    dataset = datasets.Dataset.from_pandas(frame([("The", "DT")], [("cat", "NN")], [(".", ".")]))
    data = kind.encode(dataset, TASK, tokenizer, {"max_length": 32}, role="train", limit=2)
    assert data.extra["ids"] == ["s0", "s1"] and data.extra["tags"] == [[0], [1]]


def test_batch_labels_pad_with_ignore_index(tokenizer):
    data = kind.encode(frame(SPLIT_WORDS[:3], [("The", "DT")]), TASK, tokenizer, {"max_length": 32}, role="train")
    labels = kind.batch_labels(data, torch.tensor([1, 0]), width=8)["labels"]
    assert labels.tolist() == [[-100, 0, -100, -100, -100, -100, -100, -100],
                               [-100, 0, 1, -100, -100, -100, 2, -100]]


def tiny_tagger(num_labels: int):
    from transformers import BertForTokenClassification

    torch.manual_seed(0)
    return BertForTokenClassification(tiny_config(num_labels=num_labels)).eval()


def batch(data, rows, width):
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, :len(data.input_ids[row])] = torch.tensor(data.input_ids[row])
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), **kind.batch_labels(data, torch.tensor(rows), width)}


def test_setting_losses_equal_the_models_own_loss(tokenizer):
    sentences = [SPLIT_WORDS, [("The", "DT"), ("cat", "NN")], [("Zaman", "NNP"), (".", ".")], SPLIT_WORDS[:3]]
    data = kind.encode(frame(*sentences), TASK, tokenizer, {"max_length": 32}, role="train")
    model = tiny_tagger(len(TASK["label_names"]))
    first, second = batch(data, [0, 1], 16), batch(data, [2, 3], 16)
    with torch.no_grad():
        out_first, out_second = model(**first), model(**second)
        both = torch.cat([out_first.logits, out_second.logits])
    one = kind.setting_losses(out_first.logits, {"labels": first["labels"]}, k=1)
    assert one.shape == (1,)
    torch.testing.assert_close(one[0], out_first.loss)
    labels = torch.cat([first["labels"], second["labels"]])
    torch.testing.assert_close(kind.setting_losses(both, {"labels": labels}, k=2),
                               torch.stack([out_first.loss, out_second.loss]))
    assert out_first.loss != out_second.loss  # the two settings really differ


def test_write_test_is_conll_like_and_reads_back(tokenizer, tmp_path):
    data = kind.encode(frame(SPLIT_WORDS[:4], [("The", "DT")]), TASK, tokenizer, {"max_length": 6}, role="test")
    path = tmp_path / "toy.conll"
    kind.write_test([[0, 1, kind.CUT, kind.CUT], [3]], data, TASK, path)
    assert path.read_text() == ("# sent_id = s0\nThe\tDT\nhyperparameterization\tNN\nworks\t_\n,\t_\n\n"
                                "# sent_id = s1\nThe\t.\n\n")
    assert kind.read_conll(path) == {"sent_id": ["s0", "s1"],
                                     "tokens": [["The", "hyperparameterization", "works", ","], ["The"]],
                                     "xpos": [["DT", "NN", "_", "_"], ["."]]}


def test_read_conll_two_column_and_conllu(tmp_path):
    two = tmp_path / "wsj.tsv"
    two.write_text("Pierre\tNNP\n*-1\t-NONE-\n#\t#\n,\t,\n\n\n# a comment\nIt rose\tVBD\n")
    assert kind.read_conll(two) == {"sent_id": ["1", "2"], "tokens": [["Pierre", "#", ","], ["It rose"]],
                                    "xpos": [["NNP", "#", ","], ["VBD"]]}
    conllu = tmp_path / "ewt.conllu"
    rows = ["1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_", "1\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_",
            "2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_", "2.1\tgo\tgo\tVERB\t_\t_\t_\t_\t_\t_",
            "3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_"]
    conllu.write_text("# sent_id = ewt-1\n# text = don't go\n" + "\n".join(rows) + "\n\n")
    assert kind.read_conll(conllu) == {"sent_id": ["ewt-1"], "tokens": [["do", "n't", "go"]],
                                       "xpos": [["VBP", "RB", "VB"]]}
    space = tmp_path / "conll2000.txt"
    space.write_text("Confidence NN B-NP\nin IN B-PP\n")
    assert kind.read_conll(space, columns=(0, 1))["xpos"] == [["NN", "IN"]]
    with pytest.raises(UserError, match=r"conll2000.txt:1: 3 field\(s\), expected a word in column 1 and a tag "
                                        r"in column 4"):
        kind.read_conll(space, columns=(0, 3))


def test_read_conll_space_separated_pound_sign_is_a_word_not_a_comment(tmp_path):
    wsj = tmp_path / "wsj.txt"
    wsj.write_text("# sent_id = a\nThe DT\nprice NN\n# #\n200 CD\n\n# #\n1 CD\n\n# a comment here\n#comment\n"
                   "# sent_id = c\nIt PRP\n")
    assert kind.read_conll(wsj) == {"sent_id": ["a", "2", "c"], "tokens": [["The", "price", "#", "200"], ["#", "1"],
                                                                       ["It"]],
                                    "xpos": [["DT", "NN", "#", "CD"], ["#", "CD"], ["PRP"]]}
    chunks = tmp_path / "conll2000.txt"  # three fields per word line: a two-field `#` line is a comment there
    chunks.write_text("# # B-NP\n# note\n5 CD I-NP\n")
    assert kind.read_conll(chunks) == {"sent_id": ["1"], "tokens": [["#", "5"]], "xpos": [["#", "CD"]]}


def test_read_conll_conllu_comments_stay_comments(tmp_path):
    conllu = tmp_path / "ud.conllu"
    conllu.write_text("# newdoc id = d1\n# newpar\n# sent_id = s-1\n# text = # 1\n1\t#\t#\tSYM\tNN\t_\t2\tdep\t_\t_\n"
                      "2\t1\t1\tNUM\tCD\t_\t0\troot\t_\t_\n\n# sent_id = s-2\n# #\n1\tOk\tok\tINTJ\tUH\t_\t0\troot\t_\t_\n")
    assert kind.read_conll(conllu) == {"sent_id": ["s-1", "s-2"], "tokens": [["#", "1"], ["Ok"]],
                                       "xpos": [["NN", "CD"], ["UH"]]}


def test_convert_writes_the_layout_load_splits_reads(tmp_path):
    text = tmp_path / "in.tsv"
    text.write_text("The\tDT\ncat\tNN\n.\t.\n\nIt\tNNP\n")
    root = tmp_path / "data"
    for split in ["train", "validation"]:
        assert kind.convert(text, root / "ptb" / f"{split}.parquet") == 2
    task = {**TASK, "local_name": "ptb"}
    splits = load(task, root)
    assert sorted(splits) == ["train", "validation"]  # test is optional: no test predictions then
    assert splits["train"]["tokens"][:] == [["The", "cat", "."], ["It"]]
    assert splits["train"]["xpos"][:] == [["DT", "NN", "."], ["NNP"]]
    with pytest.raises(UserError, match=r"/toy lacks validation.parquet; fetch the task"):
        (root / "toy").mkdir()
        kind.convert(text, root / "toy" / "train.parquet")
        load(TASK, root)


def test_convert_command_line(tmp_path, capsys):
    text = tmp_path / "in.conll"
    text.write_text("1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n")
    done = subprocess.run([sys.executable, "-m", "bitfit_exp.commands.convert_pos", "convert", str(text),
                           str(tmp_path / "out.parquet")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout == f"wrote 1 sentences to {tmp_path / 'out.parquet'}\n"
    assert pd.read_parquet(tmp_path / "out.parquet")["xpos"].map(list).tolist() == [["UH"]]
    with pytest.raises(SystemExit) as exit_:
        convert_pos.main(["convert", str(tmp_path / "missing.tsv"), str(tmp_path / "x.parquet"), "--columns", "1,2"])
    assert exit_.value.code == 2 and capsys.readouterr().err == f"error: {tmp_path / 'missing.tsv'} does not exist\n"
    with pytest.raises(SystemExit):
        convert_pos.main(["convert", str(text), str(tmp_path / "x.parquet"), "--columns", "0,2"])
    assert capsys.readouterr().err == "error: --columns='0,2': column numbers start at 1\n"


def test_pos_yaml_label_set_is_fixed_and_covers_ewt():
    task = OmegaConf.load(REPO / "conf" / "task" / "pos.yaml")
    names = list(task.label_names)
    assert task.kind == "token" and task.local_name == "ud_ewt"
    assert len(names) == len(set(names)) == task.num_labels == 50
    assert names[:3] == ["CC", "CD", "DT"] and names[-5:] == ["ADD", "AFX", "GW", "HYPH", "NFP"]
    if not (UD_EWT / "train.parquet").is_file():
        pytest.skip(f"local UD English-EWT copy not found at {UD_EWT}")
    seen = {t for tags in pd.read_parquet(UD_EWT / "train.parquet", columns=["xpos"])["xpos"] for t in tags}
    assert set(names) - seen == {"#"} and seen <= set(names)


def test_pos_task_finds_the_shared_ewt_copy_by_local_name(tokenizer):
    if not (UD_EWT / "validation.parquet").is_file():
        pytest.skip(f"local UD English-EWT copy not found at {UD_EWT}")
    task = OmegaConf.load(REPO / "conf" / "task" / "pos.yaml")
    splits = load(OmegaConf.to_container(task), UD_EWT.parent)
    assert {s: len(d) for s, d in splits.items()} == {"train": 12544, "validation": 2001, "test": 2077}
    data = kind.encode(splits["validation"], task, tokenizer, {"max_length": 128}, role="eval", limit=3)
    assert data.extra["ids"][0] == splits["validation"]["sent_id"][0]
    assert all(np.count_nonzero(np.asarray(row) != -100) == len(words)
               for row, words in zip(data.labels, data.extra["words"], strict=True))


def test_without_data_dir_offline_the_hub_error_is_one_line(monkeypatch):
    import datasets

    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    task = OmegaConf.load(REPO / "conf" / "task" / "pos.yaml")
    with pytest.raises(UserError) as e:
        load(OmegaConf.to_container(task), None)
    assert str(e.value) == ("cannot load universal-dependencies/universal_dependencies from the Hugging Face hub "
                            "(ConnectionError: Couldn't reach the Hub); offline, pass data.dir=/path/to/data (layout "
                            "ud_ewt/<split>.parquet) or prefetch it with `bitfit-prefetch task=pos`")
    assert calls == [(("universal-dependencies/universal_dependencies",),
                      {"data_dir": "en_ewt", "revision": "refs/convert/parquet"})]  # the task's own hub copy
