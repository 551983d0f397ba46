"""trials/<n>/told.json: how a search trial ended, exactly as the searcher tells Optuna, written just before it
does. The trainable reads it to never train a trial Optuna knows finished (Tune can restore one as running after
a driver kill); the searcher reads it on resume to tell an end that a kill interrupted. No Ray or Optuna here:
Ray workers import this."""

from __future__ import annotations

import json
from pathlib import Path

from study.core.io import write_json_atomic

TOLD_FILE = "told.json"
KEPT = "checkpoint"  # trials/<n>/checkpoint/<epoch>/: the trial's newest reported checkpoint, until it has ended


def write_told(trial_dir: Path, status: str, result: dict, error: bool) -> None:
    """Record the end (status: complete, early_stopped, infeasible, failed; the result's scalars; whether the
    process died)."""
    scalars = {k: v for k, v in result.items() if v is None or isinstance(v, (int, float, str, bool))}
    write_json_atomic(Path(trial_dir) / TOLD_FILE, {"status": status, "error": bool(error), "result": scalars})


def drop_kept_checkpoint(trial_dir: Path) -> None:
    """Remove the trial's kept checkpoint (it has ended: nothing will resume from it)."""
    import shutil

    shutil.rmtree(Path(trial_dir) / KEPT, ignore_errors=True)


def read_told(trial_dir: Path) -> dict | None:
    """What write_told wrote for this trial, or None."""
    try:
        told = json.loads((Path(trial_dir) / TOLD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return told if isinstance(told, dict) and isinstance(told.get("result"), dict) else None
