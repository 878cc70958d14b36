"""Save only what a run trained (a "bias patch") as safetensors, and apply it to a fresh pre-trained model.

The file holds the trained tensors (whole, or as flat indices + values for masked methods), the head, the
initial values of the trained encoder biases (`initial.<name>`, for the bias-change analysis of Figure 1), and the
untrained parameters the checkpoint lacked (`fixed.<name>`: e.g. the pooler of a BERT saved without one, which
each seed initialises at random; without them the patch would not reproduce the run).

>>> from bitfit_exp.model.patch import apply_patch, save_patch  # see tests/test_patch.py for a full round trip
"""

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from bitfit_exp.core.atomic import write_atomic
from bitfit_exp.core.paths import inside
from bitfit_exp.model.loading import new_parameters
from bitfit_exp.model.methods import Selection, head_parameter_names


def trained_state(model: nn.Module, selection: Selection) -> dict[str, torch.Tensor]:
    """Current values of the trained parameters (CPU copies): whole tensors, or the selected entries of masked ones."""
    named = dict(model.named_parameters())
    state = {}
    for name, mask in selection.params.items():
        value = named[name].detach()
        state[name] = value.cpu().clone() if mask is None else value[mask.to(value.device)].cpu().clone()
    return state


def load_trained_state(model: nn.Module, selection: Selection, state: dict[str, torch.Tensor]) -> None:
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            mask = selection.params[name]
            target = named[name]
            if mask is None:
                target.copy_(value)
            else:
                target[mask.to(target.device)] = value.to(target.device, target.dtype)


def save_patch(path: Path, model: nn.Module, selection: Selection, state: dict[str, torch.Tensor],
               initial: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write the patch atomically (temporary file, fsync, rename); a failed write (full disk) raises one line and
    leaves no temporary file. Returns the sha256 of the file written (the run record keeps it)."""
    tensors = {}
    for name, value in state.items():
        mask = selection.params[name]
        if mask is None:
            tensors[f"trained.{name}"] = value.contiguous()
        else:
            tensors[f"sparse_idx.{name}"] = mask.flatten().nonzero().squeeze(1)
            tensors[f"sparse_val.{name}"] = value.contiguous()
    head = set(head_parameter_names(model))
    for name, value in initial.items():
        if name.endswith(".bias") and name not in head:
            tensors[f"initial.{name}"] = value.contiguous()
    named = dict(model.named_parameters())
    for name in new_parameters(model):
        if name not in selection.params and name not in head:
            tensors[f"fixed.{name}"] = named[name].detach().cpu().contiguous()
    # Serialized here and written by Python: safetensors' own file writer does not report a full disk.
    blob = save(tensors, metadata={k: str(v) for k, v in metadata.items()})
    write_atomic(Path(path), lambda f: f.write(blob))
    return hashlib.sha256(blob).hexdigest()


def write_patch(folder: Path, model: nn.Module, selection: Selection, state: dict[str, torch.Tensor],
                initial: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """The run's result in its method's format, in the seed's `folder`: our patch (`patch.safetensors`), or what the
    method's own writer makes (`selection.saver`: a peft adapter folder). Returns (its path relative to `folder`, the
    sha256 of the file that carries `metadata`)."""
    if selection.saver is not None:
        return selection.saver(folder, model, metadata)
    return "patch.safetensors", save_patch(inside(folder / "patch.safetensors", folder), model, selection, state,
                                           initial, metadata)


def apply_patch(model: nn.Module, path: Path) -> nn.Module:
    """Overwrite `model`'s parameters with the trained values stored in `path` (in place; returns the model)."""
    tensors = load_file(str(path))
    named = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            kind, _, name = key.partition(".")
            if name not in named:
                raise KeyError(f"{path}: parameter {name} is not in this model; was the patch made for another one?")
            target = named[name]
            if kind in ("trained", "fixed"):
                target.copy_(value)
            elif kind == "sparse_idx":
                target.view(-1)[value.to(target.device)] = tensors[f"sparse_val.{name}"].to(target.device)
    return model


def bias_changes(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """name -> (initial, final, trained) for every trained encoder bias stored in the patch; `trained` is a bool mask
    of the entries the run trained (all True for a whole tensor; a masked selection such as GPT-2's `bq`, the first
    third of the fused `c_attn.bias`, trains only some)."""
    tensors = load_file(str(path))
    out = {}
    for key, initial in tensors.items():
        if not key.startswith("initial."):
            continue
        name = key[len("initial."):]
        if f"trained.{name}" in tensors:
            out[name] = (initial, tensors[f"trained.{name}"], torch.ones_like(initial, dtype=torch.bool))
        elif f"sparse_idx.{name}" in tensors:
            final, trained = initial.clone(), torch.zeros_like(initial, dtype=torch.bool)
            index = tensors[f"sparse_idx.{name}"]
            final.view(-1)[index] = tensors[f"sparse_val.{name}"].to(final.dtype)
            trained.view(-1)[index] = True
            out[name] = (initial, final, trained)
    return out
