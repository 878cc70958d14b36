"""The console scripts, one thin module each: parse the arguments, call the library, turn a UserError into one
line and exit code 2.

| script | module |
| --- | --- |
| bitfit-run | commands/run.py |
| bitfit-prefetch | commands/prefetch.py |
| bitfit-plan | commands/plan.py |
| bitfit-tables | commands/tables.py |
| bitfit-plot | commands/plot.py |
| bitfit-compare | commands/compare.py |
| bitfit-serve | commands/serve.py |
| bitfit-predict | commands/predict.py |
| bitfit-export | commands/export.py |
| bitfit-track | commands/track.py |
"""

import sys

from bitfit_exp.core.errors import UserError


def fail(e: UserError):
    """Print `e` as `error: ...` lines on stderr and exit with status 2 (bad input, nothing written)."""
    print("\n".join(f"error: {line}" for line in str(e).splitlines()), file=sys.stderr)
    raise SystemExit(2)
