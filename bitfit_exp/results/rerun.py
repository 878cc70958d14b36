"""The `bitfit-run` command that trains a record's setting again: the record's model, task and method, every
result-relevant value that differs from what those three compose to by default (so an `+experiment=...` run, or one
with a changed batch size, gets its values spelled out), the checkpoint and data it read, and its seed. Composing the
command's overrides gives the record's setting hash (tests/test_model_card.py checks it).

>>> override("data.max_length", 64), override("optim.betas", [0.9, 0.999]), override("model.name_or_path", "pkg:m/x")
('data.max_length=64', 'optim.betas=[0.9,0.999]', "model.name_or_path='pkg:m/x'")
>>> override("task.metric", "true"), override("data.dir", None)
("task.metric='true'", 'data.dir=null')
"""

import re
import shlex

import yaml

from bitfit_exp.results.records import result_config
from bitfit_exp.results.selection import flat

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*|/[A-Za-z0-9_./-]*")  # strings Hydra reads unquoted as strings


def hydra_value(value) -> str:
    """`value` as Hydra's override grammar reads it back: lists and dicts inline, strings quoted unless plain."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    # a plain-looking string that YAML would read as another type ("true", "1e-3") is quoted, like any other string
    if _PLAIN.fullmatch(text) and isinstance(yaml.safe_load(text), str):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def override(key: str, value) -> str:
    return f"{key}={hydra_value(value)}"


def default_config(model: str, task: str, method: str) -> dict | str:
    """The resolved config `bitfit-run model=... task=... method=...` composes, or the one-line reason it cannot (a
    task or model of a user's --config-dir)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from bitfit_exp.core.config_dir import conf_dir  # also registers the `index` resolver of the default lr

    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            cfg = compose("config", overrides=[f"model={model}", f"task={task}", f"method={method}"])
            return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        return str(e).strip().splitlines()[0]


def rerun_overrides(record: dict) -> tuple[list[str], str | None]:
    """(the overrides of the command, a note when the defaults could not be composed: then the overrides name only
    the model, task, method, lr, checkpoint, data and seed, and the run's --config-dir must be added by hand)."""
    config = record["config"]
    model, task, method = config["model"]["name"], config["task"]["name"], config["method"]["name"]
    head = [override("model", model), override("task", task), override("method", method)]
    default = default_config(model, task, method)
    note = None
    if isinstance(default, str):
        note = (f"model={model} task={task} method={method} do not compose from bitfit-exp's own configs "
                f"({default}); add the run's --config-dir")
        ours, theirs = {"optim.lr": config["optim"]["lr"]}, {}
        default = {}
    else:
        ours, theirs = flat(result_config(config)), flat(result_config(default))
    changed = [override(k, v) if k in theirs else override(f"+{k}", v)
               for k, v in ours.items() if k not in theirs or theirs[k] != v]
    if "optim.lr" not in {o.split("=", 1)[0] for o in changed}:
        changed.append(override("optim.lr", config["optim"]["lr"]))  # always spelled out: the card's reader looks
    where = [override(f"{group}.{key}", config[group][key]) for group, key in (("model", "name_or_path"),
                                                                               ("data", "dir"))
             if config[group].get(key) is not None and config[group].get(key) != default.get(group, {}).get(key)]
    return [*head, *changed, *where, override("seeds", [int(record["seed"])])], note


def rerun_command(record: dict) -> tuple[str, str | None]:
    """(the shell command line, the note of rerun_overrides)."""
    overrides, note = rerun_overrides(record)
    return shlex.join(["bitfit-run", *overrides]), note
