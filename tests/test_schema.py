"""The config schema: every bad value is one line naming the key, the value and what is allowed, exit code 2, and
nothing is written under runs_dir, for `bitfit-run` (each job of a sweep before any starts) and `bitfit-plan`.
Composition only: nothing here trains."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GLUE, compose
from omegaconf import OmegaConf, open_dict

from bitfit_exp.commands import plan as plan_command
from bitfit_exp.commands import run as run_command
from bitfit_exp.config import compose as config_compose
from bitfit_exp.config import plan
from bitfit_exp.config.schema import ConfigError, problems
from bitfit_exp.core.config_dir import conf_dir

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TRAIN_KEYS = ("epochs, batch_size, eval_batch_size, grad_clip, select, device, bf16, save_patch, predict_test, "
              "progress, log_every, log_every_s, deterministic, compile, packed, packed_dropout, pack_lrs, "
              "checkpoint, stop_after_epochs, claim_timeout_s, threads, report_to")


def bitfit_run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`bitfit-run ARGS` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["bitfit-run", *args])
    with pytest.raises(SystemExit) as stopped:
        run_command.run()
    out = capsys.readouterr()
    return stopped.value.code, out.out, out.err


def written(runs_dir: Path) -> list[Path]:
    return sorted(runs_dir.rglob("*"))


@pytest.mark.parametrize("override, line", [
    # The examples: each used to fail after loading data, or to run with a bad value.
    ("train.epochs=abc", "train.epochs='abc' is not valid; expected an integer >= 1"),
    ("seeds=5", "seeds=5 is not valid; expected a non-empty list of integers in [0, 4294967295]"),
    ("optim.lr=-1e-3", "optim.lr=-0.001 is not valid; expected a finite number > 0"),
    ("train.batch_size=0", "train.batch_size=0 is not valid; expected an integer >= 1"),
    ("train.progress=maybe", "train.progress='maybe' is not valid; choose one of auto, true, false, lines"),
    ("optim.lr=0", "optim.lr=0 is not valid; expected a finite number > 0"),
    ("data.max_length=2", "data.max_length=2 is not valid; expected an integer in [8, 8192]"),
    ("+train.epoch=3", f"train.epoch=3 is not a config key; did you mean train.epochs? valid keys of train: "
                       f"{TRAIN_KEYS}"),
    # One per rule class.
    ("train.epoch=3", f"train.epoch=3 is not a config key; did you mean train.epochs? valid keys of train: "
                      f"{TRAIN_KEYS}"),  # what Hydra refused with its advice to add the key
    ("+foo=1", "foo=1 is not a config key; valid top-level keys: model, task, method, optim, data, train, seeds, "
               "lr_index, overwrite, runs_dir, fixed_lr, paper_lr"),
    ("train.bf16=yes", "train.bf16='yes' is not valid; expected true or false"),
    ("train.epochs=2.5", "train.epochs=2.5 is not valid; expected an integer >= 1"),
    ("optim.lr=inf", "optim.lr=inf is not valid; expected a finite number > 0"),
    ("data.max_length=9000", "data.max_length=9000 is not valid; expected an integer in [8, 8192]"),
    ("optim.betas=[0.9,1.0]", "optim.betas=[0.9, 1.0] is not valid; expected a list of 2 finite numbers in [0, 1)"),
    ("optim.warmup_ratio=1", "optim.warmup_ratio=1 is not valid; expected a finite number in [0, 1)"),
    ("optim.eps=0", "optim.eps=0 is not valid; expected a finite number > 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 is not valid; expected a finite number >= 0"),
    ("train.grad_clip=0", "train.grad_clip=0 is not valid; expected null or a finite number > 0"),
    ("data.max_train_samples=0", "data.max_train_samples=0 is not valid; expected null or an integer >= 1"),
    ("data.train_subset_seed=-1", "data.train_subset_seed=-1 is not valid; expected null or an integer >= 0"),
    ("train.stop_after_epochs=0", "train.stop_after_epochs=0 is not valid; expected null or an integer >= 1"),
    ("train.claim_timeout_s=0", "train.claim_timeout_s=0 is not valid; expected a finite number > 0"),
    ("train.eval_batch_size=null", "train.eval_batch_size=null is not valid; expected an integer >= 1"),
    ("train.device=gpu", "train.device='gpu' is not valid; choose one of auto, cpu, cuda, cuda:N, mps"),
    ("train.select=worst", "train.select='worst' is not valid; choose one of best, last"),
    ("data.padding=left", "data.padding='left' is not valid; choose one of max_length, longest"),
    ("train.save_patch=1", "train.save_patch=1 is not valid; choose one of auto, true, false"),
    ("train.compile=fast", "train.compile='fast' is not valid; choose one of false, true, default, reduce-overhead, "
                           "max-autotune"),
    ("seeds=[]", "seeds=[] is not valid; expected a non-empty list of integers in [0, 4294967295]"),
    ("seeds=[0,-1]", "seeds=[0, -1] is not valid; expected a non-empty list of integers in [0, 4294967295]"),
    ("seeds=[3,0,3]", "seeds=[3, 0, 3] is not valid: seed 3 appears twice; seeds must be distinct"),
    ("lr_index=4", "lr_index=4 is not valid; expected 0 to 3 (an index into method.lr_grid, "
                   "[0.0001, 0.0004, 0.0007, 0.001])"),
    ("method.name=nope", "method.name='nope' is not valid; choose one of biases, bitfit, bm2, bm2_bq, bq, frozen, "
                         "full, rand_rowcol, rand_uniform"),
    ("+method.components=[q]", "method.components=['q'] is not valid: it is an option of method biases, not of "
                               "bitfit"),
    ("task.metric=f1", "task.metric='f1' is not valid; choose one of task.metrics: accuracy"),
    ("task.text_fields=[a,b,c]", "task.text_fields=['a', 'b', 'c'] is not valid; expected a list of 1 to 2 "
                                 "non-empty strings"),
    ("task.test_labels=raw", "task.test_labels='raw' is not valid; choose one of ids, names, float, score"),
    ("task.test_labels=score", "task.test_labels='score' is not valid for task.num_labels=2: use ids or names"),
])
def test_bad_value_is_one_line_and_exit_2(override, line, monkeypatch, capsys, tmp_path):
    if override.startswith("method.name="):
        from bitfit_exp.model.methods import METHODS

        line = line.replace("biases, bitfit, bm2, bm2_bq, bq, frozen, full, rand_rowcol, rand_uniform",
                            ", ".join(sorted(METHODS)))  # a method added elsewhere joins the list
    code, out, err = bitfit_run(monkeypatch, capsys, f"runs_dir={tmp_path}", override)
    assert (code, out, err) == (2, "", f"error: {line}\n")
    assert written(tmp_path) == []


def test_every_bad_value_of_a_command_line_is_a_line(monkeypatch, capsys, tmp_path):
    code, _, err = bitfit_run(monkeypatch, capsys, f"runs_dir={tmp_path}", "train.epochs=0", "seeds=[1,1]",
                              "data.padding=none")
    assert code == 2 and err.splitlines() == [
        "error: data.padding='none' is not valid; choose one of max_length, longest",
        "error: train.epochs=0 is not valid; expected an integer >= 1",
        "error: seeds=[1, 1] is not valid: seed 1 appears twice; seeds must be distinct",
    ]


def test_method_options_of_their_method_pass_and_are_checked():
    assert problems(compose("method=biases", "method.components=[v,m3]")) == []
    assert problems(compose("method=biases", "method.components=[v,m9]")) == [
        "method.components=['v', 'm9'] is not valid; expected a list of names among q, k, v, m1, ln1, m2, m3, ln2"]
    assert problems(compose("method=bm2", "method.pooler_bias=false")) == []
    assert problems(compose("method=bitfit", "+method.pooler_bias=false")) == [
        "method.pooler_bias=false is not valid: it is an option of method bq, bm2, bm2_bq, biases, not of bitfit"]
    assert problems(compose("method=rand_rowcol", "method.rows_with_replacement=maybe")) == [
        "method.rows_with_replacement='maybe' is not valid; expected true or false"]


def test_a_missing_key_and_a_value_that_cannot_resolve():
    cfg = compose()
    with open_dict(cfg.model):  # as a hand-written model YAML without a name would compose
        del cfg.model["name"]
    assert problems(cfg) == ["model.name is missing; expected a non-empty string"]
    table = compose("+experiment=table2_roberta", "method=bq")  # paper_lr has no lr for bq
    assert problems(table) == [
        "optim.lr='${paper_lr.${method.name}}' cannot be resolved: Interpolation key 'paper_lr.bq' not found"]


def shipped(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(conf_dir()) / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [f"{group}={name}" for group in ("model", "task", "method", "optim")
                                      for name in shipped(group)]
                         + [f"+experiment={name}" for name in shipped("experiment")])
def test_every_shipped_config_composes_and_validates(override):
    assert problems(compose(override)) == []


def test_every_job_of_the_smoke_sweep_validates_and_composes_as_hydra_does():
    jobs = config_compose.valid_jobs(["+experiment=smoke", "launcher=slurm", "hydra.launcher.partition=debug"])
    assert len(jobs) == 8
    for overrides, cfg in jobs:  # one composition per task x method, lr_index applied on top: the same config
        assert OmegaConf.to_container(cfg, resolve=True) == OmegaConf.to_container(compose(*overrides), resolve=True)


def test_a_sweep_with_one_bad_job_is_refused_before_any_job_runs(tmp_path):
    """Through the real entry point: the good job (max_length 64) does not run, and Hydra writes no sweep folder."""
    args = ["model=minilm", f"runs_dir={tmp_path}", f"data.dir={GLUE}", "seeds=[0]",
            "train.epochs=1", "data.max_train_samples=8", "data.max_eval_samples=8", "data.max_length=64,4",
            "--multirun"]
    out = subprocess.run([sys.executable, "-c", "from bitfit_exp.commands.run import run; run()", *args], capture_output=True,
                         text=True, env=ENV, timeout=300)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "error: data.max_length=4 is not valid; expected an integer in [8, 8192]\n"
    assert written(tmp_path) == []


def test_plan_refuses_a_bad_job_before_printing(capsys, tmp_path):
    assert plan_command.main(["+experiment=smoke", f"runs_dir={tmp_path}", "lr_index=0,7"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == "error: lr_index=7 is not valid; expected 0 to 3 (an index into method.lr_grid, " \
                      "[1e-05, 2e-05, 3e-05, 5e-05])\n" \
                      "error: lr_index=7 is not valid; expected 0 to 3 (an index into method.lr_grid, " \
                      "[0.0001, 0.0004, 0.0007, 0.001])\n"
    for unknown in ("+train.epoch=1", "train.epoch=1"):  # Hydra refuses the second itself, with other advice
        assert plan_command.main(["+experiment=smoke", f"runs_dir={tmp_path}", unknown]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: train.epoch=1 is not a config key; did you mean train.epochs?")
        assert err.count("\n") == 1


def test_plan_raises_config_error_with_every_line():
    with pytest.raises(ConfigError) as refused:
        plan.plan(["optim.eps=-1", "train.batch_size=0"])
    assert refused.value.lines == ["optim.eps=-1 is not valid; expected a finite number > 0",
                                   "train.batch_size=0 is not valid; expected an integer >= 1"]


def test_informational_flags_skip_the_check(monkeypatch, capsys):
    """--cfg job shows a config as it is, bad values included; --help lists the groups."""
    monkeypatch.setattr(sys, "argv", ["bitfit-run", "--cfg", "job", "train.epochs=0", "runs_dir=/nowhere"])
    run_command.run()
    shown = OmegaConf.create(capsys.readouterr().out)
    assert shown.train.epochs == 0 and shown.runs_dir == "/nowhere"
    assert config_compose.jobs_to_check(["--help"]) is None and config_compose.jobs_to_check(["--hydra-help"]) is None
    assert config_compose.jobs_to_check(["task=rte", "-m"]) == (["task=rte"], True)
