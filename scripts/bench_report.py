"""Wall and CPU time of `bitfit-report` on a large synthetic runs dir (a fresh interpreter each time, as a user runs
it: imports, reading and checking every record, the tables, the setting cards, the figures, the page).

    python scripts/bench_report.py                    # 10,000 records, 3 runs
    python scripts/bench_report.py --records 2000 --repeat 1 --keep /tmp/bench-runs

The runs dir holds sealed records as bitfit-run writes them (tests/test_tables.py's make_record, with the config
`bitfit-run` composes, 10-20 epochs each): Table 3's sweep (BERT-base x 8 methods x 8 GLUE tasks x 4 lrs x 5 seeds),
Table 2's BERT-large and RoBERTa-base rows, MiniLM data-size runs, and MiniLM runs of several protocols of one's
own (train.batch_size, data.max_length) until --records are written. The load average is printed with the times:
timings on a busy machine are not those of a quiet one.
"""

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the tree timed: its bitfit_exp, also in the timed interpreter
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench_timing import timed  # noqa: E402 (beside this script)

COMMAND = "import sys; from bitfit_exp.commands.report import main; sys.exit(main())"
TASKS = ("qnli", "sst2", "mnli", "cola", "mrpc", "stsb", "rte", "qqp")
TABLE3_METHODS = ("full", "bitfit", "bm2_bq", "bm2", "bq", "frozen", "rand_uniform", "rand_rowcol")


def _jobs():
    """(model, task, method, overrides, changes, n_train) of each setting, paper protocols first, then without end."""
    for task, method, i in itertools.product(TASKS, TABLE3_METHODS, range(4)):
        yield "bert_base", task, method, ("+experiment=table3", f"lr_index={i}"), {}, None
    for task, method, i in itertools.product(TASKS, ("full", "bitfit"), range(4)):
        yield "bert_large", task, method, ("+experiment=table2", f"lr_index={i}"), {}, None
    for task, method in itertools.product(TASKS, ("full", "bitfit")):
        yield "roberta_base", task, method, ("+experiment=table2_roberta",), {}, None
    for method, n, subset in itertools.product(("full", "bitfit"), (100, 300, 1000, 3000), range(3)):
        yield "minilm", "sst2", method, (), {"data.max_train_samples": n, "data.train_subset_seed": subset}, n
    for batch, length in itertools.product((8, 16, 32, 64), (64, 128, 256)):
        for task, method, i in itertools.product(TASKS, TABLE3_METHODS, range(4)):
            yield "minilm", task, method, (f"lr_index={i}",), {"train.batch_size": batch,
                                                               "data.max_length": length}, None


def write_runs(root: Path, n_records: int, seeds: int = 5) -> int:
    """Sealed records under `root` (plain writes: the benchmark times reading, not writing); returns how many."""
    import json

    from test_tables import _composed, make_record

    from bitfit_exp.results.records import seal

    written = 0
    for model, task, method, overrides, changes, n in _jobs():
        lr_index = next((int(o.split("=")[1]) for o in overrides if o.startswith("lr_index=")), 0)
        if "+experiment" not in " ".join(overrides):
            overrides = tuple(o for o in overrides if not o.startswith("lr_index="))
        config = json.loads(_composed((f"model={model}", f"task={task}", f"method={method}", *overrides)))
        if "+experiment" not in " ".join(overrides):
            config["optim"]["lr"] = config["method"]["lr_grid"][lr_index]
        for key, value in changes.items():
            group, name = key.split(".")
            config[group][name] = value
        for seed in range(seeds):
            score = 60.0 + 3 * lr_index + seed * 0.7 + (n or 0) / 300
            record = make_record(model, task, method, None, seed, (score, score + 1) if task == "mnli" else score,
                                 config=config)
            if n:
                record["sizes"].update(train=n, train_examples=n)
            record = seal(record)
            path = root / record["setting"]["dir"] / f"seed{seed}" / "record.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1))
            written += 1
            if written == n_records:
                return written
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=10_000, help="records in the runs dir (default 10,000)")
    p.add_argument("--repeat", type=int, default=3, help="runs to time (default 3)")
    p.add_argument("--keep", default=None, help="write the runs dir and the page here (default: a temporary folder)")
    args = p.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        runs = root / "runs"
        if not (runs.is_dir() and any(runs.iterdir())):
            start = time.perf_counter()
            n = write_runs(runs, args.records)
            print(f"{n} records written in {time.perf_counter() - start:.0f} s")
        times = []
        for i in range(args.repeat):
            load = os.getloadavg()[0]
            wall, cpu, out = timed(COMMAND, [str(runs), "--out", str(root / "page")], env, REPO, "bitfit-report")
            times.append((wall, cpu))
            print(f"run {i + 1}: wall {wall:.2f} s, CPU {cpu:.2f} s (load average {load:.2f} on {os.cpu_count()} CPUs)")
        print(out.strip())
        size = (root / "page" / "index.html").stat().st_size
        print(f"median wall {statistics.median(w for w, _ in times):.2f} s, median CPU "
              f"{statistics.median(c for _, c in times):.2f} s; index.html {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
