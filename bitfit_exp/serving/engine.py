"""One frozen backbone, many task patches: every row of a batch carries its own task's biases and head.

A bias-only patch (`bitfit`, `bq`, `bm2`, `bm2_bq`, `biases`, `frozen`) changes no weight matrix, so any number of
tasks can share one copy of the pre-trained weights. Each Linear/LayerNorm whose bias some task trained keeps a
table of T bias vectors ([T, out]; a task that did not train it holds the pre-trained bias) and adds row r's task's
vector to row r; each head layer keeps T heads (the output layer zero-padded to the largest label count) and runs
each task's rows through its own. So a batch mixing N tasks costs one forward pass of the backbone, and each row's
logits equal those of its task's fine-tuned model run alone (to float tolerance; tests/test_serve.py).

Patches that change weight entries (`rand_uniform`, `rand_rowcol`, a `full` patch) cannot share the backbone: they
are refused with a line that points to `bitfit-export` (a standalone model, served on its own), and so are DeBERTa-v2
patches that train backbone biases: its query/key projections also run on the relative-position embeddings that all
rows share (the reason packed training refuses it, architectures.DEBERTA_V2.pack_refusal).

A peft BEFT adapter folder is the same kind of patch in another form (bitfit_exp.serving.adapters converts it), so
it is served next to run patches. A patch is named by the task it was trained on; when several patches share a task each is named by its run folder
(`<task>/<method>/lr<lr>-<hash>/seed<k>`), and `NAME=PATH` names one explicitly.

>>> from bitfit_exp.serving.engine import split_spec
>>> split_spec("sentiment=runs/minilm/sst2/bitfit/lr0.0004-ab12cd34/seed0"), split_spec("runs/x/seed0")[0]
(('sentiment', 'runs/minilm/sst2/bitfit/lr0.0004-ab12cd34/seed0'), None)
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.model.architectures import architecture
from bitfit_exp.model.fingerprint import model_digest
from bitfit_exp.model.loading import load_model, load_tokenizer
from bitfit_exp.model.methods import PACKABLE, head_parameter_names
from bitfit_exp.model.peft_methods import is_peft_method
from bitfit_exp.results.artifacts import PATCH_DIGEST, patch_metadata, patch_mismatch
from bitfit_exp.results.records import RECORD, CorruptRecord, read_record, scan

PATCH = "patch.safetensors"
SHARED_METHODS = ", ".join(sorted(PACKABLE))


class BadInput(UserError):
    """A request the server answers with a 4xx: `status` is the HTTP code, the message one line."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class AdapterRun(UserError):
    """A run of a peft method (model/peft_methods.py): its result is a peft adapter folder (`adapter`, checked to be
    the run's own), not a bias patch over a shared backbone; `source` says where it came from."""

    def __init__(self, adapter: Path, source: dict):
        super().__init__(f"{adapter.parent}: method {source['method']} trained a peft adapter ({adapter}), not a bias "
                         f"patch: bitfit-serve and bitfit-predict serve bias patches over one shared backbone only "
                         f"(the run's test predictions are in its folder); load it with peft's "
                         f"PeftModel.from_pretrained(<its model>, '{adapter}'), or copy it with bitfit-export")
        self.adapter, self.source = adapter, source


# ---------------------------------------------------------------------------------------------------- patches


@dataclass
class TaskPatch:
    """One servable task: what its record says about it and the trained tensors of its patch."""

    name: str | None  # None until find_patches names it
    task: str
    method: str
    num_labels: int
    label_names: list[str]
    text_fields: list[str]
    metric: str
    max_length: int
    lr: float
    seed: int
    epoch: int | None
    status: str
    model: str  # the checkpoint the run trained (model.name_or_path)
    model_fingerprint: str | None
    path: Path  # the patch file
    run_dir: str  # <task>/<method>/lr<lr>-<hash>/seed<k>

    def describe(self) -> dict:
        """The task as GET /tasks lists it."""
        return {"name": self.name, "task": self.task, "method": self.method, "labels": self.labels(),
                "regression": self.num_labels == 1, "metric": self.metric, "text_fields": self.text_fields,
                "pair": len(self.text_fields) == 2, "max_length": self.max_length, "lr": self.lr, "seed": self.seed,
                "epoch": self.epoch, "status": self.status, "patch": str(self.path)}

    def labels(self) -> list[str]:
        if self.num_labels == 1:
            return []
        names = list(self.label_names)
        return names if len(names) == self.num_labels else [str(i) for i in range(self.num_labels)]

    def tensors(self, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """The patch's tensors (`trained.<parameter>` etc.); `model`, the served one, is for patches stored in another
        form (a peft adapter: bitfit_exp.serving.adapters)."""
        return read_patch(self.path)

    def check_base(self, fingerprint: str, name_or_path: str) -> None:
        """Refuse the patch unless it was trained on the served checkpoint."""
        check_fingerprint(self, fingerprint, name_or_path)

    def alone(self) -> str:
        """How to serve this patch when it cannot share the backbone."""
        return f"export it with `bitfit-export {self.path.parent} OUT` and serve that model on its own"


REDO = "rerunning its bitfit-run command trains the seed again; or serve another run"


def damaged(path: Path, e: Exception) -> UserError:
    return UserError(f"{path}: damaged patch file ({first_line(e)}); train the run again or serve another one")


def read_patch(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a patch file; a damaged one (truncated, not safetensors) is one UserError line naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise damaged(path, e) from None


def split_spec(spec: str) -> tuple[str | None, str]:
    """`NAME=PATH` -> (NAME, PATH); a bare PATH -> (None, PATH)."""
    name, sep, path = str(spec).partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, path
    return None, str(spec)


def _read(path: Path) -> dict:
    try:
        return read_record(path)
    except CorruptRecord as e:
        raise UserError(str(e)) from None


def _records_at(path: Path) -> list[tuple[Path, dict]]:
    """(record path, record) of the runs at `path`: a patch file, a seed folder, or any folder above seed folders."""
    if path.is_file():
        record = path.parent / RECORD
        if not record.is_file():
            raise UserError(f"{path}: no {RECORD} next to it; serve patches inside their run folder "
                            f"(<runs_dir>/<model>/<task>/<method>/lr<lr>-<hash>/seed<k>/), whose record gives the "
                            f"task, labels and max_length")
        return [(record, _read(record))]
    if (path / RECORD).is_file():
        return [(path / RECORD, _read(path / RECORD))]
    if not path.is_dir():
        raise UserError(f"{path} does not exist; give run folders (seed<k>/), patch files or a runs dir")
    found, warnings = scan(path)
    for warning in warnings:
        print(f"note: {warning}", flush=True)
    found = [(p, r) for p, r in found if (r.get("artifacts") or {}).get("patch")]
    if not found:
        raise UserError(f"{path}: no finished run with a {PATCH} under it")
    return found


def _patch_of(record_path: Path, record: dict, name: str | None) -> TaskPatch:
    cfg, folder = record["config"], record_path.parent
    named = (record.get("artifacts") or {}).get("patch")
    patch = folder / (named or PATCH)
    if named and not patch.is_file():
        raise UserError(f"{patch}: missing, though its record names it; {REDO}")
    if not patch.is_file():
        raise UserError(f"{folder}: the run has no {PATCH} (status {record['status']}, train.save_patch="
                        f"{cfg['train'].get('save_patch')}); nothing to serve")
    try:
        meta = patch_metadata(patch)
        mismatch = patch_mismatch(patch, record, meta)
    except (SafetensorError, OSError, ValueError) as e:
        raise damaged(patch, e) from None
    if mismatch:
        raise UserError(f"{patch}: not the patch its record ({cfg['task']['name']}, seed {record['seed']}) describes: "
                        f"{mismatch}; {REDO}")
    if PATCH_DIGEST not in (record.get("artifacts") or {}):
        print(f"note: {patch}: its record predates patch digests; checked only the task, method, seed and checkpoint "
              f"its metadata names", flush=True)
    task, setting = cfg["task"], record["setting"]
    if is_peft_method(cfg["method"]["name"]):
        raise AdapterRun(patch.parent, {
            "task": task["name"], "method": cfg["method"]["name"], "seed": record["seed"], "lr": cfg["optim"]["lr"],
            "epoch": record.get("chosen_epoch"), "model": cfg["model"]["name_or_path"],
            "model_fingerprint": meta.get("model_fingerprint"), "setting": setting["hash"],
            "adapter_sha256": (record.get("artifacts") or {}).get(PATCH_DIGEST), "record": str(record_path),
            "max_length": cfg["data"]["max_length"], "labels": list(task.get("label_names") or []),
            "text_fields": list(task.get("text_fields") or []), "metric": task.get("metric"),
            "peft": (record.get("env") or {}).get("peft")})
    return TaskPatch(
        name=name, task=task["name"], method=cfg["method"]["name"],
        num_labels=int(task["num_labels"]), label_names=list(task.get("label_names") or []),
        text_fields=list(task["text_fields"]), metric=task["metric"], max_length=int(cfg["data"]["max_length"]),
        lr=float(cfg["optim"]["lr"]), seed=int(record["seed"]), epoch=record.get("chosen_epoch"),
        status=record["status"], model=str(cfg["model"]["name_or_path"]),
        model_fingerprint=meta.get("model_fingerprint") or (record.get("fingerprints") or {}).get("model"),
        path=patch, run_dir=f"{task['name']}/{setting['method']}/lr{float(setting['lr']):g}-{setting['hash']}/"
                            f"seed{record['seed']}")


def find_patches(specs: list[str], other: Callable[[str | None, Path], "TaskPatch | None"] | None = None
                 ) -> list[TaskPatch]:
    """The task patches named by `specs` (each `PATH` or `NAME=PATH`; PATH a patch file, a seed folder or a folder
    of runs), with unique names: the task's, or the run folder's when several patches share a task. `other(NAME,
    PATH)` reads a PATH that holds a task in another form (a peft adapter folder), named, or returns None."""
    patches = []
    for spec in specs:
        name, path = split_spec(spec)
        if other is not None and (own := other(name, Path(path).expanduser())) is not None:
            patches.append(own)
            continue
        found = _records_at(Path(path).expanduser())
        if name and len(found) > 1:
            raise UserError(f"{spec}: {len(found)} runs with patches there; NAME=PATH names a single run folder")
        adapters = []
        for p, r in found:
            try:
                patches.append(_patch_of(p, r, name))
            except AdapterRun as e:
                adapters.append(e)
        if adapters and len(adapters) == len(found):
            if len(found) == 1:
                raise adapters[0]
            methods = ", ".join(sorted({a.source["method"] for a in adapters}))
            raise UserError(f"{spec}: its {len(found)} runs trained peft adapters ({methods}), not bias patches: "
                            f"nothing to serve (load an adapter with peft's PeftModel.from_pretrained)")
        for e in adapters:
            print(f"note: {e.adapter}: a peft adapter ({e.source['method']}), not a bias patch; skipped", flush=True)
    if not patches:
        raise UserError("no patches given")
    unnamed = [p.task for p in patches if p.name is None]
    for p in patches:
        if p.name is None:
            p.name = p.task if unnamed.count(p.task) == 1 else p.run_dir
    names = [p.name for p in patches]
    if dup := next((n for n in names if names.count(n) > 1), None):
        clash = [str(p.path) for p in patches if p.name == dup]
        raise UserError(f"two patches are named {dup!r} ({', '.join(clash)}); name one with NAME=PATH")
    return patches


def check_servable(patch: TaskPatch, tensors: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Refuse a patch that changes anything but whole bias vectors of Linear/LayerNorm layers and the head, or that
    trains biases of a family whose layers also run on tensors all rows share (DeBERTa-v2's relative positions)."""
    modules, head = dict(model.named_modules()), set(head_parameter_names(model))
    named = dict(model.named_parameters())
    export = patch.alone()
    fixed = sorted(k.partition(".")[2] for k in tensors if k.startswith("fixed."))
    if fixed:
        raise UserError(f"{patch.path}: its checkpoint lacks {', '.join(fixed)}, which the run initialised at random "
                        f"from its seed; the tasks of one backbone cannot differ there, so {export}")
    for key in tensors:
        kind, _, name = key.partition(".")
        if kind == "initial":
            continue
        owner = modules.get(name.rpartition(".")[0])
        shares = kind == "trained" and name in named and (
            name in head or (name.endswith(".bias") and isinstance(owner, nn.Linear | nn.LayerNorm))
            or (name.endswith(".weight") and isinstance(owner, nn.LayerNorm)))  # a LayerNorm's gain: per row too
        if not shares:
            if kind == "trained" and name in named and name.endswith(".bias") and owner is not None:
                raise UserError(f"{patch.path}: trains the bias of {name}, a {type(owner).__name__} layer; only "
                                f"biases of Linear and LayerNorm layers can be served per row, so {export}")
            what = "changes entries of" if kind.startswith("sparse") else "trains"
            raise UserError(f"{patch.path}: method {patch.method} {what} {name}, not only biases and the head, so "
                            f"it cannot share the frozen backbone (servable: {SHARED_METHODS}); {export}")
    trained = {k.partition(".")[2] for k in tensors if k.startswith("trained.")}
    arch = architecture(model)
    if arch is not None and arch.pack_refusal and trained - head:  # a head-only (frozen) patch still serves
        raise UserError(f"{patch.path}: {arch.pack_refusal}, and neither can the tasks of one served batch; "
                        f"{export}")
    missing = sorted(head - trained)
    if missing:
        raise UserError(f"{patch.path}: no trained head ({', '.join(missing)}); not a sequence-classification patch")


def check_fingerprint(patch: TaskPatch, served: str, served_name: str) -> None:
    """Refuse a patch trained on another checkpoint than the one served (schema-1 runs, which recorded no
    fingerprint, pass when they name the same checkpoint)."""
    if patch.model_fingerprint is None:
        if patch.model != served_name:
            raise UserError(f"{patch.path}: trained on {patch.model}, served model is {served_name}, and the run "
                            f"recorded no model fingerprint to compare; serve it with --model {patch.model}")
        print(f"note: {patch.path}: no model fingerprint recorded (an older run); trusting its model name", flush=True)
    elif patch.model_fingerprint != served:
        raise UserError(f"{patch.path}: trained on another checkpoint ({patch.model}, fingerprint "
                        f"{patch.model_fingerprint}) than the one served ({served_name}, fingerprint {served}); "
                        f"serve patches of one base checkpoint per process")


# ---------------------------------------------------------------------------------------------------- per-row layers


class RowTasks:
    """The task of every row of the batch being run (set before each forward), shared by the per-row layers."""

    def __init__(self):
        self.index: torch.Tensor | None = None  # [N] task ids on the model's device
        self.groups: list[tuple[int, torch.Tensor]] = []  # (task id, its rows), for the heads

    def set(self, task_ids: list[int], device) -> None:
        ids = torch.tensor(task_ids, dtype=torch.long)
        self.index = ids.to(device)
        self.groups = [(t, (ids == t).nonzero().squeeze(1).to(device)) for t in sorted(set(task_ids))]


def _row_bias(table: torch.Tensor, rows: RowTasks, y: torch.Tensor) -> torch.Tensor:
    if y.shape[0] != rows.index.shape[0]:
        raise RuntimeError(f"per-row bias: {y.shape[0]} rows but {rows.index.shape[0]} task ids")
    bias = table[rows.index]  # [N, out]
    return bias.view(bias.shape[0], *([1] * (y.dim() - 2)), bias.shape[1]).to(y.dtype)


class RowBiasLinear(nn.Module):
    """nn.Linear with the shared frozen weight and, per row, its task's bias (`table`: [T, out])."""

    def __init__(self, linear: nn.Linear, table: torch.Tensor, rows: RowTasks):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach())
        self.register_buffer("table", table)
        self.rows = rows

    def forward(self, x):
        y = F.linear(x, self.weight)
        return y + _row_bias(self.table, self.rows, y)


class RowBiasLayerNorm(nn.Module):
    """nn.LayerNorm with, per row, its task's bias (`table`: [T, features]) and either the shared frozen gain or,
    when some task trained the gain (a peft adapter's modules_to_save), its task's gain (`gains`: [T, features])."""

    def __init__(self, norm: nn.LayerNorm, table: torch.Tensor, rows: RowTasks, gains: torch.Tensor | None = None):
        super().__init__()
        self.shape, self.eps = norm.normalized_shape, norm.eps
        self.register_buffer("weight", norm.weight.detach())
        self.register_buffer("table", table)
        self.register_buffer("gains", gains)
        self.rows = rows

    def forward(self, x):
        if self.gains is None:
            y = F.layer_norm(x, self.shape, self.weight, None, self.eps)
        else:
            y = F.layer_norm(x, self.shape, None, None, self.eps)
            y = y * _row_bias(self.gains, self.rows, y)
        return y + _row_bias(self.table, self.rows, y)


class RowHeadLinear(nn.Module):
    """A head layer per task ([T, out, in] weights, [T, out] biases; outputs beyond a task's label count are zero):
    each task's rows go through its own."""

    def __init__(self, weights: torch.Tensor, biases: torch.Tensor, rows: RowTasks):
        super().__init__()
        self.register_buffer("weights", weights)
        self.register_buffer("biases", biases)
        self.rows = rows

    def forward(self, x):
        out = x.new_zeros(*x.shape[:-1], self.weights.shape[1])
        for task, rows in self.rows.groups:
            out[rows] = F.linear(x[rows], self.weights[task].to(x.dtype), self.biases[task].to(x.dtype))
        return out


def _stack(base: torch.Tensor, values: list[torch.Tensor | None]) -> torch.Tensor:
    """[T, *base.shape]: each task's value, zero-padded along dim 0 (a head with fewer labels), or `base`."""
    out = base.detach().expand(len(values), *base.shape).clone()
    for t, value in enumerate(values):
        if value is None:
            continue
        if value.shape != base.shape:
            out[t].zero_()
        out[t][tuple(slice(0, n) for n in value.shape)] = value
    return out


def _fits(value: torch.Tensor, base: torch.Tensor, num_labels: int) -> bool:
    """A trained tensor fits the loaded parameter: the same shape, or (the output layer of a head loaded with more
    labels) `num_labels` rows of it."""
    return value.shape == base.shape or (value.shape[1:] == base.shape[1:] and value.shape[0] == num_labels)


def install_rows(model: nn.Module, patches: list[TaskPatch], states: list[dict[str, torch.Tensor]]) -> RowTasks:
    """Swap every layer some patch trained for its per-row version holding all tasks' values, in place."""
    rows, head = RowTasks(), set(head_parameter_names(model))
    named = dict(model.named_parameters())
    trained = [{k.partition(".")[2]: v for k, v in s.items() if k.startswith("trained.")} for s in states]
    for name in sorted({n for state in trained for n in state}):
        for patch, state in zip(patches, trained, strict=True):
            if name in state and not _fits(state[name], named[name], patch.num_labels):
                raise UserError(f"{patch.path}: {name} has shape {tuple(state[name].shape)}, the served model's "
                                f"{tuple(named[name].shape)}; was it trained on another architecture?")
    for module_name, module in list(model.named_modules()):
        owned = {f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)}
        if not owned & {n for state in trained for n in state}:
            continue
        if owned <= head and isinstance(module, nn.Linear):
            weights = _stack(module.weight, [s.get(f"{module_name}.weight") for s in trained])
            bias = module.weight.new_zeros(module.weight.shape[0]) if module.bias is None else module.bias
            biases = _stack(bias, [s.get(f"{module_name}.bias") for s in trained])  # no bias: zeros
            swapped = RowHeadLinear(weights, biases, rows)
        elif isinstance(module, nn.Linear | nn.LayerNorm) and module.bias is not None:
            table = _stack(module.bias, [s.get(f"{module_name}.bias") for s in trained])
            gains = [s.get(f"{module_name}.weight") for s in trained]
            if isinstance(module, nn.Linear):
                swapped = RowBiasLinear(module, table, rows)
            else:
                stacked = None if all(g is None for g in gains) else _stack(module.weight, gains)
                swapped = RowBiasLayerNorm(module, table, rows, stacked)
        else:
            raise UserError(f"cannot serve per-row values of {', '.join(sorted(owned))} ({type(module).__name__}); "
                            f"export such a patch with bitfit-export and serve that model on its own")
        parent, _, attr = module_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, swapped)
    return rows


# ---------------------------------------------------------------------------------------------------- engine


@dataclass
class Row:
    """One tokenized input: its task id, tokens, and whether its text was cut to the task's max_length."""

    task: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    truncated: bool


class MultiTaskEngine:
    """One backbone in memory, any number of bias patches over it; `predict` runs a mixed list of items.

    >>> engine = MultiTaskEngine(find_patches(["runs/minilm/rte/bitfit", "runs/minilm/sst2"]))  # doctest: +SKIP
    >>> engine.predict([{"task": "sst2", "text": "a gem"}, {"task": "rte", "text": "A", "text_pair": "B"}])  # doctest: +SKIP
    """

    def __init__(self, patches: list[TaskPatch], model: str | None = None, device="cpu", max_batch: int = 64,
                 max_chars: int | None = 100_000):
        self.name_or_path = model or patches[0].model
        self.device, self.max_batch, self.max_chars = torch.device(device), max_batch, max_chars
        self.tokenizer = load_tokenizer(self.name_or_path)
        self.pad_id = self.tokenizer.pad_token_id or 0
        backbone = load_model(self.name_or_path, max(p.num_labels for p in patches))
        self.fingerprint = model_digest(backbone, self.tokenizer)
        states = []
        for patch in patches:
            patch.check_base(self.fingerprint, self.name_or_path)
            states.append(patch.tensors(backbone))
            check_servable(patch, states[-1], backbone)
        self.rows = install_rows(backbone, patches, states)
        self.model = backbone.to(self.device).eval()
        self.patches = patches
        self.ids = {p.name: t for t, p in enumerate(patches)}
        self.forward_passes = 0
        self._lock = threading.Lock()  # the per-row task ids are model state: one forward at a time
        self._tokenizer_lock = threading.Lock()

    def memory(self) -> dict:
        """Bytes of the backbone's frozen tensors and of all tasks' per-row tables (biases and heads)."""
        per_task = [t for m in self.model.modules() if isinstance(m, RowBiasLinear | RowBiasLayerNorm | RowHeadLinear)
                    for n, t in m.named_buffers(recurse=False) if n != "weight"]
        tables = sum(t.numel() * t.element_size() for t in per_task)
        total = sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])
        return {"backbone_bytes": total - tables, "task_tables_bytes": tables, "tasks": len(self.patches)}

    # -- input -----------------------------------------------------------------------------------------------

    def check_item(self, item, where: str, default_task=None) -> tuple[int, str, str | None]:
        """(task id, text, text_pair) of one request item, or BadInput with a one-line reason."""
        if not isinstance(item, dict):
            raise BadInput(f"{where}: expected an object with task, text[, text_pair], got {type(item).__name__}")
        task = item.get("task", default_task)
        if task is None:
            raise BadInput(f"{where}: missing 'task' (serving: {', '.join(self.ids)})")
        if not isinstance(task, str):
            raise BadInput(f"{where}: 'task' must be a string (serving: {', '.join(self.ids)}), got "
                           f"{type(task).__name__}")
        if task not in self.ids:
            raise BadInput(f"{where}: unknown task {task!r} (serving: {', '.join(self.ids)})", 404)
        patch = self.patches[self.ids[task]]
        text, pair = item.get("text"), item.get("text_pair")
        if text is None:
            raise BadInput(f"{where}: missing 'text'")
        for key, value in (("text", text), ("text_pair", pair)):
            if value is not None:
                self._check_text(value, f"{where}: '{key}'")
        fields = " + ".join(patch.text_fields)
        if len(patch.text_fields) == 2 and pair is None:
            raise BadInput(f"{where}: task {task} takes a text pair ({fields}); 'text_pair' is missing")
        if len(patch.text_fields) == 1 and pair is not None:
            raise BadInput(f"{where}: task {task} takes one text ({fields}); drop 'text_pair'")
        return self.ids[task], text, pair

    def _check_text(self, value, what: str) -> None:
        if not isinstance(value, str):
            raise BadInput(f"{what} must be a string, got {type(value).__name__}")
        if self.max_chars and len(value) > self.max_chars:
            raise BadInput(f"{what} has {len(value):,} characters; the limit is {self.max_chars:,} (--max-chars)", 413)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate (JSON "\ud800"): the tokenizer takes UTF-8 text only
            raise BadInput(f"{what} is not valid Unicode text (a lone surrogate at character {e.start})") from None

    def tokenize(self, checked: list[tuple[int, str, str | None]]) -> list[Row]:
        """Tokenize as training did (data.encode: truncation to the task's max_length), one call per task. One call
        at a time: a fast tokenizer keeps its truncation length as state, so concurrent calls could mix tasks'."""
        rows: list[Row | None] = [None] * len(checked)
        with self._tokenizer_lock:
            for task in sorted({t for t, _, _ in checked}):
                at = [i for i, (t, _, _) in enumerate(checked) if t == task]
                texts = [[checked[i][1] for i in at]]
                if len(self.patches[task].text_fields) == 2:
                    texts.append([checked[i][2] for i in at])
                limit = self.patches[task].max_length
                out = self.tokenizer(*texts, truncation=True, max_length=limit)
                types = out.get("token_type_ids")
                for j, i in enumerate(at):
                    ids = out["input_ids"][j]
                    rows[i] = Row(task, ids, None if types is None else types[j],
                                  self._cut(out, j, checked[i][1:], limit))
        return rows

    def _cut(self, out, j: int, texts, limit: int) -> bool:
        """Whether row j lost tokens to truncation: a fast tokenizer keeps them as the encoding's `overflowing`; a
        slow one is asked for the full length."""
        if out.encodings is not None:
            return bool(out.encodings[j].overflowing)
        if len(out["input_ids"][j]) < limit:
            return False
        return len(self.tokenizer(*[t for t in texts if t is not None], verbose=False)["input_ids"]) > limit

    def prepare(self, items: list, default_task: str | None = None, noun: str = "item") -> list[Row]:
        """Check and tokenize request items (BadInput names the first bad one as `<noun> <i>`)."""
        return self.tokenize([self.check_item(item, f"{noun} {i}", default_task) for i, item in enumerate(items)])

    # -- forward ---------------------------------------------------------------------------------------------

    def _batch(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = None if rows[0].token_type_ids is None else torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row.input_ids)] = torch.tensor(row.input_ids)
            mask[r, :len(row.input_ids)] = 1
            if types is not None:
                types[r, :len(row.input_ids)] = torch.tensor(row.token_type_ids)
        batch = {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": types} if types is not None else {})}
        return {k: v.to(self.device) for k, v in batch.items()}

    def logits(self, rows: list[Row], progress: Callable[[int], object] | None = None) -> list[np.ndarray]:
        """Each row's logits (its task's label count), in order: rows sorted by length (less padding) and run in
        sub-batches of at most max_batch rows, every sub-batch one forward pass whatever tasks it mixes."""
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
        out: list[np.ndarray | None] = [None] * len(rows)
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.max_batch):
                chunk = order[start:start + self.max_batch]
                self.rows.set([rows[i].task for i in chunk], self.device)
                values = self.model(**self._batch([rows[i] for i in chunk])).logits.float().cpu().numpy()
                self.forward_passes += 1
                for i, value in zip(chunk, values, strict=True):
                    out[i] = value[:self.patches[rows[i].task].num_labels]
                if progress:
                    progress(len(chunk))
        return out

    def result(self, row: Row, logits: np.ndarray) -> dict:
        """One prediction: label and probabilities (classification) or score (regression), with the logits."""
        patch = self.patches[row.task]
        out = {"task": patch.name}
        if patch.num_labels == 1:
            out["score"] = float(logits[0])
        else:
            probs = torch.from_numpy(logits).double().softmax(-1).tolist()
            best = int(np.argmax(logits))
            out.update(label=patch.labels()[best], label_id=best,
                       probabilities=dict(zip(patch.labels(), probs, strict=True)))
        out["logits"] = [float(v) for v in logits]
        if row.truncated:
            out["truncated"] = f"input cut to {patch.max_length} tokens (data.max_length of the run), as in training"
        return out

    def predict(self, items: list, default_task: str | None = None) -> list[dict]:
        """Predictions for a mixed list of {"task", "text"[, "text_pair"]} items, in order."""
        rows = self.prepare(items, default_task)
        return [self.result(r, v) for r, v in zip(rows, self.logits(rows), strict=True)]
