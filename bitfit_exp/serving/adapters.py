"""peft BEFT adapter folders as served tasks, next to BitFit run patches over the same backbone.

A BEFT adapter (peft >= 0.20, `peft_type: "BEFT"`) adds a trained vector to the output of each targeted Linear
(`<module>.beft_bias`) and saves whole copies of its `modules_to_save` (the head; often LayerNorms). That is a
bias-only patch in another form: each targeted Linear's bias becomes the pre-trained bias plus the BEFT vector, the
head becomes the task's own, and a saved LayerNorm's bias and gain become the task's own per-row values
(bitfit_exp.serving.engine). Anything else in `modules_to_save` inside the encoder (an embedding, a Linear's weight)
cannot be shared by the tasks of one batch and is refused, as are other peft types (LoRA, IA3, ...: they change
weight matrices; merge them with `merge_and_unload` and serve that model on its own).

What an adapter folder does not say, the task's text fields, its truncation length and its label names, comes from
a `bitfit_patch.json` next to it (bitfit-export's provenance) or from options keyed by the task's name
(`AdapterOptions`); the label count is the head's size. Its base must be the served checkpoint: compared by the
model fingerprint when `bitfit_patch.json` records one, else by name (`base_model_name_or_path`).

>>> AdapterOptions.parse(["sst2=negative,positive"], ["sst2=sentence"], ["sst2=64"]).of("sst2")
{'labels': ['negative', 'positive'], 'text_fields': ['sentence'], 'max_length': 64}
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.model.loading import resolve_model_path
from bitfit_exp.model.methods import head_parameter_names
from bitfit_exp.serving.engine import TaskPatch, check_fingerprint, split_spec

CONFIG, WEIGHTS, PROVENANCE = "adapter_config.json", "adapter_model.safetensors", "bitfit_patch.json"
PREFIX, VECTOR = "base_model.model.", ".beft_bias"
HEADS = ("classifier", "score")  # what peft's SEQ_CLS task type saves as the head
MERGE = ("merge it into its base (PeftModel.from_pretrained(base, ADAPTER).merge_and_unload().save_pretrained(OUT)) "
         "and serve that model on its own")


@dataclass
class AdapterOptions:
    """Per-task metadata an adapter folder lacks, keyed by the served task name: `--labels NAME=a,b`,
    `--text-fields NAME=sentence1,sentence2`, `--max-length NAME=128`."""

    given: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def parse(cls, labels=(), text_fields=(), max_length=()) -> "AdapterOptions":
        given: dict[str, dict] = {}
        for flag, values, key in (("--labels", labels, "labels"), ("--text-fields", text_fields, "text_fields"),
                                  ("--max-length", max_length, "max_length")):
            for value in values or ():
                name, sep, rest = value.partition("=")
                if not sep or not name or not rest:
                    raise UserError(f"{flag} {value}: give NAME=VALUE, NAME the served task's name (e.g. {flag} "
                                    f"{_EXAMPLE[key]})")
                if key == "max_length":
                    if not rest.isdigit() or int(rest) < 2:
                        raise UserError(f"{flag} {value}: give the number of tokens the task was truncated to in "
                                        f"training (e.g. {flag} {name}=128)")
                    parsed = int(rest)
                else:
                    parsed = [v.strip() for v in rest.split(",")]
                    if not all(parsed) or len(set(parsed)) < len(parsed):
                        raise UserError(f"{flag} {value}: give distinct, non-empty comma-separated names")
                    if key == "text_fields" and len(parsed) > 2:
                        raise UserError(f"{flag} {value}: a task reads one text or a pair (two fields)")
                if key in given.setdefault(name, {}):
                    raise UserError(f"{flag} is given twice for {name}")
                given[name][key] = parsed
        return cls(given)

    def of(self, name: str) -> dict:
        return dict(self.given.get(name, {}))

    def check_used(self, names: list[str]) -> None:
        """Every option names a served adapter."""
        unknown = sorted(set(self.given) - set(names))
        if unknown:
            served = ", ".join(names) or "none"
            raise UserError(f"--labels/--text-fields/--max-length name {unknown[0]!r}, which is no served adapter "
                            f"(adapters: {served}; name one with NAME=PATH)")


_EXAMPLE = {"labels": "sst2=negative,positive", "text_fields": "rte=sentence1,sentence2", "max_length": "sst2=128"}
EXAMPLES = {"--text-fields": "sentence (sentence1,sentence2 for a pair)", "--max-length": "128 (as in training)"}


def is_adapter(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({first_line(e)})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS
    if not path.is_file():
        old = " (it has adapter_model.bin: save it again with safe_serialization=True)" if (
            folder / "adapter_model.bin").is_file() else ""
        raise UserError(f"{folder}: no {WEIGHTS}{old}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: damaged adapter file ({first_line(e)}); save the adapter again") from None


def _head_size(folder: Path, saved: dict[str, torch.Tensor]) -> int:
    """The label count: rows of the head's output layer (`classifier.weight`, RoBERTa's `classifier.out_proj`,
    decoder families' `score.weight`)."""
    outputs = [k for k in saved if k.split(".")[0] in HEADS and k.endswith(".weight") and saved[k].dim() == 2]
    out_proj = [k for k in outputs if k.endswith("out_proj.weight")]
    direct = [k for k in outputs if k.count(".") == 1]
    chosen = out_proj or direct
    if len(chosen) != 1:
        raise UserError(f"{folder}: no sequence-classification head among its saved modules ({', '.join(HEADS)}); "
                        f"train the adapter with task_type SEQ_CLS, whose modules_to_save include the head")
    return int(saved[chosen[0]].shape[0])


@dataclass
class AdapterPatch(TaskPatch):
    """A BEFT adapter folder as a served task; `tensors(model)` converts it to the engine's `trained.*` form."""

    compared: str = ""

    def describe(self) -> dict:
        return {**super().describe(), "source": "peft BEFT adapter", "base": self.model}

    def tensors(self, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        return convert(self.path, _weights(self.path), model)

    def check_base(self, fingerprint: str, name_or_path: str) -> None:
        """The fingerprint when bitfit_patch.json records one; else the names, resolved (peft records none)."""
        if self.model_fingerprint is not None:
            check_fingerprint(self, fingerprint, name_or_path)
            return
        if not same_name(self.model, name_or_path):
            raise UserError(f"{self.path}: its base is {self.model} (adapter_config.json base_model_name_or_path), "
                            f"the served model is {name_or_path}; compared by name, as peft records no fingerprint of "
                            f"the base's weights: serve it with --model {self.model}, or, if {name_or_path} holds the "
                            f"same weights, set base_model_name_or_path to it")
        print(f"note: {self.path}: base checked by name only ({self.model} = served {name_or_path}; peft records no "
              f"fingerprint of the base's weights)", flush=True)

    def alone(self) -> str:
        return MERGE.replace("ADAPTER", str(self.path))


def same_name(a: str, b: str) -> bool:
    """Two checkpoint names are the same: equal, or resolving to one local folder."""
    if a == b:
        return True
    try:
        return Path(resolve_model_path(a)).resolve() == Path(resolve_model_path(b)).resolve()
    except UserError:
        return False


def convert(folder: Path, raw: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors as a patch of `model`: `trained.<parameter>` for each bias (pre-trained + BEFT vector),
    head parameter and LayerNorm value it changes; one UserError line for anything that cannot be shared."""
    named, modules = dict(model.named_parameters()), dict(model.named_modules())
    head = set(head_parameter_names(model))
    out: dict[str, torch.Tensor] = {}
    vectors = {}
    for key, value in raw.items():
        name = key.removeprefix(PREFIX)
        if name.endswith(VECTOR):
            vectors[name.removesuffix(VECTOR)] = value
            continue
        owner = modules.get(name.rpartition(".")[0])
        if name not in named:
            raise UserError(f"{folder}: holds {name}, which the served model lacks; was the adapter trained on "
                            f"another architecture?")
        if name in head:
            out[f"trained.{name}"] = value
        elif isinstance(owner, nn.LayerNorm):
            if name.endswith(".bias") or not torch.equal(value, named[name].detach()):
                out[f"trained.{name}"] = value  # a gain left as pre-trained stays shared
        else:
            raise UserError(f"{folder}: modules_to_save holds {name} (a {type(owner).__name__} inside the encoder), "
                            f"which the tasks of one backbone cannot share; {MERGE.replace('ADAPTER', str(folder))}")
    for module_name, vector in sorted(vectors.items()):
        owner = modules.get(module_name)
        if not isinstance(owner, nn.Linear) or owner.bias is None:
            what = "no layer" if owner is None else ("a Linear without a bias" if isinstance(owner, nn.Linear)
                                                     else f"a {type(owner).__name__}")
            raise UserError(f"{folder}: a BEFT vector for {module_name}, {what} in the served model; was the adapter "
                            f"trained on another architecture?")
        if vector.numel() != owner.out_features:
            raise UserError(f"{folder}: the BEFT vector of {module_name} has {vector.numel()} values, the served "
                            f"layer {owner.out_features} outputs; was the adapter trained on another architecture?")
        bias = f"{module_name}.bias"
        base = out.get(f"trained.{bias}", named[bias].detach())
        out[f"trained.{bias}"] = base + vector.flatten().to(base.dtype)
    return out


def read_adapter(folder: Path, name: str | None, options: AdapterOptions) -> AdapterPatch:
    """The served task of a BEFT adapter folder, named `name` or after its provenance's task or the folder."""
    config = _json(folder / CONFIG)
    kind = str(config.get("peft_type"))
    if kind != "BEFT":
        raise UserError(f"{folder}: a peft {kind} adapter changes weight matrices, so it cannot share the served "
                        f"backbone (servable: BEFT adapters, BitFit runs); {MERGE.replace('ADAPTER', str(folder))}")
    task_type = config.get("task_type")
    if task_type not in ("SEQ_CLS", None):
        raise UserError(f"{folder}: task_type {task_type}; bitfit-serve serves sequence classification (SEQ_CLS) "
                        f"adapters")
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{folder}: {CONFIG} names no base_model_name_or_path; set it to the checkpoint the adapter "
                        f"was trained on")
    saved = {k.removeprefix(PREFIX): v for k, v in _weights(folder).items() if not k.endswith(VECTOR)}
    num_labels = _head_size(folder, saved)
    source = _provenance(folder)
    name = adapter_name(name, folder)
    meta = {"labels": source.get("labels") or source.get("label_names"), "text_fields": source.get("text_fields"),
            "max_length": source.get("max_length"), **options.of(name)}
    missing = [flag for flag, key in (("--text-fields", "text_fields"), ("--max-length", "max_length"))
               if not meta.get(key)]
    if missing:
        examples = " and ".join(f"{flag} {name}={EXAMPLES[flag]}" for flag in missing)
        raise UserError(f"{folder}: the adapter does not say its task's {' or '.join(m[2:] for m in missing)} (no "
                        f"{PROVENANCE} there); give {examples}")
    labels = list(meta.get("labels") or [])
    if labels and len(labels) != num_labels:
        raise UserError(f"{folder}: {len(labels)} labels given ({', '.join(labels)}) but its head has {num_labels} "
                        f"outputs")
    if not labels and num_labels > 1:
        print(f"note: {folder}: no label names (--labels {name}=...); answering label ids 0..{num_labels - 1}",
              flush=True)
    return AdapterPatch(
        name=name, task=str(source.get("task") or name), method=str(source.get("method") or "beft"),
        num_labels=num_labels, label_names=labels, text_fields=list(meta["text_fields"]),
        metric=str(source.get("metric") or ""), max_length=int(meta["max_length"]), lr=source.get("lr"),
        seed=source.get("seed"), epoch=source.get("epoch"), status="peft adapter", model=str(base),
        model_fingerprint=source.get("model_fingerprint"), path=folder, run_dir=str(folder))


def _provenance(folder: Path) -> dict:
    return _json(folder / PROVENANCE) if (folder / PROVENANCE).is_file() else {}


def adapter_name(name: str | None, folder: Path) -> str:
    """An adapter's served name: NAME of NAME=PATH, else its provenance's task, else its folder's name."""
    return name or str(_provenance(folder).get("task") or folder.name)


def adapter_names(specs: list[str]) -> list[str]:
    """The served names of the adapter folders among `specs` (before anything is loaded)."""
    found = []
    for spec in specs:
        name, path = split_spec(spec)
        folder = Path(path).expanduser()
        folder = folder.parent if folder.is_file() else folder
        if is_adapter(folder):
            found.append(adapter_name(name, folder))
    return found


def adapter_reader(options: AdapterOptions):
    """The `other` reader of engine.find_patches: a BEFT (or other peft) adapter folder, else None."""

    def read(name: str | None, path: Path) -> AdapterPatch | None:
        if path.is_file() and is_adapter(path.parent):  # its adapter_model.safetensors or adapter_config.json
            path = path.parent
        return read_adapter(path, name, options) if is_adapter(path) else None

    return read
