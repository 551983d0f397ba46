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
of the upstream report (AVX2's is 8), so one rule covers both without reading the ISA. Measured with
``python -m devbench.layout --guard`` (README): students with such convolutions train with the rewrite within
noise of the NCHW fallback on an AMD EPYC Zen 4 (bf16, and fp32 capped to AVX2), and faster on the Zen 3 of the
report (pruned demo trial 5.4 s against 8.0 s in NCHW), while every wider model is 1.14-1.37x faster in
channels_last than in NCHW; rewriting the wider convolutions too cost 6-14 % in bf16 on the Zen 4, so those are
left to oneDNN. Only the backward pass is affected
upstream; forward-only passes (evaluation, latency, export, the teacher-logit pass) never compute a weight
gradient and run the model untouched.

Remove this module when the torch release in requirements.txt ships a oneDNN with #6035 fixed:
``tests/test_kernels.py::test_upstream_bug_still_present`` then reports (as a skip) that the raw pattern no longer
crashes under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``.
"""

from __future__ import annotations

import torch
from torch import nn

GUARD_BELOW_CHANNELS = 16  # input channels per group: the AVX-512 kernel's block (AVX2: 8), oneDNN #6035


def needs_unit_stride_rewrite(module: nn.Module) -> bool:
    """Whether `module` is a convolution of the known-bad case of oneDNN #6035: 1x1, stride > 1, fewer than
    GUARD_BELOW_CHANNELS input channels per group."""
    return (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
            and any(s > 1 for s in module.stride) and module.in_channels // module.groups < GUARD_BELOW_CHANNELS)


def _subsample_input(stride: tuple[int, int]):
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]  # (B, C, H, W)
        return (x[:, :, ::stride[0], ::stride[1]], *args[1:])  # (B, C, ceil(H/s), ceil(W/s))
    return hook


def _subsample_output(stride: tuple[int, int]):
    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out[:, :, ::stride[0], ::stride[1]]
    return hook


class ConvKernelGuard:
    """A reusable context manager: within it, every strided 1x1 Conv2d of `model` runs at stride 1 on its
    subsampled input (or, where it pads, with its stride-1 output subsampled: also exact for a 1x1 kernel).

    Enter it around the forward pass of a training step; the backward pass replays the graph recorded there, so
    it may run after the block. Only on the CPU (oneDNN); elsewhere a no-op. The modules get their stride back when
    the block ends, also on an error, so checkpoints, counting, pruning, evaluation and export outside the block
    see the model as built. The convolutions are found once, at construction: build a new guard after pruning."""

    def __init__(self, model: nn.Module, device: torch.device | str) -> None:
        cpu = torch.device(device).type == "cpu"
        self.convs: list[nn.Conv2d] = [m for m in model.modules() if cpu and needs_unit_stride_rewrite(m)]
        self._active: list[tuple[nn.Conv2d, tuple[int, ...], torch.utils.hooks.RemovableHandle]] = []

    def __enter__(self) -> ConvKernelGuard:
        if self._active:
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
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for m, stride, handle in self._active:
            handle.remove()
            m.stride = stride
        self._active.clear()


__all__ = ["ConvKernelGuard", "needs_unit_stride_rewrite"]
