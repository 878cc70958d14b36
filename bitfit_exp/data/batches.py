"""Encoded rows (`Encoded`: what a task kind's encode returns) and their batches: subsets, padding (to max_length or
the longest row), gathering rows into tensors.

>>> subset_rows(10, limit=3, seed=0) is not None
True
"""

from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute  # noqa: F401 (pa.compute)
import torch
import torch.nn.functional as F


@dataclass
class Encoded:
    """One tokenized split, one row per model input ("feature"): variable-length token lists, the kind's labels
    (an array, or per-row lists for token tags), `idx` (GLUE's idx; the example of each feature for kinds with
    several features per example), and `extra`: what the task kind needs to decode and score (offsets, example
    ids, word positions, gold answers, ...)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: np.ndarray | list
    idx: np.ndarray
    extra: dict = field(default_factory=dict, repr=False)
    _padded: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    def padded(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The split as tensors, built once: ids and token types [N, longest] padded with pad_id / 0, and lengths."""
        if pad_id not in self._padded:
            lengths = torch.tensor([len(x) for x in self.input_ids], dtype=torch.long)
            width = int(lengths.max()) if len(lengths) else 0
            ids = torch.full((len(self), width), pad_id, dtype=torch.long)
            types = None if self.token_type_ids is None else torch.zeros((len(self), width), dtype=torch.long)
            for r, row in enumerate(self.input_ids):
                ids[r, :len(row)] = torch.tensor(row)
                if types is not None:
                    types[r, :len(row)] = torch.tensor(self.token_type_ids[r])
            self._padded[pad_id] = ids, types, lengths
        return self._padded[pad_id]


def subset_rows(n: int, limit: int | None = None, seed: int | None = None):
    """Row indices of a training subset of a split with `n` rows: the first `limit` rows (seed None), or the first
    `limit` of a permutation drawn with `seed`. Nested: with one seed, a smaller subset is a prefix of a larger one.

    >>> list(subset_rows(10, 3)), subset_rows(10, 3, seed=0) == subset_rows(10, 5, seed=0)[:3]
    ([0, 1, 2], True)
    """
    k = n if limit is None else min(limit, n)
    if seed is None:
        return range(k)
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))[:k].tolist()


def padding(data_cfg) -> dict:
    """gather()'s padding arguments from the data config: to max_length (paper), or to the batch's longest row,
    rounded up to a multiple of data.pad_multiple (fewer distinct shapes for torch.compile and tensor cores)."""
    if data_cfg.padding == "max_length":
        return {"pad_to": data_cfg.max_length}
    return {"multiple": data_cfg.get("pad_multiple"), "cap": data_cfg.max_length}


def gather(data: Encoded, rows, pad_id: int, pad_to: int | None = None, multiple: int | None = None,
           cap: int | None = None, labels=None) -> dict[str, torch.Tensor]:
    """One padded batch of `rows`: to `pad_to`, or to the longest of these rows rounded up to `multiple` (at most
    `cap`). With `labels` (a task kind's `batch_labels`), the rows' loss targets are added to the model inputs."""
    ids, types, lengths = data.padded(pad_id)
    index = torch.as_tensor(list(rows), dtype=torch.long)
    width = pad_to or int(lengths[index].max())
    if multiple and not pad_to:
        width = min(-(-width // multiple) * multiple, cap or width + multiple)
    wider = max(0, width - ids.shape[1])  # wider than the split's longest row
    batch = {"input_ids": F.pad(ids[index, :width], (0, wider), value=pad_id),
             "attention_mask": (torch.arange(width) < lengths[index, None]).long()}
    if types is not None:
        batch["token_type_ids"] = F.pad(types[index, :width], (0, wider))
    if labels is not None:
        batch.update(labels(data, index, width))
    return batch


def batches(data: Encoded, order, batch_size: int, pad_id: int, labels=None, **pad):
    """Yield padded tensor batches over `order` (padding and `labels` as in `gather`)."""
    order = list(order)
    for start in range(0, len(order), batch_size):
        yield gather(data, order[start:start + batch_size], pad_id, labels=labels, **pad)
