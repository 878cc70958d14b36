"""The schema of `bitfit-run`'s configuration: every key's type, allowed values and range, one dataclass per config
group. `check` refuses a composed config with one line per bad value, before anything is loaded or written.

>>> from hydra import compose, initialize_config_dir
>>> from bitfit_exp.core.config_dir import conf_dir
>>> with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
...     cfg = compose("config", overrides=["seeds=[0,0]", "optim.lr=-1e-3", "+train.epoch=3"])
>>> for line in problems(cfg):  # doctest: +ELLIPSIS
...     print(line)
optim.lr=-0.001 is not valid; expected a finite number > 0
train.epoch=3 is not a config key; did you mean train.epochs? valid keys of train: epochs, batch_size, ...
seeds=[0, 0] is not valid: seed 0 appears twice; seeds must be distinct

Adding a key is one line in its group's dataclass: `name: type = key(...)` with the range or choices it allows.
Types: bool, int, float (ints accepted, finite), str (non-empty), `T | None` (null allowed), Literal[...] (choices),
list[T], tuple[T, T] (fixed length), dict[str, T] (free keys), or a group dataclass.

Why not OmegaConf's own structured-config merge: OmegaConf 2.3 has no unions (train.progress is auto|true|false)
and no ranges, it converts silently ('yes' -> True, '3' -> 3), stops at the first error, and would hand the run a
retyped config, while records hash the config exactly as composed.
"""

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf

from bitfit_exp.core.errors import UserError
from bitfit_exp.core.paths import PLAIN, name_problem


class ConfigError(UserError):
    """One or more bad config values; the message has one line per problem."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class Rule:
    """What a key allows beyond its type: bounds (for numbers, and for each number of a list), a regex with its
    spelling for messages, choices computed on use (registries), list length, whether the key may be absent, the
    method(s) a method option belongs to, and the keys of a mapping of numbers that hold integers (`normalize`)."""

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    pattern: str | None = None
    spelled: str | None = None
    choices: Callable[[], list[str]] | None = None
    min_items: int = 0
    max_items: int | None = None
    absent_ok: bool = False
    method: str | tuple[str, ...] | None = None
    # The value becomes a file or folder name (core.paths): True for the value itself (each string of a list, each
    # key and value of a mapping), "keys" for a mapping's keys only.
    path_name: bool | Literal["keys"] = False
    integers: tuple[str, ...] = ()


def key(**rule) -> Any:
    """A schema field: `epochs: int = key(at_least=1)`."""
    return field(metadata={"rule": Rule(**rule)})


def method_names() -> list[str]:
    from bitfit_exp.model.methods import METHODS

    return sorted(METHODS)


def optimizer_names() -> list[str]:
    from bitfit_exp.train.optim import OPTIMIZERS

    return list(OPTIMIZERS)


def metric_names() -> list[str]:
    """Every task kind's metrics (which ones a task may use depends on its kind: `_task_kind`)."""
    from bitfit_exp.kinds import KINDS, metrics_of

    return list(dict.fromkeys(m for kind in KINDS for m in metrics_of(kind)))


def kind_names() -> list[str]:
    from bitfit_exp.kinds import KINDS

    return list(KINDS)


def tracker_names() -> list[str]:
    from bitfit_exp.train.tracking import tracker_names

    return tracker_names()


def bias_components() -> list[str]:
    from bitfit_exp.model.methods import BIAS_COMPONENTS

    return list(BIAS_COMPONENTS)


@dataclass
class Model:
    name: str = key(path_name=True)  # <runs_dir>/<model>/<task>/<method>/...
    name_or_path: str = key()  # hub id, local folder, or pkg:<module>/<folder>


@dataclass
class Task:
    name: str = key(path_name=True)
    kind: str = key(choices=kind_names, absent_ok=True)  # bitfit_exp/kinds: sequence (absent), span, token
    glue_name: str = key(absent_ok=True)
    text_fields: list[str] = key(min_items=1, max_items=2, absent_ok=True)  # sequence: a sentence or a pair
    num_labels: int = key(at_least=1)  # 1 = regression
    label_names: list[str] = key(absent_ok=True)  # sequence, token (the fixed tag list)
    metric: str = key(choices=metric_names)
    metrics: list[str] = key(choices=metric_names, min_items=1)
    # dev split -> table column; the first selects the epoch. Split names are file names (<split>.parquet).
    eval_splits: dict[str, str] = key(min_items=1, path_name="keys")
    test_splits: dict[str, str] = key(path_name=True)  # test split -> prediction file (GLUE server, SQuAD JSON, ...)
    test_labels: Literal["ids", "names", "float", "score"] = key(absent_ok=True)  # sequence
    epochs: int = key(at_least=1)
    train_size: int = key(at_least=1)
    # Where the data is (bitfit_exp/kinds/splits.py): the folder under data.dir, and a task's own hub dataset.
    local_name: str = key(absent_ok=True, path_name=True)  # default: the task name
    hub_name: str = key(absent_ok=True)  # default: data.hub_name with the task name as config
    hub_config: str | None = key(absent_ok=True)
    hub_data_dir: str | None = key(absent_ok=True)
    hub_revision: str | None = key(absent_ok=True)
    title_split: dict[str, float] | None = key(at_least=0, absent_ok=True, integers=("seed",))  # {dev_fraction, seed}
    # A task's own data (docs/custom-tasks.md): split -> CSV/TSV/JSONL/Parquet file or folder (relative: under
    # data.dir, else the current directory), and the label column (sequence; default `label`).
    files: dict[str, str] = key(min_items=1, absent_ok=True)
    label_field: str = key(absent_ok=True)
    max_length: int = key(at_least=8, at_most=8192, absent_ok=True)  # data.max_length's default
    # span (extractive QA)
    doc_stride: int = key(at_least=0, absent_ok=True)  # overlap of windows, < data.max_length
    max_answer_length: int = key(at_least=1, absent_ok=True)
    n_best: int = key(at_least=1, absent_ok=True)
    # token (tagging): the dataset's columns
    words_field: str = key(absent_ok=True)
    tags_field: str = key(absent_ok=True)
    id_field: str = key(absent_ok=True)


@dataclass
class Method:
    name: str = key(choices=method_names, path_name=True)
    default_lr: float = key(above=0)
    lr_grid: list[float] = key(above=0, min_items=1)
    # Options of one method each (absent for the others).
    components: list[str] = key(choices=bias_components, absent_ok=True, method="biases")
    pooler_bias: bool = key(absent_ok=True, method=("bq", "bm2", "bm2_bq", "biases"))  # the authors' code trains it
    rows_with_replacement: bool = key(absent_ok=True, method="rand_rowcol")  # the authors' draw (False: distinct)
    # peft-backed methods (model/peft_methods.py): their other keys are checked against their peft config class.
    peft_type: str = key(absent_ok=True, method="peft")


@dataclass
class Optim:
    name: str = key(choices=optimizer_names)
    lr: float = key(above=0)
    eps: float = key(above=0)
    betas: tuple[float, float] = key(at_least=0, below=1)
    weight_decay: float = key(at_least=0)
    warmup_ratio: float = key(at_least=0, below=1)


@dataclass
class Data:
    dir: str | None = key()
    hub_name: str = key()
    # [CLS] a [SEP] b [SEP]: three special tokens plus a few of each sentence; below 8 a pair is all truncation.
    max_length: int = key(at_least=8, at_most=8192)
    padding: Literal["max_length", "longest"] = key()
    pad_multiple: int | None = key(at_least=1)
    max_train_samples: int | None = key(at_least=1)
    train_subset_seed: int | None = key(at_least=0)
    max_eval_samples: int | None = key(at_least=1)
    train_eval_samples: int | None = key(at_least=1)
    dev_fraction: float | None = key(above=0, below=1)  # carve the missing dev split from train (data.carve_dev)
    dev_seed: int = key(at_least=0)  # the seed of that draw


@dataclass
class Train:
    epochs: int = key(at_least=1)
    batch_size: int = key(at_least=1)
    eval_batch_size: int = key(at_least=1)
    grad_clip: float | None = key(above=0)
    select: Literal["best", "last"] = key()
    device: str = key(pattern=r"auto|cpu|cuda|cuda:\d+|mps", spelled="auto, cpu, cuda, cuda:N, mps")
    bf16: bool = key()
    save_patch: Literal["auto", True, False] = key()
    predict_test: bool = key()
    progress: Literal["auto", True, False, "lines"] = key()
    log_every: int | None = key(at_least=1)  # piped progress: a line every N steps (and batches); null = off
    log_every_s: float | None = key(at_least=0)  # ... and every N seconds; null = off
    deterministic: bool = key()
    compile: Literal[False, True, "default", "reduce-overhead", "max-autotune"] = key()
    packed: bool = key()
    packed_dropout: Literal["per_setting", "shared"] = key()
    pack_lrs: bool = key()
    checkpoint: bool = key()
    stop_after_epochs: int | None = key(at_least=1)
    claim_timeout_s: float = key(above=0)
    threads: int | None = key(at_least=1)  # null = sized to the job's CPUs (core.threads)
    report_to: list[str] = key(choices=tracker_names, absent_ok=True)  # live trackers (train.tracking)


@dataclass
class Run:
    """The top level of conf/config.yaml (the `hydra` node is Hydra's and not checked here)."""

    model: Model = key()
    task: Task = key()
    method: Method = key()
    optim: Optim = key()
    data: Data = key()
    train: Train = key()
    # The trainer seeds numpy's global generator with each seed, which takes 0..2**32-1 only.
    seeds: list[int] = key(at_least=0, at_most=2**32 - 1, min_items=1)
    lr_index: int = key(at_least=0)  # and below len(method.lr_grid): checked with the method
    overwrite: bool = key()
    runs_dir: str = key()
    # Set by conf/experiment/*.yaml.
    fixed_lr: bool = key(absent_ok=True)  # the sweep fixes the learning rate: train.pack_lrs is refused
    paper_lr: dict[str, float] = key(above=0, absent_ok=True)  # method name -> lr, read by optim.lr


def shown(value) -> str:
    """A value as the command line writes it: null, true, 'text', [1, 2]."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, list | tuple):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _bounds(rule: Rule) -> str:
    """` >= 1`, ` > 0`, ` in [0, 1)`, or nothing."""
    low = next(((sign, x) for sign, x in ((">=", rule.at_least), (">", rule.above)) if x is not None), None)
    high = next(((sign, x) for sign, x in (("<=", rule.at_most), ("<", rule.below)) if x is not None), None)
    if low and high:
        left, right = "[" if low[0] == ">=" else "(", "]" if high[0] == "<=" else ")"
        return f" in {left}{_number(low[1])}, {_number(high[1])}{right}"
    bound = low or high
    return f" {bound[0]} {_number(bound[1])}" if bound else ""


def _number(x: float) -> str:
    """A bound as written: an int in full (4294967295, not 4.29497e+09), a float in short (1e-08)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _optional(tp) -> tuple[Any, bool]:
    """(T, True) for `T | None`, else (tp, False)."""
    if get_origin(tp) in (Union, UnionType) and NoneType in get_args(tp):
        (inner,) = [a for a in get_args(tp) if a is not NoneType]
        return inner, True
    return tp, False


def _choices(tp, rule: Rule) -> list | None:
    """The allowed values of a scalar key: a Literal's, or a registry's (rule.choices); None: any of its type."""
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    return rule.choices() if rule.choices else None


def _collection(tp) -> bool:
    return get_origin(tp) in (list, tuple, dict)


def describe(tp, rule: Rule, plural: bool = False) -> str:
    """What a key allows, in words: `an integer >= 1`, `null or a finite number > 0`, `one of best, last`."""
    tp, nullable = _optional(tp)
    words = _describe_collection(tp, rule) if _collection(tp) else _describe_scalar(tp, rule, plural)
    return f"null or {words}" if nullable else words


def _describe_scalar(tp, rule: Rule, plural: bool) -> str:
    choices = _choices(tp, rule)
    if choices is not None or rule.pattern:
        spelled = rule.spelled or ", ".join(c if isinstance(c, str) else shown(c) for c in choices)
        return f"names among {spelled}" if plural else f"one of {spelled}"
    noun = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
            float: ("a finite number", "finite numbers"), str: ("a non-empty string", "non-empty strings")}[tp]
    return noun[plural] + _bounds(rule)


def _describe_collection(tp, rule: Rule) -> str:
    """`a list of 2 finite numbers in [0, 1)`, `a non-empty list of integers in [0, 4294967295]`, `a mapping of names to ...`."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is tuple:
        return f"a list of {len(args)} {describe(args[0], rule, plural=True)}"
    article = "a non-empty" if rule.min_items and rule.max_items is None else "a"
    if origin is dict:
        return f"{article} mapping of names to {describe(args[1], rule, plural=True)}"
    count = f"{rule.min_items} to {rule.max_items} " if rule.max_items is not None else ""
    return f"{article} list of {count}{describe(args[0], rule, plural=True)}"


def _fits(value, tp, rule: Rule) -> bool:
    tp, nullable = _optional(tp)
    if value is None:
        return nullable
    if get_origin(tp) in (list, tuple):
        return _fits_list(value, tp, rule)
    if get_origin(tp) is dict:
        return (isinstance(value, dict) and len(value) >= rule.min_items
                and all(isinstance(k, str) and _fits(v, get_args(tp)[1], rule) for k, v in value.items()))
    choices = _choices(tp, rule)
    if choices is not None:  # True == 1, so the types must match too
        return any(value == c and type(value) is type(c) for c in choices)
    return _fits_scalar(value, tp, rule)


def _fits_list(value, tp, rule: Rule) -> bool:
    args = get_args(tp)
    if not isinstance(value, list):
        return False
    if get_origin(tp) is tuple:
        return len(value) == len(args) and all(_fits(v, a, rule) for v, a in zip(value, args, strict=True))
    if len(value) < rule.min_items or (rule.max_items is not None and len(value) > rule.max_items):
        return False
    return all(_fits(v, args[0], rule) for v in value)


def _fits_scalar(value, tp, rule: Rule) -> bool:
    if tp is bool or isinstance(value, bool):
        return tp is bool and isinstance(value, bool)
    if tp is str:
        return isinstance(value, str) and value != "" and (not rule.pattern or bool(re.fullmatch(rule.pattern, value)))
    if not isinstance(value, int | float) or (tp is int and not isinstance(value, int)) or not _finite(value, tp):
        return False
    return ((rule.at_least is None or value >= rule.at_least) and (rule.above is None or value > rule.above)
            and (rule.at_most is None or value <= rule.at_most) and (rule.below is None or value < rule.below))


def _finite(value, tp) -> bool:
    """Whether a number is finite as its key holds it: an int key holds any int; a float key holds an int as a float,
    which an int past 1.8e308 cannot be (`train.grad_clip=1000...0`: not valid rather than OverflowError)."""
    if tp is int:
        return True
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def bad_value(path: str, value, tp, rule: Rule) -> str:
    """`train.select='worst' is not valid; choose one of best, last`."""
    allowed = describe(tp, rule)
    return f"{path}={shown(value)} is not valid; {'choose' if allowed.startswith('one of') else 'expected'} {allowed}"


def path_names(value, rule: Rule) -> list:
    """The strings of a valid `value` that become file or folder names (`rule.path_name`)."""
    if not rule.path_name or value is None:
        return []
    if isinstance(value, dict):
        return [*value, *(value.values() if rule.path_name is True else ())]
    return list(value) if isinstance(value, list) else [value]


def not_a_path_name(path: str, value, rule: Rule) -> str | None:
    """`task.test_splits={test: '../x.tsv'} is not valid: '../x.tsv' contains '/'; expected a plain file or folder
    name: ...`, or None when every name of `value` stays in its folder (core.paths)."""
    for name in path_names(value, rule):
        if problem := name_problem(name):
            which = "it" if name is value else shown(name)
            return f"{path}={shown(value)} is not valid: {which} {problem}; expected {PLAIN} (it becomes part of a path)"
    return None


def unknown_key(path: str, value, parent: str, name: str, valid: list[str]) -> str:
    """`train.epoch=3 is not a config key; did you mean train.epochs? valid keys of train: ...`: `name` is the part
    of `path` that its `parent` group lacks."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ";"
    where = f"valid keys of {parent}" if parent else "valid top-level keys"
    return f"{path}={shown(value)} is not a config key{hint} {where}: {', '.join(valid)}"


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


class _Walk:
    """Checks a DictConfig against a schema dataclass: collects problems, and the values that passed (for the checks
    across keys). Values that fail to resolve are kept apart: they usually follow from another bad value (an
    lr_index outside the grid breaks optim.lr=${index:...})."""

    def __init__(self):
        self.problems: list[str] = []
        self.unresolved: list[str] = []

    def group(self, node: DictConfig | dict, schema, parent: str = "") -> dict:
        """The valid values of `node` (a DictConfig, or a config's `_resolved` values) under `schema`."""
        hints, names = _hints(schema), [f.name for f in fields(schema)]
        prefix = parent + "." if parent else ""
        peft_options = schema is Method and is_peft_method(node.get("name"))  # checked by _peft_options
        for name in node:
            if name not in names and not (parent == "" and name == "hydra") and not peft_options:
                self.problems.append(unknown_key(prefix + name, _raw(node, name), parent, name, names))
        valid = {}
        for f in fields(schema):
            path, rule, tp = prefix + f.name, f.metadata["rule"], hints[f.name]
            if _absent(node, f.name):
                if not rule.absent_ok:
                    self.problems.append(f"{path} is missing; expected {describe(tp, rule)}")
                continue
            try:
                value = node[f.name] if is_dataclass(tp) else _plain(node[f.name])
            except Exception as e:  # noqa: BLE001 - whatever a resolver raised: one line
                self.unresolved.append(f"{path}={shown(_raw(node, f.name))} cannot be resolved: "
                                       f"{str(e).strip().splitlines()[0]}")
                continue
            if is_dataclass(tp) and isinstance(value, DictConfig | dict):
                valid[f.name] = self.group(value, tp, path)
            elif is_dataclass(tp):
                self.problems.append(f"{path}={shown(_plain(value))} is not valid; expected a config group")
            elif not _fits(value, tp, rule):
                self.problems.append(bad_value(path, value, tp, rule))
            elif problem := not_a_path_name(path, value, rule):
                self.problems.append(problem)
            else:
                valid[f.name] = value
        if peft_options:
            valid.update({name: _plain(node[name]) for name in node if name not in names})
        return valid


def _raw(node: DictConfig | dict, name: str):
    """The value as written, interpolations unresolved (a `_resolved` value as it is)."""
    return OmegaConf.to_container(node, resolve=False)[name] if isinstance(node, DictConfig) else node[name]


def _absent(node: DictConfig | dict, name: str) -> bool:
    """Whether key `name` is absent from `node` or missing (???)."""
    return name not in node or (isinstance(node, DictConfig) and OmegaConf.is_missing(node, name))


@cache
def _hints(schema) -> dict:
    """The type of each key of a schema dataclass."""
    return get_type_hints(schema)


def _resolved(cfg: DictConfig) -> dict | None:
    """The values of `cfg` (Hydra's own node left out) as plain containers with every interpolation resolved, in
    one pass; None when a value is missing (???) or fails to resolve. Reading a DictConfig key by key resolves each
    interpolation anew at every access (an `in`, a get), which made checking a sweep's configs most of its time."""
    values = {}
    try:
        for name in cfg:
            if name != "hydra":
                value = cfg[name]
                values[name] = OmegaConf.to_container(value, resolve=True, throw_on_missing=True) \
                    if isinstance(value, DictConfig | ListConfig) else value
    except Exception:  # noqa: BLE001 - whatever a resolver raised: the walk key by key says which value
        return None
    return values


def _seeds_distinct(cfg: dict) -> list[str]:
    seeds = cfg.get("seeds", [])
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    return [f"seeds={shown(seeds)} is not valid: seed {twice[0]} appears twice; seeds must be distinct"] if twice \
        else []


def _lr_index_in_grid(cfg: dict) -> list[str]:
    grid, index = cfg.get("method", {}).get("lr_grid"), cfg.get("lr_index")
    if index is None or grid is None or index < len(grid):
        return []
    return [f"lr_index={index} is not valid; expected 0 to {len(grid) - 1} (an index into method.lr_grid, "
            f"{shown(grid)})"]


def is_peft_method(name) -> bool:
    from bitfit_exp.model.peft_methods import is_peft_method

    return isinstance(name, str) and is_peft_method(name)


def _peft_options(cfg: dict) -> list[str]:
    """A peft-backed method's keys are the keyword arguments of its peft config class: each must be one of its
    fields, of the field's type, and accepted by the class."""
    from bitfit_exp.model.peft_methods import option_problems

    method = cfg.get("method", {})
    if not is_peft_method(method.get("name")):
        return []
    meta = {f.name for f in fields(Method) if not f.metadata["rule"].method}
    return option_problems(method["name"], {k: v for k, v in method.items() if k not in meta})


def _method_options(cfg: dict) -> list[str]:
    method = cfg.get("method", {})
    name = method.get("name")
    owners = {f.name: f.metadata["rule"].method for f in fields(Method) if f.metadata["rule"].method}
    owners = {option: (owner,) if isinstance(owner, str) else owner for option, owner in owners.items()}
    return [f"method.{option}={shown(method[option])} is not valid: it is an option of method "
            f"{', '.join(owner)}, not of {name}" for option, owner in owners.items()
            if option in method and name and name not in owner]


def _task_labels(cfg: dict) -> list[str]:
    task = cfg.get("task", {})
    problems = []
    if "metric" in task and "metrics" in task and task["metric"] not in task["metrics"]:
        problems.append(f"task.metric={shown(task['metric'])} is not valid; choose one of task.metrics: "
                        f"{', '.join(task['metrics'])}")
    names, n = task.get("label_names"), task.get("num_labels")
    if task.get("test_labels") == "names" and names is not None and n is not None and len(names) != n:
        problems.append(f"task.label_names={shown(names)} is not valid: test_labels=names needs one name per "
                        f"label, task.num_labels={n}")
    written = task.get("test_labels")
    if n is not None and written is not None and (n == 1) != (written in ("float", "score")):
        fits = "score (raw) or float (GLUE STS-B: clipped to 0-5)" if n == 1 else "ids or names"
        problems.append(f"task.test_labels={shown(written)} is not valid for task.num_labels={n}: use {fits}")
    return problems


KIND_NEEDS = {"sequence": ("text_fields", "label_names", "test_labels"), "token": ("label_names",)}


def _needs(kind: str, task) -> tuple[str, ...]:
    """The task keys `kind` needs: a sequence task needs label_names only to classify (num_labels > 1) and
    test_labels only with test splits."""
    needed = KIND_NEEDS.get(kind, ())
    if kind == "sequence" and task.get("num_labels") == 1:
        needed = tuple(k for k in needed if k != "label_names")
    if kind == "sequence" and task.get("test_splits") is not None and not task.get("test_splits"):
        needed = tuple(k for k in needed if k != "test_labels")
    return needed


def _label_count(task: dict, kind: str) -> list[str]:
    """A sequence classifier's label_names, where given, name each of its num_labels classes."""
    names, n = task.get("label_names"), task.get("num_labels")
    if kind != "sequence" or not names or n is None or n == 1 or len(names) == n or task.get("test_labels") == "names":
        return []
    return [f"task.label_names={shown(names)} is not valid: {len(names)} names for task.num_labels={n}"]


def _task_kind(cfg: dict) -> list[str]:
    """The task's metrics are its kind's, the keys its kind needs are there, title_split is {dev_fraction, seed}."""
    from bitfit_exp.kinds import DEFAULT, metrics_of

    task = cfg.get("task", {})
    kind = task.get("kind") or DEFAULT
    if "name" not in task or kind not in kind_names():
        return []
    allowed = metrics_of(kind)
    problems = [f"task.metrics={shown(task['metrics'])} is not valid: {m} is not a metric of {kind} tasks; "
                 f"choose among {', '.join(allowed)}" for m in task.get("metrics", []) if m not in allowed][:1]
    split = task.get("title_split")
    if split is not None and (set(split) != {"dev_fraction", "seed"} or not 0 < split["dev_fraction"] < 1
                              or split["seed"] != int(split["seed"])):
        problems.append(f"task.title_split={shown(split)} is not valid; expected null or {{dev_fraction: a number "
                        f"in (0, 1), seed: an integer >= 0}}")
    return problems + _label_count(task, kind)


def _kind_keys(cfg: DictConfig | dict) -> list[str]:
    """The task keys its kind needs that are absent (present but bad ones are reported by the walk)."""
    from bitfit_exp.kinds import DEFAULT

    task = cfg.get("task")
    if not isinstance(task, DictConfig | dict):
        return []
    kind = task.get("kind") or DEFAULT
    return [f"task.{name} is missing; a {kind} task needs it" for name in _needs(kind, task) if name not in task]


def _trackers_installed(cfg: dict) -> list[str]:
    """A tracker asked for is installed: one line naming the extra, before anything trains."""
    from bitfit_exp.train.tracking import not_installed

    wanted = cfg.get("train", {}).get("report_to") or []
    return [f"train.report_to: {line}" for line in not_installed(wanted)]


CROSS_CHECKS = (_seeds_distinct, _lr_index_in_grid, _method_options, _peft_options, _task_labels, _task_kind,
                _trackers_installed)


def problems(cfg: DictConfig) -> list[str]:
    """One line per bad value of a composed config, in schema order; empty when it is valid. A config is walked
    over its values resolved at once (`_resolved`); one with a problem again key by key, so that each line names the
    value as written and which value fails to resolve."""
    resolved = _resolved(cfg)
    if resolved is not None and not _problems(resolved):
        return []
    return _problems(cfg)


def _problems(node: DictConfig | dict) -> list[str]:
    """`problems` of a config, or of its `_resolved` values."""
    walk = _Walk()
    valid = walk.group(node, Run)
    found = walk.problems + _kind_keys(node) + [line for check in CROSS_CHECKS for line in check(valid)]
    return found or walk.unresolved


def check(configs) -> None:
    """Raise ConfigError naming every bad value of a config, or of every job of a sweep (each line once)."""
    configs = [configs] if isinstance(configs, DictConfig) else configs
    found = [line for cfg in configs for line in problems(cfg)]
    if found:
        raise ConfigError(list(dict.fromkeys(found)))


def normalize(cfg: DictConfig) -> DictConfig:
    """Respell, in place, every number of a checked config as its key's type declares it, so that one setting has
    one hash however it was written: an int given for a float key becomes a float (in lists and mappings too),
    -0.0 becomes 0.0, and an integral float under a mapping's integer key (`task.title_split.seed`) an int. Values
    already so spelled are left as written, interpolations included. Returns cfg. Records keep the config as run:
    a reader hashes it as stored, so records written before stay valid.

    >>> cfg = OmegaConf.create({"train": {"grad_clip": 1, "epochs": 3}, "optim": {"weight_decay": -0.0,
    ...                         "betas": [0, 0.999], "lr": "${paper_lr.full}"}, "paper_lr": {"full": 1}})
    >>> OmegaConf.to_container(normalize(cfg))
    {'train': {'grad_clip': 1.0, 'epochs': 3}, 'optim': {'weight_decay': 0.0, 'betas': [0.0, 0.999], 'lr': '${paper_lr.full}'}, 'paper_lr': {'full': 1.0}}
    """
    written = OmegaConf.to_container(cfg, resolve=False)
    for interpolations in (False, True):  # an interpolation resolves to its target's new spelling, if it has one
        _respell(cfg, Run, interpolations, written)
    return cfg


def _respell(node: DictConfig, schema, interpolations: bool, written: dict) -> None:
    """`normalize` for one group: its values that are interpolations, or those that are not. `written` is the group
    as written (not resolved), read instead of the DictConfig where it holds the same: which keys are there, missing
    or interpolations, and the values that are none (reading a DictConfig resolves, parsing anew, an interpolation
    at each access: most of the time of normalizing a sweep's configs)."""
    hints = _hints(schema)
    for f in fields(schema):
        tp, value = hints[f.name], written.get(f.name, "???")
        if isinstance(value, str) and value == "???":  # absent, or missing
            continue
        if is_dataclass(tp):
            group = node[f.name]
            if isinstance(group, DictConfig):  # as written, or an interpolation to a group
                inner = value if isinstance(value, dict) else OmegaConf.to_container(group, resolve=False)
                _respell(group, tp, interpolations, inner)
        elif _interpolation(value) == interpolations:
            if interpolations or _holds_interpolation(value):
                value = _plain(node[f.name])
            declared = as_declared(value, tp, f.metadata["rule"])
            if shown(declared) != shown(value):  # repr: 1 and 1.0, -0.0 and 0.0 differ
                node[f.name] = declared


def _interpolation(written) -> bool:
    """Whether a value as written is an interpolation (OmegaConf's test: a string with `${`)."""
    return isinstance(written, str) and "${" in written


def _holds_interpolation(written) -> bool:
    """Whether a value as written is or holds an interpolation (in a list or mapping)."""
    if isinstance(written, dict):
        return any(_holds_interpolation(v) for v in written.values())
    if isinstance(written, list):
        return any(_holds_interpolation(v) for v in written)
    return _interpolation(written)


def as_declared(value, tp, rule: Rule):
    """A valid `value` of type `tp` with its numbers in the declared type: 1 -> 1.0 for a float, -0.0 -> 0.0, 3.0 ->
    3 under a mapping's `rule.integers` keys; anything else as it is.

    >>> as_declared({"dev_fraction": 0.5, "seed": 3.0}, dict[str, float] | None, Rule(integers=("seed",)))
    {'dev_fraction': 0.5, 'seed': 3}
    """
    tp, _ = _optional(tp)
    origin, args = get_origin(tp), get_args(tp)
    if value is None:
        return None
    if origin is list:
        return [as_declared(v, args[0], rule) for v in value]
    if origin is tuple:
        return [as_declared(v, a, rule) for v, a in zip(value, args, strict=True)]
    if origin is dict:
        return {k: (int(v) if isinstance(v, float) and v.is_integer() else v) if k in rule.integers
                else as_declared(v, args[1], rule) for k, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) + 0.0  # + 0.0: -0.0 becomes 0.0
    return value


def unknown_override_keys(overrides: list[tuple[str, Any]]) -> list[str]:
    """Problems for (dotted key, value) command-line overrides that name no key of the schema, e.g.
    ("train.epoch", 3), which Hydra refuses with its advice to add the key; keys under a free mapping (paper_lr.full)
    and Hydra's own (hydra.*) are not judged.

    >>> unknown_override_keys([("train.epoch", 3), ("paper_lr.full", 1e-5), ("hydra.launcher.n_jobs", 2)])[0][:70]
    'train.epoch=3 is not a config key; did you mean train.epochs? valid ke'
    """
    found = []
    for path, value in overrides:
        schema, parts = Run, path.split(".")
        for depth, part in enumerate(parts):
            names = [f.name for f in fields(schema)]
            if depth == 0 and part == "hydra":
                break
            if part not in names:
                line = unknown_key(path, value, ".".join(parts[:depth]), part, names)
                if schema is Method:  # not in the method's YAML: a peft method's option is added with +
                    line += f" (an option of a peft config class for method=peft, lora, ia3, beft: +{path}=...)"
                found.append(line)
                break
            schema = get_type_hints(schema)[part]
            if not is_dataclass(schema):
                break
    return found
