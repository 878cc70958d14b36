"""Training throughput: the paper loop vs full fine-tuning vs packed bias-only training (random weights).

    python scripts/bench.py --shape bert_base --device cuda --packed 1 5 20 40 --json bench.json
    python scripts/bench.py --shape tiny --device cpu --steps 5          # a CPU smoke run of the script itself

Prints one row per mode: samples/s per setting (each setting sees batch_size examples per step), the speed-up
over the paper loop, and peak accelerator memory; --json writes the same rows. Modes: `paper` (BitFit, fp32,
pad to 128, batch 8, one setting), `full` (full fine-tuning, same input), `packed K` (K BitFit settings in one
batch), each also with dynamic padding (`dyn`: lengths drawn from RTE-like 20-128 tokens) and bf16 autocast.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from bitfit_exp.methods import select
from bitfit_exp.packed import pack, packed_loss
from bitfit_exp.training import freeze

SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert_large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def batch(rows: int, length: int, dynamic: bool, device, gen):
    lengths = torch.randint(20, length + 1, (rows,), generator=gen) if dynamic else torch.full((rows,), length)
    width = int(lengths.max())
    ids = torch.randint(1000, 28000, (rows, width), generator=gen)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, torch.randint(2, (rows,)).to(device)


def measure(shape: str, mode: str, k: int, dynamic: bool, bf16: bool, args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=28996, num_labels=2, **SHAPES[shape])).to(device)
    selection = select("full" if mode == "full" else "bitfit", model)
    if mode == "packed":
        settings = pack(model, selection, k)
        params = [list(s.values()) for s in settings]
    else:
        params = [freeze(model, selection)]
    model.to(device).train()
    optimizer = torch.optim.AdamW([{"params": p} for p in params], lr=1e-4, eps=1e-6, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        inputs, labels = batch(k * args.batch_size, args.max_length, dynamic, device, gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**inputs).logits.float()
        loss = packed_loss(logits, labels, k, False)[0] if mode == "packed" else F.cross_entropy(logits, labels)
        loss.backward()
        for group in optimizer.param_groups:
            torch.nn.utils.clip_grad_norm_(group["params"], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / args.steps
    return {"shape": shape, "mode": mode, "k": k, "dynamic_padding": dynamic, "bf16": bf16,
            "ms_per_step": 1000 * seconds, "samples_per_s_per_setting": args.batch_size / seconds,
            "samples_per_s_total": k * args.batch_size / seconds,
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs="+", default=["bert_base"], choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--packed", nargs="+", type=int, default=[1, 5, 20, 40])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    rows = []
    for shape in args.shape:
        plan = [("paper", 1, False, False), ("full", 1, False, False)]
        plan += [("packed", k, dyn, bf16) for k in args.packed for dyn in (False, True) for bf16 in (False, True)]
        for mode, k, dyn, bf16 in plan:
            row = measure(shape, mode, k, dyn, bf16, args)
            row["device"] = device_name
            rows.append(row)
            base = next(r for r in rows if r["shape"] == shape and r["mode"] == "paper")
            mem = f"{row['peak_mem_gib']:.2f} GiB" if row["peak_mem_gib"] is not None else "-"
            print(f"{shape:<10} {mode:<6} K={k:<3} dyn={dyn!s:<5} bf16={bf16!s:<5} {row['ms_per_step']:8.2f} ms/step "
                  f"{row['samples_per_s_per_setting']:9.1f} samples/s/setting  "
                  f"x{row['samples_per_s_per_setting'] / base['samples_per_s_per_setting']:.2f}  {mem}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
