"""`bitfit-export`: a task patch merged into a standalone Hugging Face model folder (`save_pretrained`), loadable with
plain transformers and its pipelines.

    bitfit-export ~/bitfit-runs/minilm/sst2/bitfit/lr0.0004-1a2b3c4d/seed0 ~/models/minilm-sst2

The folder holds the checkpoint with the patch applied (any method with a patch, masked ones included), the head
with the task's label names (`id2label`), the tokenizer with `model_max_length` set to the run's data.max_length (so
`pipeline(..., truncation=True)` truncates as training did), and `bitfit_patch.json` (where it came from).

>>> from bitfit_exp.export import label_maps
>>> label_maps(["negative", "positive"])
({0: 'negative', 1: 'positive'}, {'negative': 0, 'positive': 1})
"""

import argparse
import json
import os
import sys
from pathlib import Path

from safetensors import SafetensorError

from bitfit_exp.errors import UserError, first_line
from bitfit_exp.fingerprint import model_digest
from bitfit_exp.kinds.sequence import model_config
from bitfit_exp.models import load_model, load_tokenizer
from bitfit_exp.multitask import check_fingerprint, damaged, find_patches
from bitfit_exp.patch import apply_patch
from bitfit_exp.serve import model_argument


def label_maps(labels: list[str]) -> tuple[dict[int, str], dict[str, int]]:
    return dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}


def patched_model(spec: str, model: str | None = None):
    """(model with the patch of run `spec` applied, its tokenizer, the TaskPatch), after the fingerprint check."""
    patches = find_patches([spec])
    if len(patches) != 1:
        raise UserError(f"{spec}: {len(patches)} runs with patches there; export one run folder (seed<k>/)")
    patch = patches[0]
    name_or_path = model_argument(model) or patch.model
    tokenizer = load_tokenizer(name_or_path)
    # problem_type as training had it: "regression" for one output, so pipelines return the raw score (no sigmoid)
    network = load_model(name_or_path, patch.num_labels, **model_config({"num_labels": patch.num_labels}))
    check_fingerprint(patch, model_digest(network, tokenizer), name_or_path)
    try:
        apply_patch(network, patch.path)
    except SafetensorError as e:
        raise damaged(patch.path, e) from None
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{patch.path} does not fit {name_or_path}: {str(e).splitlines()[0]}") from None
    return network.eval(), tokenizer, patch


def export(spec: str, out: Path, model: str | None = None) -> Path:
    """Write run `spec`'s patched model to `out` (a new or empty folder); returns `out`."""
    out = Path(out).expanduser()
    created = not out.exists()
    check_out(out)
    try:
        network, tokenizer, patch = patched_model(spec, model)
    except UserError:
        if created:
            out.rmdir()  # leave no empty folder behind a refused export
        raise
    if patch.num_labels > 1:
        network.config.id2label, network.config.label2id = label_maps(patch.labels())
    tokenizer.model_max_length = patch.max_length
    source = {**{k: v for k, v in patch.describe().items() if k not in ("name", "labels")}, "model": patch.model,
              "model_fingerprint": patch.model_fingerprint}
    try:
        network.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "bitfit_patch.json").write_text(json.dumps(source, indent=1, default=str) + "\n")
    except OSError as e:
        raise UserError(f"{out}: the model cannot be written there ({first_line(e)})") from None
    return out


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bitfit-export", description=__doc__.splitlines()[0])
    p.add_argument("run", help="run folder (seed<k>/) or the patch file in it")
    p.add_argument("out", type=Path, help="new folder for the model (save_pretrained)")
    p.add_argument("--model", help="checkpoint to apply the patch to (config name or name_or_path); default: the one "
                   "the run trained")
    args = p.parse_args(argv)
    try:
        out = export(args.run, args.out, args.model)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.run} -> {out} (load with AutoModelForSequenceClassification.from_pretrained or pipeline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
