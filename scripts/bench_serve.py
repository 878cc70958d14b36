"""Memory and throughput of serving N task patches over one backbone (bitfit_exp.serving.engine) against N separate
fine-tuned models, and of mixed-task batches against one-task-at-a-time batches.

    python scripts/bench_serve.py /tmp/serve-runs/minilm --tasks 1 4 16 64 --rows 256 --batch-size 32 --json out.json

For each N: N patches (taken round-robin over the tasks found, so N=4 covers four tasks; beyond the patches found,
the same ones again under new names: each name holds its own bias and head tables, so memory and compute are those
of N distinct patches), and a workload of --rows rows spread evenly over the N tasks (dev-set texts of each task).
Measured:
- shared: tensor bytes of the backbone + all task tables; process RSS growth when the engine is built;
- separate: tensor bytes of one patched model (load_model + apply_patch) and RSS growth per model, measured for
  --measure-separate models and multiplied by N (N models of this size do not all fit a small machine);
- rows/s: the workload as mixed batches (every --batch-size rows one forward pass, whatever tasks they mix), one task
  at a time through the shared engine (each task's rows in their own batches), and one task at a time through
  separate patched models (the same forward work as one model per task).
"""

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitfit_exp.model.loading import load_model  # noqa: E402
from bitfit_exp.model.patch import apply_patch  # noqa: E402
from bitfit_exp.serving.engine import MultiTaskEngine, find_patches  # noqa: E402

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tensor_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def choose(patches, n: int):
    """n patches round-robin over tasks; repeats (renamed copies) beyond the distinct ones."""
    by_task = {}
    for p in patches:
        by_task.setdefault(p.task, []).append(p)
    order = [group[i] for i in range(max(map(len, by_task.values()))) for group in by_task.values() if i < len(group)]
    chosen = []
    for i in range(n):
        base = order[i % len(order)]
        copy = type(base)(**{**base.__dict__, "name": f"{base.name}#{i // len(order)}" if i >= len(order) else base.name})
        chosen.append(copy)
    return chosen, min(n, len(order))


def texts(patch, data_dir: Path, count: int) -> list[dict]:
    frame = pd.read_parquet(data_dir / patch.task / "validation.parquet").head(count)
    items = []
    for _, row in frame.iterrows():
        item = {"task": patch.name, "text": str(row[patch.text_fields[0]])}
        if len(patch.text_fields) == 2:
            item["text_pair"] = str(row[patch.text_fields[1]])
        items.append(item)
    return items


def workload(engine, total: int, data_dir: Path):
    per_task = -(-total // len(engine.patches))
    cache, items = {}, []
    for patch in engine.patches:
        if patch.task not in cache:
            cache[patch.task] = texts(patch, data_dir, per_task)
        items += [{**item, "task": patch.name} for item in cache[patch.task][:per_task]]
    items = [items[i] for i in sorted(range(len(items)), key=lambda i: (i % per_task, i))][:total]  # interleaved
    return engine.prepare(items)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def per_task(rows):
    groups = {}
    for r in rows:
        groups.setdefault(r.task, []).append(r)
    return groups


def separate_forward(engine, models: dict, rows, batch_size: int):
    """Each task's rows through a plain patched model of that task, in batches of batch_size."""
    with torch.inference_mode():
        for task, group in per_task(rows).items():
            model = models[engine.patches[task].path]
            for start in range(0, len(group), batch_size):
                model(**engine._batch(group[start:start + batch_size]))


def bench(args) -> list[dict]:
    device = torch.device(args.device)
    found = find_patches([str(p) for p in args.runs])
    print(f"{len(found)} patches found ({', '.join(sorted({p.task for p in found}))}); device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    # separate models: measured for a few, the rest computed from the per-model size; one load first, uncounted,
    # so that what the first load of a process allocates for good (kernels, caches) is not charged to a model
    warm = load_model(found[0].model, found[0].num_labels)
    del warm
    gc.collect()
    before, separate = rss_bytes(), {}
    for patch in found[:args.measure_separate]:
        separate[patch.path] = apply_patch(load_model(patch.model, patch.num_labels), patch.path).to(device).eval()
    gc.collect()
    per_model_rss = (rss_bytes() - before) / max(1, len(separate))
    per_model_bytes = tensor_bytes(next(iter(separate.values())))
    results = []
    for n in args.tasks:
        chosen, distinct = choose(found, n)
        gc.collect()
        before = rss_bytes()
        engine = MultiTaskEngine(chosen, device=device, max_batch=args.batch_size)
        gc.collect()
        engine_rss = rss_bytes() - before
        memory = engine.memory()
        rows = workload(engine, args.rows, args.data_dir)
        mixed = timed(lambda e=engine, r=rows: e.logits(r), args.repeats)
        one_by_one = timed(lambda e=engine, r=rows: [e.logits(g) for g in per_task(r).values()], args.repeats)
        models = {p.path: separate[p.path] if p.path in separate else next(iter(separate.values())) for p in chosen}
        plain = timed(lambda e=engine, m=models, r=rows: separate_forward(e, m, r, args.batch_size), args.repeats)
        row = {"n": n, "distinct_patches": distinct, "rows": len(rows), "batch_size": args.batch_size,
               "shared_backbone_mib": memory["backbone_bytes"] / 2**20,
               "shared_tables_mib": memory["task_tables_bytes"] / 2**20,
               "shared_rss_mib": engine_rss / 2**20,
               "separate_tensors_mib": n * per_model_bytes / 2**20, "separate_rss_mib": n * per_model_rss / 2**20,
               "separate_measured": min(n, len(separate)),
               "mixed_rows_s": len(rows) / mixed, "shared_one_task_rows_s": len(rows) / one_by_one,
               "separate_rows_s": len(rows) / plain}
        results.append(row)
        print(json.dumps(row), flush=True)
        del engine
    return results


def table(results: list[dict]) -> str:
    head = ("| N | shared: backbone + tables MiB (RSS growth) | N separate models MiB (RSS) | mixed rows/s | "
            "one task at a time, shared rows/s | separate models rows/s |\n| --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in results:
        lines.append(f"| {r['n']} | {r['shared_backbone_mib']:.1f} + {r['shared_tables_mib']:.2f} "
                     f"({r['shared_rss_mib']:.0f}) | {r['separate_tensors_mib']:.0f} ({r['separate_rss_mib']:.0f}) | "
                     f"{r['mixed_rows_s']:.1f} | {r['shared_one_task_rows_s']:.1f} | {r['separate_rows_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="runs dir(s) or run folders with patches of one checkpoint")
    p.add_argument("--tasks", nargs="+", type=int, default=[1, 4, 16, 64], help="N: task patches served at once")
    p.add_argument("--rows", type=int, default=256, help="rows of the workload (spread evenly over the N tasks)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up; the best is kept")
    p.add_argument("--measure-separate", type=int, default=4, help="separate patched models actually loaded")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", type=Path, default=GLUE, help="GLUE parquet copy for the workload's texts")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    results = bench(args)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
