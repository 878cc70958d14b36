"""The dependency floors in pyproject.toml are the versions `make test-min` installs (.ci/min-versions.txt)."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_PINNED_AT_FLOOR = {"torch"}  # CI installs the CPU build on disk (see .ci/min-versions.txt), above the floor


def floors() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(,<[0-9.]+)?", dep).group(1, 2)
        found[name.lower()] = floor
    return found


def pins() -> dict[str, str]:
    lines = (ROOT / ".ci" / "min-versions.txt").read_text().splitlines()
    return dict(line.lower().split("==") for line in lines if line and not line.startswith("#"))


def same_version(a: str, b: str) -> bool:
    def parts(v):
        return [int(x) for x in v.split(".")] + [0] * (3 - v.count(".") - 1)

    return parts(a) == parts(b)


def test_every_dependency_is_pinned_at_its_floor():
    declared, pinned = floors(), pins()
    assert set(declared) == set(pinned)
    off = {n: (declared[n], pinned[n]) for n in declared
           if n not in NOT_PINNED_AT_FLOOR and not same_version(declared[n], pinned[n])}
    assert off == {}
    assert declared["transformers"] == "5.0"  # BERT/RoBERTa go through AttentionInterface from 5.0 on (packed.py)
