"""A test-only student family whose build dies natively at one width, for the crash tests' path through Ray.

`student_arch: python:crash_model:build` (with tests/ on PYTHONPATH): width_mult 0.5 aborts the process (SIGABRT,
after a last line on stderr), every other width builds kdstudy's resnet8.
"""

from __future__ import annotations

import os

CRASH_WIDTH = 0.5


def build(num_classes: int, in_channels: int, width_mult: float):
    """resnet8 at `width_mult`; at CRASH_WIDTH the process aborts instead."""
    if width_mult == CRASH_WIDTH:
        os.write(2, b"kdstudy test: injected abort crash (crash_model, width_mult 0.5)\n")
        os.abort()
    from study.models.families import build_model

    return build_model("resnet8", num_classes, in_channels, width_mult)
