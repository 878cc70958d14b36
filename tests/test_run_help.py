"""`bitfit-run --help`: what the command does, three example commands that are valid as printed, and the keys a user
sets (not only Hydra's dump); Hydra flags that cannot go together are one line."""

import re
import shlex
import subprocess

from conftest import compose
from omegaconf import OmegaConf
from test_cli import RUN

from bitfit_exp.config.compose import check_command_line


def help_text() -> str:
    out = subprocess.run([*RUN, "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return out.stdout


def test_help_starts_with_what_it_does_and_examples(tmp_path, monkeypatch):
    text = help_text()
    assert text.startswith("bitfit-run: fine-tune one setting")
    assert "powered by Hydra" not in text and "== Config ==" not in text  # not the 150-line dump
    examples = [line.strip() for line in text.split("Examples:")[1].split("\n\n")[0].splitlines() if line.strip()]
    assert len(examples) == 3 and all(e.startswith("bitfit-run ") for e in examples)
    monkeypatch.setenv("BITFIT_RUNS_DIR", str(tmp_path))
    for example in examples:  # each composes and passes the schema, as bitfit-run checks it before running
        check_command_line(shlex.split(example)[1:])


def test_help_explains_the_keys_users_set_and_lists_the_groups():
    text = help_text()
    for key in ("train.select", "data.padding", "train.progress", "train.packed", "train.log_every_s", "data.dir",
                "optim.lr", "seeds", "runs_dir", "launcher"):
        assert f"\n  {key}=" in text, key
    keys = text.split("Keys you set")[1].split("== Groups")[0]
    named = set(re.findall(r"\b([a-z_]+\.[a-z_.]+)=", keys))
    assert len(named) > 12
    cfg, missing = compose(), object()
    for key in named - {"hydra.launcher.partition"}:  # every key the help names exists: no stale name
        assert OmegaConf.select(cfg, key, default=missing) is not missing, key
    assert "task: cola, mnli, mrpc" in text and "method: beft, biases, bitfit" in text  # Hydra's groups, filled in


def test_hydra_modes_that_cannot_be_combined_are_one_line():
    # `bitfit-run -m ... --cfg job` (to look at a sweep's config) was Hydra's ValueError with a traceback
    out = subprocess.run([*RUN, "-m", "task=rte,mrpc", "--cfg", "job"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: --multirun and --cfg cannot be combined") and "bitfit-plan" in out.stderr
