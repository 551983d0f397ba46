"""Files and provenance: atomic result writing (a reader never sees a half-written file), the one file hash
(sha256_file), and what a run was made from (code_version: git commit and a hash of the package; dataset_sha256)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path | str | os.PathLike[str], write: Callable[[IO], object], mode: str = "w",
                 durable: bool = True) -> None:
    """Write through `write(file)` to a temp file beside `path`, then rename it into place.

    durable: the data reaches the disk (fsync) before the rename, and the rename itself after it (fsync of the
    folder), so a machine crash leaves the old file or the new one, never an empty one (ext4 usually orders this
    itself; XFS and NFS do not). Off for files rewritten every epoch that nothing depends on (progress.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def write_path_atomic(path: Path | str, write: Callable[[Path], None]) -> None:
    """Atomic write for writers that take a file name (torch.export.save, torch.onnx.export, ONNX Runtime's
    quantizer): `write(tmp)` fills a temp file beside `path` with the same suffix (torch.export.save warns
    unless the name ends in .pt2), which is synced and renamed into place; on any error nothing is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def replace_dir_atomic(path: Path | str, build: Callable[[Path], T]) -> T:
    """Build a whole folder aside and swap it in: `build(tmp)` fills a fresh temp folder beside `path` (write its
    files with the helpers above), which then replaces `path`. A reader finds the old folder or the new one, never
    a mix of two runs (between the two renames, for an instant, none); on any error the old folder stays. Returns
    what build returned."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        result = build(work)
        os.chmod(work, 0o777 & ~_UMASK)  # mkdtemp makes it private; results are meant to be shared
        old = path.parent / f".{path.name}-old-{os.getpid()}"
        if path.exists():
            path.rename(old)
        try:
            work.rename(path)
        except OSError:
            if old.exists():
                old.rename(path)  # the earlier folder stays where users look for it
            raise
        shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible everywhere (e.g. Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (teacher checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def arrays_sha256(arrays) -> str:
    """sha256 (16 hex digits) over each array's shape and bytes, in order: numpy arrays or CPU tensors (a tensor
    is read through .numpy(), without a copy), so a data set hashed when it is decoded and when it is loaded
    agrees."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.contiguous().numpy() if hasattr(a, "contiguous") else a
        h.update(str(tuple(a.shape)).encode())
        h.update(memoryview(a if a.flags.c_contiguous else a.copy(order="C")).cast("B"))
    return h.hexdigest()[:16]


def write_text_atomic(path: Path | str, text: str, durable: bool = True) -> None:
    """Write `text` to `path` through write_atomic (the old file or the new one, never half of it)."""
    write_atomic(path, lambda fh: fh.write(text), durable=durable)


def write_json_atomic(path: Path | str, data: Any, durable: bool = True) -> None:
    """Write `data` to `path` as indented JSON through write_atomic; numpy and torch scalars as numbers, paths and
    other objects as strings."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n", durable)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)



def default_cache_dir() -> Path:
    """Where teachers, logit caches, latency caches and decoded image folders are kept: $KDSTUDY_CACHE, else
    .cache/kdstudy under the current folder."""
    return Path(os.environ.get("KDSTUDY_CACHE", ".cache/kdstudy")).resolve()


def portable_path(path: Path | str) -> str:
    """`path` relative to the working directory when it lies inside it (a run folder committed from one machine
    names no other machine's absolute path), else absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


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
    import torch  # here, so that reading results (benchmarks, reports) loads no torch

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
