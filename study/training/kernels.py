"""Keep training off CPU kernels known to be broken.

oneDNN issue #6035 (open; present in the oneDNN of the torch 2.14.1 wheels): the weight-gradient kernel of a 1x1
convolution with stride > 1 ("jit_1x1:avx2 backward_weights", also the avx512_core one by the upstream report)
copies the strided input into a workspace ("rtus": reduce to unit stride) and writes past its end when the input
has fewer channels than the kernel's block (8 on AVX2, 16 on AVX-512), in channels_last fp32. glibc then aborts
somewhere else ("corrupted double-linked list", "double free"), or the process segfaults, or, where the buffer
happens to be 128-byte aligned, memory is silently overwritten. The ResNet shortcuts of narrow or pruned students
are exactly such convolutions.

The workaround does by hand what that kernel's workspace does: it computes such a convolution as a stride-1
convolution of the subsampled input, ``conv2d(x[:, :, ::s, ::s], w)`` (the same output, the same gradients, the same
weights and state_dict), so oneDNN never takes the strided 1x1 path for it. The rule: every 1x1 Conv2d with stride
> 1 and fewer than 16 input channels per group, on the CPU, in any layout and precision. 16 is the AVX-512 block
of the upstream report (AVX2's is 8), so one rule covers both without reading the ISA. With the rewrite every
model keeps channels_last: these students train within noise of NCHW (the other way around the bug), wider models
faster; wider convolutions are left to oneDNN, as rewriting them too costs time. The numbers, from
``python -m devbench.layout --guard``: docs/PLATFORMS.md, "Framework bugs and their workarounds". Only the
backward pass is affected upstream; forward-only passes (evaluation, latency, export, the teacher-logit pass)
never compute a weight gradient and run the model untouched.

Remove this part when the torch release in requirements.txt ships a oneDNN with #6035 fixed:
``tests/test_kernels.py::test_upstream_bug_still_present`` then reports (as a skip) that the raw pattern no longer
crashes under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``.

A second oneDNN defect, in bf16 only (found here 2026-12-02; no upstream report found): the bf16 weight-gradient
kernel ("jit_bf16:avx512_core_bf16 backward_weights", channels_last) leaves the taps of a k > 1 convolution whose
input is one pixel wide or high (W == 1 or H == 1, padded) unwritten, so their gradients are whatever the buffer
held: 1e13, inf or nan, depending on the memory (NCHW and fp32, on AVX-512 and AVX2, are exact), and a student can
come back with a nan weight and chance accuracy (docs/PLATFORMS.md, "The bf16 thin-input defect"). Those taps
only ever multiply padding, so the guard computes such a convolution, while the input is that thin, with the one
tap row / column that meets the input, unpadded, at stride 1 along that axis: the same output, exact gradients
(zero for the other taps, as they should be). Only in bf16 on the CPU, and only for that call's shape.
``tests/test_kernels.py::test_bf16_thin_input_bug_still_present`` reports (as a skip) when the raw pattern is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeGuard

import torch
from torch import nn
from torch.nn import functional as F

GUARD_BELOW_CHANNELS = 16  # input channels per group: the AVX-512 kernel's block (AVX2: 8), oneDNN #6035


def needs_unit_stride_rewrite(module: nn.Module) -> TypeGuard[nn.Conv2d]:
    """Whether `module` is a convolution of the known-bad case of oneDNN #6035: 1x1, stride > 1, fewer than
    GUARD_BELOW_CHANNELS input channels per group."""
    return (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
            and any(s > 1 for s in module.stride) and module.in_channels // module.groups < GUARD_BELOW_CHANNELS)


def _subsample_input(stride: tuple[int, ...]) -> Callable[[nn.Module, tuple], tuple]:
    """A forward pre-hook that feeds the convolution its input subsampled by `stride` (H, W)."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]  # (B, C, H, W)
        return (x[:, :, ::stride[0], ::stride[1]], *args[1:])  # (B, C, ceil(H/s), ceil(W/s))
    return hook


def _subsample_output(stride: tuple[int, ...]) -> Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor]:
    """A forward hook that subsamples the convolution's output by `stride` (H, W)."""

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out[:, :, ::stride[0], ::stride[1]]
    return hook


def may_see_thin_input(module: nn.Module) -> TypeGuard[nn.Conv2d]:
    """A Conv2d the bf16 thin-input defect can hit: a kernel wider than 1 along some axis, zero padding given as
    numbers (padding="same" and the reflect/circular modes are left alone)."""
    return (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) != (1, 1)
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def thin_input_conv(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """m(x) computed with only the weight taps that meet a one-pixel-wide / -high input (see the module docstring),
    or None where x is not that thin or the output along a thin axis is not a single position (then m's own
    forward runs)."""
    if isinstance(m.padding, str):  # "same" / "valid": may_see_thin_input leaves those to the kernel
        return None
    weight = m.weight
    stride, padding, dilation = list(m.stride), list(m.padding), list(m.dilation)
    thin = False
    for axis, size in enumerate(x.shape[-2:]):
        k, s, p, d = m.kernel_size[axis], stride[axis], padding[axis], dilation[axis]
        if size != 1 or k == 1:
            continue
        if (2 * p - d * (k - 1)) // s + 1 != 1 or p % d or p // d >= k:
            return None  # not a single output position fed by one tap: leave it to the kernel
        weight = weight.narrow(2 + axis, p // d, 1)  # the only tap that meets the input pixel
        stride[axis], padding[axis], dilation[axis] = 1, 0, 1
        thin = True
    if not thin:
        return None
    return F.conv2d(x, weight, m.bias, tuple(stride), tuple(padding), tuple(dilation), m.groups)


def _thin_input_forward(m: nn.Conv2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward for m that computes a one-pixel-thin CPU input with thin_input_conv, any other with m's own."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and (x.shape[-1] == 1 or x.shape[-2] == 1):
            out = thin_input_conv(m, x)
            if out is not None:
                return out
        return type(m).forward(m, x)  # the class's own forward (Conv2d subclasses included)
    return forward


class ConvKernelGuard:
    """A reusable context manager: within it, every strided 1x1 Conv2d of `model` runs at stride 1 on its
    subsampled input (or, where it pads, with its stride-1 output subsampled: also exact for a 1x1 kernel).

    Enter it around the forward pass of a training step; the backward pass replays the graph recorded there, so
    it may run after the block. Only on the CPU (oneDNN); elsewhere a no-op. The modules get their stride back when
    the block ends, also on an error, so checkpoints, counting, pruning, evaluation and export outside the block
    see the model as built. The convolutions are found once, at construction: build a new guard after pruning.
    With bf16=True (training under bf16 autocast), every k > 1 Conv2d also computes a one-pixel-thin input with
    the taps that meet it (thin_input_conv: the bf16 defect of the module docstring)."""

    def __init__(self, model: nn.Module, device: torch.device | str, bf16: bool = False) -> None:
        cpu = torch.device(device).type == "cpu"
        self.convs: list[nn.Conv2d] = [m for m in model.modules() if cpu and needs_unit_stride_rewrite(m)]
        self.thin_convs: list[nn.Conv2d] = [m for m in model.modules() if cpu and bf16 and may_see_thin_input(m)
                                            and "forward" not in vars(m)]  # a forward set on the instance: left alone
        self._active: list[tuple[nn.Conv2d, tuple[int, ...], torch.utils.hooks.RemovableHandle]] = []
        self._forwards: list[nn.Conv2d] = []

    def __enter__(self) -> ConvKernelGuard:
        if self._active or self._forwards:
            raise RuntimeError("ConvKernelGuard is not re-entrant")
        try:
            for m in self.convs:
                stride = tuple(m.stride)
                if tuple(m.padding) == (0, 0):
                    handle = m.register_forward_pre_hook(_subsample_input(stride))
                else:  # a padded 1x1 conv: out_s[i] = out_1[i * s] over the padded input
                    handle = m.register_forward_hook(_subsample_output(stride))
                m.stride = (1, 1)
                self._active.append((m, stride, handle))
            for m in self.thin_convs:
                # an instance attribute on purpose: nn.Module.__call__ finds it before the class's forward
                m.forward = _thin_input_forward(m)  # type: ignore[method-assign,assignment]
                self._forwards.append(m)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for m, stride, handle in self._active:
            handle.remove()
            m.stride = stride
        self._active.clear()
        for m in self._forwards:
            del m.forward  # the class's forward again
        self._forwards.clear()


__all__ = ["ConvKernelGuard", "may_see_thin_input", "needs_unit_stride_rewrite", "thin_input_conv"]
