"""Atomic file writes: through a temporary file in the same folder, fsync'd, then renamed into place, and the folder
fsync'd after the rename (and each folder created for it, in its parent), so that a written file survives a power
cut, not just a crash. A write that fails (a full disk, a quota, any OSError) removes its temporary file and raises
one line naming the path.

>>> import tempfile
>>> from pathlib import Path
>>> from bitfit_exp.core.atomic import write_atomic
>>> path = Path(tempfile.mkdtemp()) / "a.txt"
>>> write_atomic(path, lambda f: f.write(b"done"))
>>> path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
(b'done', ['a.txt'])
"""

import errno
import os
from collections.abc import Callable
from itertools import takewhile
from pathlib import Path
from typing import BinaryIO

from bitfit_exp.core.errors import UserError


def write_error(path: Path, error: BaseException) -> UserError:
    """One line for a failed write of `path`: "no space left on device" for ENOSPC, else the OS message."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        reason = "no space left on device"
    else:
        reason = (getattr(error, "strerror", None) or str(error) or type(error).__name__).splitlines()[0]
    return UserError(f"cannot write {path}: {reason}; nothing was replaced (free space and rerun to continue)")


def stage(path: Path, write: Callable[[BinaryIO], object], tmp: Path | None = None) -> Path:
    """Write `path`'s new content to `tmp` (default `.<name>.tmp` beside it) and fsync it; returns `tmp`.
    On failure the temporary file is removed and a UserError raised."""
    tmp = tmp or path.with_name(f".{path.name}.tmp")
    try:
        make_folders(path.parent)
        # A leftover (or a link planted under this predictable name) is removed, not written through: the content
        # goes to a file created here, never to where a link points.
        tmp.unlink(missing_ok=True)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None
    except BaseException:  # a failed serialization (or Ctrl-C) leaves no temporary file either
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def commit(staged: list[tuple[Path, Path]]) -> None:
    """Rename each staged (tmp, path) into place, then fsync their folders (the renames are entries of a folder);
    on failure remove the temporary files not yet renamed."""
    for i, (tmp, path) in enumerate(staged):
        try:
            os.replace(tmp, path)
        except OSError as e:
            discard([t for t, _ in staged[i:]])
            raise write_error(path, e) from None
    for folder in dict.fromkeys(path.parent for _, path in staged):
        sync_folder(folder)


def sync_folder(folder: Path) -> None:
    """fsync `folder`: the files renamed or created in it are then on disk, not only in the OS's cache. Nothing
    where a folder cannot be opened or fsync'd (Windows; some network and FUSE file systems)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL and the like: the file system cannot; the file itself was fsync'd and renamed
        pass
    finally:
        os.close(fd)


def make_folders(folder: Path) -> None:
    """Create `folder` and its missing parents, each fsync'd into its parent (a new seed folder survives a power cut
    with the record written into it)."""
    missing = list(takewhile(lambda f: not f.is_dir(), (folder, *folder.parents)))
    for f in reversed(missing):
        f.mkdir(exist_ok=True)
        sync_folder(f.parent)


def discard(tmps: list[Path]) -> None:
    for tmp in tmps:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, write: Callable[[BinaryIO], object], tmp: Path | None = None) -> None:
    """Replace `path` with what `write(f)` writes to a binary file, all or nothing."""
    commit([(stage(path, write, tmp), path)])


def check_out_folder(path, flag: str = "--out") -> Path:
    """`path` (~ expanded) when files can be written into it as a folder (it, or the nearest part of it that exists,
    is a writable folder; nothing is created here); else a one-line UserError naming `flag` and the fix.

    >>> check_out_folder("conf/config.yaml/tables")
    Traceback (most recent call last):
    bitfit_exp.core.errors.UserError: --out conf/config.yaml/tables: conf/config.yaml is a file, not a folder; give a \
folder (it is created if missing)
    """
    folder = Path(path).expanduser()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path.cwd())
    if not existing.is_dir():
        where = "" if existing == folder else f": {existing}"
        raise UserError(f"{flag} {path}{where} is a file, not a folder; give a folder (it is created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable; give a folder you can write in")
    return folder
