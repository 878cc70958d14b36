"""`bitfit-export`: a task patch merged into a standalone Hugging Face model folder (`save_pretrained`), loadable with
plain transformers and its pipelines.

    bitfit-export ~/bitfit-runs/minilm/sst2/bitfit/lr0.0004-1a2b3c4d/seed0 ~/models/minilm-sst2

The folder holds the checkpoint with the patch applied (any method with a patch, masked ones included), the head
with the task's label names (`id2label`), the tokenizer with `model_max_length` set to the run's data.max_length (so
`pipeline(..., truncation=True)` truncates as training did), and `bitfit_patch.json` (where it came from).
"""

import argparse
import sys
from pathlib import Path

from bitfit_exp.core.errors import UserError
from bitfit_exp.serving.export import export


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
    loader = "peft's PeftModel.from_pretrained: a peft adapter" if (out / "adapter_config.json").is_file() else \
        "AutoModelForSequenceClassification.from_pretrained or pipeline"
    print(f"{args.run} -> {out} (load with {loader})")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
