"""Native crashes of trial processes (SIGSEGV, SIGABRT, ...): capture what the process said, explain it after.

A trial that dies in native code (a framework bug, a driver, the OOM killer) takes its Ray worker with it, and Ray
reports only "ActorDiedError ... SYSTEM_ERROR"; the signal and glibc's message are in that worker's log file
under Ray's temp folder. So each trial attempt sends its process's stderr (file descriptor 2: Python, glibc and
faulthandler write there) to `trials/<n>/stderr.log`, with faulthandler on, and the driver reads the last attempt
from that file when Tune says the trial errored.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOG_NAME = "stderr.log"
ATTEMPT_MARK = "=== kdstudy trial attempt"
# faulthandler's names for the fatal signals it handles
SIGNALS = {"Segmentation fault": "SIGSEGV", "Aborted": "SIGABRT", "Bus error": "SIGBUS",
           "Floating-point exception": "SIGFPE", "Floating point exception": "SIGFPE", "Illegal instruction": "SIGILL"}
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_PY_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')  # a Python traceback's
# what other handlers print about the same signal (Ray's absl handler), and faulthandler's own headings
_NOISE = re.compile(r"^(\*\*\* SIG|PC: @|@\s+0x|\[\d{4}-\d\d-\d\d [\d:,.]+ [EWIF] \d+ \d+\] logging\.cc|Thread 0x|"
                    r"Current thread|Stack \(most recent|Extension modules:)")


@contextlib.contextmanager
def capture_stderr(trial_dir: Path) -> Iterator[Path]:
    """Within the block, this process's fd 2 appends to trial_dir/stderr.log (after an attempt marker) and
    faulthandler writes a fatal signal's Python traceback there; the old stderr and faulthandler state come back
    after. Yields the log's path."""
    path = Path(trial_dir) / LOG_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stderr.flush()
    saved = os.dup(2)
    was_enabled = faulthandler.is_enabled()
    try:
        os.write(fd, f"{ATTEMPT_MARK} pid {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
        os.dup2(fd, 2)
        faulthandler.enable(file=2, all_threads=True)  # fd 2 is now the log
        yield path
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
        faulthandler.disable()
        if was_enabled:
            try:
                faulthandler.enable(file=sys.stderr, all_threads=True)
            except (AttributeError, OSError, ValueError):  # a stderr without a file descriptor (captured)
                pass


def last_attempt(trial_dir: Path, max_bytes: int = 64_000) -> list[str] | None:
    """Lines the last attempt wrote to stderr.log (None when the trial never wrote one)."""
    path = Path(trial_dir) / LOG_NAME
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    start = text.rfind(ATTEMPT_MARK)
    if start >= 0:
        text = text[start:].split("\n", 1)[1] if "\n" in text[start:] else ""
    return text.splitlines()


def crash_reason(trial_dir: Path, ray_error: str | None = None, tail: int = 4) -> str:
    """One line for a trial whose process died: the signal, the last lines it wrote before the crash (glibc's
    message, say) and the innermost Python frame of the crashing thread, from the last attempt's stderr.log."""
    lines = last_attempt(trial_dir)
    where = f" (see {Path(trial_dir) / LOG_NAME})" if lines is not None else ""
    if not lines:
        ray = f"; Ray: {ray_error.strip().splitlines()[0][:300]}" if ray_error and ray_error.strip() else ""
        return ("the trial's process died without a message on stderr (killed by a signal it cannot catch, such "
                f"as SIGKILL from the out-of-memory killer){ray}{where}")
    fatal = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("Fatal Python error:")), None)
    if fatal is None:
        raised = _raised(lines)
        if raised:
            return f"the trial raised {raised}{where}"
        said = " | ".join(line.strip() for line in lines if line.strip())[-600:]
        return f"the trial's process died; its last stderr lines: {said}{where}"
    name = lines[fatal].split(":", 1)[1].strip()
    signal = SIGNALS.get(name, name)
    before = [line.strip() for line in lines[:fatal] if line.strip() and not _FRAME.match(line)
              and not _NOISE.match(line.strip())][-tail:]
    frames = []
    for line in lines[fatal + 1:]:  # the crashing thread's stack, innermost frame first
        m = _FRAME.match(line)
        if m:
            frames.append(m)
        elif frames:
            break
    frame = ""
    if frames:
        inner = frames[0]
        frame = f"; in {inner['func']} ({Path(inner['file']).name}:{inner['line']})"
        ours = next((f for f in frames if f"{os.sep}study{os.sep}" in f["file"]), None)
        if ours is not None and ours is not inner:
            frame += f" from {ours['func']} ({Path(ours['file']).name}:{ours['line']})"
    said = f"; last stderr lines: {' | '.join(before)[-500:]}" if before else ""
    return f"the trial's process crashed with {signal} ({name}){frame}{said}{where}"


def _raised(lines: list[str]) -> str | None:
    """The last Python traceback in lines, as "ExcType: message (in func, file:line)", or None."""
    start = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("Traceback (most recent")), None)
    if start is None:
        return None
    frames = [m for m in (_PY_FRAME.match(line) for line in lines[start:]) if m]
    end = next((line.strip() for line in lines[start + 1:] if line and not line[0].isspace()), "")
    where = f" (in {frames[-1]['func']}, {Path(frames[-1]['file']).name}:{frames[-1]['line']})" if frames else ""
    return f"{end[:400]}{where}" if end else None
