"""`bitfit-serve`: many BitFit task patches over one frozen backbone, as a JSON HTTP API (Starlette under uvicorn).

    bitfit-serve ~/bitfit-runs/minilm/rte/bitfit ~/bitfit-runs/minilm/sst2 --port 8000

Endpoints:
- `GET /health`: status, served checkpoint and its fingerprint, task count, forward passes and rows so far.
- `GET /tasks`: every served task: name, task, method, labels (empty for regression), pair or single text,
  max_length, metric, seed, patch.
- `POST /predict`: one item `{"task": "sst2", "text": "..."}` or a mixed list
  `{"items": [{"task": "rte", "text": "...", "text_pair": "..."}, ...]}` (a top-level "task" is the default of items
  that name none). Answer: `{"predictions": [...], "batch": {...}}`, one prediction per item in order: label,
  label_id and probabilities (or score for regression), logits, and `truncated` when the text was cut to the run's
  max_length as in training. `batch` says what the request was run with: how many requests, rows and tasks the
  batching window collected and how many forward passes they took.

Requests that arrive within `--window-ms` of each other are collected (up to `--max-batch` rows) and run together:
rows of different tasks share one forward pass (bitfit_exp.serving.engine). Bodies are parsed and tokenized in worker
threads (the event loop keeps answering) and refused (413) past `--max-body-mb` before they are read. Bad input is a
4xx with a one-line `{"error": ...}`, never a 500; the server keeps serving. A request (headers and body) that has
not arrived within `--request-timeout` gets 408 and its connection is closed; beyond `--max-connections` open
connections, a new one gets 503 and is closed (bitfit_exp.serving.limits).
"""

import argparse
import math
import sys

from bitfit_exp.commands.engine_options import build_engine, engine_arguments
from bitfit_exp.core.errors import UserError
from bitfit_exp.serving.server import create_app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bitfit-serve", description=__doc__.splitlines()[0])
    engine_arguments(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--window-ms", type=float, default=5.0,
                   help="how long to collect concurrent requests into one batch after the first arrives")
    p.add_argument("--max-items", type=int, default=1024, help="most items one request may hold")
    p.add_argument("--max-chars", type=int, default=100_000, help="longest text (characters) an item may hold")
    p.add_argument("--max-body-mb", type=float, default=16.0,
                   help="largest request body (MiB), refused with 413 before it is read")
    p.add_argument("--max-queued-rows", type=int, default=65536,
                   help="rows that may wait for the model; a request beyond that gets 503 (retry later)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a request (headers and body) may take to arrive; then 408 and the connection closes")
    p.add_argument("--max-connections", type=int, default=256,
                   help="most connections open at once; one more gets 503 and is closed at once")
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (info logs every request)")
    args = p.parse_args(argv)
    try:
        for flag, value, what in (("--max-body-mb", args.max_body_mb, "size"),
                                  ("--request-timeout", args.request_timeout, "number of seconds"),
                                  ("--max-connections", args.max_connections, "number"),
                                  ("--max-items", args.max_items, "number")):
            if not (math.isfinite(value) and value > 0):  # nan passes `<= 0`
                raise UserError(f"{flag}={value:g}; give a positive {what}")
        if not (math.isfinite(args.window_ms) and args.window_ms >= 0):
            raise UserError(f"--window-ms={args.window_ms:g}; give 0 (no waiting) or a positive number of milliseconds")
        if args.max_chars < 0:
            raise UserError(f"--max-chars={args.max_chars}; give 0 (no limit) or a positive count")
        if not 0 <= args.port <= 65535:
            raise UserError(f"--port={args.port}; give a port number from 0 to 65535")
        if args.max_queued_rows < args.max_items:
            raise UserError(f"--max-queued-rows={args.max_queued_rows} is below --max-items={args.max_items}: a "
                            f"full request could never be queued")
        engine = build_engine(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from bitfit_exp.serving.limits import serve  # imports uvicorn

    memory = engine.memory()
    print(f"bitfit-serve: {len(engine.patches)} tasks over {engine.name_or_path} (fingerprint {engine.fingerprint}, "
          f"{memory['backbone_bytes'] / 2**20:.1f} MiB backbone + {memory['task_tables_bytes'] / 2**20:.2f} MiB task "
          f"tables) on http://{args.host}:{args.port}", flush=True)
    app = create_app(engine, args.window_ms, args.max_items, int(args.max_body_mb * 2**20), args.max_queued_rows)
    serve(app, args.host, args.port, args.log_level, args.request_timeout, args.max_connections)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
