"""Model size: parameter counts (all, and nonzero) and MACs.

Units: params are counts, MACs are multiply-accumulates per image (not FLOPs = 2 x MACs). thop is the one MAC
counter (torch-pruning's count_ops_and_params counts 0.1-3.3 % fewer: it leaves out batch-norm and pooling ops).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # thop 0.1.1 imports distutils' LooseVersion
    import thop


def count_params(model: nn.Module) -> int:
    """All parameters, zeros included (dense storage)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Parameters that are not exactly zero (what unstructured pruning reduces)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs for one image of shape (C, H, W) (a leading batch dim is ignored), counted on a deep copy.

    thop leaves `total_ops`/`total_params` buffers on every module it profiles (thop #82, #168), so it never
    touches `model` itself. Dense count: zeros from unstructured pruning still cost MACs on dense kernels.
    """
    shape = tuple(input_shape)[-3:]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    clone = copy.deepcopy(model).eval()
    x = torch.zeros((1, *shape), device=device, dtype=dtype)
    with torch.no_grad():
        macs, _ = thop.profile(clone, inputs=(x,), verbose=False)
    return int(macs)
