"""Save and load (possibly pruned) models as plain tensors + metadata, loadable with `weights_only=True`.

Pruned models change shape, so a plain `state_dict` does not fit the dense class. The loader rebuilds the dense
model from `meta` and then resizes every Conv2d / BatchNorm2d / Linear to the saved tensor shapes. Nothing is
unpickled but tensors and plain Python containers.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from study.core.errors import CheckpointError, UserError
from study.core.io import write_atomic
from study.models.families import build_dense

FORMAT = "kdstudy-model-v1"
REQUIRED_META = ("arch", "num_classes", "in_channels", "width_mult", "input_shape")
_PLAIN = (str, int, float, bool, type(None))



def _check_plain(value: object, where: str) -> None:
    # weights_only loading refuses anything but tensors and plain containers: fail at save time, not at load.
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, _PLAIN):
                raise TypeError(f"meta key {k!r} in {where} must be str/int/float/bool/None")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"{where} has type {type(value).__name__}; meta may hold only plain Python values")


def save_model(path: str | os.PathLike[str], model: nn.Module, meta: dict) -> None:
    """Atomically write {"format", "state_dict", "meta"} to `path` (temp file in the same dir + rename)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"meta lacks {missing}; required: {list(REQUIRED_META)}")
    _check_plain(meta, "meta")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    masked = [k for k in state if k.endswith(("_orig", "_mask"))]
    if masked:
        raise ValueError(
            f"model still carries pruning masks ({masked[0]}, ...); call torch.nn.utils.prune.remove first"
        )
    def write(f) -> None:
        torch.save({"format": FORMAT, "state_dict": state, "meta": dict(meta)}, f)
        f.flush()
        os.fsync(f.fileno())

    write_atomic(path, write, "wb")


def _resize(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Give every Conv2d / BatchNorm2d / Linear the shapes stored in `state` (pruned channels are gone)."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        tensors = {
            k: v
            for k, v in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
            if v is not None
        }
        changed = {k for k, v in tensors.items() if prefix + k in state and state[prefix + k].shape != v.shape}
        if not changed:
            continue
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            w = state[prefix + "weight"]
            module.out_channels, module.in_channels = int(w.shape[0]), int(w.shape[1])
        elif isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels:
            w = state[prefix + "weight"]  # depthwise (MobileNet, EfficientNet): pruned as in = out = groups
            module.out_channels = module.in_channels = module.groups = int(w.shape[0])
        elif isinstance(module, nn.Conv2d) and int(state[prefix + "weight"].shape[0]) % module.groups == 0:
            w = state[prefix + "weight"]  # grouped (RegNet): torch-pruning keeps the group count
            module.out_channels, module.in_channels = int(w.shape[0]), int(w.shape[1]) * module.groups
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = (
                int(state[prefix + "running_mean"].shape[0])
                if module.track_running_stats
                else int(state[prefix + "weight"].shape[0])
            )
        elif isinstance(module, nn.Linear):
            w = state[prefix + "weight"]
            module.out_features, module.in_features = int(w.shape[0]), int(w.shape[1])
        else:
            raise CheckpointError(
                f"{path}: tensor {prefix}{min(changed)} has a shape the model cannot take "
                f"({type(module).__name__}); save the checkpoint again with this version of the code."
            )
        for k in changed:
            # Values come from load_state_dict; only the shape matters here.
            new = torch.empty(state[prefix + k].shape, dtype=tensors[k].dtype, device=tensors[k].device)
            if k in module._parameters:
                module._parameters[k] = nn.Parameter(new, requires_grad=tensors[k].requires_grad)
            else:
                module._buffers[k] = new


class Frozen(nn.Module):
    """Wraps a loaded program (torch.export or TorchScript): always in inference mode (an exported program
    refuses .train()/.eval())."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def train(self, mode: bool = True) -> Frozen:  # noqa: ARG002  frozen on purpose
        """Stay in inference mode whatever `mode` asks."""
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped program's output for x."""
        return self.inner(x)


def load_program(path: str | os.PathLike, fmt: str) -> Frozen:
    """A model that needs no code of its own: a torch.export program (fmt "export", a .pt2) or a TorchScript file
    ("torchscript"), on the CPU. Neither reader unpickles Python objects."""
    if fmt == "export":
        return Frozen(torch.export.load(str(path)).module())
    if fmt == "torchscript":
        return Frozen(torch.jit.load(str(path), map_location="cpu").eval())
    raise ValueError(f"program format must be export or torchscript, not {fmt!r}")


def _saved_program(path: Path, meta: dict) -> nn.Module:
    """The model a model.pt stands for when it records the program it was measured from (the teacher reference
    of a .pt2 / TorchScript teacher: its weights are the program's, its code is in the program file)."""
    from study.core.io import sha256_file

    prog = meta["program"]
    src = Path(prog.get("path", ""))
    if not src.is_file():
        raise CheckpointError(f"{path}: it was measured from {src}, which no longer exists; put that file back or "
                              "run the study again.")
    if sha256_file(src) != prog.get("sha256"):
        raise CheckpointError(f"{path}: {src} has changed since it was measured (sha256 differs); restore that "
                              "file or run the study again.")
    try:
        return load_program(src, str(prog.get("format")))
    except Exception as e:  # noqa: BLE001  a damaged archive fails inside torch's readers
        raise CheckpointError(f"{path}: cannot load the program it names, {src} ({type(e).__name__}); restore "
                              "that file or run the study again.") from None


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by `save_model` (pruned shapes included); returns (model on CPU in eval mode, meta).
    A model.pt whose meta names a `program` (path, format, sha256) is that program, loaded from its file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; check the path or re-run the step that writes it.")
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # a corrupt file fails anywhere in the unpickler (seen: IndexError, UnpicklingError)
        raise CheckpointError(
            f"{path}: not a readable kdstudy checkpoint ({type(e).__name__}); point to a model.pt written by this tool."
        ) from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(
            f"{path}: format is {found!r}, expected {FORMAT!r}; point to a model.pt written by this tool."
        )
    meta, state = blob.get("meta"), blob.get("state_dict")
    if not isinstance(meta, dict) or not isinstance(state, dict) or any(k not in meta for k in REQUIRED_META):
        raise CheckpointError(
            f"{path}: checkpoint lacks meta keys {list(REQUIRED_META)} or its state_dict; re-save the model."
        )
    if isinstance(meta.get("program"), dict):
        return _saved_program(path, meta), meta
    try:
        # dense: a family scaled by pruning is resized below to its saved shapes, like a pruned model
        model = build_dense(meta["arch"], int(meta["num_classes"]), int(meta["in_channels"]), float(meta["width_mult"]))
    except UserError as e:
        raise CheckpointError(
            f"{path}: cannot rebuild the model ({e}); re-save it with this version of the code."
        ) from e
    try:
        _resize(model, state, path)
    except KeyError as e:  # a resized layer lacks its weight in the file
        raise CheckpointError(
            f"{path}: weights do not fit architecture {meta['arch']!r} (missing {e}); "
            "re-save it with this version of the code."
        ) from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{path}: weights do not fit architecture {meta['arch']!r} ({first}); "
            "re-save it with this version of the code."
        ) from e
    model.eval()
    return model, meta


def read_weights(path: str | os.PathLike, what: str) -> tuple[str, dict]:
    """("kdstudy", blob) for a model.pt of this tool (load it with load_model), else ("state_dict", tensors) for a
    plain state_dict (also one held under "state_dict" / "model" / "model_state_dict"); read with weights_only=True.
    Anything else is a CheckpointError naming `what` and the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file; check the path.")
    try:
        blob = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001  pickled code (weights_only refuses it), another format, a truncated file
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise CheckpointError(f"{what} {path}: not readable as a state_dict with weights_only=True "
                              f"({type(e).__name__}: {first}); save model.state_dict() with torch.save.") from None
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        return "kdstudy", blob
    if isinstance(blob, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(blob.get(key), dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise CheckpointError(f"{what} {path}: holds {type(blob).__name__}, not a state_dict of tensors; save "
                              "model.state_dict() with torch.save.")
    return "state_dict", blob
