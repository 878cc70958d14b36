"""`bitfit-serve`: many BitFit task patches over one frozen backbone, as a JSON HTTP API (Starlette under uvicorn;
the endpoints: bitfit_exp.serving.server; the connection limits: bitfit_exp.serving.limits).

    bitfit-serve ~/bitfit-runs/minilm/rte/bitfit ~/bitfit-runs/minilm/sst2 --port 8000

Every flag is checked before a patch is read: a bad value is one line and exit code 2.
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
