"""Names from a config that become parts of paths (a model's or task's name, a test prediction file's), and the
proof that a file about to be written lies in the folder meant for it: nothing a config says can make a run write
outside its folder.

>>> name_problem("RTE.tsv") is None, name_problem("../../x.tsv"), name_problem("..")
(True, "contains '/'", "is '..'")
>>> child(Path("runs"), "minilm")
PosixPath('runs/minilm')
>>> child(Path("runs"), "../x", "model.name")  # doctest: +ELLIPSIS
Traceback (most recent call last):
bitfit_exp.core.errors.UserError: model.name='../x' is not valid: it contains '/'; expected a plain file or folder ...
"""

import unicodedata
from pathlib import Path, PureWindowsPath

from bitfit_exp.core.errors import UserError

PLAIN = "a plain file or folder name (not empty, not . or .., no /, \\, drive or control characters)"


def name_problem(name) -> str | None:
    """Why `name` is not one plain path component, or None when it is: a name that, joined to a folder, stays in
    that folder on POSIX and on Windows (no separator, not `.` or `..`, not a drive, no NUL or other control
    character)."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a name"
    if name == "":
        return "is empty"
    if name in (".", ".."):
        return f"is {name!r}"
    if "/" in name:
        return "contains '/'"
    if "\\" in name:
        return "contains a backslash"
    if any(unicodedata.category(c) == "Cc" for c in name):  # NUL ends a C path; newlines break logs and tables
        return "contains a control character"
    if PureWindowsPath(name).drive:  # `C:x` is relative to drive C's current folder, not to this one
        return "names a drive"
    return None


def is_name(name) -> bool:
    """Whether `name` is one plain path component (name_problem)."""
    return name_problem(name) is None


def child(folder: Path, name, what: str = "name") -> Path:
    """`folder / name` when `name` is one plain path component; else a UserError naming it (as `what`, e.g. the config
    key it came from), before anything is created."""
    problem = name_problem(name)
    if problem:
        raise UserError(f"{what}={name!r} is not valid: it {problem}; expected {PLAIN}")
    return Path(folder) / name


def inside(path, folder) -> Path:
    """`path` unchanged when, resolved (`..` removed, symbolic links followed), it lies strictly inside `folder`
    resolved; else a UserError: a file is never written outside the folder meant for it."""
    resolved, within = Path(path).resolve(), Path(folder).resolve()
    if resolved == within or not resolved.is_relative_to(within):
        raise UserError(f"{path} resolves to {resolved}, outside {folder}; nothing was written there (a name in the "
                        f"config that is not a plain file name, or a symbolic link that points out of the folder)")
    return Path(path)
