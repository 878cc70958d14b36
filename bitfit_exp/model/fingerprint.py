"""What a checkpoint and a data set *are*: short content hashes, so that two runs reading the same weights and rows
are one setting wherever the files came from (hub name, `bitfit-prefetch` folder, a copy on another disk), and a
16-row debug copy of a data folder is never taken for the real one.

- model: the encoder's parameters as loaded (names below the base prefix, shapes, dtypes, values), the architecture
  keys of its config that change what it computes (per family), and the tokenizer (vocabulary and how it encodes a
  probe text); the head and any parameter the checkpoint lacks are left out (initialised at random). Cached on disk
  per checkpoint folder (file sizes and mtimes), since hashing BERT-large's 1.3 GB takes seconds.
- data: per split read (train and the dev splits; test labels are hidden and do not change results), the number of
  rows and a hash of every column's values.

>>> import torch
>>> tensors_digest({"a.bias": torch.zeros(2)}) == tensors_digest({"a.bias": torch.zeros(2)})
True
>>> tensors_digest({"a.bias": torch.zeros(2)}) == tensors_digest({"a.bias": torch.ones(2)})
False
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# Bump when what is hashed changes: every cached fingerprint is then recomputed. 2: the family keys below, and no
# parameter the checkpoint lacks (a BERT saved without its pooler: its random pooler was hashed); a checkpoint
# with none of those keys and every encoder parameter (BERT, RoBERTa, XLM-R, ELECTRA, MiniLM) keeps its value.
VERSION = 2
# Config keys that change what an encoder computes (its weights' names and shapes cover the rest), in BERT's names.
ARCHITECTURE_KEYS = ("model_type", "hidden_act", "layer_norm_eps", "position_embedding_type", "num_attention_heads",
                     "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob",
                     "classifier_dropout", "pad_token_id")
# The same for each family with other names or further computation keys (the BERT-style families have none, so
# their fingerprints are those of version 1). ALBERT: its shared layer runs num_hidden_layers times, which no
# weight shows.
FAMILY_KEYS = {
    "gpt2": ("n_head", "layer_norm_epsilon", "activation_function", "attn_pdrop", "resid_pdrop", "embd_pdrop",
             "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"),
    "distilbert": ("n_heads", "activation", "dropout", "attention_dropout", "qa_dropout", "seq_classif_dropout",
                   "sinusoidal_pos_embds"),
    "qwen2": ("num_key_value_heads", "head_dim", "rms_norm_eps", "attention_dropout", "rope_parameters",
              "rope_theta", "rope_scaling", "sliding_window", "use_sliding_window", "max_window_layers",
              "layer_types"),
    "deberta-v2": ("relative_attention", "pos_att_type", "position_buckets", "max_relative_positions", "norm_rel_ebd",
                   "share_att_key", "position_biased_input", "conv_kernel_size", "conv_act", "pooler_dropout",
                   "pooler_hidden_act"),
    "albert": ("num_hidden_layers", "num_hidden_groups", "inner_group_num", "classifier_dropout_prob"),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "camembert", "electra"), ()),
}
# For a model_type not in FAMILY_KEYS: every key with one of these words (split at "_"), or ending in "pdrop".
COMPUTATION_WORDS = frozenset({"act", "activation", "dropout", "eps", "epsilon", "norm", "rope", "theta", "scaling",
                               "position", "positions", "window", "heads", "head"})
PROBE = ("Hello, WORLD! Ça va? naïve café: 1,234.5 tokens", "A SECOND segment")


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:16]


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of names, shapes, dtypes and values (bit for bit) of `tensors`."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_digest(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    probe = tokenizer(*PROBE)
    encoded = {k: list(v) for k, v in probe.items() if k in ("input_ids", "token_type_ids")}
    return _sha(json.dumps(vocab).encode(), json.dumps(encoded, sort_keys=True).encode())


def computation_keys(config: dict) -> tuple[str, ...]:
    """The keys of `config` (a config's to_dict()) that the fingerprint hashes: ARCHITECTURE_KEYS and its family's.

    >>> from transformers import GPT2Config
    >>> computation_keys(GPT2Config().to_dict())[:4]
    ('model_type', 'pad_token_id', 'n_head', 'layer_norm_epsilon')
    >>> computation_keys({"model_type": "new", "norm_eps": 1e-5, "rope_theta": 1e4, "vocab_size": 9})
    ('model_type', 'norm_eps', 'rope_theta')
    """
    family = FAMILY_KEYS.get(config.get("model_type"))
    if family is None:
        family = tuple(k for k in config if k.endswith("pdrop") or COMPUTATION_WORDS.intersection(k.split("_")))
    return tuple(k for k in dict.fromkeys((*ARCHITECTURE_KEYS, *family)) if k in config)


def model_digest(model, tokenizer) -> str:
    """The fingerprint of a loaded sequence classifier's pre-trained part and its tokenizer. Parameters the
    checkpoint lacks (`models.new_parameters`: a missing pooler) are left out: they are random, not pre-trained."""
    from bitfit_exp.model.loading import new_parameters

    prefix, new = model.base_model_prefix + ".", set(new_parameters(model))
    encoder = {n[len(prefix):]: p for n, p in model.named_parameters() if n.startswith(prefix) and n not in new}
    config = model.config.to_dict()
    arch = {k: config[k] for k in computation_keys(config)}
    return _sha(json.dumps(arch, sort_keys=True, default=str).encode(), tensors_digest(encoder).encode(),
                tokenizer_digest(tokenizer).encode())


def _cache_file() -> Path:
    root = os.environ.get("BITFIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "bitfit-exp"
    return Path(root).expanduser() / "fingerprints.json"


def _checkpoint_dir(path: str) -> Path | None:
    """The local folder a checkpoint is read from (hub names: the cached snapshot), or None when not on disk yet."""
    if Path(path).is_dir():
        return Path(path).resolve()
    try:
        from transformers.utils import cached_file

        config = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False,
                             _raise_exceptions_for_connection_errors=False)
    except Exception:  # not cached, offline, or not a hub name
        return None
    return Path(config).resolve().parent if config else None


def _cache_key(folder: Path) -> str:
    import transformers

    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    return json.dumps([VERSION, transformers.__version__.split(".")[0], str(folder), stats])


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, value: str) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = {**_read_cache(), key: value}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(path)
    except OSError:
        pass  # a cache that cannot be written only costs time


def model_fingerprint(name_or_path: str) -> str:
    """The fingerprint of checkpoint `name_or_path` (hub name, folder or pkg:), loading it only on a cache miss."""
    from bitfit_exp.model.loading import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path(name_or_path)
    folder = _checkpoint_dir(path)
    key = _cache_key(folder) if folder is not None else None
    if key is not None and (hit := _read_cache().get(key)):
        return hit
    value = model_digest(load_model(name_or_path, num_labels=2), load_tokenizer(name_or_path))
    if key is not None or (folder := _checkpoint_dir(path)) is not None:  # a hub download lands in the cache
        _write_cache(key or _cache_key(folder), value)
    return value


def split_digest(dataset) -> dict:
    """{"rows": n, "sha": hash of every column's values} of one split (a datasets.Dataset or a DataFrame)."""
    frame = dataset if isinstance(dataset, pd.DataFrame) else dataset.to_pandas()
    h = hashlib.sha256()
    for column in sorted(frame.columns):
        values = frame[column]
        if values.dtype == object and not values.map(lambda v: isinstance(v, str)).all():
            values = values.map(lambda v: json.dumps(v.tolist() if isinstance(v, np.ndarray) else v,
                                                     sort_keys=True, default=str))
        h.update(f"{column}|{values.dtype}|".encode())
        h.update(pd.util.hash_pandas_object(values, index=False).to_numpy().tobytes())
    return {"rows": len(frame), "sha": h.hexdigest()[:16]}


def data_fingerprint(splits: dict, names) -> dict:
    """{"splits": {split: split_digest}, "digest": one hash over them} for the splits `names` of `splits`."""
    per_split = {name: split_digest(splits[name]) for name in names}
    return {"splits": per_split, "digest": _sha(json.dumps(per_split, sort_keys=True).encode())}


def of_config(cfg) -> dict:
    """The fingerprints of what a run of config `cfg` reads (loads its data, and its checkpoint on a cache miss)."""
    from bitfit_exp.kinds.splits import load_splits

    splits = load_splits(cfg.task, cfg.data)
    return {"model": model_fingerprint(cfg.model.name_or_path),
            "data": data_fingerprint(splits, ["train", *cfg.task.eval_splits])}
