"""The options `bitfit-serve` and `bitfit-predict` share: which patches, which checkpoint, which device, and the
engine built from them."""

import argparse

from bitfit_exp.core.errors import UserError
from bitfit_exp.model.loading import model_argument
from bitfit_exp.serving.engine import MultiTaskEngine, find_patches


def engine_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments bitfit-serve and bitfit-predict share: patches, the model, device and batch size."""
    p.add_argument("patches", nargs="+", metavar="PATCH",
                   help="run folder (seed<k>/), patch file in one, or a folder of runs; NAME=PATH names a task")
    p.add_argument("--model", help="checkpoint to serve (config name such as minilm, or name_or_path); default: the "
                   "one the patches were trained on")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    p.add_argument("--max-batch", type=int, default=64, help="rows per forward pass (larger inputs are split)")


def build_engine(args) -> MultiTaskEngine:
    from bitfit_exp.model.device import pick_device

    if args.max_batch < 1:
        raise UserError(f"--max-batch={args.max_batch}; give at least 1")
    patches = find_patches(args.patches)
    engine = MultiTaskEngine(patches, model_argument(args.model), pick_device(args.device), args.max_batch,
                             getattr(args, "max_chars", 100_000))
    for p in patches:
        print(f"task {p.name}: {p.task} {p.method} lr={p.lr:g} seed {p.seed} epoch {p.epoch} "
              f"({'score' if p.num_labels == 1 else '/'.join(p.labels())}) <- {p.path}", flush=True)
    return engine
