"""A task patch merged into a standalone Hugging Face model folder (`save_pretrained`), loadable with plain
transformers and its pipelines (`bitfit-export`).

The folder holds the checkpoint with the patch applied (any method with a patch, masked ones included), the head
with the task's label names (`id2label`), the tokenizer with `model_max_length` set to the run's data.max_length (so
`pipeline(..., truncation=True)` truncates as training did), `bitfit_patch.json` (where it came from) and the model
card `README.md` (bitfit_exp.results.card). `--format peft` writes a BEFT adapter instead (serving/peft_export.py).

>>> label_maps(["negative", "positive"])
({0: 'negative', 1: 'positive'}, {'negative': 0, 'positive': 1})
"""

import json
import os
import shutil
from pathlib import Path

from safetensors import SafetensorError

from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.kinds.sequence import model_config
from bitfit_exp.model.fingerprint import model_digest
from bitfit_exp.model.loading import (
    load_model,
    load_tokenizer,
    model_argument,
    no_progress_bars,
    resolve_model_path,
)
from bitfit_exp.model.patch import apply_patch
from bitfit_exp.results.card import Base, write_card
from bitfit_exp.results.records import RECORD
from bitfit_exp.serving.engine import AdapterRun, check_fingerprint, damaged, find_patches

PROVENANCE = "bitfit_patch.json"  # where an exported folder came from


def label_maps(labels: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    return dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}


def base_model(spec: str, model: str | None = None):
    """(the checkpoint run `spec` trained from, loaded with its head, not yet patched; its tokenizer; the TaskPatch;
    the checkpoint's name_or_path), after the fingerprint check."""
    patches = find_patches([spec])
    if len(patches) != 1:
        raise UserError(f"{spec}: {len(patches)} runs with patches there; export one run folder (seed<k>/)")
    patch = patches[0]
    name_or_path = model_argument(model) or patch.model
    tokenizer = load_tokenizer(name_or_path)
    # problem_type as training had it: "regression" for one output, so pipelines return the raw score (no sigmoid)
    network = load_model(name_or_path, patch.num_labels, **model_config({"num_labels": patch.num_labels}))
    check_fingerprint(patch, model_digest(network, tokenizer), name_or_path)
    return network, tokenizer, patch, name_or_path


def patched_model(spec: str, model: str | None = None):
    """(model with the patch of run `spec` applied, its tokenizer, the TaskPatch), after the fingerprint check."""
    network, tokenizer, patch, name_or_path = base_model(spec, model)
    try:
        apply_patch(network, patch.path)
    except SafetensorError as e:
        raise damaged(patch.path, e) from None
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{patch.path} does not fit {name_or_path}: {str(e).splitlines()[0]}") from None
    return network.eval(), tokenizer, patch


def export(spec: str, out: Path, model: str | None = None, hub_id: str | None = None) -> Path:
    """Write run `spec`'s patched model to `out` (a new or empty folder); returns `out`. `hub_id`: the repository it
    will be pushed to, which the card's loading snippet then names."""
    out = Path(out).expanduser()
    created = not out.exists()
    check_out(out)
    try:
        network, tokenizer, patch = patched_model(spec, model)
    except AdapterRun as run:
        return copy_adapter(run, out, hub_id)
    except UserError:
        if created:
            out.rmdir()  # leave no empty folder behind a refused export
        raise
    if patch.num_labels > 1:
        network.config.id2label, network.config.label2id = label_maps(patch.labels())
    tokenizer.model_max_length = patch.max_length
    try:
        with no_progress_bars():
            network.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / PROVENANCE).write_text(json.dumps(provenance(patch), indent=1, default=str) + "\n")
        write_card(out, patch.path.parent / RECORD, "merged", card_base(model_argument(model) or patch.model), hub_id)
    except OSError as e:
        raise UserError(f"{out}: the model cannot be written there ({first_line(e)})") from None
    return out


def copy_adapter(run: AdapterRun, out: Path, hub_id: str | None = None) -> Path:
    """A peft method's run (lora, ia3, beft, peft; either --format): its adapter folder as it is (loadable with
    peft's PeftModel.from_pretrained), the tokenizer, `bitfit_patch.json` saying where it came from, and the model
    card (README.md, replacing the one peft wrote)."""
    try:
        shutil.copytree(run.adapter, out, dirs_exist_ok=True)
        write_adapter_files(out, load_tokenizer(run.source["model"]), run.source["max_length"],
                            {**run.source, "format": "peft"}, Path(run.source["record"]),
                            card_base(run.source["model"]), hub_id)
    except OSError as e:
        raise UserError(f"{out}: the adapter cannot be written there ({first_line(e)})") from None
    return out


def card_base(name_or_path: str) -> Base:
    """The checkpoint as an exported folder names it: resolved (a `pkg:` name to its folder), and whether it is a
    hub name rather than a local folder."""
    resolved = resolve_model_path(name_or_path)
    return Base(resolved, not Path(resolved).is_dir())


def write_adapter_files(out: Path, tokenizer, max_length: int, source: dict, record_path: Path, base: Base,
                        hub_id: str | None) -> None:
    """What an adapter folder holds beside peft's own files: the tokenizer (truncating at the run's max_length),
    `bitfit_patch.json` (`source`) and the model card; OSError when the folder cannot be written."""
    tokenizer.model_max_length = max_length
    # An adapter folder has no config.json to tell AutoTokenizer the model type: transformers 5.0 then loads a
    # generic tokenizer that drops token_type_ids (BERT's pair segments) unless the config names the inputs.
    tokenizer.init_kwargs["model_input_names"] = list(tokenizer.model_input_names)
    tokenizer.save_pretrained(out)
    (out / PROVENANCE).write_text(json.dumps(source, indent=1, default=str) + "\n")
    write_card(out, record_path, "peft", base, hub_id)


def provenance(patch) -> dict:
    """What `bitfit_patch.json` says about where an exported folder came from: the run's task, method, lr, seed,
    epoch, patch file, label names (an adapter folder has no config.json to hold them: bitfit-serve reads them here),
    and the checkpoint it trained (name and fingerprint)."""
    return {**{k: v for k, v in patch.describe().items() if k != "name"}, "model": patch.model,
            "model_fingerprint": patch.model_fingerprint}


def check_out(out: Path) -> None:
    """Before loading anything: `out` is a new or empty folder that can be written (created here if new)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; export into a new folder")
    try:
        if out.is_dir() and any(out.iterdir()):
            raise UserError(f"{out} is not empty; export into a new folder")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the folder there ({first_line(e)})") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"{out}: the folder is not writable")
