"""Setting hashes are the names of result folders: a refactor, a new config key with its default, or another
spelling of a value must never move a finished setting to a new folder (it would train again and count twice).
These hashes were computed before the package was regrouped (#20) and must stay as they are."""

import copy
import json
from pathlib import Path

import pytest
from conftest import quick
from omegaconf import OmegaConf
from test_identity import bitfit_run, trained

from bitfit_exp.config.compose import compose_jobs, valid_jobs
from bitfit_exp.config.plan import plan
from bitfit_exp.config.schema import ConfigError, normalize
from bitfit_exp.core.config_dir import conf_dir
from bitfit_exp.results.records import result_config, setting_key

FINGERPRINTS = {"model": "m" * 16, "data": "d" * 16}  # fixed, so only the config decides the hash
PINNED = {
    "task=rte method=bitfit model=minilm": "3a3e8060",
    "task=sst2 method=full model=bert_base": "04543ff1",
    "task=stsb method=bq model=roberta_base": "3ad3e96e",
    "task=mnli method=bm2_bq model=bert_large train.epochs=3": "563336b9",
    "task=cola method=rand_uniform model=bert_base optim=adamw_hf2021": "b8e8abc2",
    "task=mrpc method=rand_rowcol model=roberta_base train.packed=true": "a3435a47",
    "task=squad method=bitfit model=minilm": "0080e1a9",
    "task=pos method=frozen model=bert_base": "e67d7d32",
    "task=qnli method=biases model=electra_base data.padding=longest data.max_length=64": "463d038b",
    "+experiment=table3 task=rte method=bitfit lr_index=1": "3a3e8060",
    "task=wnli method=bitfit model=minilm optim.lr=0.0004 train.grad_clip=0.5 optim.weight_decay=0.01": "0cbe53f4",
    "+experiment=table1 task=rte method=bitfit model=bert_base lr_index=0": "a95e86d8",
    "+experiment=datasize task=sst2": "06c705aa",
}


def hash_of(command_line: str) -> str:
    [(_, cfg)] = valid_jobs(command_line.split(), sweep=False)
    return setting_key(OmegaConf.to_container(cfg, resolve=True), FINGERPRINTS)["hash"]


@pytest.mark.parametrize("command_line", PINNED)
def test_setting_hashes_never_change(command_line):
    assert hash_of(command_line) == PINNED[command_line]


# Another spelling of the same values (an int for a float key, -0.0, an integral float for an integer) is the same
# setting: the config is normalized by the schema's types before anything is hashed (config.schema.normalize).
SAME_SETTING = {
    "task=rte method=bitfit model=minilm train.grad_clip=1 optim.weight_decay=0": "3a3e8060",
    "task=rte method=bitfit model=minilm train.grad_clip=1.0 optim.weight_decay=-0.0": "3a3e8060",
    "task=rte method=bitfit model=minilm optim.betas=[0.9,0.999] optim.eps=1e-6 optim.warmup_ratio=0": "3a3e8060",
    # title_split's seed is an integer: its documented spelling keeps the hash it had before normalization
    "task=squad method=bitfit model=minilm task.title_split={dev_fraction:0.5,seed:0}": "847580fe",
    "task=squad method=bitfit model=minilm task.title_split={dev_fraction:0.5,seed:0.0}": "847580fe",
}


@pytest.mark.parametrize("command_line", SAME_SETTING)
def test_another_spelling_of_a_value_is_the_same_setting(command_line):
    assert hash_of(command_line) == SAME_SETTING[command_line]


@pytest.mark.parametrize(("spelled", "as_declared"), [
    ("optim.lr=1 optim.betas=[0,0.999]", "optim.lr=1.0 optim.betas=[0.0,0.999]"),
    ("+experiment=table3 lr_index=1 method.lr_grid=[1,2]", "+experiment=table3 lr_index=1 method.lr_grid=[1.0,2.0]"),
    ("optim.lr=${method.default_lr} method.default_lr=2", "optim.lr=2.0"),  # an interpolation reads the new spelling
    ("+paper_lr={bitfit:3} optim.lr=${paper_lr.bitfit}", "optim.lr=3.0"),
])
def test_ints_and_floats_are_spelled_as_the_schema_declares(spelled, as_declared):
    base = "method=bitfit model=minilm "
    assert hash_of(base + spelled) == hash_of(base + as_declared)


def test_an_int_too_large_for_a_float_key_is_one_line():
    with pytest.raises(ConfigError, match=r"^train.grad_clip=10+ is not valid; expected null or a finite number > 0$"):
        valid_jobs([f"train.grad_clip=1{'0' * 400}"], sweep=False)


def test_defaults_are_spelled_as_declared():
    """Tables compose each cell's protocol from conf/ without normalizing (results/ is below config/): every hashed
    default must already be spelled as the schema declares, or records of normalized runs would not match it."""
    conf = Path(conf_dir())
    jobs = [[f"{group}={path.stem}"] for group in ("model", "task", "method", "optim")
            for path in sorted((conf / group).glob("*.yaml"))]
    jobs += [[f"+experiment={path.stem}"] for path in sorted((conf / "experiment").glob("*.yaml"))]
    for job, cfg in zip(jobs, compose_jobs(jobs), strict=True):
        composed = json.dumps(result_config(OmegaConf.to_container(cfg, resolve=True)))
        respelled = json.dumps(result_config(OmegaConf.to_container(normalize(copy.deepcopy(cfg)), resolve=True)))
        assert composed == respelled, job


@pytest.mark.slow  # end to end through subprocesses: make test-slow (CI runs it)
def test_an_int_spelling_finds_the_seeds_of_the_float_spelling_done(tmp_path, tiny_bert_dir, glue_dir):
    first = bitfit_run(*quick(tiny_bert_dir, tmp_path, "train.epochs=1", "train.grad_clip=1.0", "optim.weight_decay=0.0"))
    assert trained(first) == ["seed 0"]
    ints = quick(tiny_bert_dir, tmp_path, "train.epochs=1", "train.grad_clip=1", "optim.weight_decay=0")
    [job] = plan(ints)
    assert job["done"] == job["seeds"] == 1
    again = bitfit_run(*ints)
    assert trained(again) == [] and "1 already finished" in again.stdout
    assert len(list(tmp_path.glob("**/record.json"))) == 1  # one setting folder, one record
