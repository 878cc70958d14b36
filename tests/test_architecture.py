"""The package's layout is its architecture: every import points down the layers, no module imports itself back
through others, no private API of Hydra is used, and every console script is a thin module of commands/."""

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "bitfit_exp"
# From the ground up; a package may import its own modules and any package listed before it.
LAYERS = ["core", "data", "kinds", "model", "results", "train", "serving", "config", "commands"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every bitfit_exp import in the file, those inside functions included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bitfit_exp":
                found += [(node.lineno, f"bitfit_exp.{a.name}") for a in node.names]
            elif node.module.startswith("bitfit_exp."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("bitfit_exp.")]
    return found


MODULES = {module_name(p): p for p in PKG.rglob("*.py") if "conf" not in p.relative_to(PKG).parts[:1]}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_top_level_holds_only_the_layers():
    top = {p.name for p in PKG.iterdir() if not p.name.startswith((".", "__"))}
    assert top == set(LAYERS), top - set(LAYERS)


def test_every_import_points_down():
    upward = []
    for name, path in MODULES.items():
        here = layer(name)
        if here is None:
            continue
        for line, target in imports_of(path):
            there = layer(target)
            if there is not None and LAYERS.index(there) > LAYERS.index(here):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = {name: {t for _, t in imports_of(path) if t in MODULES and t != name} for name, path in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_no_private_hydra_or_datasets_internals():
    private = [f"{path.relative_to(ROOT)}: {line}" for path in MODULES.values()
               for line in path.read_text().splitlines()
               if ("hydra._internal" in line or "._internal" in line) and not line.lstrip().startswith("#")]
    assert not private, private


def test_console_scripts_are_thin_commands():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(scripts) == 11  # bitfit-track, bitfit-report: the 10th and 11th
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert module.startswith("bitfit_exp.commands."), (name, target)
        path = PKG / "commands" / f"{module.rsplit('.', 1)[1]}.py"
        assert func in {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert len(path.read_text().splitlines()) < 200, f"{path.name} holds more than argument parsing and a call"
