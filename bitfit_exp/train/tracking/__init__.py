"""Live tracking of training runs (`train.report_to`, Hugging Face Trainer's convention): one interface, one class
per backend, a registry by name. Trackers are views of the run records: they log the rows the record gets, and a
tracker that fails never fails or changes training (train.tracking.session).

>>> sorted(TRACKERS)
['mlflow', 'tensorboard', 'wandb']
>>> not_installed(["tensorboard", "nope"], installed=lambda module: module != "tensorboard")
["tensorboard is not installed (pip install 'bitfit-exp[tracking]')"]
"""

import importlib.util
import sys
from collections.abc import Callable

from bitfit_exp.train.tracking.base import EXTRA, Tracker


def _registry() -> dict[str, type[Tracker]]:
    from bitfit_exp.train.tracking.mlflow_run import MLflowTracker
    from bitfit_exp.train.tracking.tensorboard_run import TensorBoardTracker
    from bitfit_exp.train.tracking.wandb_run import WandbTracker

    return {t.name: t for t in (TensorBoardTracker, MLflowTracker, WandbTracker)}


TRACKERS: dict[str, type[Tracker]] = _registry()


def tracker_names() -> list[str]:
    return list(TRACKERS)


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: an import blocked on purpose (tests, sys.modules)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def not_installed(names, installed: Callable[[str], bool] = _installed) -> list[str]:
    """One line per requested tracker whose package is missing, naming the extra that installs it."""
    return [f"{name} is not installed (pip install '{EXTRA}')" for name in names
            if name in TRACKERS and not installed(TRACKERS[name].module)]
