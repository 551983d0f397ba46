"""Which device a config's `device` setting means on this machine."""

from __future__ import annotations

import torch

from study.core.errors import UserError


def resolve_device(name: str) -> torch.device:
    """auto: the first CUDA GPU when there is one, else the CPU; a named device must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device '{name}' is not available on this machine; set device: auto or cpu.")
    return dev
