"""Timing one console-script run in a fresh interpreter, as a user runs it (shared by scripts/bench_plan.py and
scripts/bench_report.py).

    wall, cpu, stdout = timed("import sys; from bitfit_exp.commands.plan import main; sys.exit(main())",
                              ["+experiment=table3"], dict(os.environ), cwd=REPO, name="bitfit-plan")
"""

import resource
import subprocess
import sys
import time
from pathlib import Path


def timed(command: str, argv: list[str], env: dict, cwd: Path, name: str) -> tuple[float, float, str]:
    """(wall s, CPU s of the child: user + system, its stdout) of `python -c command argv...`; exits on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", command, *argv], capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"{name} failed:\n{out.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out.stdout
