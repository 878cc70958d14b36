"""`bitfit-export`: a task patch as a standalone Hugging Face model folder (`save_pretrained`, loadable with plain
transformers and its pipelines), or with `--format peft` as a peft BEFT adapter over the base checkpoint; both with a
model card (README.md), and optionally uploaded to the Hub.

    bitfit-export ~/bitfit-runs/minilm/sst2/bitfit/lr0.0004-1a2b3c4d/seed0 ~/models/minilm-sst2
    bitfit-export --format peft ~/bitfit-runs/minilm/sst2/bitfit/lr0.0004-1a2b3c4d/seed0 ~/adapters/minilm-sst2 \
        --push-to-hub your-name/minilm-sst2-bitfit

The merged folder holds the checkpoint with the patch applied (any method with a patch, masked ones included), the
head with the task's label names (`id2label`), the tokenizer with `model_max_length` set to the run's data.max_length
(so `pipeline(..., truncation=True)` truncates as training did), and `bitfit_patch.json` (where it came from). The
peft folder holds the adapter (bias-only methods: docs/sharing.md), the same tokenizer and `bitfit_patch.json`.
"""

import argparse
import sys
from pathlib import Path

from bitfit_exp.core.errors import UserError
from bitfit_exp.serving.export import export
from bitfit_exp.serving.peft_export import export_peft
from bitfit_exp.serving.push import check_repo_id, push_folder

LOAD = {"merged": "load with AutoModelForSequenceClassification.from_pretrained or pipeline",
        "peft": "load with PeftModel.from_pretrained over the base model; README.md shows how"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bitfit-export", description=__doc__.splitlines()[0])
    p.add_argument("run", help="run folder (seed<k>/) or the patch file in it")
    p.add_argument("out", type=Path, help="new folder for the model (save_pretrained) or the adapter")
    p.add_argument("--format", choices=("merged", "peft"), default="merged",
                   help="merged: the whole model with the patch applied (default); peft: a BEFT adapter")
    p.add_argument("--model", help="checkpoint to apply the patch to (config name or name_or_path); default: the one "
                   "the run trained")
    p.add_argument("--push-to-hub", metavar="REPO_ID", help="then upload the folder to this Hub model repository")
    p.add_argument("--public", action="store_true", help="with --push-to-hub: create the repository public "
                   "(default: private)")
    args = p.parse_args(argv)
    try:
        if args.public and not args.push_to_hub:
            raise UserError("--public applies to --push-to-hub REPO_ID only; add it or drop --public")
        if args.push_to_hub:
            check_repo_id(args.push_to_hub)
        out = (export_peft if args.format == "peft" else export)(args.run, args.out, args.model, args.push_to_hub)
        adapter_run = args.format == "merged" and (out / "adapter_config.json").is_file()  # a peft method's run
        print(f"{args.run} -> {out} ({LOAD['peft' if adapter_run else args.format]})", flush=True)
        if args.push_to_hub:
            url = push_folder(out, args.push_to_hub, private=not args.public)
            print(f"{out} -> {url} ({'public' if args.public else 'private'})")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
