"""Methods backed by peft (LoRA, IA3, BEFT, and any peft config class): registry entries like ours, that wrap the
model with `peft.get_peft_model` and then select what peft made trainable.

The method's YAML keys (all but name, default_lr, lr_grid, and `peft_type` for the generic `peft` method) are the
keyword arguments of the peft config class; `modules_to_save` defaults to the task head of the model (BERT's and
RoBERTa's `classifier`, a QA model's `qa_outputs`), trained in full as our methods train it. The run's result is a
peft adapter folder (`save_pretrained`), its safetensors file stamped with the run's identity like our patches.

>>> from transformers import BertConfig, BertForSequenceClassification
>>> from bitfit_exp.model.methods import select
>>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
...     num_attention_heads=2, intermediate_size=16, max_position_embeddings=16))
>>> selection = select("lora", model, r=2, lora_alpha=2, lora_dropout=0.0, target_modules=["query", "value"])
>>> sorted(n.split("bert.encoder.layer.0.attention.self.")[-1] for n in selection.params)  # doctest: +NORMALIZE_WHITESPACE
['base_model.model.classifier.modules_to_save.default.bias', 'base_model.model.classifier.modules_to_save.default.weight',
 'query.lora_A.default.weight', 'query.lora_B.default.weight', 'value.lora_A.default.weight',
 'value.lora_B.default.weight']
>>> selection.count(selection.wrapped, include_head=False)  # 2 x (2 x 8 + 8 x 2)
64
"""

import hashlib
import os
import shutil
import warnings
from dataclasses import fields
from functools import cache
from pathlib import Path
from types import NoneType, UnionType
from typing import Union, get_args, get_origin, get_type_hints

from torch import nn

from bitfit_exp.core.atomic import write_atomic
from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.core.paths import inside
from bitfit_exp.model.loading import no_progress_bars
from bitfit_exp.model.methods import Selection, encoder_parameters, head_parameter_names, register

# method -> its peft type; `peft`: the type is the method's `peft_type` key (any peft config class).
PEFT_TYPES = {"lora": "LORA", "ia3": "IA3", "beft": "BEFT", "peft": None}
ADAPTER = "adapter"  # seed<k>/adapter/: the run's peft adapter folder
ADAPTER_FILE = "adapter_model.safetensors"
# Keys of a peft config that the run sets (or peft itself), never the method's YAML.
RESERVED = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
            "inference_mode"}
# The Auto class's task (kinds: AUTO_CLASS) -> peft's task type, which decides the PeftModel subclass.
TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForTokenClassification": "TOKEN_CLS",
              "ForQuestionAnswering": "QUESTION_ANS"}


def is_peft_method(name: str) -> bool:
    return name in PEFT_TYPES


def peft_type_names() -> list[str]:
    from peft import PeftType

    return [t.value for t in PeftType]


def config_class(peft_type: str):
    """peft's config class of `peft_type` (LORA, IA3, BEFT, LOHA, ...); UserError naming the valid types."""
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    try:
        return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(peft_type)]
    except (ValueError, KeyError):
        raise UserError(f"method.peft_type={peft_type!r} is not a peft type; choose one of "
                        f"{', '.join(peft_type_names())}") from None


def split_options(method: str, options: dict) -> tuple[str, dict]:
    """(peft type, the config class's keyword arguments) of a method's YAML options."""
    options = dict(options)
    peft_type = options.pop("peft_type", None) if method == "peft" else PEFT_TYPES[method]
    if peft_type is None:
        raise UserError("method=peft needs method.peft_type (e.g. LORA, LOHA, IA3, BEFT)")
    return peft_type, options


def option_problems(method: str, options: dict) -> list[str]:
    """One line per option of a peft-backed method that its peft config class does not take or refuses: what the
    schema reports for `method.*` keys of these methods (config.schema)."""
    try:
        peft_type, kwargs = split_options(method, options)
        cls = config_class(peft_type)
    except UserError as e:
        return [str(e)]
    valid = [f.name for f in fields(cls) if f.init and f.name not in RESERVED]
    bad = [k for k in kwargs if k not in valid]
    if bad:
        return [f"method.{k}={kwargs[k]!r} is not an option of peft's {cls.__name__} (method={method}); valid keys: "
                f"{', '.join(valid)}" for k in bad]
    if wrong := [line for k, v in kwargs.items() if (line := _type_problem(cls, k, v, method))]:
        return wrong
    try:
        cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - whatever peft's __post_init__ raises about a value: one line
        return [f"method={method}: peft's {cls.__name__} refuses {kwargs}: {first_line(e)}"]
    return []


SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _type_problem(cls, key: str, value, method: str) -> str | None:
    """A scalar field (int, float, bool, str, or one of them or null) given a value of another type; peft itself
    does not check (r='8' would fail deep inside training)."""
    tp = _field_types(cls).get(key)
    args = set(get_args(tp)) if get_origin(tp) in (Union, UnionType) else {tp}
    nullable = NoneType in args
    args.discard(NoneType)
    if len(args) != 1 or (scalar := args.pop()) not in SCALARS or (value is None and nullable):
        return None
    fits = isinstance(value, scalar) and not (isinstance(value, bool) and scalar is not bool)
    if scalar is float:
        fits = isinstance(value, int | float) and not isinstance(value, bool)
    if fits:
        return None
    return (f"method.{key}={value!r} is not valid; expected {'null or ' if nullable else ''}{SCALARS[scalar]} "
            f"(peft's {cls.__name__}.{key}, method={method})")


@cache
def _field_types(cls) -> dict:
    try:
        return get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a hint peft's module cannot resolve: no type check, peft's own checks stay
        return {}


def head_modules(model: nn.Module) -> list[str]:
    """The top-level modules holding the task head (`classifier`, `qa_outputs`): peft's `modules_to_save`."""
    return list(dict.fromkeys(n.split(".")[0] for n in head_parameter_names(model)))


def task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((t for suffix, t in TASK_TYPES.items() if name.endswith(suffix)), None)


def wrap(method: str, model: nn.Module, options: dict) -> Selection:
    """`model` wrapped by peft per the method's options; the selection names what peft made trainable (its
    parameter names, `base_model.model.` first), the trained head's copy (`modules_to_save`) as the head."""
    from peft import get_peft_model

    peft_type, kwargs = split_options(method, options)
    if problems := option_problems(method, options):
        raise UserError(problems[0])
    head = set(head_parameter_names(model))
    encoder_total = sum(p.numel() for p in encoder_parameters(model).values())
    kwargs["modules_to_save"] = list(kwargs.get("modules_to_save") or head_modules(model))
    config = config_class(peft_type)(task_type=task_type(model), **kwargs)
    try:
        with warnings.catch_warnings():  # peft asks transformers a deprecated question on every wrap
            warnings.simplefilter("ignore", FutureWarning)
            wrapped = get_peft_model(model, config)
    except (ValueError, TypeError, KeyError) as e:  # e.g. target modules this model does not have
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise UserError(f"method={method}: peft cannot apply {type(config).__name__} (target_modules="
                        f"{kwargs.get('target_modules')}) to this {model.config.model_type} model: {first_line(e)} "
                        f"(its Linear layers: {', '.join(linear)})") from None
    trained = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    return Selection(dict.fromkeys(trained), wrapped=wrapped, head=[n for n in trained if base_name(n) in head],
                     encoder_total=encoder_total, saver=save_adapter)


def base_name(name: str) -> str:
    """The name of a wrapped model's parameter in the model before wrapping (a `modules_to_save` copy: its original):
    `base_model.model.classifier.modules_to_save.default.weight` -> `classifier.weight`."""
    for prefix in ("base_model.model.", "base_model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")


def save_adapter(folder: Path, model: nn.Module, metadata: dict) -> tuple[str, str]:
    """Write `model`'s adapter as `folder/adapter/` (peft's `save_pretrained`: adapter_config.json, the weights, a
    model card), its safetensors file carrying `metadata` (the run's task, seed, setting, ...) as our patches do.
    Written beside the folder and renamed over it, so a reader sees the old adapter or the new one. Returns (the
    weights' path relative to `folder`, their sha256)."""
    from safetensors.torch import load_file, save

    target = inside(folder / ADAPTER, folder)
    staging = inside(folder / f".{ADAPTER}.tmp-{os.getpid()}", folder)
    shutil.rmtree(staging, ignore_errors=True)
    with no_progress_bars():  # one bar per file on stderr, in every seed's log
        model.save_pretrained(staging)
    weights = staging / ADAPTER_FILE
    blob = save(load_file(str(weights)), metadata={"format": "pt", **{k: str(v) for k, v in metadata.items()}})
    write_atomic(weights, lambda f: f.write(blob))
    old = inside(folder / f".{ADAPTER}.old-{os.getpid()}", folder)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return f"{ADAPTER}/{ADAPTER_FILE}", hashlib.sha256(blob).hexdigest()


def _entry(method: str):
    def apply(model, generator=None, **options):
        # LoRA's init and dropout draw from torch's global generator, which the trainer seeds with the run's seed.
        return wrap(method, model, options)

    apply.__name__ = method
    return apply


for _name in PEFT_TYPES:
    register(_name)(_entry(_name))
