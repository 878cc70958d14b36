"""The installable package is complete: a wheel (what a non-editable `pip install .` installs) carries every module
and every Hydra config the source tree has, so `bitfit-run` works outside a checkout."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_module_and_config(tmp_path):
    source = tmp_path / "source"  # a clean copy: setuptools' build/ folder would carry files from earlier builds
    for folder in ("bitfit_exp", "conf"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("bitfit_exp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "bitfit_exp").rglob("*.py")}
    configs = {"bitfit_exp/conf/" + str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert modules - names == set() and configs - names == set()
