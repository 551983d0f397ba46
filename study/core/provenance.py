"""What a run was made from: the code (git commit, dirty flag, sha256 of the package's .py files, torch and
torch-pruning versions) and the data set (sha256 of its arrays), as study.json records them."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import torch

from study.core.io import arrays_sha256

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- versions
def dataset_sha256(ds) -> str:
    """sha256 over the whole data set's images and labels (train and test, as loaded, then a val/ split where it
    has one), 16 hex digits: study.json's "data_fingerprint", which reproduce compares (not the teacher cache's
    train_sample_fingerprint). A loader that hashed the arrays when it decoded them (imagefolder: its cache's
    meta.json) gives that value in ds.info, and the data set is not read again."""
    if ds.info.get("sha256"):
        return str(ds.info["sha256"])

    return arrays_sha256(dataset_arrays(ds))


def dataset_arrays(ds) -> list:
    """The arrays dataset_sha256 hashes, in its order."""
    return [ds.train_x, ds.train_y, ds.test_x, ds.test_y, *((ds.val_x, ds.val_y) if ds.val_x is not None else ())]


def code_version(root: Path = REPO) -> dict:
    """git commit (+ whether the working tree has uncommitted changes) and a sha256 of the project's .py files."""
    h = hashlib.sha256()
    for p in sorted(root.glob("study/**/*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    out: dict[str, Any] = {"git_commit": None, "git_dirty": None, "code_sha256": h.hexdigest()[:16],
                           "torch": torch.__version__}
    try:
        import torch_pruning

        out["torch_pruning"] = getattr(torch_pruning, "__version__", "?")
    except ImportError:  # pragma: no cover
        pass
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                           check=True, timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--", "study", "search_spaces"], cwd=root,
                                capture_output=True, text=True, check=True, timeout=10).stdout
        out["git_dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out
