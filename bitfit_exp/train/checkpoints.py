"""Epoch checkpoints of both trainers: what they hold (trained tensors, optimizer state, RNG states, data order,
counters), written atomically, and read back only when every field has the type and shape its trainer expects;
anything else is set aside with one line and the seed starts over.

A checkpoint holds only plain data (dicts, lists and tuples of strings, numbers, None and tensors) and is read with
`torch.load(weights_only=True)`: loading one never runs code, so a file planted in a shared runs dir cannot run
anything in the job that resumes it; it is refused and set aside like a damaged one.

>>> sorted(RNG_KEYS)
['numpy', 'order', 'python', 'torch']
"""

import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from bitfit_exp.core.atomic import commit, discard, stage


def rng_states(order_rng: torch.Generator) -> dict:
    """Every random state a seed draws from, as plain data a checkpoint can hold (`storable`): Python's state tuple as
    it is, numpy's legacy tuple with its uint32 key array as an int64 tensor, torch's, the data order's (and CUDA's,
    with a GPU) ByteTensors. `set_rng_states` restores exactly these states."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    states = {"python": random.getstate(),
              "numpy": (name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)),
              "torch": torch.get_rng_state(), "order": order_rng.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict, order_rng: torch.Generator) -> None:
    """Put back the random states `rng_states` returned (Python's, numpy's, torch's, the data order's, CUDA's)."""
    random.setstate(states["python"])
    name, key, pos, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    order_rng.set_state(states["order"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, **state) -> None:
    """Everything needed to continue after this epoch exactly as if never stopped; atomic like the records."""
    save_checkpoints({path: state})


def save_checkpoints(states: dict[Path, dict]) -> None:
    """Several checkpoints (the settings of one pack) written first and renamed into place together afterwards, so
    a job killed while saving leaves them at one epoch and they resume as the same pack (bit for bit); only a kill
    within the rename loop splits them, and then each still resumes from its own epoch. A failed write (full disk)
    raises one line and leaves no temporary file; the previous checkpoints stay."""
    states = {path: storable(state, f"checkpoint {path}") for path, state in states.items()}
    staged = []
    try:
        for path, state in states.items():
            staged.append((stage(path, lambda f, state=state: torch.save(state, f)), path))
    except BaseException:
        discard([tmp for tmp, _ in staged])
        raise
    commit(staged)


_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.nn.Parameter)


def storable(value, where: str = "checkpoint"):
    """`value` as a checkpoint stores it: numpy numbers become Python ones, and everything must be plain data that
    `torch.load(weights_only=True)` reads back without running code (dicts, lists and tuples of strings, numbers,
    None and tensors). Anything else is a TypeError naming where it is, before any file is written: a checkpoint
    the next run would refuse is a bug of the trainer that filled it.

    >>> storable({"best": (2, np.float64(0.5)), "epochs": [{"loss": np.float32(1.0)}]})
    {'best': (2, 0.5), 'epochs': [{'loss': 1.0}]}
    >>> storable({"rng": (1, np.zeros(2))})
    Traceback (most recent call last):
    TypeError: checkpoint['rng'][1] holds a ndarray, which only unpickling code could read back
    """
    if isinstance(value, np.generic):  # np.float64 passes for a float, yet pickles as a numpy object
        return storable(value.item(), where)
    if type(value) in _PLAIN:
        return value
    if isinstance(value, dict):
        return {storable(k, where): storable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(storable(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(f"{where} holds a {type(value).__name__}, which only unpickling code could read back")


_NUMBER, _OPTIONAL_PAIR = (int, float), (tuple, list, type(None))
CHECKPOINT_FIELDS = {  # what each trainer reads back from its checkpoint, and the type it must have
    "single": {"epoch": int, "trained": dict, "optimizer": dict, "schedule": dict, "rng": dict, "epochs": list,
               "best": _OPTIONAL_PAIR, "best_state": (dict, type(None)), "train_s": _NUMBER, "eval_s": _NUMBER},
    "packed": {"epoch": int, "trained": dict, "adam": dict, "order": torch.Tensor,
               "dropout": (torch.Tensor, type(None)), "epochs": list, "best": _OPTIONAL_PAIR,
               "best_state": (dict, type(None)), "train_s": _NUMBER, "eval_s": _NUMBER},
}


RNG_KEYS = {"python", "numpy", "torch", "order"}


def checkpoint_problem(state, mode: str, shapes: dict[str, torch.Size] | None = None) -> str | None:
    """Why `state` cannot be resumed by the `mode` trainer (None when it can). With `shapes` (trained tensor name ->
    shape), its trained values must match them too.

    >>> checkpoint_problem([1, 2], "single")
    'holds a list, not a checkpoint'
    >>> checkpoint_problem({"mode": "single", "epoch": 2}, "single")[:26]
    'lacks trained, optimizer, '
    """
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a checkpoint"
    fields = CHECKPOINT_FIELDS[mode]
    missing = [key for key in fields if key not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    wrong = [key for key, kind in fields.items() if not isinstance(state[key], kind)]
    if wrong or isinstance(state["epoch"], bool) or state["epoch"] < 1:
        return f"has unusable {', '.join(wrong or ['epoch'])}"
    if mode == "single" and not RNG_KEYS <= set(state["rng"]):
        return "lacks random states"
    if "diverged" in state and not isinstance(state["diverged"], dict | type(None)):
        return "has unusable diverged"
    for key in ("trained", "best_state"):
        values = state[key] or {}
        if not all(isinstance(n, str) and isinstance(v, torch.Tensor) for n, v in values.items()):
            return f"has {key} values that are not named tensors"
        if shapes is not None and values and {n: v.shape for n, v in values.items()} != shapes:
            return f"has {key} tensors of another model or method"
    return None


def set_aside_checkpoint(path: Path, what: str) -> None:
    """Rename an unusable checkpoint to checkpoint.pt.bad-<time> (kept for a look, never read again); says so in one
    line that starts with `what`."""
    target = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        os.replace(path, target)
        kept = f"set aside as {target.name}"
    except OSError as e:
        kept = f"could not set it aside ({e.strerror})"
    print(f"warning: {what}; {kept}; starting this seed over", flush=True)


def unloadable(path: Path, e: Exception) -> str:
    """Why the checkpoint at `path` did not load (`e`), in one line: the code its pickle would have run (named
    from its opcodes, never run), else the file as unreadable (cut short by a crash while saving)."""
    try:
        code = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a torch zip file, or one cut short: nothing to name
        code = []
    if not code:
        return f"unreadable checkpoint {path} ({type(e).__name__})"
    names = [name.encode("unicode_escape").decode()[:80] for name in code[:4]]  # a planted name may hold newlines
    return (f"checkpoint {path} would run code to load ({', '.join(names)}{', ...' if len(code) > 4 else ''}), so it "
            f"was not loaded (an older bitfit-exp stored numpy random states this way: such a checkpoint is refused "
            f"too)")


def read_checkpoint(path: Path, mode: str, shapes: dict[str, torch.Size] | None = None) -> dict | None:
    """The state saved at `path` by a trainer of this `mode` ("single" or "packed"), else None (start over).

    The two trainers draw dropout from different streams, so neither continues the other's checkpoint (it stays,
    for a later run of its own trainer). A file that does not load, or loads as something neither trainer wrote
    (missing keys, wrong types; with `shapes`, tensors of another model), is reported and set aside. Loading never
    unpickles code (weights_only): a file that would need it is refused, without running any of it.
    """
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file cut short by a crash while saving is not worth a failed job
        set_aside_checkpoint(path, unloadable(path, e))
        return None
    written = state.get("mode", "single") if isinstance(state, dict) else None
    if isinstance(written, str) and written in CHECKPOINT_FIELDS and written != mode:
        print(f"note: {path} was written by the {written} trainer; starting this seed over with the {mode} one",
              flush=True)
        return None
    problem = checkpoint_problem(state, mode, shapes)
    if problem:
        set_aside_checkpoint(path, f"checkpoint {path} is not a {mode} checkpoint of this run: it {problem}")
        return None
    return state
