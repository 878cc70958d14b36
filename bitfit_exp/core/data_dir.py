"""`data.dir=auto`: a local copy of the task's data where one is found, else the Hugging Face hub, so the same
command works next to the shared data, after `bitfit-prefetch`, and on a machine that has only the hub.

Searched in order, relative to the current directory: $BITFIT_DATA_DIR (when set), ../shared/data/glue and
../shared/data (this project's shared copy, next to a clone), ~/bitfit-data/glue (where `bitfit-prefetch` saves by
default). A folder counts when it holds the task's folder (<dir>/<task>/, e.g. sst2/).

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> (root / "sst2").mkdir()
>>> local_copy("sst2", [str(root)]) == root.resolve(), local_copy("rte", [str(root)])
(True, None)
"""

import os
from pathlib import Path

AUTO = "auto"
SEARCHED = ("../shared/data/glue", "../shared/data", "~/bitfit-data/glue")


def searched() -> list[str]:
    """The folders `data.dir=auto` looks in, in order."""
    given = os.environ.get("BITFIT_DATA_DIR")
    return [*([given] if given and given != AUTO else []), *SEARCHED]


def local_copy(folder: str, where: list[str] | None = None) -> Path | None:
    """The first folder of `where` (default: `searched()`) that holds `folder`/ (a task's data), absolute; None."""
    for candidate in searched() if where is None else where:
        root = Path(os.path.expanduser(candidate))
        if (root / folder).is_dir():
            return root.resolve()
    return None


def no_copy_problem(task: str, folder: str) -> str:
    """The one line for `data.dir=auto` offline with no local copy of `task`."""
    return (f"data.dir=auto found no local copy of {task} ({folder}/ in {', '.join(searched())}) and the Hugging Face "
            f"hub is out of reach: run `bitfit-prefetch task={task}` once on a machine with internet (it saves to "
            f"~/bitfit-data/glue, which data.dir=auto finds), or pass data.dir=/path/to/glue")
