"""The torch device a run or server uses (`auto`: CUDA, else MPS, else CPU).

>>> pick_device("cpu")
device(type='cpu')
"""

import torch

from bitfit_exp.core.errors import UserError


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"train.device={spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={spec} but CUDA is not available here; use train.device=auto or cpu")
    return device
