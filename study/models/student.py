"""The student a trial starts from: a family at a width (study.models.families), optionally with the user's weights.

- `student_checkpoint`: a trained student, either a model.pt written by this tool (pruned shapes kept) or a
  state_dict of `student_arch` at `width_mult`; with `epochs: 0` a trial only prunes and fine-tunes it.
- `student_weights`: initial weights for the family (e.g. torchvision's ImageNet weights saved locally):
  every tensor whose name and shape match is loaded, a first conv of another channel count is adapted, and a
  classifier of another class count stays freshly initialised. Loaded before width pruning, so a prune family
  keeps its strongest channels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from study.core.errors import CheckpointError
from study.models.families import adapt_conv_weight, build_dense, build_model, prune_to_width


def _read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    from study.models.checkpoint import read_weights

    kind, blob = read_weights(path, what)
    return blob["state_dict"] if kind == "kdstudy" else blob


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> dict:
    """Copy every tensor of `state` whose name and shape match (a first conv's channel count is adapted).
    Returns counts: loaded, adapted, skipped (shape differs, e.g. the classifier), missing (not in state)."""
    own = model.state_dict()
    loaded, adapted, skipped = {}, 0, 0
    for k, v in state.items():
        if k not in own:
            continue
        if own[k].shape == v.shape:
            loaded[k] = v
        elif v.dim() == 4 and own[k].dim() == 4 and own[k].shape[0] == v.shape[0] and own[k].shape[2:] == v.shape[2:]:
            loaded[k] = adapt_conv_weight(v, own[k].shape[1])
            adapted += 1
        else:
            skipped += 1
    model.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "adapted": adapted, "skipped": skipped, "missing": len(own) - len(loaded)}


def build_student(cfg, num_classes: int, input_shape: tuple[int, int, int]) -> tuple[nn.Module, dict]:
    """(student on the CPU, what it started from) for a trial config."""
    c = input_shape[0]
    if cfg.student_checkpoint:
        from study.models.checkpoint import load_model, read_weights

        path = Path(cfg.student_checkpoint).expanduser()
        kind, state = read_weights(path, "student_checkpoint")
        if kind == "kdstudy":
            model, meta = load_model(path)
            if meta["arch"] != cfg.student_arch or float(meta["width_mult"]) != cfg.width_mult:
                raise CheckpointError(f"student_checkpoint {path}: a {meta['arch']} at width_mult "
                                      f"{meta['width_mult']:g}; set student_arch: {meta['arch']} and width_mult: "
                                      f"{meta['width_mult']:g} in the trial config (they name the model it holds).")
            if int(meta["num_classes"]) != num_classes or int(meta["in_channels"]) != c:
                raise CheckpointError(f"student_checkpoint {path}: a model for {meta['num_classes']} classes and "
                                      f"{meta['in_channels']} channels, but the data set has {num_classes} and {c}; "
                                      "give a student trained on this data.")
            return model.train(), {"student_init": "checkpoint", "student_checkpoint": str(path)}
        model = build_dense(cfg.student_arch, num_classes, c, cfg.width_mult)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            last = [ln.strip() for ln in str(e).splitlines() if ln.strip()][-1]
            raise CheckpointError(f"student_checkpoint {path}: weights do not fit student_arch {cfg.student_arch!r}"
                                  f" at width_mult {cfg.width_mult} ({last[:200]}); set them to what it was "
                                  "trained as, or give a model.pt written by a trial.") from None
        return model.train(), {"student_init": "checkpoint", "student_checkpoint": str(path)}
    if cfg.student_weights:
        path = Path(cfg.student_weights).expanduser()
        state = _read_state_dict(path, "student_weights")
        model = build_dense(cfg.student_arch, num_classes, c, cfg.width_mult)
        counts = load_matching(model, state)
        if counts["loaded"] == 0:
            raise CheckpointError(f"student_weights {path}: no tensor matches student_arch {cfg.student_arch!r} by "
                                  "name and shape; give weights saved from this family.")
        prune_to_width(model, cfg.student_arch, cfg.width_mult, input_shape)
        return model.train(), {"student_init": "weights", "student_weights": str(path),
                               **{f"student_weights_{k}": v for k, v in counts.items()}}
    return build_model(cfg.student_arch, num_classes, c, cfg.width_mult, input_shape).train(), \
        {"student_init": "random"}
