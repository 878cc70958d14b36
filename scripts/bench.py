"""Training throughput: the paper loop vs full fine-tuning vs packed bias-only training (random weights).

    python scripts/bench.py --shape bert_base --packed 1 5 20 40 --json bench.json      # on a GPU
    python scripts/bench.py --shape tiny --device cpu --steps 5          # a CPU smoke run of the script itself

Prints one row per mode: samples/s per setting (each setting sees batch_size examples per step), the speed-up
over the paper loop, the arithmetic rate of the forward + input-gradient matrix products (the work a bias-only step
must do) as TFLOP/s and as a share of the GPU's dense bf16 peak, and peak accelerator memory; --json writes the
same rows. Modes: `paper` (BitFit, fp32, pad to 128, batch 8, one setting, the model's own dropout), `full` (full
fine-tuning, same input), `packed K` (K BitFit settings in one batch), for every combination of dynamic padding
(`dyn`: lengths drawn from RTE-like 20-128 tokens), bf16 autocast, packed dropout (per_setting | shared) and
torch.compile mode given on the command line. FLOPs count the padded tokens the GPU actually processes.
"""

import argparse
import itertools
import json
import time

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from bitfit_exp.kinds import sequence
from bitfit_exp.model.methods import select
from bitfit_exp.train.packed import DropoutStreams, PackedAdamW, pack, packed_loss
from bitfit_exp.train.trainer import compiled, freeze

SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert_large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, without sparsity); matched against the device name.
BF16_PEAK = [("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.0)]


def bf16_peak(device_name: str) -> float | None:
    return next((tflops for key, tflops in BF16_PEAK if key in device_name), None)


def fwd_input_grad_flops(shape: str, rows: int, width: int) -> float:
    """Matrix-product FLOPs of one forward plus the input-gradient half of the backward (2x the forward)."""
    s = SHAPES[shape]
    d, f, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    per_row = layers * (8 * width * d * d + 4 * width * d * f + 4 * width * width * d)
    return 2 * rows * per_row


def batch(rows: int, length: int, dynamic: bool, device, gen, multiple: int | None = None):
    lengths = torch.randint(20, length + 1, (rows,), generator=gen) if dynamic else torch.full((rows,), length)
    width = int(lengths.max())
    if multiple:
        width = min(-(-width // multiple) * multiple, length)
    ids = torch.randint(1000, 28000, (rows, width), generator=gen)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, torch.randint(2, (rows,)).to(device)


def measure(shape: str, mode: str, k: int, dynamic: bool, bf16: bool, dropout: str, compile_mode: str,
            args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=28996, num_labels=2, **SHAPES[shape])).to(device)
    selection = select("full" if mode == "full" else "bitfit", model)
    if mode == "packed":
        streams = DropoutStreams(list(range(k)), device) if dropout == "per_setting" else None
        params = pack(model, selection, k, streams).tensors
        model.to(device)
        optimizer = PackedAdamW(params, [1e-4] * k, eps=1e-6, max_grad_norm=1.0)
    else:
        params = freeze(model, selection)
        optimizer = torch.optim.AdamW(params, lr=1e-4, eps=1e-6, weight_decay=0.0)
    model.to(device).train()
    forward = compiled(model, compile_mode)
    gen = torch.Generator().manual_seed(0)
    widths = []

    def step():
        inputs, labels = batch(k * args.batch_size, args.max_length, dynamic, device, gen, args.pad_multiple)
        widths.append(inputs["input_ids"].shape[1])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(**inputs).logits.float()
        if mode == "packed":
            loss = packed_loss(sequence, logits, {"labels": labels}, k)[0]
        else:
            loss = F.cross_entropy(logits, labels)
        loss.backward()
        if mode != "packed":  # PackedAdamW clips each setting itself
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    widths.clear()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / args.steps
    flops = sum(fwd_input_grad_flops(shape, k * args.batch_size, w) for w in widths) / args.steps
    return {"shape": shape, "mode": mode, "k": k, "dynamic_padding": dynamic, "bf16": bf16,
            "packed_dropout": dropout if mode == "packed" else None, "compile": compile_mode,
            "ms_per_step": 1000 * seconds, "samples_per_s_per_setting": args.batch_size / seconds,
            "samples_per_s_total": k * args.batch_size / seconds, "fwd_input_grad_tflops": flops / seconds / 1e12,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs="+", default=["bert_base"], choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--packed", nargs="+", type=int, default=[1, 5, 20, 40])
    parser.add_argument("--dynamic", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--bf16", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--dropout", nargs="+", choices=["per_setting", "shared"], default=["per_setting", "shared"])
    parser.add_argument("--compile", nargs="+", choices=["false", "default", "reduce-overhead", "max-autotune"],
                        default=["false"], help="torch.compile modes for the packed rows")
    parser.add_argument("--no-baselines", action="store_true", help="skip the paper and full rows (needs --json "
                        "rows from an earlier call for the speed-up column)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--pad-multiple", type=int, help="round dynamic widths up to a multiple of this (as "
                        "data.pad_multiple; use with --compile and --dynamic on)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU (default: by its name)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    device_name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
    peak = args.peak_tflops or bf16_peak(device_name)
    print(f"device: {device_name}; dense bf16 peak {peak or '?'} TFLOP/s; torch {torch.__version__}", flush=True)
    rows = []
    for shape in args.shape:
        plan = [] if args.no_baselines else [("paper", 1, False, False, None, "false"),
                                             ("full", 1, False, False, None, "false")]
        plan += [("packed", k, dyn == "on", bf16 == "on", drop, comp) for k, dyn, bf16, drop, comp in
                 itertools.product(args.packed, args.dynamic, args.bf16, args.dropout, args.compile)]
        for mode, k, dyn, bf16, drop, comp in plan:
            row = measure(shape, mode, k, dyn, bf16, drop, comp, args)
            row["device"] = device_name
            row["pct_bf16_peak"] = 100 * row["fwd_input_grad_tflops"] / peak if peak else None
            rows.append(row)
            base = next((r for r in rows if r["shape"] == shape and r["mode"] == "paper"), None)
            speedup = f"x{row['samples_per_s_per_setting'] / base['samples_per_s_per_setting']:6.2f}" if base else "-"
            mem = f"{row['peak_mem_gib']:.2f} GiB" if row["peak_mem_gib"] is not None else "-"
            pct = f"{row['pct_bf16_peak']:5.1f}%" if row["pct_bf16_peak"] is not None else "-"
            print(f"{shape:<10} {mode:<6} K={k:<3} dyn={dyn!s:<5} bf16={bf16!s:<5} dropout={drop or '-':<11} "
                  f"compile={comp:<15} {row['ms_per_step']:8.2f} ms/step {row['samples_per_s_per_setting']:9.1f} "
                  f"samples/s/setting {speedup}  {row['fwd_input_grad_tflops']:7.2f} TFLOP/s {pct} of bf16 peak  "
                  f"{mem}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
