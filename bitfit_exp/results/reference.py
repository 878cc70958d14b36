"""Reference numbers of the BitFit paper (ACL 2022): Tables 1-3 in results/paper/glue_reference.csv, the token-level
PTB POS accuracies of section 4 in results/paper/token_reference.csv.

>>> from bitfit_exp.results.reference import load_reference, reference_cell
>>> df = load_reference()
>>> reference_cell(df, table=3, model="bert_base", method="bitfit", task="rte")
(72.3, 0.9)
>>> reference_cell(df, table=1, model="bert_large", method="diff_prune", task="cola", split="test", source="guo2020")
(61.1, None)

>>> token = load_token_reference()
>>> token_cell(token, "roberta_base", "bitfit")
97.1

The paper's `avg` is copied, not recomputed; it is the mean over 8 tasks with MNLI counted once as (m + mm) / 2.
"""

import math
from pathlib import Path

import pandas as pd

PAPER_DIR = Path(__file__).resolve().parents[2] / "results" / "paper"


def load_reference(path=None) -> pd.DataFrame:
    """Long-format table: table,split,model,method,source,param_pct,task,mean,std (std NaN where none printed)."""
    df = pd.read_csv(path or PAPER_DIR / "glue_reference.csv", dtype={"std": float})
    df["table"] = df["table"].astype(int)
    return df


def reference_cell(
    df, table, model, method, task, split="dev", source="this_paper"
) -> tuple[float, float | None]:
    """(mean, std) of one printed cell; std is None where the paper prints no ±."""
    key = dict(table=table, split=split, model=model, method=method, source=source, task=task)
    hit = df[(df[list(key)] == pd.Series(key)).all(axis=1)]
    if len(hit) != 1:
        raise KeyError(f"{len(hit)} reference cells match {key} (expected 1)")
    mean, std = hit.iloc[0][["mean", "std"]]
    return float(mean), None if math.isnan(std) else float(std)


def load_token_reference(path=None) -> pd.DataFrame:
    """The section 4 token-level numbers: task,dataset,model,method,metric,mean (PTB POS accuracy x100, no std)."""
    return pd.read_csv(path or PAPER_DIR / "token_reference.csv")


def token_cell(df, model, method, task="pos") -> float:
    """The paper's token-level score of (model, method) on `task`."""
    hit = df[(df["model"] == model) & (df["method"] == method) & (df["task"] == task)]
    if len(hit) != 1:
        raise KeyError(f"{len(hit)} token-level reference cells match {(model, method, task)} (expected 1)")
    return float(hit.iloc[0]["mean"])
