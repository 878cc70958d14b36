"""The files a run record names beside it, and whether they are the run's own: a patch
(`seed<k>/patch.safetensors`) carries its task, method, seed, setting hash and checkpoint fingerprint in its
metadata, and the record the patch's sha256 (`artifacts.patch_sha256`), so a patch copied from another run, or
damaged, is told apart from the one the run wrote (by the runner, bitfit-plan, the figures, export and serving).
"""

import hashlib
from pathlib import Path

from safetensors import SafetensorError, safe_open

from bitfit_exp.core.errors import first_line

PATCH_DIGEST = "patch_sha256"  # the key of a record's `artifacts` holding the sha256 of the patch the run wrote


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def patch_metadata(path: Path) -> dict[str, str]:
    """The metadata of the safetensors file at `path` (what save_patch stored: task, method, seed, setting, ...);
    OSError or SafetensorError when it is not a complete safetensors file (a truncated one included)."""
    with safe_open(str(path), "numpy") as f:
        return f.metadata() or {}


def patch_mismatch(path: Path, record: dict, metadata: dict[str, str] | None = None) -> str | None:
    """Why the patch file at `path` is not the one `record`'s run wrote, or None: its metadata names another task,
    method, seed, setting hash or checkpoint fingerprint than the record (a key it lacks is not compared: patches
    written before the setting hash was stored lack it), or its sha256 is not the record's artifacts.patch_sha256
    (records written before the digest was stored lack it: for them the metadata is all there is to compare).
    Raises OSError or SafetensorError when the file is unreadable."""
    meta = patch_metadata(path) if metadata is None else metadata
    config = record["config"]
    theirs = {"task": config["task"]["name"], "method": config["method"]["name"], "seed": record["seed"],
              "setting": record["setting"]["hash"]}
    for key, value in theirs.items():
        if meta.get(key) not in (None, str(value)):
            return f"it is {key} {meta[key]}'s patch"
    fingerprint = (record.get("fingerprints") or {}).get("model")
    if meta.get("model_fingerprint") not in (None, fingerprint):
        return "it was trained from another checkpoint than its record says"
    digest = (record.get("artifacts") or {}).get(PATCH_DIGEST)
    if digest is not None and file_sha256(path) != digest:
        return f"its content is not what the run wrote (sha256 differs from the record's {PATCH_DIGEST})"
    return None


def patch_problem(path: Path, record: dict) -> str | None:
    """Why the patch that `record` (read from `path`) names beside it cannot stand for its run: missing, unreadable,
    or not its own (patch_mismatch); None when it can, or when the record names no patch (train.save_patch=false, a
    seed that diverged before its first epoch)."""
    name = (record.get("artifacts") or {}).get("patch")
    if not name:
        return None
    patch = Path(path).parent / name
    if not patch.is_file():
        return f"its patch {patch} is missing"
    try:
        mismatch = patch_mismatch(patch, record)
    except (OSError, SafetensorError) as e:
        return f"its patch {patch} is unreadable ({first_line(e)})"
    return mismatch and f"its patch {patch} is not its own ({mismatch})"
