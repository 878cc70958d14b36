"""The options `bitfit-serve` and `bitfit-predict` share: which patches (BitFit runs or peft BEFT adapter folders,
with what an adapter folder does not say), which checkpoint, which device, and the engine built from them."""

import argparse

from bitfit_exp.core.errors import UserError
from bitfit_exp.model.loading import model_argument
from bitfit_exp.serving.adapters import AdapterOptions, AdapterPatch, adapter_names, adapter_reader
from bitfit_exp.serving.engine import MultiTaskEngine, find_patches


def engine_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments bitfit-serve and bitfit-predict share: patches, the model, device and batch size."""
    p.add_argument("patches", nargs="+", metavar="PATCH",
                   help="run folder (seed<k>/), patch file in one, or a folder of runs; NAME=PATH names a task")
    p.add_argument("--model", help="checkpoint to serve (config name such as minilm, or name_or_path); default: the "
                   "one the patches were trained on")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    p.add_argument("--max-batch", type=int, default=64, help="rows per forward pass (larger inputs are split)")
    adapters = p.add_argument_group("peft BEFT adapter folders (PATCH may be one): what the folder does not say")
    adapters.add_argument("--labels", action="append", metavar="NAME=L0,L1,...",
                          help="label names of adapter task NAME, in the order of its head's outputs")
    adapters.add_argument("--text-fields", action="append", metavar="NAME=F[,F2]",
                          help="the text field(s) of adapter task NAME: one, or two for a pair task")
    adapters.add_argument("--max-length", action="append", metavar="NAME=N",
                          help="tokens adapter task NAME's inputs were truncated to in training")


def build_engine(args) -> MultiTaskEngine:
    from bitfit_exp.model.device import pick_device

    if args.max_batch < 1:
        raise UserError(f"--max-batch={args.max_batch}; give at least 1")
    options = AdapterOptions.parse(args.labels, args.text_fields, args.max_length)
    options.check_used(adapter_names(args.patches))
    patches = find_patches(args.patches, adapter_reader(options))
    engine = MultiTaskEngine(patches, model_argument(args.model), pick_device(args.device), args.max_batch,
                             getattr(args, "max_chars", 100_000))
    for p in patches:
        run = "peft BEFT adapter" if isinstance(p, AdapterPatch) else f"lr={p.lr:g} seed {p.seed} epoch {p.epoch}"
        print(f"task {p.name}: {p.task} {p.method} {run} ({'score' if p.num_labels == 1 else '/'.join(p.labels())}) "
              f"<- {p.path}", flush=True)
    return engine
