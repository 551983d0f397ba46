"""`teacher_checkpoint: PATH`: the user's trained teacher, used as it is (no teacher is trained).

Formats, told apart by their content (not their names):
- a torch.export program (`torch.export.save`, usually .pt2): needs no model code;
- a TorchScript file (`torch.jit.save`): needs no model code;
- a state_dict (`torch.save(model.state_dict())`, or a dict holding one under "state_dict" / "model") of the
  family `teacher_arch` names, built with the data set's class count and channels; read with weights_only=True;
- a model.pt written by this tool (`kdstudy-model-v1`).

The driver checks the teacher once per study, before any trial: its output must have one score per class of the
data set for a batch of the data's shape. The check and the teacher's validation / test accuracy on the study's
splits are kept in a record in the cache (teachers/<key>.json, keyed by the file's sha256 and the split), which
is the "teacher path" every trial receives, as a trained teacher's .pt file is.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from torch import nn

from study.core.errors import CheckpointError, UserError
from study.models.checkpoint import Frozen, load_program

RECORD_FORMAT = "kdstudy-user-teacher-v1"
_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def checkpoint_sha256(path: Path) -> str:
    """sha256 of the checkpoint file, computed once per (path, size, mtime) in a process."""
    from study.core.io import sha256_file

    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def checkpoint_file(name: str) -> Path:
    """The resolved path of a teacher_checkpoint setting; CheckpointError when no such file exists."""
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise CheckpointError(f"teacher_checkpoint {name}: no such file; give the path of your "
                              "trained teacher (.pt2 from torch.export.save, TorchScript, or a state_dict).")
    return path


def detect_format(path: Path) -> str:
    """export, torchscript or state_dict (a torch.save zip); CheckpointError for anything else."""
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (not a zip archive: perhaps truncated, or another "
                              "format); save the teacher with torch.export.save, torch.jit.save or torch.save.")
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: unreadable archive ({e}); save the teacher again.") from None
    if any(n.endswith("/archive_format") or n.endswith("models/model.json") for n in names):
        return "export"
    if any("/code/__torch__" in n for n in names):
        return "torchscript"
    if any(n.endswith("/data.pkl") for n in names):
        return "state_dict"
    raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint; save the teacher with "
                          "torch.export.save, torch.jit.save or torch.save(model.state_dict()).")


FrozenTeacher = Frozen  # a loaded teacher: always in inference mode


def _state_dict_model(path: Path, arch: str, width: float, num_classes: int, in_channels: int) -> nn.Module:
    from study.models.checkpoint import load_model, read_weights
    from study.models.families import build_dense

    kind, blob = read_weights(path, "teacher_checkpoint")
    if kind == "kdstudy":
        return load_model(path)[0]
    model = build_dense(arch, num_classes, in_channels, width)
    own = model.state_dict()
    for k, v in blob.items():  # a classifier of another class count: say so, not "size mismatch"
        if k in own and v.dim() >= 1 and own[k].shape[0] == num_classes and v.shape[0] != num_classes \
                and v.shape[1:] == own[k].shape[1:]:
            raise UserError(f"{path}: the teacher's classifier ({k}) has {v.shape[0]} outputs, but the data set has "
                            f"{num_classes} classes; give the teacher trained on these classes.")
    try:
        model.load_state_dict(blob, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise CheckpointError(f"{path}: weights do not fit teacher_arch {arch!r} with {num_classes} "
                              f"classes and {in_channels} input channels ({lines[-1][:200]}); set teacher_arch to "
                              "the family it was trained as.") from None
    return model


def load_checkpoint(path: Path, arch: str, width: float, num_classes: int, input_shape: tuple[int, int, int],
                    device: torch.device) -> tuple[nn.Module, str]:
    """(teacher in inference mode on `device`, format); checked to give one score per class for the data."""
    fmt = detect_format(path)
    try:
        if fmt in ("export", "torchscript"):
            model = load_program(path, fmt)
        else:
            model = FrozenTeacher(_state_dict_model(path, arch, width, num_classes, input_shape[0]).eval())
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  a damaged archive fails inside torch's readers
        raise CheckpointError(f"{path}: cannot load this {fmt} file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''}); save the teacher again.") from None
    try:
        model = model.to(device)
    except Exception:  # noqa: BLE001  exported programs may refuse a move; they then run where they were saved
        pass
    x = torch.zeros(2, *input_shape, device=device)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001  shape mismatch of any kind inside the user's model
        shape = ", ".join(map(str, input_shape))
        raise UserError(f"{path}: the teacher fails on a batch of the data's shape (2, {shape}) "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); export it for "
                        "this image shape with a dynamic batch size (torch.export.export(model, (x,), "
                        "dynamic_shapes=({0: torch.export.Dim('batch')},))), or set image_size.") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != num_classes:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{path}: the teacher returned {got} for a batch of 2 images, but the data set has "
                        f"{num_classes} classes (want (2, {num_classes})); give the teacher trained on these classes.")
    return model, fmt


def write_record(record_path: Path, checkpoint: Path, fmt: str, info: dict) -> None:
    """Write a user teacher's record (read_record reads it): its checkpoint's path and format, and its info."""
    from study.core.io import write_json_atomic

    write_json_atomic(record_path, {"format": RECORD_FORMAT, "checkpoint": str(checkpoint), "checkpoint_format": fmt,
                                    "teacher": info})


def read_record(path: Path) -> dict | None:
    """The record's dict, or None when `path` is not a user-teacher record."""
    if path.suffix != ".json":
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == RECORD_FORMAT else None
