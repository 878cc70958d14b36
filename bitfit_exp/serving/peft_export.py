"""A task patch as a peft BEFT adapter folder (`bitfit-export --format peft`), loadable with plain peft:
`PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=N), OUT)`.

How the patch maps onto the adapter (`adapter_plan`):
- the trained bias of an `nn.Linear` becomes that layer's BEFT vector, the trained value minus the checkpoint's (BEFT
  adds it to the layer's output; `merge_and_unload` adds it to the bias);
- a LayerNorm whose bias (or gain) trained, the task head, and a module holding a parameter the checkpoint lacked
  (`fixed.<name>`, e.g. a pooler that each seed initialised at random) go whole into `modules_to_save`;
- anything else is refused with one line naming the parameter and pointing to the merged export: entries of a weight
  matrix (`rand_uniform`, `rand_rowcol`, a masked part of a fused bias), a whole weight (`full`), the bias of a layer
  BEFT does not wrap (GPT-2's `Conv1D`, DeBERTa's `q_bias`/`v_bias` beside its fused `in_proj`). Never a partial
  adapter.

>>> from transformers import BertConfig, BertForSequenceClassification
>>> model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
...     num_attention_heads=2, intermediate_size=16, max_position_embeddings=16))
>>> plan = adapter_plan(model, {"trained.bert.encoder.layer.0.attention.self.query.bias": torch.zeros(8),
...     "trained.bert.embeddings.LayerNorm.bias": torch.zeros(8), "trained.classifier.weight": torch.zeros(2, 8),
...     "trained.classifier.bias": torch.zeros(2)}, "patch.safetensors")
>>> sorted(plan.vectors), plan.modules_to_save
(['bert.encoder.layer.0.attention.self.query'], ['bert.embeddings.LayerNorm', 'classifier'])
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.model.loading import no_progress_bars
from bitfit_exp.model.methods import head_parameter_names
from bitfit_exp.model.patch import apply_patch
from bitfit_exp.results.records import RECORD
from bitfit_exp.serving.engine import AdapterRun, damaged
from bitfit_exp.serving.export import (
    base_model,
    card_base,
    check_out,
    copy_adapter,
    provenance,
    write_adapter_files,
)


@dataclass
class AdapterPlan:
    """BEFT vectors (Linear module name -> trained bias, the delta is taken against the loaded checkpoint) and the
    modules peft saves whole."""

    vectors: dict[str, torch.Tensor]
    modules_to_save: list[str]
    filler: str | None = None  # the Linear given a zero vector when nothing else is one (see `adapter_plan`)


def _refuse(patch_path, name: str, why: str) -> UserError:
    return UserError(f"{patch_path}: {name} {why}, which a BEFT adapter cannot hold; export the merged model "
                     f"instead: bitfit-export {Path(patch_path).parent} OUT")


def adapter_plan(model: nn.Module, tensors: dict[str, torch.Tensor], patch_path) -> AdapterPlan:
    """Where each tensor of the patch goes in a BEFT adapter of `model` (the loaded checkpoint), or a UserError."""
    modules, head = dict(model.named_modules()), set(head_parameter_names(model))
    # The modules that own the head's parameters (BERT's `classifier`; RoBERTa's `classifier.dense` and
    # `classifier.out_proj`), not the head's top module: peft 0.21's BEFT merge_and_unload fails on a saved module
    # without a weight of its own (RobertaClassificationHead).
    saved = {name.rpartition(".")[0] for name in head}
    vectors = {}
    for key in sorted(tensors):
        kind, _, name = key.partition(".")
        if kind == "initial" or name in head:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = modules.get(owner_name)
        if kind in ("sparse_idx", "sparse_val"):
            raise _refuse(patch_path, name, "has only some of its entries trained (a masked method)")
        if owner is None:
            raise _refuse(patch_path, name, "is not a parameter of this model's modules")
        if kind == "fixed" or isinstance(owner, nn.LayerNorm):
            saved.add(owner_name)
        elif isinstance(owner, nn.Linear) and leaf == "bias":
            vectors[owner_name] = tensors[key]
        elif "bias" in leaf:  # GPT-2's Conv1D bias, DeBERTa's q_bias/v_bias
            raise _refuse(patch_path, name, f"is the bias of a {type(owner).__name__} layer (BEFT wraps nn.Linear "
                                            f"layers only)")
        else:
            raise _refuse(patch_path, name, f"is a trained {type(owner).__name__} {leaf} (not a bias)")
    # a Linear inside a module saved whole (a pooler the checkpoint lacked) travels with that module
    vectors = {n: v for n, v in vectors.items() if not any(n == s or n.startswith(s + ".") for s in saved)}
    filler = None
    if not vectors:
        # peft refuses an adapter that targets no layer; a head-only patch (frozen) gets a zero vector on the first
        # Linear with a bias outside the saved modules, which changes nothing and keeps the adapter loadable
        filler = next((n for n, m in modules.items() if isinstance(m, nn.Linear) and m.bias is not None
                       and not any(n == s or n.startswith(s + ".") for s in saved)), None)
        if filler is None:
            raise UserError(f"{patch_path}: this model has no Linear layer with a bias outside the head, so peft "
                            f"has no layer to attach an adapter to; export the merged model instead: bitfit-export "
                            f"{Path(patch_path).parent} OUT")
        vectors[filler] = modules[filler].bias.detach().clone()
    return AdapterPlan(vectors, sorted(saved), filler)


def peft_model(network: nn.Module, plan: AdapterPlan, patch_path, base_name: str):
    """The patched `network` wrapped as a peft BEFT model whose adapter reproduces the run."""
    from peft import BeftConfig, get_peft_model

    deltas = {n: (v.to(network.get_submodule(n).bias) - network.get_submodule(n).bias.detach())
              for n, v in plan.vectors.items()}
    try:
        apply_patch(network, patch_path)
    except SafetensorError as e:
        raise damaged(Path(patch_path), e) from None
    with torch.no_grad():  # BEFT adds its vector to the checkpoint's bias, not to the trained one
        for name, delta in deltas.items():
            network.get_submodule(name).bias.sub_(delta)
    # No task_type: SEQ_CLS would add the head's top module ("classifier") to modules_to_save, the one
    # merge_and_unload cannot unload; PeftModel.from_pretrained loads the adapter either way.
    config = BeftConfig(target_modules=sorted(deltas), inference_mode=True, modules_to_save=list(plan.modules_to_save))
    with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated question (is_gradient_checkpointing)
        warnings.simplefilter("ignore", FutureWarning)
        wrapped = get_peft_model(network, config)
    with torch.no_grad():
        for name, delta in deltas.items():
            wrapped.base_model.model.get_submodule(name).beft_bias["default"].copy_(delta.view(1, -1))
    wrapped.peft_config["default"].base_model_name_or_path = base_name
    return wrapped.eval()


def export_peft(spec: str, out: Path, model: str | None = None, hub_id: str | None = None) -> Path:
    """Write run `spec`'s patch as a BEFT adapter folder `out` (new or empty): adapter_model.safetensors,
    adapter_config.json, the tokenizer (model_max_length = the run's max_length), bitfit_patch.json, README.md
    (whose loading snippet names `hub_id`, the repository it will be pushed to, if given)."""
    out = Path(out).expanduser()
    created = not out.exists()
    check_out(out)
    try:
        network, tokenizer, patch, name_or_path = base_model(spec, model)
        plan = adapter_plan(network, patch.tensors(), patch.path)
    except AdapterRun as run:  # a peft method's run: its adapter is already one
        return copy_adapter(run, out, hub_id)
    except UserError:
        if created:
            out.rmdir()  # leave no empty folder behind a refused export
        raise
    base = card_base(name_or_path)
    wrapped = peft_model(network, plan, patch.path, base.name_or_path)
    source = {**provenance(patch), "format": "peft", "base_model_name_or_path": base.name_or_path,
              "base_on_hub": base.on_hub, "beft_targets": len(plan.vectors) - (plan.filler is not None),
              "modules_to_save": plan.modules_to_save, "zero_vector": plan.filler}
    try:
        with no_progress_bars():
            wrapped.save_pretrained(out)
        write_adapter_files(out, tokenizer, patch.max_length, source, patch.path.parent / RECORD, base, hub_id)
    except OSError as e:
        raise UserError(f"{out}: the adapter cannot be written there ({first_line(e)})") from None
    return out
